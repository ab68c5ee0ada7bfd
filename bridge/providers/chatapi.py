"""Chat API (chat-api.com / 1msg.io) webhooks: one POST carries arrays of items (pure).

`{"instanceId": "…", "messages": […], "ack": […], "chatUpdate": […]}` is split into one AMQP
message per item, routed by the array it came from — `message`, `ack`, `chatUpdate`, `status`
— with the body `{"instanceId": …, "<kind>": <item>}` built from the original bytes. A body
with none of those arrays is an instance-status notification: one `status` message, unchanged.

1msg bodies name the instance `channelId`; their items keep that member as it was sent. A body
that names no instance (Chat API's documentation examples of `ack` and `chatUpdate`) belongs to
the source its credentials identify, and its items are given `"instanceId": "<that instance>"`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec
from msgspec import Struct

from bridge.errors import PayloadError
from bridge.providers.base import DECODE_ERRORS, Adapter, Parsed, text_id
from bridge.providers.base import Item as ProviderItem
from bridge.routing import Classified

PROVIDER = "chatapi"
#: top-level array → routing key
KINDS = {"messages": "message", "ack": "ack", "chatUpdate": "chatUpdate", "statuses": "status"}
KNOWN_EVENTS = frozenset({"message", "ack", "chatUpdate", "status"})
#: The member that names the instance, in order: Chat API's, then 1msg's.
INSTANCE_KEYS = ("instanceId", "channelId")


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


def parse(body: bytes) -> Parsed:
    """The top-level members and the instance they name (`None`: none); `PayloadError` if the
    body is not an object or names its instance with something that is not an id."""
    top = _members(body)
    instance = _named(top)
    return Parsed(
        instance,
        lambda owner: [ProviderItem(i.body, i.classified) for i in split(top, body, owner)],
    )


def instance_of(body: bytes) -> tuple[dict[str, msgspec.Raw], str]:
    """The top-level members and the instance the body names; `PayloadError` if it names none."""
    top = _members(body)
    instance = _named(top)
    if instance is None:
        raise PayloadError("instanceId missing")
    return top, instance


def _members(body: bytes) -> dict[str, msgspec.Raw]:
    try:
        top: dict[str, msgspec.Raw] = _top.decode(body)
    except DECODE_ERRORS as exc:
        raise PayloadError(f"undecodable Chat API webhook: {exc}") from None
    return top


def _named(top: dict[str, msgspec.Raw]) -> str | None:
    for key in INSTANCE_KEYS:
        raw = top.get(key)
        if raw is None:
            continue
        try:
            value = msgspec.json.decode(raw)
        except DECODE_ERRORS as exc:
            raise PayloadError(f"undecodable {key}: {exc}") from None
        instance = text_id(value)
        if instance is None:
            raise PayloadError(f"{key} is not a string or number")
        return instance
    return None


def split(top: dict[str, msgspec.Raw], body: bytes, instance: str) -> list[Item]:
    """One item per array element; a body without arrays is one `status` item."""
    named = next((key for key in INSTANCE_KEYS if key in top), None)
    if named is None:
        prefix = b'{"instanceId":' + msgspec.json.encode(instance) + b","
    else:
        prefix = b"{" + msgspec.json.encode(named) + b":" + bytes(top[named]) + b","
    items: list[Item] = []
    for name, raw in top.items():
        if name == named:
            continue
        data = bytes(raw)
        if not data.lstrip().startswith(b"["):
            continue
        kind = KINDS.get(name, name)
        # cannot fail: these bytes were read (syntax, depth) as part of the top-level object,
        # and a list of Raw elements reads nothing more of them
        for element in _list.decode(data):
            item = bytes(element)
            # the member name as JSON text: a key may hold quotes or control characters
            wrapped = prefix + msgspec.json.encode(kind) + b":" + item + b"}"
            items.append(Item(kind, wrapped, _classify(kind, item, instance)))
    if not items:
        if not set(top) - {named}:
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


ADAPTER = Adapter(name=PROVIDER, known_events=KNOWN_EVENTS, parse=parse, query_token=True)
