"""GREEN-API: decode and classify notifications and the receive/delete responses (pure).

Structs are tolerant: GREEN-API adds fields, so unknown ones are ignored and optional ones
default. Only `typeWebhook` is required of a notification.
"""

from __future__ import annotations

import re

import msgspec
from msgspec import Struct

from bridge.errors import (
    PayloadError,
    PermanentProviderError,
    ProviderError,
    SuspendedProviderError,
    TransientProviderError,
)
from bridge.providers.base import DECODE_ERRORS, Adapter, Item, Parsed, text_id
from bridge.routing import Classified

PROVIDER = "greenapi"

#: Every `typeWebhook` GREEN-API documents; others are passed through and logged once.
KNOWN_EVENTS = frozenset(
    {
        "incomingMessageReceived",
        "outgoingMessageReceived",
        "outgoingAPIMessageReceived",
        "outgoingMessageStatus",
        "stateInstanceChanged",
        "statusInstanceChanged",
        "deviceInfo",
        "incomingCall",
        "incomingBlock",
        "quotaExceeded",
        "avatarInfo",
    }
)


class InstanceData(Struct):
    idInstance: int | str | None = None


class SenderData(Struct):
    chatId: str | None = None


class Notification(Struct):
    typeWebhook: str
    instanceData: InstanceData | None = None
    timestamp: int | float | None = None
    idMessage: str | None = None
    senderData: SenderData | None = None
    chatId: str | None = None
    status: str | None = None


class _Head(Struct):
    instanceData: InstanceData | None = None


class Received(Struct):
    """A `receiveNotification` answer; `body` keeps the notification's exact bytes."""

    receiptId: int
    body: msgspec.Raw = msgspec.Raw(b"")


class _ReceiptOnly(Struct):
    receiptId: int


class Deleted(Struct):
    result: bool
    reason: str | None = None


_notification = msgspec.json.Decoder(Notification)
_head = msgspec.json.Decoder(_Head)
_received = msgspec.json.Decoder(Received | None)
_receipt_only = msgspec.json.Decoder(_ReceiptOnly)
_deleted = msgspec.json.Decoder(Deleted)


_LEADING_RECEIPT = re.compile(rb'\A\s*\{\s*"receiptId"\s*:\s*(\d{1,18})\s*,')


class MalformedResponse(ValueError):
    """A provider answer that is not the documented shape; `receipt_id` if it could be read."""

    def __init__(self, message: str, receipt_id: int | None = None) -> None:
        super().__init__(message)
        self.receipt_id = receipt_id


def decode_received(data: bytes) -> Received | None:
    """Decode a `receiveNotification` answer. `None` means the queue was empty.

    An empty body counts as empty too (GREEN-API issue #1115). A body that is not the
    documented shape raises `MalformedResponse`, carrying the receiptId when one is readable
    so the caller can quarantine the answer and delete it.
    """
    if not data.strip():
        return None
    try:
        received: Received | None = _received.decode(data)
        return received
    except DECODE_ERRORS as exc:
        try:
            receipt_id: int | None = _receipt_only.decode(data).receiptId
        except DECODE_ERRORS:
            # Invalid JSON as a whole (issue #553): the receipt still leads the answer.
            match = _LEADING_RECEIPT.match(data)
            receipt_id = int(match[1]) if match else None
        raise MalformedResponse(f"receiveNotification answer: {exc}", receipt_id) from None


def decode_deleted(data: bytes) -> Deleted:
    try:
        return _deleted.decode(data)
    except DECODE_ERRORS as exc:
        raise MalformedResponse(f"deleteNotification answer: {exc}") from None


def parse(body: bytes) -> Parsed:
    """A notification and the instance its `instanceData` names; `PayloadError` if unreadable.

    A body without `typeWebhook` still names its instance when it can, so that it is
    quarantined under that instance's source.
    """
    try:
        note = _notification.decode(body)
    except DECODE_ERRORS as exc:
        reason = _payload_reason(exc)
        try:
            head = _head.decode(body)
        except DECODE_ERRORS:
            raise PayloadError(reason) from None

        def refuse(_instance: str) -> list[Item]:
            raise PayloadError(reason)

        return Parsed(_named(head.instanceData), refuse)
    return Parsed(
        _named(note.instanceData), lambda instance: [Item(body, _classified(note, instance))]
    )


def classify(body: bytes, instance: str) -> Classified:
    """Event type, times and keys of one notification; `PayloadError` if it has no event type."""
    try:
        note = _notification.decode(body)
    except DECODE_ERRORS as exc:
        raise PayloadError(_payload_reason(exc)) from None
    return _classified(note, instance)


def _named(data: InstanceData | None) -> str | None:
    return text_id(data.idInstance) if data is not None else None


def _classified(note: Notification, instance: str) -> Classified:
    event = note.typeWebhook
    if not event:
        raise PayloadError("typeWebhook is empty")
    chat_id = note.senderData.chatId if note.senderData is not None else note.chatId
    key: str | None = None
    if note.idMessage:
        parts = [instance, chat_id or "", note.idMessage]
        if note.status:
            parts.append(note.status)
        key = ":".join(parts)
    timestamp = int(note.timestamp) if note.timestamp is not None else None
    return Classified(
        event=event,
        timestamp=timestamp,
        chat_id=chat_id,
        message_key=key,
        known=event in KNOWN_EVENTS,
    )


def _payload_reason(exc: Exception) -> str:
    text = str(exc)
    if "missing required field `typeWebhook`" in text:
        return "typeWebhook missing"
    return f"undecodable notification: {text}"


#: What a 400 answer's text says → (the error class, its class name). Checked in order.
_BAD_REQUESTS: tuple[tuple[tuple[str, ...], type[ProviderError], str], ...] = (
    (("starting process",), TransientProviderError, "instance_starting"),
    (("not authorized",), SuspendedProviderError, "not_authorized"),
    (("expired",), PermanentProviderError, "instance_expired"),
    (("deleted",), PermanentProviderError, "instance_deleted"),
    (("validation", "bad request data", "unexpected token"), PermanentProviderError, "bad_request"),
)


def error_for_status(status: int, body: bytes) -> ProviderError:
    """Map a non-200 answer to the error class that says what to do next (reference §4)."""
    text = body[:500].decode("utf-8", "replace")
    if status == 400:
        lowered = text.lower()
        for needles, kind, error_class in _BAD_REQUESTS:
            if any(needle in lowered for needle in needles):
                return kind(f"400 {text}", error_class=error_class)
        return SuspendedProviderError(f"400 {text}", error_class="http_400")
    if status == 401:
        return PermanentProviderError(
            "401 Unauthorized: wrong apiTokenInstance", error_class="unauthorized"
        )
    if status == 403:
        return PermanentProviderError("403 Forbidden: wrong idInstance", error_class="forbidden")
    if status == 404:
        return PermanentProviderError("404 Not Found: check api_url", error_class="not_found")
    if status == 429:
        return TransientProviderError("429 Too Many Requests", error_class="rate_limited")
    if status == 466:
        return SuspendedProviderError(f"466 quota exceeded {text}", error_class="quota_exceeded")
    if status == 499 or status >= 500:
        return TransientProviderError(f"{status} {text[:200]}", error_class=f"http_{status}")
    return SuspendedProviderError(f"{status} {text[:200]}", error_class=f"http_{status}")


# -- instance settings -------------------------------------------------------------------------
#: The `"yes"`/`"no"` settings of `getSettings`/`setSettings`, in the documented order
#: (`bridge configure --enable/--disable` takes these names).
TOGGLES = (
    "markIncomingMessagesReaded",
    "markIncomingMessagesReadedOnReply",
    "outgoingWebhook",
    "outgoingMessageWebhook",
    "outgoingAPIMessageWebhook",
    "incomingWebhook",
    "deviceWebhook",
    "statusInstanceWebhook",
    "stateWebhook",
    "enableMessagesHistory",
    "keepOnlineStatus",
    "pollMessageWebhook",
    "incomingBlockWebhook",
    "incomingCallWebhook",
    "editedMessageWebhook",
    "deletedMessageWebhook",
)


def check_instance(instance: str) -> str | None:
    return None if instance.isdigit() else "a GREEN-API idInstance is digits only"


ADAPTER = Adapter(
    name=PROVIDER,
    known_events=KNOWN_EVENTS,
    parse=parse,
    path="instance",
    polls=True,
    check_instance=check_instance,
)
