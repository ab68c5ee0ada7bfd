"""The fake provider's control API (``/_control/...``): JSON in, JSON out, no auth.

``handle_control`` is a pure function of the state and one request; the ASGI shell reads the
body and writes what it returns. Bad input is a 400 with ``{"message": ...}``, never a 500.

    POST   /_control/instances                       {"id", "token", "latency"?}
    GET    /_control/instances/{id}                  counters + deleted_receipts
    POST   /_control/instances/{id}/notifications    [notification, ...] or one object
    POST   /_control/instances/{id}/raw              body = one notification, verbatim
    PUT    /_control/instances/{id}/faults           Fault or [Fault, ...] (queued in order)
    DELETE /_control/instances/{id}/faults
    PUT    /_control/instances/{id}/latency          {"latency": seconds | null}
    PUT    /_control/instances/{id}/lose             {"count": n}: journal the next n messages,
                                                      never deliver them
    GET    /_control/instances/{id}/lost             {"lost": [idMessage, ...]}
    PUT    /_control/latency                         {"latency": seconds}
    GET    /_control/stats
    POST   /_control/reset                           (the app also resets Evolution, Chat API,
                                                      WAHA)

The webhook pushers' routes (GREEN-API settings and push counters, Evolution, Chat API) are in
:mod:`fakeprovider.pushcontrol`; the app tries those first.
"""

from __future__ import annotations

import math
from typing import Final, TypeVar

import msgspec

from fakeprovider.greenapi import FakeGreenApi, Fault, UnknownInstanceError

__all__ = ["ControlError", "handle_control"]

_MAX_LATENCY: Final = 600.0

T = TypeVar("T")


class ControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _InstanceSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str | int
    token: str
    latency: float | None = None


class _LoseSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    count: int


class _LatencySpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    latency: float | None


class _Created(msgspec.Struct):
    id: str
    created: bool


class _Enqueued(msgspec.Struct):
    enqueued: int
    receiptIds: list[int]


_INSTANCE_SPEC: Final = msgspec.json.Decoder(_InstanceSpec)
_LATENCY_SPEC: Final = msgspec.json.Decoder(_LatencySpec)
_LOSE_SPEC: Final = msgspec.json.Decoder(_LoseSpec)
_FAULTS: Final = msgspec.json.Decoder(Fault | list[Fault])
_RAW_LIST: Final = msgspec.json.Decoder(list[msgspec.Raw])
_RAW_ONE: Final = msgspec.json.Decoder(msgspec.Raw)
_ENCODER: Final = msgspec.json.Encoder()


def decode_body(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    try:
        return decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ControlError(400, f"invalid request body: {exc}") from None


def _instance_id(value: str | int) -> str:
    text = str(value)
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) == 0:
        raise ControlError(400, "id must be a positive integer of at most 19 digits")
    return text


def _latency(value: float | None, *, allow_none: bool) -> float | None:
    if value is None:
        if allow_none:
            return None
        raise ControlError(400, "latency must be a number of seconds")
    if not (math.isfinite(value) and 0.0 <= value <= _MAX_LATENCY):
        raise ControlError(400, f"latency must be between 0 and {_MAX_LATENCY:g} seconds")
    return value


def _notifications(body: bytes) -> list[bytes]:
    stripped = body.strip()
    if stripped.startswith(b"["):
        raws = [bytes(raw) for raw in decode_body(_RAW_LIST, stripped)]
    else:
        raws = [bytes(decode_body(_RAW_ONE, stripped))]
    if not all(raw.startswith(b"{") for raw in raws):
        raise ControlError(400, "every notification must be a JSON object (use /raw otherwise)")
    return raws


def _add_instance(state: FakeGreenApi, body: bytes) -> bytes:
    spec = decode_body(_INSTANCE_SPEC, body)
    id = _instance_id(spec.id)
    if not spec.token or "/" in spec.token:
        raise ControlError(400, "token must be a non-empty string without '/'")
    latency = _latency(spec.latency, allow_none=True)
    try:
        created = state.add_instance(id, spec.token, latency)
    except ValueError as exc:
        raise ControlError(409, str(exc)) from None
    return _ENCODER.encode(_Created(id=id, created=created))


def _instance_route(state: FakeGreenApi, method: str, id: str, action: str, body: bytes) -> bytes:
    state.instance(id)  # 404 before looking at the body
    match method, action:
        case "GET", "":
            return _ENCODER.encode(state.instance_stats(id))
        case "POST", "notifications":
            ids = state.enqueue_many(id, _notifications(body))
            return _ENCODER.encode(_Enqueued(enqueued=len(ids), receiptIds=ids))
        case "POST", "raw":
            ids = [state.enqueue(id, body)]
            return _ENCODER.encode(_Enqueued(enqueued=1, receiptIds=ids))
        case "PUT", "faults":
            decoded = decode_body(_FAULTS, body)
            faults = decoded if isinstance(decoded, list) else [decoded]
            for fault in faults:
                state.set_fault(id, fault)
            return _ENCODER.encode({"faults": len(state.instance(id).faults)})
        case "DELETE", "faults":
            return _ENCODER.encode({"cleared": state.clear_faults(id)})
        case "PUT", "lose":
            count = decode_body(_LOSE_SPEC, body).count
            if count < 0:
                raise ControlError(400, "count must not be negative")
            state.lose(id, count)
            return _ENCODER.encode({"lose": count})
        case "GET", "lost":
            return _ENCODER.encode({"lost": state.instance(id).journal.lost})
        case "PUT", "latency":
            latency = _latency(decode_body(_LATENCY_SPEC, body).latency, allow_none=True)
            state.set_latency(id, latency)
            return _ENCODER.encode({"latency": latency})
    if action in ("", "notifications", "raw", "faults", "latency", "lose", "lost"):
        raise ControlError(405, "Method Not Allowed")
    raise ControlError(404, "Not Found")


def _route(state: FakeGreenApi, method: str, parts: list[str], body: bytes) -> bytes:
    match parts:
        case ["instances"]:
            if method != "POST":
                raise ControlError(405, "Method Not Allowed")
            return _add_instance(state, body)
        case ["instances", id]:
            return _instance_route(state, method, id, "", body)
        case ["instances", id, action]:
            return _instance_route(state, method, id, action, body)
        case ["latency"]:
            if method != "PUT":
                raise ControlError(405, "Method Not Allowed")
            latency = _latency(decode_body(_LATENCY_SPEC, body).latency, allow_none=False)
            assert latency is not None
            state.latency = latency
            return _ENCODER.encode({"latency": latency})
        case ["stats"]:
            if method != "GET":
                raise ControlError(405, "Method Not Allowed")
            return _ENCODER.encode(state.stats())
        case ["reset"]:
            if method != "POST":
                raise ControlError(405, "Method Not Allowed")
            state.reset()
            return _ENCODER.encode({"reset": True})
    raise ControlError(404, "Not Found")


def handle_control(state: FakeGreenApi, method: str, path: str, body: bytes) -> tuple[int, bytes]:
    """Answer one control request; ``path`` starts with ``/_control``."""
    parts = path.removeprefix("/_control").strip("/").split("/")
    try:
        return 200, _route(state, method, parts, body)
    except UnknownInstanceError as exc:
        status, message = 404, f"unknown instance {exc.args[0]}"
    except ControlError as exc:
        status, message = exc.status, exc.message
    return status, _ENCODER.encode({"message": message})
