"""Chat API (chat-api.com / 1msg.io) webhooks: one POST carries arrays of items (pure).

`{"instanceId": "…", "messages": […], "ack": […], "chatUpdate": […]}` is split into one AMQP
message per item, routed by the array it came from — `message`, `ack`, `chatUpdate`, `status`
— with the body `{"instanceId": …, "<kind>": <item>}` built from the original bytes. A body
with none of those arrays is an instance-status notification: one `status` message, unchanged.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec
from msgspec import Struct

from bridge.errors import PayloadError
from bridge.providers import DECODE_ERRORS
from bridge.routing import Classified

PROVIDER = "chatapi"
#: top-level array → routing key
KINDS = {"messages": "message", "ack": "ack", "chatUpdate": "chatUpdate", "statuses": "status"}
KNOWN_EVENTS = frozenset({"message", "ack", "chatUpdate", "status"})


class Item(NamedTuple):
    kind: str
    body: bytes
    classified: Classified


class _Message(Struct):
    id: str | None = None
    chatId: str | None = None
    time: Any = None
    status: str | None = None


class _Chat(Struct):
    id: str | None = None


class _ChatUpdate(Struct):
    new: _Chat | None = None
    old: _Chat | None = None


_top = msgspec.json.Decoder(dict[str, msgspec.Raw])
_message = msgspec.json.Decoder(_Message)
_update = msgspec.json.Decoder(_ChatUpdate)
_list = msgspec.json.Decoder(list[msgspec.Raw])


def instance_of(body: bytes) -> tuple[dict[str, msgspec.Raw], str]:
    """The top-level members and `instanceId` (as text); `PayloadError` if unreadable."""
    try:
        top = _top.decode(body)
        raw = top.get("instanceId")
        value = None if raw is None else msgspec.json.decode(raw)
    except DECODE_ERRORS as exc:
        raise PayloadError(f"undecodable Chat API webhook: {exc}") from None
    if raw is None:
        raise PayloadError("instanceId missing")
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise PayloadError("instanceId is not a string or number")
    return top, str(value)


def split(top: dict[str, msgspec.Raw], body: bytes, instance: str) -> list[Item]:
    """One item per array element; a body without arrays is one `status` item."""
    instance_raw = bytes(top["instanceId"])
    prefix = b'{"instanceId":' + instance_raw + b","
    items: list[Item] = []
    for name, raw in top.items():
        if name == "instanceId":
            continue
        data = bytes(raw)
        if not data.lstrip().startswith(b"["):
            continue
        kind = KINDS.get(name, name)
        try:
            elements = _list.decode(data)
        except DECODE_ERRORS as exc:
            raise PayloadError(f"undecodable Chat API array {name[:100]!r}: {exc}") from None
        for element in elements:
            item = bytes(element)
            # the member name as JSON text: a key may hold quotes or control characters
            wrapped = prefix + msgspec.json.encode(kind) + b":" + item + b"}"
            items.append(Item(kind, wrapped, _classify(kind, item, instance)))
    if not items:
        if set(top) == {"instanceId"}:
            raise PayloadError("no messages, ack, chatUpdate or status in the body")
        items.append(Item("status", body, Classified(event="status", message_key=None)))
    return items


def _classify(kind: str, item: bytes, instance: str) -> Classified:
    known = kind in KNOWN_EVENTS
    if kind in ("message", "ack"):
        try:
            m = _message.decode(item)
        except DECODE_ERRORS:
            return Classified(event=kind, known=known)
        key = None
        if m.id:
            key = f"{instance}:{m.id}" + (f":{m.status}" if kind == "ack" and m.status else "")
        ts = (
            int(m.time)
            if isinstance(m.time, int | float) and not isinstance(m.time, bool)
            else None
        )
        return Classified(event=kind, timestamp=ts, chat_id=m.chatId, message_key=key, known=known)
    if kind == "chatUpdate":
        try:
            u = _update.decode(item)
        except DECODE_ERRORS:
            return Classified(event=kind, known=known)
        chat = (u.new and u.new.id) or (u.old and u.old.id) or None
        return Classified(event=kind, chat_id=chat, known=known)
    return Classified(event=kind, known=known)
