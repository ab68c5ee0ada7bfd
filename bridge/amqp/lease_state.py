"""One polling lease as one record: where this process is with it (`state`, and what belongs
to that state: the settle timer, the hand-over task, when its queue was first found taken) and
what its poller sees of it (`usable`, `wait_usable`, `on_revoke`, `in_use`).

    IDLE            -> SETTLING   its queue declared (exclusive) on this process's connection
    SETTLING        -> HELD       `lease.settle` later: usable from then on, unless suspended
    SETTLING, HELD  -> RELEASING  the plan gives it to another member, heard for 2 intervals
    RELEASING       -> IDLE       the notification in hand finished and the queue deleted
    RELEASING       -> SETTLING   the delete failed: still held here
    any             -> IDLE       the connection is gone (RabbitMQ freed the queue)

A lease whose source left the config (a reload) is `retired`: released like a hand-over at
the next check, then forgotten.

`bridge.amqp.lease.LeaseKeeper` makes the transitions; nothing here talks to the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Callable, Iterator


class LeaseState(enum.Enum):
    """Where this process is with one lease."""

    IDLE = "idle"  # not held here
    SETTLING = "settling"  # held; `lease.settle` has not passed yet: not usable
    HELD = "held"  # held and settled: usable unless the keeper is suspended
    RELEASING = "releasing"  # being handed over: revoked, the poller finishing, then deleted


class Lease:
    """One polling source's lease: what its poller sees (`usable`, `wait_usable`, `on_revoke`,
    `in_use`) and, in one record, where the keeper is with it (`state` and what belongs to
    that state)."""

    def __init__(self, name: str, provider: str, instance: str) -> None:
        self.name = name
        self.provider = provider
        self.instance = instance
        self.state = LeaseState.IDLE
        self.settle_timer: asyncio.TimerHandle | None = None  # SETTLING: until HELD
        self.release: asyncio.Task[None] | None = None  # RELEASING: the hand-over
        self.locked_since: float | None = None  # IDLE: when first found held by another
        self.locked_reported = False  # `lease.locked` said once (again only after a take)
        self.retired = False  # its source left the config: released, then forgotten
        self._usable = asyncio.Event()
        self._on_revoke: list[Callable[[], None]] = []
        self._users = 0
        self._unused = asyncio.Event()
        self._unused.set()

    @property
    def held(self) -> bool:
        """This process's connection owns the queue."""
        return self.state is not LeaseState.IDLE

    # -- the poller's side -------------------------------------------------------------

    def usable(self) -> bool:
        return self._usable.is_set()

    async def wait_usable(self) -> None:
        await self._usable.wait()

    def on_revoke(self, callback: Callable[[], None]) -> None:
        """`callback()` runs when the lease stops being usable (abandon a pending receive)."""
        self._on_revoke.append(callback)

    def off_revoke(self, callback: Callable[[], None]) -> None:
        """Undo `on_revoke(callback)` (a poller that ended)."""
        if callback in self._on_revoke:
            self._on_revoke.remove(callback)

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """Around a receive and the notification it brought: a handover waits for it."""
        self._users += 1
        self._unused.clear()
        try:
            yield
        finally:
            self._users -= 1
            if not self._users:
                self._unused.set()

    # -- the keeper's side -------------------------------------------------------------

    def grant(self) -> None:
        self._usable.set()

    def revoke(self) -> None:
        if self._usable.is_set():
            self._usable.clear()
            for callback in self._on_revoke:
                callback()

    async def quiesce(self, timeout: float) -> bool:
        """Wait until no receive or notification is in hand; False on timeout."""
        try:
            await asyncio.wait_for(self._unused.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def cancel_settle(self) -> None:
        if self.settle_timer is not None:
            self.settle_timer.cancel()
            self.settle_timer = None
