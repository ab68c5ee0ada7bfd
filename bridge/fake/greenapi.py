"""State and pure logic of the fake GREEN-API notification queue.

Everything here is synchronous: the per-instance FIFO, receipt handles, counters, the
sliding-window rate limiter, the fault queue, the settings and the byte-level response builders.
The ASGI shell in :mod:`bridge.fake.server` only awaits (long-poll waits, injected latency) and
writes; :mod:`bridge.fake.greenpush` pushes the FIFO of instances that have a ``webhookUrl``.

The state belongs to the event loop that serves it: mutate it from that loop (or before the
server starts), never from another thread.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable
from typing import Final

import msgspec

from bridge.fake.greenpush import GreenPushStats, ensure_pusher, push_stats
from bridge.fake.push import PushCounters, PushHub
from bridge.fake.settings import GreenSettings, apply_settings, default_settings
from bridge.fake.wire import (
    DEFAULT_RECEIVE_TIMEOUT,
    METHODS,
    BadRequestError,
    Fault,
    Method,
    SlidingWindow,
    notification_response,
    parse_receipt_id,
    parse_receive_timeout,
)

__all__ = [
    "DEFAULT_RECEIVE_TIMEOUT",
    "METHODS",
    "BadRequestError",
    "FakeGreenApi",
    "Fault",
    "Instance",
    "InstanceCounters",
    "InstanceStats",
    "Method",
    "SlidingWindow",
    "Stats",
    "Totals",
    "UnknownInstanceError",
    "notification_response",
    "parse_receipt_id",
    "parse_receive_timeout",
]

FIRST_RECEIPT_ID: Final = 1_000_001


class UnknownInstanceError(LookupError):
    """No instance with this id exists in the fake."""


class InstanceCounters(msgspec.Struct):
    id: str
    enqueued: int
    delivered: int
    deleted: int
    outstanding: int
    receives: int
    overlapped: bool


class InstanceStats(InstanceCounters):
    deleted_receipts: list[int]


class Totals(msgspec.Struct):
    enqueued: int
    delivered: int
    deleted: int
    outstanding: int


class Stats(msgspec.Struct):
    instances: dict[str, InstanceCounters]
    totals: Totals
    overlapped: bool


class _ArmedFault:
    __slots__ = ("fault", "remaining")

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.remaining = fault.count


class Instance:
    """One instance's notification FIFO, counters and switches."""

    __slots__ = (
        "closed",
        "delete_window",
        "deleted",
        "deleted_receipts",
        "delivered",
        "enqueued",
        "faults",
        "get_settings_window",
        "id",
        "in_flight",
        "latency",
        "overlapped",
        "overlaps",
        "push_counts",
        "pusher",
        "queue",
        "receive_window",
        "receivers",
        "receives",
        "set_settings_window",
        "settings",
        "token",
        "waiters",
    )

    def __init__(
        self,
        id: str,
        token: str,
        latency: float | None,
        rate_limit: int,
        settings_rate_limit: int = 1,
    ) -> None:
        self.id = id
        self.token = token
        self.latency = latency
        self.queue: deque[tuple[int, bytes]] = deque()
        self.waiters: set[asyncio.Future[None]] = set()
        self.faults: list[_ArmedFault] = []
        self.receive_window = SlidingWindow(rate_limit)
        self.delete_window = SlidingWindow(rate_limit)
        self.enqueued = 0
        self.delivered = 0
        self.deleted = 0
        self.receives = 0
        self.in_flight = 0
        #: receive token -> "is its client still connected?", for every receive in flight
        self.receivers: dict[int, Callable[[], bool]] = {}
        self.overlapped = False
        #: wall-clock time of every receive that began while another one was in flight
        self.overlaps: list[float] = []
        self.closed = False
        self.deleted_receipts: list[int] = []
        self.settings = default_settings(id)
        self.get_settings_window = SlidingWindow(settings_rate_limit)
        self.set_settings_window = SlidingWindow(settings_rate_limit)
        self.push_counts = PushCounters(serial=True)
        self.pusher: asyncio.Task[None] | None = None

    def head(self) -> tuple[int, bytes] | None:
        return self.queue[0] if self.queue else None

    def poll_head(self) -> tuple[int, bytes] | None:
        """The head as receiveNotification sees it: none while the instance pushes."""
        return None if self.settings.pushing or not self.queue else self.queue[0]

    def push(self, receipt_id: int, raw: bytes) -> None:
        self.queue.append((receipt_id, raw))
        self.enqueued += 1
        self.wake()

    def wake(self) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()

    def delete(self, receipt_id: int) -> bool:
        """Remove the head if ``receipt_id`` is its handle; anything else is stale."""
        queue = self.queue
        if not queue or queue[0][0] != receipt_id:
            return False
        queue.popleft()
        self.deleted += 1
        self.deleted_receipts.append(receipt_id)
        return True

    def begin_receive(self, connected: Callable[[], bool] = lambda: True) -> int:
        """Count a receive in flight; returns its token for `end_receive`.

        Overlap means another receive is in flight whose client is still connected: a client
        that gave up a request closed its connection before asking again, even when the server
        has not processed that close yet (a busy event loop handles both in one turn).
        """
        self.receives += 1
        self.in_flight += 1
        token = self.receives
        if any(alive() for alive in self.receivers.values()):
            self.overlapped = True
            self.overlaps.append(time.time())
        self.receivers[token] = connected
        return token

    def end_receive(self, token: int) -> None:
        self.in_flight -= 1
        self.receivers.pop(token, None)

    def take_fault(self, method: Method) -> Fault | None:
        """Consume one use of the first queued fault that applies to ``method``."""
        for index, armed in enumerate(self.faults):
            if method in armed.fault.methods:
                if armed.remaining > 0:
                    armed.remaining -= 1
                    if armed.remaining == 0:
                        del self.faults[index]
                return armed.fault
        return None

    def counters(self) -> InstanceCounters:
        return InstanceCounters(
            id=self.id,
            enqueued=self.enqueued,
            delivered=self.delivered,
            deleted=self.deleted,
            outstanding=len(self.queue),
            receives=self.receives,
            overlapped=self.overlapped,
        )


class FakeGreenApi:
    """All instances of the fake provider plus the global switches.

    ``timeout_scale`` multiplies every long-poll wait (tests use 0.01 so that the documented
    ``receiveTimeout`` range 5..60 stays enforced while an empty poll lasts milliseconds).
    ``settings_api`` serves ``getSettings``/``setSettings`` (limited to ``settings_rate_limit``
    calls per second per instance and method); ``push_timeout`` and ``push_pause`` are the
    webhook pusher's wait for an answer (real 180 s) and pause before resending (real 60 s).
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        timeout_scale: float = 1.0,
        rate_limit: int = 100,
        settings_api: bool = True,
        settings_rate_limit: int = 1,
        push_timeout: float = 180.0,
        push_pause: float = 60.0,
    ) -> None:
        self.latency = latency
        self.timeout_scale = timeout_scale
        self.rate_limit = rate_limit
        self.settings_api = settings_api
        self.settings_rate_limit = settings_rate_limit
        self.push_timeout = push_timeout
        self.push_pause = push_pause
        self.instances: dict[str, Instance] = {}
        self._receipts = itertools.count(FIRST_RECEIPT_ID)
        self.draining = False
        self._hub: PushHub | None = None

    def add_instance(self, id: str, token: str, latency: float | None = None) -> bool:
        """Create an instance; ``latency=None`` follows the global latency.

        Returns whether it was created; repeating a call with the same token is a no-op
        (apart from updating ``latency`` when given). A different token raises ValueError.
        """
        existing = self.instances.get(id)
        if existing is not None:
            if existing.token != token:
                raise ValueError(f"instance {id} exists with a different token")
            if latency is not None:
                existing.latency = latency
            return False
        self.instances[id] = Instance(id, token, latency, self.rate_limit, self.settings_rate_limit)
        return True

    def instance(self, id: str) -> Instance:
        try:
            return self.instances[id]
        except KeyError:
            raise UnknownInstanceError(id) from None

    def enqueue(self, id: str, raw: bytes) -> int:
        """Append one notification's raw bytes to the instance's FIFO; returns its receiptId."""
        instance = self.instance(id)
        receipt_id = next(self._receipts)
        instance.push(receipt_id, bytes(raw))
        return receipt_id

    def enqueue_many(self, id: str, raws: list[bytes]) -> list[int]:
        instance = self.instance(id)
        receipt_ids = []
        for raw in raws:
            receipt_id = next(self._receipts)
            instance.push(receipt_id, bytes(raw))
            receipt_ids.append(receipt_id)
        return receipt_ids

    def latency_for(self, instance: Instance) -> float:
        return self.latency if instance.latency is None else instance.latency

    def set_latency(self, id: str, latency: float | None) -> None:
        self.instance(id).latency = latency

    def set_fault(self, id: str, fault: Fault) -> None:
        self.instance(id).faults.append(_ArmedFault(fault))

    def clear_faults(self, id: str) -> int:
        instance = self.instance(id)
        cleared = len(instance.faults)
        instance.faults.clear()
        return cleared

    def instance_stats(self, id: str) -> InstanceStats:
        instance = self.instance(id)
        counters = instance.counters()
        return InstanceStats(
            **msgspec.structs.asdict(counters), deleted_receipts=list(instance.deleted_receipts)
        )

    def stats(self) -> Stats:
        counters = {id: instance.counters() for id, instance in self.instances.items()}
        values = counters.values()
        return Stats(
            instances=counters,
            totals=Totals(
                enqueued=sum(c.enqueued for c in values),
                delivered=sum(c.delivered for c in values),
                deleted=sum(c.deleted for c in values),
                outstanding=sum(c.outstanding for c in values),
            ),
            overlapped=any(c.overlapped for c in values),
        )

    def settings(self, id: str) -> GreenSettings:
        return self.instance(id).settings

    def set_settings(self, id: str, body: bytes) -> GreenSettings:
        """Apply a setSettings JSON body (SettingsError when unusable), switching the instance
        between polling and push as ``webhookUrl`` says; returns the new settings."""
        instance = self.instance(id)
        instance.settings = apply_settings(instance.settings, body)
        instance.wake()  # long polls and an idle pusher look at the mode again
        if self._hub is not None:
            ensure_pusher(self, instance, self._hub)
        return instance.settings

    def set_webhook(self, id: str, url: str, token: str = "") -> GreenSettings:
        """``set_settings`` with ``webhookUrl`` and ``webhookUrlToken``; ``url=""`` polls."""
        body = msgspec.json.encode({"webhookUrl": url, "webhookUrlToken": token})
        return self.set_settings(id, body)

    def push_stats(self, id: str) -> GreenPushStats:
        return push_stats(self.instance(id))

    def attach(self, hub: PushHub) -> None:
        """Push from now on through ``hub`` (the server calls this when it starts)."""
        self._hub = hub
        for instance in self.instances.values():
            ensure_pusher(self, instance, hub)

    def detach(self) -> None:
        self._hub = None

    def release_waiters(self) -> None:
        """Answer every pending long poll now (``null``) and every later one at once."""
        self.draining = True
        for instance in self.instances.values():
            instance.wake()

    def reset(self) -> None:
        """Forget all instances, faults and the global latency; pending polls answer null and
        pushers stop.

        receiptIds keep increasing, so a handle from before the reset never matches again.
        """
        for instance in self.instances.values():
            instance.closed = True
            if instance.pusher is not None:
                instance.pusher.cancel()
            instance.wake()
        self.instances = {}
        self.latency = 0.0
        self.draining = False
