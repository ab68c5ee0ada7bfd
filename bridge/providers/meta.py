"""Meta's WhatsApp Cloud API webhooks: batches split into one Cloud API body per item (pure).

    {"object": "whatsapp_business_account",
     "entry": [{"id": "<WABA id>", "changes": [{"field": "messages", "value": {
         "messaging_product": "whatsapp", "metadata": {…, "phone_number_id": "…"},
         "contacts": […], "messages": […], "statuses": […], "errors": […]}}]}]}

A POST is split per `entry[]` (each names its WhatsApp Business Account, the instance), then
per change and, for the `messages` field, per item of `messages[]`, `statuses[]` and `errors[]`.
Each AMQP body is itself a valid Cloud API webhook body holding exactly that one item (and the
`contacts[]` entry of its user), spliced from the received bytes — so any Cloud API parser reads
it, and a redelivered POST yields the same bodies, hence the same `message_id`s. Routing key =
the item's array, or for other fields (`message_template_status_update`, `account_update`, …)
the field, with the whole change as the item. `X-Hub-Signature-256` (`sha256=` + hex HMAC-SHA256
of the raw body with the app secret) is checked by the ingest layer; `GET` answers Meta's
subscription check (`challenge()`).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs

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

PROVIDER = "meta"
#: The arrays of a `messages` change whose items become messages of their own.
ITEM_ARRAYS = ("messages", "statuses", "errors")
#: Every webhook field Meta documents for WhatsApp (overview and overrides, 2026).
FIELDS = frozenset(
    {
        "account_alerts",
        "account_review_update",
        "account_settings_update",
        "account_update",
        "automatic_events",
        "business_capability_update",
        "calls",
        "consumer_profile",
        "group_lifecycle_update",
        "group_participants_update",
        "group_settings_update",
        "group_status_update",
        "history",
        "message_echoes",
        "message_template_components_update",
        "message_template_quality_update",
        "message_template_status_update",
        "messages",
        "messaging_handovers",
        "partner_solutions",
        "payment_configuration_update",
        "phone_number_name_update",
        "phone_number_quality_update",
        "security",
        "smb_app_state_sync",
        "smb_message_echoes",
        "standby",
        "template_category_update",
        "user_preferences",
    }
)
KNOWN_EVENTS = FIELDS | frozenset(ITEM_ARRAYS)
SIGNATURE = SignatureScheme(header=b"x-hub-signature-256", digest="sha256", prefix=b"sha256=")
#: A challenge longer than this is not Meta's (it sends a short number).
MAX_CHALLENGE = 256


class _Body(Struct):
    object: msgspec.Raw = msgspec.Raw(b'"whatsapp_business_account"')
    entry: list[msgspec.Raw] = []


class _Entry(Struct):
    id: Any = None
    time: msgspec.Raw = msgspec.Raw(b"null")
    changes: list[msgspec.Raw] = []


class _Change(Struct):
    field: str | None = None
    value: msgspec.Raw = msgspec.Raw(b"null")


class _Item(Struct):
    id: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    from_user_id: str | None = None
    recipient_id: str | None = None
    status: str | None = None
    timestamp: Any = None


class _Contact(Struct):
    wa_id: str | None = None
    user_id: str | None = None


class _Metadata(Struct):
    phone_number_id: str | None = None


_body = msgspec.json.Decoder(_Body)
_entry = msgspec.json.Decoder(_Entry)
_change = msgspec.json.Decoder(_Change)
_members = msgspec.json.Decoder(dict[str, msgspec.Raw])
_list = msgspec.json.Decoder(list[msgspec.Raw])
_item = msgspec.json.Decoder(_Item)
_contact = msgspec.json.Decoder(_Contact)
_metadata = msgspec.json.Decoder(_Metadata)
_encode = msgspec.json.encode


def split(body: bytes) -> list[bytes]:
    """One body per `entry[]` (each may be another account's); the body itself when it has
    one entry or does not decode (`parse` says why)."""
    try:
        decoded = _body.decode(body)
    except DECODE_ERRORS:
        return [body]
    if len(decoded.entry) <= 1:
        return [body]
    head = b'{"object":' + bytes(decoded.object) + b',"entry":['
    return [head + bytes(entry) + b"]}" for entry in decoded.entry]


def parse(body: bytes) -> Parsed:
    """A body of one entry (see `split`) and the account it names."""
    try:
        decoded = _body.decode(body)
        if len(decoded.entry) != 1:
            raise PayloadError(f"{len(decoded.entry)} entries in one body, one expected")
        entry = _entry.decode(decoded.entry[0])
    except DECODE_ERRORS as exc:
        raise PayloadError(f"undecodable Cloud API webhook: {exc}") from None
    obj = bytes(decoded.object)
    return Parsed(text_id(entry.id), lambda _account: _items(obj, entry))


def _items(obj: bytes, entry: _Entry) -> list[Item]:
    if not entry.changes:
        raise PayloadError("no changes in the entry")
    head = b'{"object":' + obj + b',"entry":[{"id":' + _encode(entry.id)
    if bytes(entry.time) != b"null":
        head += b',"time":' + bytes(entry.time)
    head += b',"changes":['
    entry_time = _seconds(_number(entry.time))
    items: list[Item] = []
    for raw in entry.changes:
        try:
            change = _change.decode(raw)
        except DECODE_ERRORS as exc:
            raise PayloadError(f"undecodable change: {exc}") from None
        if not change.field:
            raise PayloadError("a change without its field")
        split_items = _split_change(head, change) if change.field == "messages" else []
        if not split_items:  # another field, or a messages change without items: whole
            body = head + bytes(raw) + b"]}]}"
            classified = Classified(
                event=change.field, timestamp=entry_time, known=change.field in FIELDS
            )
            split_items = [Item(body, classified)]
        items += split_items
    return items


def _split_change(head: bytes, change: _Change) -> list[Item]:
    """One item per element of the change's item arrays, each in a value of its own."""
    try:
        value = _members.decode(change.value)
    except DECODE_ERRORS:
        return []  # not an object: the change travels whole
    contacts = _contacts(value.get("contacts"))
    phone = _phone_number_id(value.get("metadata"))
    base = b",".join(
        _encode(name) + b":" + bytes(raw)
        for name, raw in value.items()
        if name not in ITEM_ARRAYS and name != "contacts"
    )
    items: list[Item] = []
    for array in ITEM_ARRAYS:
        raw_array = value.get(array)
        if raw_array is None or not bytes(raw_array).lstrip().startswith(b"["):
            continue
        for element in _list.decode(raw_array):
            element_bytes = bytes(element)
            fields = _fields(element_bytes)
            parts = [base] if base else []
            contact = _contact_for(contacts, fields)
            if contact is not None:
                parts.append(b'"contacts":[' + contact + b"]")
            parts.append(_encode(array) + b":[" + element_bytes + b"]")
            body = head + b'{"value":{' + b",".join(parts) + b'},"field":"messages"}]}]}'
            items.append(Item(body, _classify(array, fields, phone)))
    return items


def _classify(array: str, item: _Item | None, phone: str | None) -> Classified:
    key = chat = None
    timestamp = None
    if item is not None:
        timestamp = _seconds(item.timestamp)
        if array == "messages":
            key, chat = item.id, item.from_ or item.from_user_id
        elif array == "statuses":
            key = f"{item.id}:{item.status}" if item.id and item.status else item.id
            chat = item.recipient_id
    headers = (("x-phone-number-id", phone),) if phone else ()
    return Classified(
        event=array, timestamp=timestamp, chat_id=chat, message_key=key, headers=headers
    )


def _fields(element: bytes) -> _Item | None:
    if not element.lstrip().startswith(b"{"):
        return None
    try:
        return _item.decode(element)
    except DECODE_ERRORS:
        return None


def _contacts(raw: msgspec.Raw | None) -> list[tuple[bytes, _Contact | None]]:
    if raw is None or not bytes(raw).lstrip().startswith(b"["):
        return []
    out: list[tuple[bytes, _Contact | None]] = []
    for element in _list.decode(raw):
        data = bytes(element)
        try:
            out.append((data, _contact.decode(data)))
        except DECODE_ERRORS:
            out.append((data, None))
    return out


def _contact_for(contacts: list[tuple[bytes, _Contact | None]], item: _Item | None) -> bytes | None:
    """The `contacts[]` entry of the item's user; the only one when the item names none."""
    user = (item.from_ or item.recipient_id) if item is not None else None
    alias = item.from_user_id if item is not None else None
    for data, contact in contacts:
        if contact is not None and user is not None and user in (contact.wa_id, contact.user_id):
            return data
        if contact is not None and alias is not None and alias == contact.user_id:
            return data
    return contacts[0][0] if len(contacts) == 1 else None


def _phone_number_id(raw: msgspec.Raw | None) -> str | None:
    if raw is None:
        return None
    try:
        return _metadata.decode(raw).phone_number_id
    except DECODE_ERRORS:
        return None


def _number(raw: msgspec.Raw) -> Any:
    try:
        return msgspec.json.decode(raw)
    except DECODE_ERRORS:
        return None


def _seconds(value: Any) -> int | None:
    """Cloud API times: unix seconds as a string (`"1697043223"`) or a number."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def challenge(query: bytes, tokens: Sequence[bytes]) -> bytes | None:
    """`hub.challenge` when `hub.mode=subscribe` and `hub.verify_token` is one of `tokens`."""
    params = parse_qs(query.decode("latin-1"), encoding="latin-1")
    mode = params.get("hub.mode", [""])[0]
    token = params.get("hub.verify_token", [""])[0].encode("latin-1")
    echo = params.get("hub.challenge", [""])[0].encode("latin-1")
    if mode != "subscribe" or not token or not echo or len(echo) > MAX_CHALLENGE:
        return None
    matched = False
    for expected in tokens:  # every one compared: the time says nothing of which matched
        matched |= hmac.compare_digest(token, expected)
    return echo if matched else None


def check_instance(account: str) -> str | None:
    return None if account.isdigit() else "a WhatsApp Business Account id is digits only"


ADAPTER = Adapter(
    name=PROVIDER,
    known_events=KNOWN_EVENTS,
    parse=parse,
    signature=SIGNATURE,
    split=split,
    challenge=challenge,
    check_instance=check_instance,
)
