"""Evolution API webhooks: the `{event, instance, data, …}` envelope, v1 and v2 (pure).

Routing key = `event` (`messages.upsert`, `connection.update`, …). `apikey` (an instance token)
and `api_key` (the global key, on `error` webhooks) are removed from the body before it is
republished. `date_time` is the sender's local time written as if it were UTC, so the event time
comes from `data.messageTimestamp` when there is one, never from `date_time`.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Struct

from bridge.errors import PayloadError
from bridge.providers.base import DECODE_ERRORS, Adapter, Item, Parsed
from bridge.routing import Classified

PROVIDER = "evolution"
SECRET_FIELDS = ("apikey", "api_key")

KNOWN_EVENTS = frozenset(
    {
        "application.startup",
        "qrcode.updated",
        "connection.update",
        "status.instance",
        "messages.set",
        "messages.upsert",
        "messages.edited",
        "messages.update",
        "messages.delete",
        "messaging-history.set",
        "send.message",
        "send.message.update",
        "contacts.set",
        "contacts.upsert",
        "contacts.update",
        "presence.update",
        "chats.set",
        "chats.upsert",
        "chats.update",
        "chats.delete",
        "groups.upsert",
        "groups.update",
        "group-participants.update",
        "labels.edit",
        "labels.association",
        "call",
        "typebot.start",
        "typebot.change-status",
        "instance.create",
        "instance.delete",
        "remove.instance",
        "logout.instance",
        "new.jwt",
        "chama-ai.action",
        "error",
    }
)


class Head(Struct):
    """What routing needs: tolerant of every field's absence and of extra top-level keys
    (Evolution 2.4 spreads `isLatest`, `progress`, … into the envelope)."""

    event: str | None = None
    instance: str | None = None
    data: msgspec.Raw = msgspec.Raw(b"null")


class Key(Struct):
    id: str | None = None
    remoteJid: str | None = None


class Data(Struct):
    key: Key | None = None
    keyId: str | None = None
    remoteJid: str | None = None
    status: str | None = None
    messageTimestamp: Any = None


_head = msgspec.json.Decoder(Head)
_data = msgspec.json.Decoder(Data)
_any = msgspec.json.Decoder()
_encode = msgspec.json.Encoder().encode


def read_head(body: bytes) -> Head:
    """Event and instance of an envelope; `PayloadError` when the body is not one."""
    try:
        return _head.decode(body)
    except DECODE_ERRORS as exc:
        raise PayloadError(f"undecodable Evolution webhook: {exc}") from None


def parse(body: bytes) -> Parsed:
    """An envelope and the instance it names; the global `error` webhook names none."""
    head = read_head(body)
    return Parsed(
        head.instance or None,
        lambda instance: [Item(strip_secrets(body), classify(head, instance))],
    )


def strip_secrets(body: bytes) -> bytes:
    """The body without top-level `apikey`/`api_key`; unchanged bytes when it has neither.

    A key may be written with escapes (`"api\\u006bey"`), so a body with any `\\u` is decoded to
    look. A body that does not decode is returned unchanged: there is no field to remove.
    """
    if b'"apikey"' not in body and b'"api_key"' not in body and b"\\u" not in body:
        return body
    try:
        obj = _any.decode(body)
    except DECODE_ERRORS:
        return body
    if not isinstance(obj, dict) or not any(k in obj for k in SECRET_FIELDS):
        return body
    for key in SECRET_FIELDS:
        obj.pop(key, None)
    return _encode(obj)


def classify(head: Head, instance: str) -> Classified:
    event = head.event
    if not event:
        raise PayloadError("event missing")
    data = _data_of(head.data)
    ident = chat = status = None
    timestamp = None
    if data is not None:
        if data.key is not None:
            ident, chat = data.key.id, data.key.remoteJid
        ident = ident or data.keyId
        chat = chat or data.remoteJid
        status = data.status
        timestamp = _seconds(data.messageTimestamp)
    key = None
    if ident:
        key = ":".join(
            p for p in (instance, event, ident, status if event == "messages.update" else None) if p
        )
    return Classified(
        event=event, timestamp=timestamp, chat_id=chat, message_key=key, known=event in KNOWN_EVENTS
    )


def _data_of(raw: msgspec.Raw) -> Data | None:
    text = bytes(raw).lstrip()
    if not text.startswith(b"{"):
        return None  # arrays, null, strings: nothing to key on
    try:
        return _data.decode(text)
    except DECODE_ERRORS:
        return None


def _seconds(value: Any) -> int | None:
    """`messageTimestamp` as epoch seconds: a number, a numeric string, or a Long `{low, high}`."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        return int(value)  # str.isdigit() alone admits "²", which int() refuses
    if isinstance(value, dict) and isinstance(value.get("low"), int):
        high = value.get("high", 0)
        return (high << 32) + (value["low"] & 0xFFFFFFFF) if isinstance(high, int) else None
    return None


# -- event-name spellings ----------------------------------------------------------------------
# An event has three spellings: the config name in a webhook's `events[]` (`MESSAGES_UPSERT`),
# the wire name in the envelope (`messages.upsert`) and the by-events URL suffix
# (`/messages-upsert`). `bridge configure` and `bridge simulate` speak the first and the last.


def config_name(event: str) -> str:
    """`messages.upsert` -> `MESSAGES_UPSERT` (Evolution's own normalisation)."""
    return event.replace(".", "_").replace("-", "_").upper()


def url_suffix(event: str) -> str:
    """`messages.upsert` -> `messages-upsert` (the by-events path segment)."""
    return config_name(event).replace("_", "-").lower()


ADAPTER = Adapter(
    name=PROVIDER,
    known_events=KNOWN_EVENTS,
    parse=parse,
    clean=strip_secrets,
    query_token=True,
)
