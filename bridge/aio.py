"""asyncio helpers the service's loops share: wait for the first of several things, sleep
unless stopped, stop tasks within a deadline, and run a component's loop between enter and
exit.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Iterable
from types import TracebackType
from typing import Any, Self

Waitable = asyncio.Event | Awaitable[Any]

STOP_TIMEOUT = 15.0  # seconds a component may take to drain before it is cancelled


async def first(*waits: Waitable, timeout: float | None = None) -> Waitable | None:
    """Wait until one of `waits` (events or awaitables) is set or done, at most `timeout`
    seconds; return it (the earliest given when several are), or None on timeout.

    An exception from an awaitable propagates. What this call wrapped in a task (an event's
    wait, a coroutine) is cancelled when it returns; futures and tasks passed in are not.
    """
    made: list[asyncio.Future[Any]] = []
    waiters: list[asyncio.Future[Any]] = []
    for wait in waits:
        awaitable = wait.wait() if isinstance(wait, asyncio.Event) else wait
        waiter: asyncio.Future[Any] = asyncio.ensure_future(awaitable)
        if waiter is not awaitable:
            made.append(waiter)
        waiters.append(waiter)
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for own in made:
            own.cancel()
    for wait, waited in zip(waits, waiters, strict=True):
        if waited.done():
            waited.result()  # raises what ended it
            return wait
    return None


async def sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; return True at once if `stop` is set meanwhile."""
    if stop.is_set():
        return True
    if seconds <= 0:
        await asyncio.sleep(0)
        return stop.is_set()
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def finish(tasks: Iterable[asyncio.Task[Any]], timeout: float) -> None:
    """Give `tasks` up to `timeout` seconds to end, cancel those still running, and wait for
    all of them; what they returned or raised is not looked at here."""
    pending = set(tasks)
    if not pending:
        return
    _, late = await asyncio.wait(pending, timeout=timeout)
    for task in late:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


class Background(abc.ABC):
    """A component whose `run()` loop lasts until `close()`, as an async context manager:
    entering starts `run()` in a task; leaving calls `close()` and gives the task
    `stop_timeout` seconds to end (then cancels it). `failed()` waits for the loop's end and
    raises what ended it: the way a fatal error (a `TopologyError`) reaches the caller.
    """

    stop_timeout: float = STOP_TIMEOUT
    _task: asyncio.Task[None] | None = None

    @abc.abstractmethod
    async def run(self) -> None:
        """The component's loop, until `close()`."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Ask `run()` to end."""

    async def __aenter__(self) -> Self:
        if self._task is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        self._task = asyncio.create_task(self.run(), name=type(self).__name__)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
        if self._task is not None:
            await finish([self._task], self.stop_timeout)

    async def failed(self) -> None:
        """Return when the loop has ended; raise the error that ended it, if one did."""
        task = self._task
        if task is None:
            raise RuntimeError(f"{type(self).__name__} not started")
        await asyncio.wait([task])  # cancelling this wait leaves the loop running
        if not task.cancelled():
            task.result()
