"""Evolution's webhook schemas, envelope and delivery (retries), as in Evolution 2.3.6.

Event names come in three spellings: the config name in ``events[]`` (``MESSAGES_UPSERT``),
the wire name in the envelope (``messages.upsert``), and the by-events URL suffix
(``/messages-upsert``). The filter compares ``event.replace(/[.-]/g, '_').toUpperCase()``
with the configured names. A delivery retries up to ``max_attempts`` times with
``min(initial * 2^(n-1), max)`` ± jitter between attempts; 400/401/403/404/422 are final and
any 2xx is a success.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

import httpx
import msgspec

from bridge.providers.evolution import config_name, url_suffix
from fakeprovider.push import PushCounters, backoff_delay, post_once

__all__ = [
    "EVENTS",
    "Delivery",
    "EvolutionWebhook",
    "PushTarget",
    "RetryPolicy",
    "V1Webhook",
    "deliver",
    "envelope",
    "validate_v1",
    "validate_v2",
]

EVENTS: Final = (
    "APPLICATION_STARTUP",
    "QRCODE_UPDATED",
    "MESSAGES_SET",
    "MESSAGES_UPSERT",
    "MESSAGES_EDITED",
    "MESSAGES_UPDATE",
    "MESSAGES_DELETE",
    "SEND_MESSAGE",
    "SEND_MESSAGE_UPDATE",
    "CONTACTS_SET",
    "CONTACTS_UPSERT",
    "CONTACTS_UPDATE",
    "PRESENCE_UPDATE",
    "CHATS_SET",
    "CHATS_UPSERT",
    "CHATS_UPDATE",
    "CHATS_DELETE",
    "GROUPS_UPSERT",
    "GROUP_UPDATE",
    "GROUP_PARTICIPANTS_UPDATE",
    "CONNECTION_UPDATE",
    "LABELS_EDIT",
    "LABELS_ASSOCIATION",
    "CALL",
    "TYPEBOT_START",
    "TYPEBOT_CHANGE_STATUS",
    "REMOVE_INSTANCE",
    "LOGOUT_INSTANCE",
    "INSTANCE_CREATE",
    "INSTANCE_DELETE",
    "STATUS_INSTANCE",
)
_V1_EVENTS: Final = frozenset((*EVENTS, "NEW_JWT_TOKEN", "CHAMA_AI_ACTION"))
NON_RETRYABLE: Final = frozenset((400, 401, 403, 404, 422))
_AXIOS_HEADERS: Final = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/plain, */*",
    "User-Agent": "axios/1.7.9",
}
_ENCODER: Final = msgspec.json.Encoder()


class EvolutionWebhook(msgspec.Struct, frozen=True):
    """The v2 stored row (Prisma ``Webhook``), as ``/webhook/set`` and ``/webhook/find`` show."""

    id: str
    url: str
    headers: dict[str, str]
    enabled: bool
    events: list[str]
    webhookByEvents: bool
    webhookBase64: bool
    createdAt: str
    updatedAt: str
    instanceId: str


class V1Webhook(msgspec.Struct, frozen=True):
    """The v1 stored webhook (flat, no headers)."""

    url: str
    enabled: bool = True
    events: list[str] = []
    webhook_by_events: bool = False
    webhook_base64: bool = False


class _V2Spec(msgspec.Struct, frozen=True):
    enabled: bool
    url: str
    headers: dict[str, str] = {}
    byEvents: bool = False
    base64: bool = False
    events: list[str] = []

    def stored_events(self) -> list[str]:
        """``enabled: false`` stores no events; ``enabled`` with none stores all of them."""
        if not self.enabled:
            return []
        return list(self.events) if self.events else list(EVENTS)


class _V2Body(msgspec.Struct, frozen=True):
    webhook: _V2Spec


_KEYS: Final = msgspec.json.Decoder(dict[str, msgspec.Raw])
_V2: Final = msgspec.json.Decoder(_V2Body)
_V1: Final = msgspec.json.Decoder(V1Webhook)


def _schema_message(exc: msgspec.ValidationError, root: str) -> str:
    """msgspec's message in the words of Evolution's JSON-schema validator."""
    text = str(exc)
    detail, _, path = text.partition(" - at `$")
    where = root + path.rstrip("`")
    if detail.startswith("Object missing required field `"):
        return f'{where} requires property "{detail.split("`")[1]}"'
    return f"{where} {detail}"


def validate_v2(body: bytes) -> tuple[_V2Spec | None, list[str]]:
    """The nested v2 body, or the validator's messages (``[[...]]`` in the 400 answer)."""
    try:
        keys = _KEYS.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None, ["instance is not of a type(s) object"]
    if "webhook" not in keys:
        return None, ['instance requires property "webhook"']
    try:
        spec = _V2.decode(body).webhook
    except msgspec.ValidationError as exc:
        return None, [_schema_message(exc, "instance")]
    problems = [
        f"instance.webhook.events[{n}] is not one of enum values: {','.join(EVENTS)}"
        for n, name in enumerate(spec.events)
        if name not in EVENTS
    ]
    if not spec.url:
        problems.append('The "url" property cannot be empty')
    return (None, problems) if problems else (spec, [])


def validate_v1(body: bytes) -> tuple[V1Webhook | None, str]:
    """The flat v1 body, or the 400 message."""
    try:
        _KEYS.decode(body)
        hook = _V1.decode(body)
    except msgspec.ValidationError as exc:  # a DecodeError subclass: first
        return None, _schema_message(exc, "instance")
    except msgspec.DecodeError:
        return None, "instance is not of a type(s) object"
    scheme, sep, rest = hook.url.partition("://")
    if scheme not in ("http", "https") or not sep or not rest or rest[0] in "/?#":
        return None, 'Invalid "url" property'
    unknown = [name for name in hook.events if name not in _V1_EVENTS]
    if unknown:
        return None, f"instance.events[0] is not one of enum values: {','.join(EVENTS)}"
    return hook, ""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def webhook_jwt(secret: str, now: float | None = None) -> str:
    """Evolution's HS256 token for a ``jwt_key`` header: ``{iat, exp: iat+600, app, action}``."""
    iat = int(time.time() if now is None else now)
    head = _b64(b'{"alg":"HS256","typ":"JWT"}')
    claims = {"iat": iat, "exp": iat + 600, "app": "evolution", "action": "webhook"}
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(secret.encode(), f"{head}.{payload}".encode(), hashlib.sha256).digest()
    return f"{head}.{payload}.{_b64(signature)}"


@dataclass(frozen=True, slots=True)
class PushTarget:
    """An instance's enabled webhook, as the pusher uses it."""

    url: str
    headers: dict[str, str]
    by_events: bool
    events: frozenset[str]

    def wants(self, event: str) -> bool:
        """The event passes the filter and the URL is one Evolution would call at all."""
        if not self.url.startswith(("http://", "https://")):
            return False
        return not self.events or config_name(event) in self.events

    def url_for(self, event: str) -> str:
        return f"{self.url}/{url_suffix(event)}" if self.by_events else self.url

    def send_headers(self) -> dict[str, str]:
        headers = {**_AXIOS_HEADERS, **self.headers}
        secret = headers.pop("jwt_key", None)
        if secret is not None:
            headers["Authorization"] = f"Bearer {webhook_jwt(secret)}"
        return headers


@dataclass(slots=True)
class RetryPolicy:
    """Evolution 2.3 delivery settings (``WEBHOOK_RETRY_*``, ``WEBHOOK_REQUEST_TIMEOUT_MS``)."""

    timeout: float = 30.0
    max_attempts: int = 10
    initial_delay: float = 5.0
    max_delay: float = 300.0
    jitter: float = 0.2
    non_retryable: frozenset[int] = field(default=NON_RETRYABLE)


@dataclass(frozen=True, slots=True)
class Delivery:
    instance: str
    url: str
    body: bytes
    headers: Mapping[str, str]


class _Envelope(msgspec.Struct, frozen=True):
    event: str
    instance: str
    data: msgspec.Raw
    destination: str
    date_time: str
    sender: str | msgspec.UnsetType = msgspec.UNSET
    server_url: str = ""
    apikey: str | msgspec.UnsetType | None = None


def local_time_z(utc_offset: float, now: datetime | None = None) -> str:
    """Local wall-clock time rendered as if it were UTC (``...T22:52:43.731Z``)."""
    moment = (now or datetime.now(UTC)) + timedelta(hours=utc_offset)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def envelope(
    *,
    event: str,
    instance: str,
    data: bytes,
    destination: str,
    sender: str | None,
    server_url: str,
    apikey: str | None,
    omit_apikey: bool,
    utc_offset: float,
) -> bytes:
    """The body Evolution POSTs; ``sender`` is absent before pairing (None here)."""
    return _ENCODER.encode(
        _Envelope(
            event=event,
            instance=instance,
            data=msgspec.Raw(data),
            destination=destination,
            date_time=local_time_z(utc_offset),
            sender=msgspec.UNSET if sender is None else sender,
            server_url=server_url,
            apikey=msgspec.UNSET if omit_apikey else apikey,
        )
    )


async def deliver(
    client: httpx.AsyncClient, delivery: Delivery, counters: PushCounters, policy: RetryPolicy
) -> None:
    """One event's delivery, with Evolution's retries; outcomes land in ``counters``."""
    for attempt in range(1, policy.max_attempts + 1):
        counters.begin()
        outcome = "cancelled"
        try:
            status, outcome = await post_once(
                client, delivery.url, delivery.body, delivery.headers, policy.timeout
            )
        finally:
            counters.end(outcome)
        if status is not None and 200 <= status < 300:
            counters.successes += 1
            return
        counters.failures += 1
        if status in policy.non_retryable or attempt >= policy.max_attempts:
            counters.given_up += 1
            return
        delay = backoff_delay(attempt, policy.initial_delay, policy.max_delay, policy.jitter)
        await asyncio.sleep(delay)
