"""WAHA's webhook config, envelope and delivery (retries), as in WAHA 2026.2-2026.9.

A session's ``config.webhooks[]`` items are checked like WAHA's DTO (an http(s) URL, known
event names or wildcards). Each event goes to every webhook that wants it as its own POST
(:func:`deliver`), concurrently and in no order. Every failure is retried (4xx too, and
network errors and timeouts), ``attempts`` times after the first try, with the same body and
headers, then the event is dropped. The delay before retry ``n``: ``constant`` =
``delaySeconds``, ``linear`` = ``n * delaySeconds``, ``exponential`` = ``2**n * delaySeconds``
plus 0-20 % jitter; each at least the answer's ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import httpx
import msgspec

from bridge.logs import get_logger
from bridge.providers.waha import KNOWN_EVENTS
from bridge.tools import waha
from fakeprovider.push import PushCounters, outcome_label

__all__ = [
    "DEFAULT_ATTEMPTS",
    "DEFAULT_DELAY",
    "EVENTS",
    "Delivery",
    "Retries",
    "WahaWebhook",
    "deliver",
    "envelope",
    "retry_after",
    "retry_delay",
    "validate_webhooks",
]

log = get_logger(__name__)

#: every event WAHA documents: the provider's own list
EVENTS: Final = KNOWN_EVENTS
#: what ``"*"`` leaves out
_NOT_WILD: Final = frozenset(("state.change", "engine.event"))
DEFAULT_ATTEMPTS: Final = 15
DEFAULT_DELAY: Final = 2.0
Policy = Literal["constant", "linear", "exponential"]


class Hmac(msgspec.Struct, frozen=True, omit_defaults=True):
    key: str | None = None


class Retries(msgspec.Struct, frozen=True, omit_defaults=True):
    delaySeconds: float | None = None
    attempts: int | None = None
    policy: Policy | None = None

    def delay(self) -> float:
        return DEFAULT_DELAY if self.delaySeconds is None else self.delaySeconds

    def retries(self) -> int:
        return DEFAULT_ATTEMPTS if self.attempts is None else self.attempts


class CustomHeader(msgspec.Struct, frozen=True):
    name: str
    value: str


class WahaWebhook(msgspec.Struct, frozen=True, omit_defaults=True):
    """One ``config.webhooks[]`` item."""

    url: str
    events: list[str]
    hmac: Hmac | None = None
    retries: Retries | None = None
    customHeaders: list[CustomHeader] | None = None

    def wants(self, event: str) -> bool:
        for name in self.events:
            if name == event or (name == "*" and event not in _NOT_WILD):
                return True
            if name.endswith(".*") and event.startswith(name[:-1]):
                return True
        return False

    def key(self) -> str | None:
        return self.hmac.key if self.hmac is not None and self.hmac.key else None

    def headers(self) -> dict[str, str]:
        return {h.name: h.value for h in self.customHeaders or ()}


def _known(name: str) -> bool:
    return name in EVENTS or name == "*" or (name.endswith(".*") and len(name) > 2)


def _url_ok(url: str) -> bool:
    scheme, sep, rest = url.partition("://")
    return scheme in ("http", "https") and bool(sep) and bool(rest) and rest[0] not in "/?#"


def validate_webhooks(value: Any) -> tuple[list[WahaWebhook] | None, list[str]]:
    """``config.webhooks`` as items, or NestJS-style messages for the 400 answer."""
    if value is None:
        return [], []
    try:
        hooks = msgspec.convert(value, list[WahaWebhook])
    except msgspec.ValidationError as exc:
        return None, [f"config.webhooks: {exc}"]
    problems = []
    for n, hook in enumerate(hooks):
        if not _url_ok(hook.url):
            problems.append(f"config.webhooks.{n}.url must be a URL address")
        if any(not _known(name) for name in hook.events):
            problems.append(
                f"config.webhooks.{n}.each value in events must be one of the following"
                f" values: *, {', '.join(sorted(EVENTS))}"
            )
        retries = hook.retries
        if retries is not None and (retries.retries() < 0 or retries.delay() < 0):
            problems.append(f"config.webhooks.{n}.retries must not be negative")
    return (None, problems) if problems else (hooks, [])


def envelope(
    *,
    event: str,
    session: str,
    payload: bytes,
    me: dict[str, Any] | None,
    engine: str,
    metadata: dict[str, str] | None,
    now_ms: int | None = None,
) -> tuple[str, bytes]:
    """(event id, body): the envelope in WAHA's key order, compact raw UTF-8."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    id = waha.event_id(ms)
    body: dict[str, Any] = {"id": id, "timestamp": ms, "event": event, "session": session}
    if metadata is not None:
        body["metadata"] = metadata
    body["me"] = me
    body["payload"] = msgspec.Raw(waha.stringify(msgspec.json.decode(payload)))
    body["engine"] = engine
    body["environment"] = {
        "version": waha.VERSION,
        "engine": engine,
        "tier": "CORE",
        "browser": None,
        "platform": "linux/x64",
        "worker": {"id": None},
    }
    return id, waha.stringify(body)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event to one webhook: every attempt sends these bytes and headers."""

    session: str
    event: str
    event_id: str
    url: str
    body: bytes
    headers: Mapping[str, str]
    policy: Policy
    delay: float
    retries: int


def retry_after(response: httpx.Response | None, now: float | None = None) -> float:
    """axios-retry's reading of ``Retry-After``: seconds, or an HTTP date; 0 otherwise."""
    value = response.headers.get("retry-after") if response is not None else None
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return 0.0
        seconds = moment.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else 0.0


def retry_delay(
    policy: Policy,
    retry: int,
    delay: float,
    *,
    after: float = 0.0,
    jitter: float = 0.2,
    rand: float | None = None,
) -> float:
    """Seconds before retry ``retry`` (1, 2, ...); ``after`` is the Retry-After wait."""
    if policy == "constant":
        return max(delay, after)
    if policy == "linear":
        return max(retry * delay, after)
    base = max(2.0 ** min(retry, 40) * delay, after)
    return base + base * jitter * (random.random() if rand is None else rand)


async def _attempt(
    client: httpx.AsyncClient, delivery: Delivery, timeout: float
) -> tuple[httpx.Response | None, str]:
    try:
        response = await client.post(
            delivery.url, content=delivery.body, headers=dict(delivery.headers), timeout=timeout
        )
    except httpx.HTTPError as exc:
        return None, outcome_label(None, exc)
    except ValueError:  # an unusable URL
        return None, "error"
    return response, outcome_label(response.status_code)


async def deliver(
    client: httpx.AsyncClient,
    delivery: Delivery,
    counters: PushCounters,
    *,
    timeout: float,
    jitter: float,
) -> None:
    """One delivery with its retries; outcomes land in ``counters``, a drop in the log."""
    outcome, after = "cancelled", 0.0
    for retry in range(delivery.retries + 1):
        if retry:
            wait = retry_delay(delivery.policy, retry, delivery.delay, after=after, jitter=jitter)
            await asyncio.sleep(wait)
        counters.begin()
        outcome = "cancelled"
        try:
            response, outcome = await _attempt(client, delivery, timeout)
        finally:
            counters.end(outcome)
        if response is not None and 200 <= response.status_code < 300:
            counters.successes += 1
            return
        counters.failures += 1
        after = retry_after(response)
    counters.given_up += 1
    log.warning(
        "fake.waha_dropped",
        session=delivery.session,
        event_name=delivery.event,
        event_id=delivery.event_id,
        url=delivery.url,
        request_id=delivery.headers.get("X-Webhook-Request-Id"),
        attempts=delivery.retries + 1,
        outcome=outcome,
    )
