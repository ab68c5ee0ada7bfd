"""Meta's webhook delivery: the batch body, the verification GET and the retried POST.

A batch is up to ``batch`` queued updates of one app, one ``entry[]`` per WhatsApp Business
Account in the order they were queued, each update one ``changes[]`` item. The body is compact
JSON with non-ASCII escaped as ``\\uXXXX`` (what Meta signs), posted with
``Content-Type: application/json`` and ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256>`` of the
app secret. Before the first push to a callback URL the app's verify token is checked with
Meta's GET (``hub.mode=subscribe&hub.challenge=<digits>&hub.verify_token=<token>``); only an
answer of 200 whose body is exactly the challenge verifies it. Anything but exactly 200 (or a
failed verification) is retried with exponential back-off until the batch is older than
``max_age``, then dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import httpx

from bridge.logs import get_logger
from fakeprovider.push import PushCounters, backoff_delay, outcome_label

__all__ = [
    "Backoff",
    "Batch",
    "Retries",
    "Update",
    "VerificationCounters",
    "Verifier",
    "batch_body",
    "deliver",
    "sign",
    "verify",
]

log = get_logger(__name__)

OBJECT: Final = "whatsapp_business_account"


@dataclass(frozen=True, slots=True)
class Update:
    """One queued change of a WhatsApp Business Account."""

    waba: str
    field: str
    value: Any


@dataclass(slots=True)
class Retries:
    """Attempts after a batch's first, live."""

    count: int = 0


@dataclass(slots=True)
class VerificationCounters:
    requests: int = 0
    verified: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True)
class Batch:
    """One POST: every attempt sends these bytes and headers to ``url``."""

    app: str
    url: str
    body: bytes
    headers: Mapping[str, str]
    updates: int
    wabas: tuple[str, ...]


def batch_body(updates: Sequence[Update], now: int | None = None) -> bytes:
    """The webhook body of ``updates``: one entry per WABA (first-seen order), one change per
    update; an entry holding a field other than ``messages`` carries ``time``."""
    entries: dict[str, dict[str, Any]] = {}
    for update in updates:
        entry = entries.setdefault(update.waba, {"id": update.waba, "changes": []})
        entry["changes"].append({"value": update.value, "field": update.field})
        if update.field != "messages" and "time" not in entry:
            entry["time"] = int(time.time()) if now is None else now
    body = {"object": OBJECT, "entry": list(entries.values())}
    return json.dumps(body, separators=(",", ":")).encode("ascii")


def sign(body: bytes, secret: str) -> str:
    """``X-Hub-Signature-256``'s value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def verify(
    client: httpx.AsyncClient,
    url: str,
    token: str,
    counters: VerificationCounters,
    *,
    timeout: float,
) -> bool:
    """Meta's subscription check of ``url``: True on 200 with exactly the challenge."""
    challenge = str(random.randrange(10**9, 2**31))
    params = {"hub.mode": "subscribe", "hub.challenge": challenge, "hub.verify_token": token}
    counters.requests += 1
    try:
        response = await client.get(url, params=params, timeout=timeout)
        ok = response.status_code == 200 and response.content == challenge.encode()
    except (httpx.HTTPError, ValueError):
        ok = False
    if ok:
        counters.verified += 1
    else:
        counters.failed += 1
        log.warning("fake.meta_unverified", url=url, challenge=challenge)
    return ok


@dataclass(frozen=True, slots=True)
class Backoff:
    """The retry policy: ``initial`` seconds doubling up to ``maximum`` (``jitter`` ±share)
    until a batch is ``max_age`` seconds old; ``timeout`` limits each request."""

    initial: float = 1.0
    maximum: float = 60.0
    max_age: float = 36 * 3600.0
    jitter: float = 0.2
    timeout: float = 10.0


class Verifier:
    """What a delivery asks before each attempt: whether its URL is verified (checking once
    at a time per app when not)."""

    __slots__ = ("counters", "lock", "token", "verified")

    def __init__(self, token: str | None) -> None:
        self.token = token
        self.verified: set[str] = set()
        self.counters = VerificationCounters()
        self.lock = asyncio.Lock()

    def forget(self, token: str | None) -> None:
        """A new verify token: every URL is checked again."""
        self.token = token
        self.verified.clear()

    async def ready(self, client: httpx.AsyncClient, url: str, timeout: float) -> bool:
        if self.token is None or url in self.verified:
            return True
        async with self.lock:
            if url in self.verified:
                return True
            if await verify(client, url, self.token, self.counters, timeout=timeout):
                self.verified.add(url)
                return True
        return False


async def _attempt(
    client: httpx.AsyncClient, batch: Batch, verifier: Verifier, timeout: float
) -> tuple[bool, str]:
    if not await verifier.ready(client, batch.url, timeout):
        return False, "unverified"
    try:
        response = await client.post(
            batch.url, content=batch.body, headers=dict(batch.headers), timeout=timeout
        )
    except httpx.HTTPError as exc:
        return False, outcome_label(None, exc)
    except ValueError:  # an unusable URL
        return False, "error"
    return response.status_code == 200, outcome_label(response.status_code)


async def deliver(
    client: httpx.AsyncClient,
    batch: Batch,
    counters: PushCounters,
    verifier: Verifier,
    *,
    policy: Backoff,
    retries: Retries,
) -> bool:
    """One batch with its retries; True once delivered, False when dropped (logged)."""
    started = time.monotonic()
    attempt = 0
    outcome = "cancelled"
    while True:
        attempt += 1
        if attempt > 1:
            retries.count += 1
        counters.begin()
        outcome = "cancelled"
        try:
            ok, outcome = await _attempt(client, batch, verifier, policy.timeout)
        finally:
            counters.end(outcome)
        if ok:
            counters.successes += 1
            return True
        counters.failures += 1
        wait = backoff_delay(attempt, policy.initial, policy.maximum, policy.jitter)
        if time.monotonic() + wait - started > policy.max_age:
            break
        await asyncio.sleep(wait)
    counters.given_up += 1
    log.warning(
        "fake.meta_dropped",
        app=batch.app,
        url=batch.url,
        wabas=",".join(batch.wabas),
        updates=batch.updates,
        attempts=attempt,
        outcome=outcome,
    )
    return False
