"""WAHA's webhook wire format, as `bridge simulate`, `bridge configure` and the fake send it.

A WAHA delivery is one POST per event: the body is ``JSON.stringify(envelope)`` (compact, raw
UTF-8), the headers ``Content-Type``, ``User-Agent: WAHA/<version>``, ``X-Webhook-Request-Id``
(npm ``uniqid()``, the same on every retry of one delivery), ``X-Webhook-Timestamp`` (the
envelope's ``timestamp`` in ms, else the send time) and, when the webhook has an HMAC key,
``X-Webhook-Hmac`` (lowercase hex HMAC-SHA512 of the body bytes, keyed with the key's UTF-8
bytes) with ``X-Webhook-Hmac-Algorithm: sha512``.

Sessions carry their webhooks in ``config.webhooks[]`` = ``{url, events, hmac: {key},
retries: {policy, delaySeconds, attempts}, customHeaders: [{name, value}]}``;
:func:`merge_webhook` puts the bridge's entry into such a list.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from collections.abc import Mapping
from typing import Any, Final

import msgspec

__all__ = [
    "DEFAULT_EVENTS",
    "HMAC_ALGORITHM",
    "POLICIES",
    "USER_AGENT",
    "VERSION",
    "compact",
    "event_id",
    "masked_webhooks",
    "merge_webhook",
    "request_id",
    "sign",
    "stringify",
    "webhook_entry",
    "webhook_headers",
]

VERSION: Final = "2026.9.1"
USER_AGENT: Final = f"WAHA/{VERSION}"
HMAC_ALGORITHM: Final = "sha512"
POLICIES: Final = ("constant", "linear", "exponential")
#: What `bridge configure waha` subscribes to: incoming messages and what happens to them
#: later (reactions, delivery/read acks, edits, deletions), and the session's health. Not
#: `message.any`: next to `message` it delivers every incoming message twice (WAHA issue
#: #1384) and its `fromMe` is unreliable on NOWEB (#1534); ask for it to get your own sends.
DEFAULT_EVENTS: Final = (
    "message",
    "message.reaction",
    "message.ack",
    "message.edited",
    "message.revoked",
    "session.status",
)
_MASK: Final = "***"
_CROCKFORD: Final = "0123456789abcdefghjkmnpqrstvwxyz"
_BASE36: Final = "0123456789abcdefghijklmnopqrstuvwxyz"


def sign(body: bytes, key: str) -> str:
    """``X-Webhook-Hmac``: lowercase hex HMAC-SHA512 of the exact body bytes."""
    return hmac.new(key.encode(), body, hashlib.sha512).hexdigest()


def stringify(value: object) -> bytes:
    """``JSON.stringify``: compact, non-ASCII as raw UTF-8, keys in insertion order."""
    return msgspec.json.encode(value)


def compact(raw: bytes) -> bytes:
    """The same JSON without insignificant whitespace; every other byte kept."""
    return msgspec.json.format(raw, indent=-1)


def _base(number: int, alphabet: str, width: int = 0) -> str:
    digits: list[str] = []
    while number or len(digits) < max(width, 1):
        number, digit = divmod(number, len(alphabet))
        digits.append(alphabet[digit])
    return "".join(reversed(digits))


def event_id(now_ms: int | None = None) -> str:
    """``evt_`` + a lowercase ULID: 10 characters of milliseconds, 16 random ones."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return "evt_" + _base(ms, _CROCKFORD, 10) + _base(secrets.randbits(80), _CROCKFORD, 16)


class _UniqId:
    """npm ``uniqid()``: a process prefix and the milliseconds in base 36, never repeated
    (a second id within one millisecond takes the next one)."""

    def __init__(self) -> None:
        self._prefix = _base(os.getpid(), _BASE36)
        self._last = 0
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            self._last = max(int(time.time() * 1000), self._last + 1)
            return self._prefix + _base(self._last, _BASE36)


request_id: Final = _UniqId()

_TIMESTAMP: Final = msgspec.json.Decoder(dict[str, msgspec.Raw])


def _timestamp(body: bytes) -> str:
    try:
        raw = _TIMESTAMP.decode(body).get("timestamp")
    except (msgspec.DecodeError, msgspec.ValidationError):
        raw = None
    text = bytes(raw).decode() if raw is not None else ""
    return text if text.isdigit() else str(int(time.time() * 1000))


def webhook_headers(
    body: bytes,
    *,
    key: str | None,
    request: str | None = None,
    custom: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The headers of one delivery of ``body``; WAHA's own win over a custom one of the same
    name. ``request`` is the delivery's ``X-Webhook-Request-Id`` (a new one when left out)."""
    own = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/plain, */*",
        "User-Agent": USER_AGENT,
        "X-Webhook-Request-Id": request or request_id(),
        "X-Webhook-Timestamp": _timestamp(body),
    }
    if key:
        own["X-Webhook-Hmac"] = sign(body, key)
        own["X-Webhook-Hmac-Algorithm"] = HMAC_ALGORITHM
    taken = {name.lower() for name in own}
    headers = {k: v for k, v in (custom or {}).items() if k.lower() not in taken}
    headers.update(own)
    return headers


def webhook_entry(
    url: str,
    *,
    events: list[str],
    key: str,
    policy: str,
    delay: float,
    attempts: int,
) -> dict[str, Any]:
    """One ``config.webhooks[]`` item (no ``hmac`` without a key)."""
    entry: dict[str, Any] = {"url": url, "events": events}
    if key:
        entry["hmac"] = {"key": key}
    delay_seconds: float = int(delay) if float(delay).is_integer() else delay
    entry["retries"] = {"policy": policy, "delaySeconds": delay_seconds, "attempts": attempts}
    return entry


def merge_webhook(
    webhooks: list[Any], entry: dict[str, Any]
) -> tuple[list[Any], dict[str, Any] | None]:
    """``webhooks`` with ``entry`` in place of the items with its URL (the first keeps its
    position and its ``customHeaders``), or appended; also the item it replaced."""
    merged: list[Any] = []
    replaced: dict[str, Any] | None = None
    for item in webhooks:
        same = isinstance(item, dict) and item.get("url") == entry["url"]
        if not same:
            merged.append(item)
        elif replaced is None:
            replaced = item
            headers = item.get("customHeaders")
            merged.append({**entry, "customHeaders": headers} if headers else entry)
    if replaced is None:
        merged.append(entry)
    return merged, replaced


def masked_webhooks(webhooks: list[Any]) -> list[Any]:
    """The items with every HMAC key and custom header value masked."""
    shown: list[Any] = []
    for item in webhooks:
        if not isinstance(item, dict):
            shown.append(item)
            continue
        copy = dict(item)
        if isinstance(copy.get("hmac"), dict) and copy["hmac"].get("key"):
            copy["hmac"] = {**copy["hmac"], "key": _MASK}
        headers = copy.get("customHeaders")
        if isinstance(headers, list):
            copy["customHeaders"] = [
                {**h, "value": _MASK} if isinstance(h, dict) else h for h in headers
            ]
        shown.append(copy)
    return shown
