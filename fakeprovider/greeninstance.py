"""One GREEN-API instance of the fake: its notification FIFO, counters, faults and settings.

Synchronous state, shared by the queue (:mod:`fakeprovider.greenapi`) and the webhook pusher
(:mod:`fakeprovider.greenpush`), which import it and not each other.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

import msgspec

from fakeprovider.greenjournal import Journal
from fakeprovider.push import PushCounters
from fakeprovider.settings import default_settings
from fakeprovider.wire import Fault, Method, SlidingWindow

__all__ = ["ArmedFault", "Instance", "InstanceCounters"]


class InstanceCounters(msgspec.Struct):
    id: str
    enqueued: int
    delivered: int
    deleted: int
    outstanding: int
    receives: int
    overlapped: bool


class ArmedFault:
    """A queued fault and the uses it has left."""

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
        "journal",
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
        self.faults: list[ArmedFault] = []
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
        self.journal = Journal()  # lastIncomingMessages / lastOutgoingMessages

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
