"""Control routes of the fake Meta (``/_control/meta/...``): JSON in, JSON out, no auth.

::

    POST   /_control/meta/apps                 {"name", "secret", "wabas", "verify_token"?,
                                                "callback_url"?, "batch"?, "linger"?}
    GET    /_control/meta/apps/{name}          push counters
    PUT    /_control/meta/apps/{name}          {"callback_url"?, "verify_token"?, "batch"?,
                                                "linger"?, "wabas"?}: changes them (a new
                                                verify token or URL is verified again)
    POST   /_control/meta/wabas/{waba}/updates {"field"? ("messages"), "value"} or [..]: queued
                                                on every app subscribed to the WABA
    PUT    /_control/meta/delivery             {"timeout"?, "initial_delay"?, "max_delay"?,
                                                "max_age"?, "jitter"?}
    GET    /_control/meta/stats

``batch`` is how many queued updates of an app one POST holds at most (one ``entry[]`` per
WABA), ``linger`` the seconds an app waits after an enqueue before it sends its queue.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Final

import msgspec

from fakeprovider.control import ControlError, decode_body
from fakeprovider.meta import FakeMeta
from fakeprovider.meta_push import Backoff

__all__ = ["handle_meta_control"]

_UNSET: Final = msgspec.UNSET


class _AppSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    secret: str
    wabas: list[str]
    verify_token: str | None = None
    callback_url: str | None = None
    batch: int = 1
    linger: float = 0.0


class _AppPatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    callback_url: str | msgspec.UnsetType | None = _UNSET
    verify_token: str | msgspec.UnsetType | None = _UNSET
    batch: int | msgspec.UnsetType = _UNSET
    linger: float | msgspec.UnsetType = _UNSET
    wabas: list[str] | msgspec.UnsetType = _UNSET


class _Update(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    value: msgspec.Raw
    field: str = "messages"


class _Delivery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    timeout: float | None = None
    initial_delay: float | None = None
    max_delay: float | None = None
    max_age: float | None = None
    jitter: float | None = None


_APP: Final = msgspec.json.Decoder(_AppSpec)
_PATCH: Final = msgspec.json.Decoder(_AppPatch)
_UPDATES: Final = msgspec.json.Decoder(_Update | list[_Update])
_DELIVERY: Final = msgspec.json.Decoder(_Delivery)
_ENCODER: Final = msgspec.json.Encoder()
_LIMIT: Final = 7 * 24 * 3600.0


def _check(batch: int, linger: float) -> None:
    if batch < 1 or batch > 1000:
        raise ControlError(400, "batch must be between 1 and 1000")
    if not (math.isfinite(linger) and 0.0 <= linger <= 60.0):
        raise ControlError(400, "linger must be between 0 and 60 seconds")


def _create(state: FakeMeta, body: bytes) -> bytes:
    spec = decode_body(_APP, body)
    if not spec.name or "/" in spec.name or not spec.secret:
        raise ControlError(400, "name and secret must be non-empty, name without '/'")
    _check(spec.batch, spec.linger)
    try:
        created = state.add_app(
            spec.name,
            spec.secret,
            spec.wabas,
            verify_token=spec.verify_token,
            callback_url=spec.callback_url,
            batch=spec.batch,
            linger=spec.linger,
        )
    except ValueError as exc:
        raise ControlError(409 if spec.name in state.apps else 400, str(exc)) from None
    return _ENCODER.encode({"name": spec.name, "created": created})


def _update(state: FakeMeta, name: str, body: bytes) -> bytes:
    app = state.app(name)
    patch = decode_body(_PATCH, body)
    batch = app.batch if patch.batch is _UNSET else patch.batch
    linger = app.linger if patch.linger is _UNSET else patch.linger
    _check(batch, linger)
    if patch.wabas is not _UNSET:
        if any(not (w.isascii() and w.isdigit()) for w in patch.wabas):
            raise ControlError(400, "a WhatsApp Business Account id is digits only")
        app.wabas = list(dict.fromkeys(patch.wabas))
    if patch.callback_url is not _UNSET:
        app.callback_url = patch.callback_url or None
    if patch.verify_token is not _UNSET:
        app.set_verify_token(patch.verify_token)
    app.batch, app.linger = batch, linger
    return _ENCODER.encode(state.stats(name))


def _delivery(state: FakeMeta, body: bytes) -> bytes:
    patch = decode_body(_DELIVERY, body)
    changes = {
        name: value
        for name, value in (
            ("timeout", patch.timeout),
            ("initial", patch.initial_delay),
            ("maximum", patch.max_delay),
            ("max_age", patch.max_age),
        )
        if value is not None
    }
    for value in changes.values():
        if not (math.isfinite(value) and 0.0 <= value <= _LIMIT):
            raise ControlError(400, "delays, timeout and max_age must be between 0 and 7 days")
    if patch.jitter is not None:
        if not 0.0 <= patch.jitter < 1.0:
            raise ControlError(400, "jitter must be within [0, 1)")
        changes["jitter"] = patch.jitter
    state.policy = dataclasses.replace(state.policy, **changes)
    return _ENCODER.encode(_policy(state.policy))


def _policy(policy: Backoff) -> dict[str, float]:
    return {
        "timeout": policy.timeout,
        "initial_delay": policy.initial,
        "max_delay": policy.maximum,
        "max_age": policy.max_age,
        "jitter": policy.jitter,
    }


def handle_meta_control(state: FakeMeta, method: str, parts: list[str], body: bytes) -> bytes:
    """Answer one ``/_control/meta/...`` request (``parts`` after ``meta``); ControlError or
    UnknownMetaApp when it cannot."""
    match method, parts:
        case "POST", ["apps"]:
            return _create(state, body)
        case "GET", ["apps", name]:
            return _ENCODER.encode(state.stats(name))
        case "PUT", ["apps", name]:
            return _update(state, name, body)
        case "POST", ["wabas", waba, "updates"]:
            updates = decode_body(_UPDATES, body)
            many = updates if isinstance(updates, list) else [updates]
            sent = sum(state.enqueue(waba, u.field, json.loads(bytes(u.value))) for u in many)
            return _ENCODER.encode({"enqueued": len(many), "scheduled": sent})
        case "PUT", ["delivery"]:
            return _delivery(state, body)
        case "GET", ["stats"]:
            return _ENCODER.encode({name: state.stats(name) for name in state.apps})
    raise ControlError(404, "Not Found")
