"""WAHA (devlikeapro/waha) webhooks: one event per POST, signed with the session's HMAC key (pure).

    {"id": "evt_…", "timestamp": <ms>, "event": "message", "session": "default",
     "metadata": {…}, "me": {…}, "payload": {…}, "engine": "NOWEB", "environment": {…}}

Instance = `session`; routing key = `event` exactly as WAHA names it; the body is republished
unchanged. The envelope's `id` (one per event, the same on every retry) travels as `x-event-id`.
The provider message key is `<session>:<event>:<payload.id>` for message events (plus the ack
level for `message.ack*`: one event per level). The signature (`X-Webhook-Hmac`, lowercase hex
HMAC-SHA512 of the raw body, `X-Webhook-Hmac-Algorithm: sha512`) is checked by the ingest layer
with the source's `hmac_key`.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from msgspec import Struct

from bridge.errors import PayloadError
from bridge.providers.base import (
    DECODE_ERRORS,
    Adapter,
    Item,
    Parsed,
    SignatureScheme,
    text_id,
)
from bridge.routing import Classified

PROVIDER = "waha"

#: Every event WAHA documents (`WAHAEvents`, 2026.9); others are passed through, WARN once.
KNOWN_EVENTS = frozenset(
    {
        "session.status",
        "message",
        "message.any",
        "message.reaction",
        "message.ack",
        "message.ack.group",
        "message.waiting",
        "message.edited",
        "message.revoked",
        "chat.archive",
        "group.v2.join",
        "group.v2.leave",
        "group.v2.update",
        "group.v2.participants",
        "group.v2.participants.join-request",
        "presence.update",
        "poll.vote",
        "poll.vote.failed",
        "event.response",
        "event.response.failed",
        "label.upsert",
        "label.deleted",
        "label.chat.added",
        "label.chat.deleted",
        "call.received",
        "call.accepted",
        "call.rejected",
        "engine.event",
        "state.change",
        "group.join",
        "group.leave",
    }
)

SIGNATURE = SignatureScheme(
    header=b"x-webhook-hmac", digest="sha512", algorithm_header=b"x-webhook-hmac-algorithm"
)


class Envelope(Struct):
    """What routing needs; every field may be missing (older versions, odd engines)."""

    id: str | None = None
    timestamp: msgspec.Raw = msgspec.Raw(b"null")  # ms; read apart: any odd value is ignored
    event: str | None = None
    session: Any = None
    payload: msgspec.Raw = msgspec.Raw(b"null")


class Message(Struct):
    """The fields of a message-like payload the bridge keys on."""

    id: str | None = None
    timestamp: msgspec.Raw = msgspec.Raw(b"null")  # s
    from_: str | None = msgspec.field(default=None, name="from")
    to: str | None = None
    fromMe: bool | None = None
    ackName: str | None = None
    ack: msgspec.Raw = msgspec.Raw(b"null")


_envelope = msgspec.json.Decoder(Envelope)
_message = msgspec.json.Decoder(Message)


def parse(body: bytes) -> Parsed:
    """An envelope and the session it names; `PayloadError` when the body is not one."""
    try:
        envelope = _envelope.decode(body)
    except DECODE_ERRORS as exc:
        raise PayloadError(f"undecodable WAHA webhook: {exc}") from None
    return Parsed(
        text_id(envelope.session), lambda session: [Item(body, classify(envelope, session))]
    )


def classify(envelope: Envelope, session: str) -> Classified:
    event = envelope.event
    if not event:
        raise PayloadError("event missing")
    message = _message_of(envelope.payload) if event.startswith("message") else None
    key = chat = None
    timestamp = _seconds(_number(envelope.timestamp), 1000)
    if message is not None:
        chat = message.to if message.fromMe else message.from_
        if message.id:
            ack = event.startswith("message.ack")
            level = (message.ackName or _text(_number(message.ack))) if ack else None
            key = ":".join(p for p in (session, event, message.id, level) if p)
        timestamp = _seconds(_number(message.timestamp), 1) or timestamp
    headers = (("x-event-id", envelope.id),) if envelope.id else ()
    return Classified(
        event=event,
        timestamp=timestamp,
        chat_id=chat,
        message_key=key,
        known=event in KNOWN_EVENTS,
        headers=headers,
    )


def _message_of(raw: msgspec.Raw) -> Message | None:
    text = bytes(raw).lstrip()
    if not text.startswith(b"{"):
        return None
    try:
        return _message.decode(text)
    except DECODE_ERRORS:
        return None  # a payload of another shape: nothing to key on


def _number(raw: msgspec.Raw) -> Any:
    try:
        return msgspec.json.decode(raw)
    except DECODE_ERRORS:
        return None  # beyond a float's range


def _seconds(value: Any, per_second: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value // per_second)


def _text(value: Any) -> str | None:
    return None if value is None or isinstance(value, bool) else str(value)


_SESSION_NAME = re.compile(r"[A-Za-z0-9_-]{1,54}")


def check_instance(session: str) -> str | None:
    if _SESSION_NAME.fullmatch(session):
        return None
    return "a WAHA session name is 1-54 letters, digits, '_' or '-'"


ADAPTER = Adapter(
    name=PROVIDER,
    known_events=KNOWN_EVENTS,
    parse=parse,
    signature=SIGNATURE,
    check_instance=check_instance,
)
