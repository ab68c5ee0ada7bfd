"""GREEN-API's webhook pusher: one request at a time per instance, the head until it gets 200.

While an instance's ``webhookUrl`` is non-empty its FIFO is pushed instead of served to
``receiveNotification``: POST the head's raw bytes to the URL (``Authorization: Bearer
<webhookUrlToken>`` when the token is set); exactly HTTP 200 removes the head; anything else
(another status, a connection error, no answer within ``push_timeout``, real 180 s) pauses
``push_pause`` (real 60 s) and sends the same notification again.
"""

from __future__ import annotations

import asyncio
from typing import Final, Protocol

import msgspec

from bridge.logs import get_logger
from fakeprovider.greeninstance import Instance
from fakeprovider.push import PushHub, PushStats, post_once

__all__ = ["GreenPushStats", "PushTiming", "ensure_pusher", "push_headers", "push_stats"]

logger = get_logger(__name__)

_JSON: Final = "application/json"


class PushTiming(Protocol):
    """The fake's push timing, read at every attempt (the control API changes it live)."""

    push_timeout: float
    push_pause: float


class GreenPushStats(PushStats):
    pushing: bool
    outstanding: int
    deleted_receipts: list[int]


def push_headers(token: str) -> dict[str, str]:
    headers = {"Content-Type": _JSON}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def ensure_pusher(state: PushTiming, instance: Instance, hub: PushHub) -> None:
    """Start the instance's pusher if it is in push mode and none runs (never two)."""
    if instance.closed or not instance.settings.pushing or hub.closed:
        return
    if instance.pusher is not None and not instance.pusher.done():
        return
    instance.pusher = hub.spawn(_push_loop(state, instance, hub), f"greenapi-push-{instance.id}")


async def _wait_for_work(instance: Instance) -> None:
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    instance.waiters.add(waiter)
    try:
        await waiter
    finally:
        instance.waiters.discard(waiter)


async def _push_loop(state: PushTiming, instance: Instance, hub: PushHub) -> None:
    counters = instance.push_counts
    while not instance.closed and instance.settings.pushing:
        head = instance.head()
        if head is None:
            await _wait_for_work(instance)
            continue
        receipt_id, raw = head
        settings = instance.settings
        counters.begin()
        outcome = "cancelled"
        try:
            status, outcome = await post_once(
                hub.client,
                settings.webhookUrl,
                raw,
                push_headers(settings.webhookUrlToken),
                state.push_timeout,
            )
        finally:
            counters.end(outcome)
        if status == 200:
            counters.successes += 1
            instance.delete(receipt_id)
            continue
        counters.failures += 1
        logger.debug("fake.push_failed", provider="greenapi", instance=instance.id, outcome=outcome)
        await asyncio.sleep(state.push_pause)


def push_stats(instance: Instance) -> GreenPushStats:
    snapshot = instance.push_counts.snapshot()
    return GreenPushStats(
        **msgspec.structs.asdict(snapshot),
        pushing=instance.settings.pushing,
        outstanding=len(instance.queue),
        deleted_receipts=list(instance.deleted_receipts),
    )
