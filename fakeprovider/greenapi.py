"""State and pure logic of the fake GREEN-API notification queue.

Everything here is synchronous: the per-instance FIFO, receipt handles, counters, the
sliding-window rate limiter, the fault queue, the settings and the byte-level response builders
(one instance's state is :mod:`fakeprovider.greeninstance`).
The ASGI shell in :mod:`fakeprovider.server` only awaits (long-poll waits, injected latency) and
writes; :mod:`fakeprovider.greenpush` pushes the FIFO of instances that have a ``webhookUrl``.

The state belongs to the event loop that serves it: mutate it from that loop (or before the
server starts), never from another thread.
"""

from __future__ import annotations

import itertools
from typing import Final

import msgspec

from fakeprovider.greeninstance import ArmedFault, Instance, InstanceCounters
from fakeprovider.greenpush import GreenPushStats, ensure_pusher, push_stats
from fakeprovider.push import PushHub
from fakeprovider.settings import GreenSettings, apply_settings
from fakeprovider.wire import (
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
        """Append one notification's raw bytes to the instance's FIFO (a message is journaled
        first; one the journal says to lose is not queued); returns its receiptId."""
        return self.enqueue_many(id, [raw])[0]

    def enqueue_many(self, id: str, raws: list[bytes]) -> list[int]:
        instance = self.instance(id)
        receipt_ids = []
        for raw in raws:
            receipt_id = next(self._receipts)
            if instance.journal.record(raw):
                instance.push(receipt_id, bytes(raw))
            receipt_ids.append(receipt_id)
        return receipt_ids

    def lose(self, id: str, count: int) -> None:
        """Journal the next `count` message notifications of `id` but never deliver them."""
        self.instance(id).journal.lose_next = count

    def latency_for(self, instance: Instance) -> float:
        return self.latency if instance.latency is None else instance.latency

    def set_latency(self, id: str, latency: float | None) -> None:
        self.instance(id).latency = latency

    def set_fault(self, id: str, fault: Fault) -> None:
        self.instance(id).faults.append(ArmedFault(fault))

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
