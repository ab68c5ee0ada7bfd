"""The AMQP message built from one notification (pure).

Body: the provider's bytes unchanged. Properties and headers as DESIGN "The AMQP message" says.
`message_id` is a digest of provider, instance and body bytes, so every redelivery of the same
notification carries the same id.

With `cloudevents=True` a notification also carries the CloudEvents RabbitMQ protocol binding's
headers in binary mode (`ce-specversion`, `ce-id`, `ce-source`, `ce-type`, `ce-time`,
`ce-subject`), all strings; the body and `content_type` stay the provider's JSON. Quarantined
bodies get none: they are not a notification and need not be JSON.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import NamedTuple
from urllib.parse import quote

from bridge import APP_ID
from bridge.routing import Classified

Headers = dict[str, str | int]

#: Ids taken from a payload are cut to this length in headers: all AMQP headers must fit one
#: frame, and a hostile id must not make a notification unpublishable (and so block its queue).
MAX_HEADER_CHARS = 512
#: AMQP carries `timestamp` as an unsigned 64-bit count of seconds, and clients read it into a
#: calendar date: a provider time outside 1970..9999 is left out rather than made unpublishable.
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z
#: Table integers are signed 64-bit; a larger receipt id travels as its decimal text.
_INT64 = range(-(2**63), 2**63)
#: The CloudEvents version of the `ce-` headers.
CE_SPECVERSION = "1.0"


class Outbound(NamedTuple):
    """Everything the publisher needs; no I/O objects."""

    exchange: str
    routing_key: str
    body: bytes
    message_id: str
    event: str
    timestamp: int | None
    headers: Headers
    provider: str
    instance: str


def message_id(provider: str, instance: str, body: bytes) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(provider.encode())
    digest.update(b"\x00")
    digest.update(instance.encode())
    digest.update(b"\x00")
    digest.update(body)
    return digest.hexdigest()


def _headers(
    provider: str, instance: str, ingest: str, received_at_ms: int, receipt_id: int | None
) -> Headers:
    headers: Headers = {
        "x-provider": provider,
        "x-instance": instance,
        "x-ingest": ingest,
        "x-received-at": received_at_ms,
    }
    if receipt_id is not None:
        headers["x-receipt-id"] = receipt_id if receipt_id in _INT64 else str(receipt_id)
    return headers


def rfc3339(*, seconds: int | None = None, ms: int = 0) -> str:
    """`seconds` (whole seconds) or else `ms` (epoch milliseconds) as an RFC 3339 UTC time."""
    if seconds is not None:
        return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
    moment = datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=ms % 1000 * 1000)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def cloudevents_headers(
    *, provider: str, instance: str, event: str, mid: str, time: str, subject: str | None
) -> Headers:
    """The binary-mode attributes of the CloudEvents RabbitMQ binding, as `ce-` headers."""
    headers: Headers = {
        "ce-specversion": CE_SPECVERSION,
        "ce-id": mid,
        # a URI-reference: an instance name is one path segment, escaped where it must be
        "ce-source": f"/{provider}/{quote(instance, safe='')}",
        "ce-type": event,
        "ce-time": time,
    }
    if subject:
        headers["ce-subject"] = subject
    return headers


def build(
    *,
    exchange: str,
    routing_key: str,
    provider: str,
    instance: str,
    ingest: str,
    body: bytes,
    classified: Classified,
    received_at_ms: int,
    receipt_id: int | None = None,
    cloudevents: bool = False,
) -> Outbound:
    """The message of one classified notification; `cloudevents`: with the `ce-` headers."""
    headers = _headers(provider, instance, ingest, received_at_ms, receipt_id)
    headers["x-event"] = classified.event
    timestamp = classified.timestamp
    if timestamp is not None and not 0 <= timestamp <= MAX_TIMESTAMP:
        timestamp = None
    chat = classified.chat_id[:MAX_HEADER_CHARS] if classified.chat_id else None
    if chat:
        headers["x-chat-id"] = chat
    if classified.message_key:
        headers["x-message-key"] = classified.message_key[:MAX_HEADER_CHARS]
    for name, value in classified.headers:
        headers[name] = value[:MAX_HEADER_CHARS]
    mid = message_id(provider, instance, body)
    if cloudevents:
        # the provider's event time when it has one, else when the bridge received it
        at = rfc3339(seconds=timestamp, ms=received_at_ms)
        headers |= cloudevents_headers(
            provider=provider,
            instance=instance,
            event=classified.event,
            mid=mid,
            time=at,
            subject=chat,
        )
    return Outbound(
        exchange=exchange,
        routing_key=routing_key,
        body=body,
        message_id=mid,
        event=classified.event,
        timestamp=timestamp,
        headers=headers,
        provider=provider,
        instance=instance,
    )


def quarantine(
    *,
    exchange: str,
    provider: str,
    instance: str,
    ingest: str,
    body: bytes,
    error: str,
    received_at_ms: int,
    receipt_id: int | None = None,
) -> Outbound:
    """A raw body that did not decode, for the invalid exchange, with `x-error`."""
    headers = _headers(provider, instance, ingest, received_at_ms, receipt_id)
    headers["x-error"] = error[:1000]
    return Outbound(
        exchange=exchange,
        routing_key="invalid",
        body=body,
        message_id=message_id(provider, instance, body),
        event="invalid",
        timestamp=None,
        headers=headers,
        provider=provider,
        instance=instance,
    )


__all__ = [
    "APP_ID",
    "Headers",
    "Outbound",
    "build",
    "cloudevents_headers",
    "message_id",
    "quarantine",
    "rfc3339",
]
