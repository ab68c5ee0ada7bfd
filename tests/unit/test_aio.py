"""The asyncio helpers: the first of several waits, sleeping unless stopped, finishing tasks
within a deadline, a component's loop between enter and exit."""

from __future__ import annotations

import asyncio
import time

import pytest

from bridge.aio import Background, finish, first, sleep_unless


async def later(event: asyncio.Event, seconds: float) -> None:
    await asyncio.sleep(seconds)
    event.set()


async def test_first_returns_the_event_that_was_set() -> None:
    slow, fast = asyncio.Event(), asyncio.Event()
    setter = asyncio.create_task(later(fast, 0.01))
    assert await first(slow, fast, timeout=5) is fast
    await setter


async def test_first_prefers_the_earliest_given_when_several_are_set() -> None:
    one, two = asyncio.Event(), asyncio.Event()
    one.set()
    two.set()
    assert await first(two, one) is two
    assert await first(one, two) is one


async def test_first_returns_none_on_timeout() -> None:
    started = time.monotonic()
    assert await first(asyncio.Event(), asyncio.Event(), timeout=0.05) is None
    assert 0.04 < time.monotonic() - started < 2


async def test_first_takes_awaitables_and_cancels_what_it_wrapped() -> None:
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    async def soon() -> str:
        await asyncio.sleep(0.01)
        return "done"

    waits = (forever(), soon())
    assert await first(*waits, timeout=5) is waits[1]
    await asyncio.wait_for(cancelled.wait(), 1)


async def test_first_leaves_tasks_it_was_given_running() -> None:
    gate = asyncio.Event()
    task = asyncio.create_task(gate.wait())
    stop = asyncio.Event()
    stop.set()
    assert await first(task, stop) is stop
    await asyncio.sleep(0)
    assert not task.done()
    gate.set()
    await task


async def test_first_raises_what_ended_an_awaitable() -> None:
    async def broken() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await first(broken(), asyncio.Event(), timeout=5)


async def test_first_cancelled_cancels_what_it_wrapped() -> None:
    entered, cancelled = asyncio.Event(), asyncio.Event()

    async def forever() -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    waiter = asyncio.create_task(first(forever(), asyncio.Event()))
    await asyncio.wait_for(entered.wait(), 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.wait_for(cancelled.wait(), 1)


async def test_sleep_unless() -> None:
    stop = asyncio.Event()
    assert await sleep_unless(stop, 0.01) is False
    assert await sleep_unless(stop, 0) is False
    setter = asyncio.create_task(later(stop, 0.01))
    started = time.monotonic()
    assert await sleep_unless(stop, 5) is True
    assert time.monotonic() - started < 2
    await setter
    assert await sleep_unless(stop, 5) is True  # at once when already set


async def test_finish_waits_then_cancels_the_late_and_swallows_what_they_raised() -> None:
    async def fails() -> None:
        raise RuntimeError("ignored")

    quick = asyncio.create_task(asyncio.sleep(0.01))
    stuck = asyncio.create_task(asyncio.Event().wait())
    broken = asyncio.create_task(fails())
    started = time.monotonic()
    await finish([quick, stuck, broken], timeout=0.1)
    assert time.monotonic() - started < 2
    assert quick.done() and not quick.cancelled()
    assert stuck.cancelled()
    assert isinstance(broken.exception(), RuntimeError)
    await finish([], timeout=1)


class Loop(Background):
    def __init__(self, *, fail: BaseException | None = None, ignore_close: bool = False) -> None:
        self.stopping = asyncio.Event()
        self.closed = 0
        self.fail = fail
        self.ignore_close = ignore_close

    async def run(self) -> None:
        if self.fail is not None:
            raise self.fail
        if self.ignore_close:
            await asyncio.Event().wait()
        await self.stopping.wait()

    async def close(self) -> None:
        self.closed += 1
        self.stopping.set()


async def test_background_runs_between_enter_and_exit() -> None:
    loop = Loop()
    async with loop:
        assert loop._task is not None
        await asyncio.sleep(0)
        assert not loop._task.done()
    assert loop.closed == 1 and loop._task.done() and not loop._task.cancelled()
    await loop.failed()  # ended without an error


async def test_background_failed_raises_what_ended_the_loop() -> None:
    loop = Loop(fail=LookupError("conflict"))
    async with loop:
        with pytest.raises(LookupError, match="conflict"):
            await asyncio.wait_for(loop.failed(), 5)


async def test_background_failed_cancelled_leaves_the_loop_running() -> None:
    loop = Loop()
    async with loop:
        watcher = asyncio.create_task(loop.failed())
        await asyncio.sleep(0.01)
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher
        assert loop._task is not None and not loop._task.done()


async def test_background_cancels_a_loop_that_outlives_stop_timeout() -> None:
    loop = Loop(ignore_close=True)
    loop.stop_timeout = 0.05
    async with loop:
        pass
    assert loop._task is not None and loop._task.cancelled()
    await loop.failed()  # cancelled by its owner: nothing to raise


async def test_background_starts_once() -> None:
    loop = Loop()
    with pytest.raises(RuntimeError):
        await loop.failed()
    async with loop:
        with pytest.raises(RuntimeError):
            await loop.__aenter__()
