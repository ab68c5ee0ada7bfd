"""Control routes for the webhook pushers (``/_control/...``): JSON in, JSON out, no auth.

GREEN-API (the instance is created with ``POST /_control/instances``)::

    GET    /_control/instances/{id}/settings          the getSettings body
    PUT    /_control/instances/{id}/settings          a setSettings subset (no rate limit)
    GET    /_control/instances/{id}/push              push counters of the instance
    PUT    /_control/push                             {"timeout"?, "pause"?} seconds

Evolution::

    POST   /_control/evolution/instances              {"name", "token", "v1"?, "sender"?,
                                                       "expose_token"?}
    GET    /_control/evolution/instances/{name}       push counters
    POST   /_control/evolution/instances/{name}/events  {"event", "data"} or [..]
    PUT    /_control/evolution/retry                  {"timeout"?, "max_attempts"?,
                                                       "initial_delay"?, "max_delay"?,
                                                       "jitter"?, "non_retryable"?}
    GET    /_control/evolution/stats

Chat API::

    POST   /_control/chatapi/instances                {"id", "token", config fields...}
    GET    /_control/chatapi/instances/{id}           counters and config
    PUT    /_control/chatapi/instances/{id}           config fields to change
    POST   /_control/chatapi/instances/{id}/items     {"kind", "item"} or [..]
    GET    /_control/chatapi/stats

WAHA (webhooks are set through WAHA's own sessions API too, ``/api/sessions``)::

    POST   /_control/waha/sessions                    {"name", "hmac_key"?, "engine"?,
                                                       "working"?}
    GET    /_control/waha/sessions/{name}             push counters
    PUT    /_control/waha/sessions/{name}/webhook     a ``config.webhooks[]`` item ("events"
                                                       default ["*"], "hmac" default the
                                                       session's key): replaces the one
                                                       with its URL, or adds it
    POST   /_control/waha/sessions/{name}/events      {"event", "payload"} or [..]
    PUT    /_control/waha/delivery                    {"timeout"?, "jitter"?}
    GET    /_control/waha/stats

Meta: see :mod:`fakeprovider.meta_control` (``/_control/meta/...``).

Config fields: ``webhook_url``, ``auth`` (query|bearer|none), ``batch_size``,
``batch_interval``, ``max_attempts``, ``retry_pause``, ``timeout``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Final, TypeVar

import msgspec

from fakeprovider.chatapi import ChatApiConfig, ChatKind, FakeChatApi, UnknownChatApiInstance
from fakeprovider.control import ControlError, decode_body
from fakeprovider.evolution import FakeEvolution, UnknownEvolutionInstance
from fakeprovider.evolution_push import RetryPolicy
from fakeprovider.greenapi import FakeGreenApi, UnknownInstanceError
from fakeprovider.meta import FakeMeta, UnknownMetaApp
from fakeprovider.meta_control import handle_meta_control
from fakeprovider.settings import SettingsError, encode_settings
from fakeprovider.waha import FakeWaha, UnknownWahaSession
from fakeprovider.waha_push import CustomHeader, Hmac, Retries, WahaWebhook, validate_webhooks

__all__ = ["handle_push_control"]

T = TypeVar("T")


class _EvolutionSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    token: str
    v1: bool = False
    sender: str | None = "5511999990000@s.whatsapp.net"
    expose_token: bool = True


class _Event(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    event: str
    data: msgspec.Raw = msgspec.Raw(b"null")


class _WahaSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    hmac_key: str | None = None
    engine: str = "GOWS"
    working: bool = True


class _WahaHook(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: str
    events: list[str] = msgspec.field(default_factory=lambda: ["*"])
    hmac: Hmac | None = None
    retries: Retries | None = None
    customHeaders: list[CustomHeader] | None = None


class _WahaEvent(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    event: str
    payload: msgspec.Raw = msgspec.Raw(b"{}")


class _WahaDelivery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    timeout: float | None = None
    jitter: float | None = None


class _Item(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kind: ChatKind
    item: msgspec.Raw


class _PushTiming(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    timeout: float | None = None
    pause: float | None = None


_OBJECT: Final = msgspec.json.Decoder(dict[str, Any])
_EVOLUTION_SPEC: Final = msgspec.json.Decoder(_EvolutionSpec)
_EVENTS: Final = msgspec.json.Decoder(_Event | list[_Event])
_ITEMS: Final = msgspec.json.Decoder(_Item | list[_Item])
_PUSH_TIMING: Final = msgspec.json.Decoder(_PushTiming)
_WAHA_SPEC: Final = msgspec.json.Decoder(_WahaSpec)
_WAHA_HOOK: Final = msgspec.json.Decoder(_WahaHook)
_WAHA_EVENTS: Final = msgspec.json.Decoder(_WahaEvent | list[_WahaEvent])
_WAHA_DELIVERY: Final = msgspec.json.Decoder(_WahaDelivery)
_ENCODER: Final = msgspec.json.Encoder()


def _convert(value: object, kind: type[T]) -> T:
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        raise ControlError(400, f"invalid request body: {exc}") from None


def _seconds(value: float | None, name: str) -> None:
    if value is not None and not (math.isfinite(value) and 0.0 <= value <= 3600.0):
        raise ControlError(400, f"{name} must be between 0 and 3600 seconds")


def _many(decoded: T | list[T]) -> list[T]:
    return decoded if isinstance(decoded, list) else [decoded]


def _greenapi(state: FakeGreenApi, method: str, parts: list[str], body: bytes) -> bytes | None:
    match method, parts:
        case "GET", ["instances", id, "settings"]:
            return encode_settings(state.settings(id))
        case "PUT", ["instances", id, "settings"]:
            state.instance(id)
            try:
                return encode_settings(state.set_settings(id, body))
            except SettingsError as exc:
                raise ControlError(400, str(exc)) from None
        case "GET", ["instances", id, "push"]:
            return _ENCODER.encode(state.push_stats(id))
        case "PUT", ["push"]:
            timing = decode_body(_PUSH_TIMING, body)
            _seconds(timing.timeout, "timeout")
            _seconds(timing.pause, "pause")
            if timing.timeout is not None:
                state.push_timeout = timing.timeout
            if timing.pause is not None:
                state.push_pause = timing.pause
            return _ENCODER.encode({"timeout": state.push_timeout, "pause": state.push_pause})
        case _, ["instances", _, "settings" | "push"] | ["push"]:
            raise ControlError(405, "Method Not Allowed")
    return None


def _evolution(state: FakeEvolution, method: str, parts: list[str], body: bytes) -> bytes:
    match method, parts:
        case "POST", ["instances"]:
            spec = decode_body(_EVOLUTION_SPEC, body)
            if not spec.name or "/" in spec.name or not spec.token:
                raise ControlError(400, "name and token must be non-empty, name without '/'")
            try:
                created = state.add_instance(
                    spec.name,
                    spec.token,
                    v1=spec.v1,
                    sender=spec.sender,
                    expose_token=spec.expose_token,
                )
            except ValueError as exc:
                raise ControlError(409, str(exc)) from None
            return _ENCODER.encode({"name": spec.name, "created": created})
        case "GET", ["instances", name]:
            return _ENCODER.encode(state.stats(name))
        case "POST", ["instances", name, "events"]:
            state.instance(name)
            events = _many(decode_body(_EVENTS, body))
            scheduled = sum(state.enqueue(name, e.event, bytes(e.data)) for e in events)
            return _ENCODER.encode({"enqueued": len(events), "scheduled": scheduled})
        case "PUT", ["retry"]:
            current = dataclasses.asdict(state.retry)
            current["non_retryable"] = sorted(current["non_retryable"])
            patch = decode_body(_OBJECT, body)
            policy = _convert({**current, **patch}, RetryPolicy)
            for name in ("timeout", "initial_delay", "max_delay"):
                _seconds(getattr(policy, name), name)
            if policy.max_attempts < 1 or not 0.0 <= policy.jitter < 1.0:
                raise ControlError(400, "max_attempts must be >= 1 and jitter within [0, 1)")
            state.retry = policy
            return _ENCODER.encode(policy)
        case "GET", ["stats"]:
            return _ENCODER.encode({name: state.stats(name) for name in state.instances})
    raise ControlError(404, "Not Found")


def _waha_webhook(body: bytes) -> WahaWebhook:
    spec = decode_body(_WAHA_HOOK, body)
    hooks, problems = validate_webhooks([msgspec.to_builtins(spec)])
    if hooks is None:
        raise ControlError(400, "; ".join(problems))
    return hooks[0]


def _waha(state: FakeWaha, method: str, parts: list[str], body: bytes) -> bytes:
    match method, parts:
        case "POST", ["sessions"]:
            spec = decode_body(_WAHA_SPEC, body)
            try:
                created = state.add_session(
                    spec.name, spec.hmac_key, engine=spec.engine, working=spec.working
                )
            except ValueError as exc:
                raise ControlError(409 if spec.name in state.sessions else 400, str(exc)) from None
            return _ENCODER.encode({"name": spec.name, "created": created})
        case "GET", ["sessions", name]:
            return _ENCODER.encode(state.stats(name))
        case "PUT", ["sessions", name, "webhook"]:
            session = state.session(name)
            session.set_webhook(_waha_webhook(body))
            return _ENCODER.encode(session.dto())
        case "POST", ["sessions", name, "events"]:
            state.session(name)
            events = _many(decode_body(_WAHA_EVENTS, body))
            scheduled = sum(state.enqueue(name, e.event, bytes(e.payload)) for e in events)
            return _ENCODER.encode({"enqueued": len(events), "scheduled": scheduled})
        case "PUT", ["delivery"]:
            delivery = decode_body(_WAHA_DELIVERY, body)
            _seconds(delivery.timeout, "timeout")
            if delivery.jitter is not None and not 0.0 <= delivery.jitter < 1.0:
                raise ControlError(400, "jitter must be within [0, 1)")
            if delivery.timeout is not None:
                state.timeout = delivery.timeout
            if delivery.jitter is not None:
                state.jitter = delivery.jitter
            return _ENCODER.encode({"timeout": state.timeout, "jitter": state.jitter})
        case "GET", ["stats"]:
            return _ENCODER.encode({name: state.stats(name) for name in state.sessions})
    raise ControlError(404, "Not Found")


def _chatapi(state: FakeChatApi, method: str, parts: list[str], body: bytes) -> bytes:
    match method, parts:
        case "POST", ["instances"]:
            fields = decode_body(_OBJECT, body)
            id, token = str(fields.pop("id", "")), fields.pop("token", "")
            if not id or not isinstance(token, str) or not token:
                raise ControlError(400, "id and token must be non-empty")
            config = _config(fields)
            try:
                created = state.add_instance(id, token, config)
            except ValueError as exc:
                raise ControlError(409, str(exc)) from None
            return _ENCODER.encode({"id": id, "created": created})
        case "GET", ["instances", id]:
            return _ENCODER.encode(state.stats(id))
        case "PUT", ["instances", id]:
            current = msgspec.structs.asdict(state.instance(id).config)
            changes = decode_body(_OBJECT, body)
            state.configure(id, _config({**current, **changes}))
            return _ENCODER.encode(state.stats(id))
        case "POST", ["instances", id, "items"]:
            state.instance(id)
            items = _many(decode_body(_ITEMS, body))
            state.enqueue_many(id, [(i.kind, bytes(i.item)) for i in items])
            return _ENCODER.encode({"enqueued": len(items)})
        case "GET", ["stats"]:
            return _ENCODER.encode({id: state.stats(id) for id in state.instances})
    raise ControlError(404, "Not Found")


def _config(fields: dict[str, Any]) -> ChatApiConfig:
    try:
        return msgspec.convert(fields, ChatApiConfig)
    except (msgspec.ValidationError, ValueError) as exc:
        raise ControlError(400, f"invalid request body: {exc}") from None


def handle_push_control(
    method: str,
    path: str,
    body: bytes,
    *,
    green: FakeGreenApi,
    evolution: FakeEvolution,
    chatapi: FakeChatApi,
    waha: FakeWaha,
    meta: FakeMeta,
) -> tuple[int, bytes] | None:
    """Answer a pusher control request, or None when ``path`` is not one of these routes."""
    parts = path.removeprefix("/_control").strip("/").split("/")
    try:
        if parts[0] == "evolution":
            return 200, _evolution(evolution, method, parts[1:], body)
        if parts[0] == "chatapi":
            return 200, _chatapi(chatapi, method, parts[1:], body)
        if parts[0] == "waha":
            return 200, _waha(waha, method, parts[1:], body)
        if parts[0] == "meta":
            return 200, handle_meta_control(meta, method, parts[1:], body)
        answer = _greenapi(green, method, parts, body)
        return None if answer is None else (200, answer)
    except (
        UnknownInstanceError,
        UnknownEvolutionInstance,
        UnknownChatApiInstance,
        UnknownWahaSession,
        UnknownMetaApp,
    ) as exc:
        status, message = 404, f"unknown instance {exc.args[0]}"
    except ControlError as exc:
        status, message = exc.status, exc.message
    return status, _ENCODER.encode({"message": message})
