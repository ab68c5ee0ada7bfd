"""Polling leases on the real broker: one holder per instance, even spread, takeover."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest

from bridge.amqp.lease import LeaseKeeper, lease_name
from bridge.config import AmqpConfig, LeaseConfig, Source
from bridge.errors import TopologyError
from tests.conftest import AMQP_URL
from tests.support.harness import wait_until
from tests.support.tcpproxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

INTERVAL = 0.2
SETTLE = 0.6


def sources(count: int) -> list[Source]:
    base = random.randrange(10**9, 9 * 10**9)
    return [
        Source(provider="greenapi", mode="poll", instance=str(base + i), api_url="http://x",
               token_env="T")
        for i in range(count)
    ]  # fmt: skip


def keeper(srcs: list[Source], exchange: str) -> LeaseKeeper:
    cfg = LeaseConfig(interval=INTERVAL, settle=SETTLE, heartbeat=2, exchange=exchange)
    return LeaseKeeper(cfg, AmqpConfig(url=AMQP_URL, connect_timeout=5), srcs)


@contextlib.asynccontextmanager
async def running(k: LeaseKeeper) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(k.run())
    try:
        yield task
    finally:
        await k.close()
        with contextlib.suppress(asyncio.CancelledError):  # a test may have killed it
            await asyncio.wait_for(task, 10)


def usable(k: LeaseKeeper) -> set[str]:
    return {name for name, lease in k.leases.items() if lease.usable()}


@pytest.fixture
async def exchange() -> AsyncIterator[str]:
    """A members exchange of the test's own, deleted afterwards."""
    name = f"t{uuid.uuid4().hex[:10]}.members"
    yield name
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        await (await connection.channel()).exchange_delete(name)


@contextlib.asynccontextmanager
async def no_overlap(keepers: list[LeaseKeeper]) -> AsyncIterator[None]:
    """Fail if, at any sampled moment, two members may receive for the same lease."""
    overlaps: list[set[str]] = []

    async def watch() -> None:
        while True:
            seen: set[str] = set()
            for k in keepers:
                mine = usable(k)
                if mine & seen:
                    overlaps.append(mine & seen)
                seen |= mine
            await asyncio.sleep(0.005)

    task = asyncio.create_task(watch())
    try:
        yield
    finally:
        task.cancel()
    assert not overlaps, f"two members could receive at once for {overlaps[0]}"


async def test_three_members_share_twenty_leases_evenly_and_take_over_a_dead_ones(
    exchange: str,
) -> None:
    srcs = sources(20)
    keepers = [keeper(srcs, exchange) for _ in range(3)]
    async with no_overlap(keepers), contextlib.AsyncExitStack() as stack:
        tasks = [await stack.enter_async_context(running(k)) for k in keepers]

        def settled() -> bool:
            held = [usable(k) for k in keepers]
            every = [name for h in held for name in h]
            return len(every) == 20 and len(set(every)) == 20

        await wait_until(settled, 20)
        assert sorted(len(usable(k)) for k in keepers) == [6, 7, 7]
        # the broker agrees: each lease is held by exactly one connection
        assert sum(len(k.held()) for k in keepers) == 20

        victim = keepers[0]
        orphaned = victim.held()
        # a dead process: its connection goes without a word to the others
        tasks[0].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tasks[0]
        assert not usable(victim)
        started = time.monotonic()
        survivors = keepers[1:]
        await wait_until(lambda: orphaned <= usable(survivors[0]) | usable(survivors[1]), 15)
        took = time.monotonic() - started
        assert took < 3 * INTERVAL + SETTLE + 2.0
        await wait_until(lambda: sorted(len(usable(k)) for k in survivors) == [10, 10], 10)
        assert not usable(survivors[0]) & usable(survivors[1])


async def test_a_joining_member_gets_its_share_handed_over(exchange: str) -> None:
    srcs = sources(12)
    first, second = keeper(srcs, exchange), keeper(srcs, exchange)
    async with no_overlap([first, second]), running(first):
        await wait_until(lambda: len(usable(first)) == 12, 10)
        async with running(second):
            await wait_until(lambda: len(usable(first)) == 6 and len(usable(second)) == 6, 15)
            assert not usable(first) & usable(second)
        # a member that stops says so: the other takes everything back at once
        started = time.monotonic()
        await wait_until(lambda: len(usable(first)) == 12, 10)
        assert time.monotonic() - started < 2 * INTERVAL + SETTLE + 1.5


async def test_a_handover_waits_for_the_notification_in_hand(exchange: str) -> None:
    srcs = sources(2)
    first, second = keeper(srcs, exchange), keeper(srcs, exchange)
    async with no_overlap([first, second]), running(first):
        await wait_until(lambda: len(usable(first)) == 2, 10)
        revoked: list[str] = []
        for lease in first.leases.values():
            lease.on_revoke(lambda name=lease.name: revoked.append(name))
        with contextlib.ExitStack() as in_hand:
            for lease in first.leases.values():
                in_hand.enter_context(lease.in_use())
            async with running(second):
                await wait_until(lambda: len(revoked) == 1, 10)  # one of the two moves
                (moving,) = revoked
                await asyncio.sleep(3 * SETTLE)
                # still in hand: the queue is not freed, so the newcomer cannot have it
                assert moving in first.held()
                assert moving not in usable(second)
                in_hand.close()  # the notification is done: now it moves
                await wait_until(lambda: usable(second) == {moving}, SETTLE + 5)
                assert moving not in first.held()


async def test_a_lease_queue_held_by_something_else_is_reported_then_taken_when_freed(
    exchange: str, caplog: pytest.LogCaptureFixture
) -> None:
    srcs = sources(1)
    name = lease_name(srcs[0])
    squatter = await aio_pika.connect(AMQP_URL)
    channel = await squatter.channel()
    await channel.declare_queue(name, durable=True)  # not a bridge's: durable, not exclusive
    k = keeper(srcs, exchange)
    try:
        with caplog.at_level(logging.WARNING, logger="bridge.amqp.lease"):
            async with running(k):
                # 3 x 0.6 s of silence limit + 2 x 2 s of heartbeat, then one warning
                await wait_until(lambda: "lease.locked" in caplog.messages, 15)
                assert not usable(k)
                await channel.queue_delete(name)
                await wait_until(lambda: usable(k) == {name}, 10)
        assert caplog.messages.count("lease.locked") == 1
    finally:
        await squatter.close()


async def test_a_members_exchange_of_another_kind_is_a_config_error(exchange: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        with pytest.raises(TopologyError):
            await asyncio.wait_for(keeper(sources(1), exchange).run(), 10)
    finally:
        await connection.close()


async def test_a_holder_cut_off_stops_receiving_before_anyone_else_may(exchange: str) -> None:
    """The holder reaches RabbitMQ through a proxy that starts dropping every byte: it must
    stop receiving (2 intervals after its last confirmed beat) before RabbitMQ frees its lease
    and another member starts receiving (`settle` after taking it)."""
    host, port = AMQP_URL.rsplit("@", 1)[1].rstrip("/").split(":")
    proxy = await TcpProxy(target=(host, int(port))).start()
    srcs = sources(2)
    cfg = LeaseConfig(interval=INTERVAL, settle=SETTLE, heartbeat=2, exchange=exchange)
    cut_off = LeaseKeeper(
        cfg, AmqpConfig(url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/", connect_timeout=5),
        srcs,
    )  # fmt: skip
    other = keeper(srcs, exchange)
    try:
        async with no_overlap([cut_off, other]), running(cut_off):
            await wait_until(lambda: len(usable(cut_off)) == 2, 10)
            async with running(other):
                await wait_until(lambda: len(usable(other)) == 1, 10)  # one handed over
                proxy.blackhole()
                started = time.monotonic()
                await wait_until(lambda: not usable(cut_off), 5)
                assert time.monotonic() - started < 2 * INTERVAL + 1.0
                await wait_until(lambda: len(usable(other)) == 2, 30)  # after the heartbeat
    finally:
        proxy.restore()
        await proxy.stop()
