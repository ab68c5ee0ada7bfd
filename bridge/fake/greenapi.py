"""State and pure logic of the fake GREEN-API notification queue.

Everything here is synchronous: the per-instance FIFO, receipt handles, counters, the
sliding-window rate limiter, the fault queue and the byte-level response builders. The ASGI
shell in :mod:`bridge.fake.server` only awaits (long-poll waits, injected latency) and writes.

The state belongs to the event loop that serves it: mutate it from that loop (or before the
server starts), never from another thread.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import deque
from typing import Final, Literal

import msgspec

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

Method = Literal["receive", "delete"]
METHODS: Final[frozenset[Method]] = frozenset(("receive", "delete"))

DEFAULT_RECEIVE_TIMEOUT: Final = 5
MIN_RECEIVE_TIMEOUT: Final = 5
MAX_RECEIVE_TIMEOUT: Final = 60
FIRST_RECEIPT_ID: Final = 1_000_001


class BadRequestError(ValueError):
    """A provider request parameter is invalid; the message is the 400 body's ``message``."""


class UnknownInstanceError(LookupError):
    """No instance with this id exists in the fake."""


class Fault(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An answer to substitute for the next ``count`` matching provider calls.

    ``count == -1`` keeps the fault until the faults are cleared. ``delay`` is used by
    ``slow``; ``status`` and ``body`` by ``status``.
    """

    kind: Literal["status", "quota", "slow", "drop", "empty"]
    status: int = 500
    count: int = 1
    methods: frozenset[Method] = METHODS
    delay: float = 0.0
    body: str | None = None

    def __post_init__(self) -> None:
        if self.count != -1 and self.count < 1:
            raise ValueError("count must be -1 (until cleared) or at least 1")
        if not self.methods:
            raise ValueError("methods must name at least one of receive, delete")
        if not (math.isfinite(self.delay) and 0.0 <= self.delay <= 600.0):
            raise ValueError("delay must be between 0 and 600 seconds")
        if self.kind == "status" and not 200 <= self.status <= 599:
            raise ValueError("status must be between 200 and 599")
        if self.kind == "slow" and self.delay <= 0.0:
            raise ValueError("a slow fault needs a positive delay")


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


class SlidingWindow:
    """Admit at most ``limit`` events in any ``window``-second span; O(1) amortised."""

    __slots__ = ("_limit", "_stamps", "_window")

    def __init__(self, limit: int, window: float = 1.0) -> None:
        self._limit = limit
        self._window = window
        self._stamps: deque[float] = deque()

    def admit(self, now: float) -> bool:
        stamps = self._stamps
        edge = now - self._window
        while stamps and stamps[0] <= edge:
            stamps.popleft()
        if len(stamps) >= self._limit:
            return False
        stamps.append(now)
        return True


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
        "id",
        "in_flight",
        "latency",
        "overlapped",
        "queue",
        "receive_window",
        "receives",
        "token",
        "waiters",
    )

    def __init__(self, id: str, token: str, latency: float | None, rate_limit: int) -> None:
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
        self.overlapped = False
        self.closed = False
        self.deleted_receipts: list[int] = []

    def head(self) -> tuple[int, bytes] | None:
        return self.queue[0] if self.queue else None

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

    def begin_receive(self) -> None:
        self.receives += 1
        self.in_flight += 1
        if self.in_flight > 1:
            self.overlapped = True

    def end_receive(self) -> None:
        self.in_flight -= 1

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
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        timeout_scale: float = 1.0,
        rate_limit: int = 100,
    ) -> None:
        self.latency = latency
        self.timeout_scale = timeout_scale
        self.rate_limit = rate_limit
        self.instances: dict[str, Instance] = {}
        self._receipts = itertools.count(FIRST_RECEIPT_ID)
        self.draining = False

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
        self.instances[id] = Instance(id, token, latency, self.rate_limit)
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

    def release_waiters(self) -> None:
        """Answer every pending long poll now (``null``) and every later one at once."""
        self.draining = True
        for instance in self.instances.values():
            instance.wake()

    def reset(self) -> None:
        """Forget all instances, faults and the global latency; pending polls answer null.

        receiptIds keep increasing, so a handle from before the reset never matches again.
        """
        for instance in self.instances.values():
            instance.closed = True
            instance.wake()
        self.instances = {}
        self.latency = 0.0
        self.draining = False


def parse_receive_timeout(query_string: bytes) -> int:
    """``receiveTimeout`` from a raw query string: integer 5..60, default 5."""
    if not query_string:
        return DEFAULT_RECEIVE_TIMEOUT
    value: str | None = None
    for pair in query_string.decode("latin-1").split("&"):
        name, _, raw = pair.partition("=")
        if name == "receiveTimeout":
            value = raw
    if value is None:
        return DEFAULT_RECEIVE_TIMEOUT
    if not (value.isascii() and value.isdigit()) or not (
        MIN_RECEIVE_TIMEOUT <= int(value) <= MAX_RECEIVE_TIMEOUT
    ):
        raise BadRequestError(
            f"Parameter receiveTimeout must be an integer from {MIN_RECEIVE_TIMEOUT}"
            f" to {MAX_RECEIVE_TIMEOUT}"
        )
    return int(value)


def parse_receipt_id(segment: str) -> int:
    if not (segment.isascii() and segment.isdigit()) or len(segment) > 19:
        raise BadRequestError("Parameter receiptId must be a Number")
    return int(segment)


def notification_response(receipt_id: int, raw: bytes) -> bytes:
    """The receiveNotification body, splicing the stored bytes unchanged."""
    return b'{"receiptId":%d,"body":%b}' % (receipt_id, raw)
