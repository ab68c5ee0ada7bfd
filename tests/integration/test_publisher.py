"""The publisher against the real broker: only `basic.ack` counts as success."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aio_pika
import pytest

from bridge.amqp.publisher import AmqpPublisher
from bridge.amqp.topology import topology
from bridge.config import AmqpConfig
from bridge.dedup import RecentIds
from bridge.envelope import Outbound
from bridge.errors import BrokerUnavailable, PublishNacked, PublishReturned, PublishTimeout
from tests.conftest import AMQP_URL
from tests.support.harness import Names, delete_topology, wait_until
from tests.support.tcpproxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def outbound(exchange: str, key: str, body: bytes = b"{}", mid: str = "m1") -> Outbound:
    return Outbound(
        exchange=exchange, routing_key=key, body=body, message_id=mid, event=key,
        timestamp=1700000000, headers={"x-provider": "greenapi"}, provider="greenapi",
        instance="1",
    )  # fmt: skip


@contextlib.asynccontextmanager
async def publisher(
    names: Names, url: str = AMQP_URL, **cfg: float
) -> AsyncIterator[AmqpPublisher]:
    amqp = AmqpConfig(
        url=url, exchange=names.exchange, unrouted_exchange=names.unrouted,
        invalid_exchange=names.invalid, **cfg,  # type: ignore[arg-type]
    )  # fmt: skip
    pub = AmqpPublisher(amqp, topology(amqp))
    task = asyncio.create_task(pub.run())
    try:
        await asyncio.wait_for(pub.wait_ready(), 15)
        yield pub
    finally:
        await pub.close(drain_timeout=1)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        await delete_topology(AMQP_URL, names)


async def test_topology_is_declared_and_unrouted_lands_in_its_queue() -> None:
    names = Names()
    async with publisher(names) as pub:
        assert await pub.publish(outbound(names.exchange, "nobodyListens")) is True
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(names.unrouted, passive=True)
            message = await queue.get(timeout=5)
            assert message.routing_key == "nobodyListens"
            assert message.message_id == "m1"
            await message.ack()
            await channel.declare_queue(names.invalid, passive=True)


async def test_duplicate_ids_are_confirmed_once() -> None:
    names = Names()
    async with publisher(names) as pub:
        assert await pub.publish(outbound(names.exchange, "a", mid="same")) is True
        assert await pub.publish(outbound(names.exchange, "a", mid="same")) is False


async def test_return_is_an_error() -> None:
    names = Names()
    async with publisher(names) as pub:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            lonely = await channel.declare_exchange(
                f"{names.prefix}.lonely", "topic", auto_delete=True
            )
            # an exchange without alternate exchange and without bindings returns mandatory messages
            try:
                with pytest.raises(PublishReturned):
                    await pub.publish(outbound(lonely.name, "x"))
                assert await pub.publish(outbound(names.exchange, "x", mid="after")) is True
            finally:
                await lonely.delete()


async def test_nack_is_an_error() -> None:
    names = Names()
    async with publisher(names) as pub:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            full = await channel.declare_queue(
                f"{names.prefix}.full", auto_delete=True,
                arguments={"x-max-length": 1, "x-overflow": "reject-publish"},
            )  # fmt: skip
            await full.bind(names.exchange, "full")
            try:
                assert await pub.publish(outbound(names.exchange, "full", mid="first")) is True
                with pytest.raises(PublishNacked):
                    await pub.publish(outbound(names.exchange, "full", mid="second"))
                assert pub.is_ready()  # a nack does not take the channel down
            finally:
                await full.delete(if_unused=False, if_empty=False)


async def test_timeout_and_lost_connection_are_errors() -> None:
    names = Names()
    async with TcpProxy(target=("127.0.0.1", 5672)) as proxy:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        async with publisher(names, url=url, confirm_timeout=0.5, heartbeat=0) as pub:
            assert await pub.publish(outbound(names.exchange, "ok", mid="m0")) is True
            proxy.blackhole()  # frames vanish: no confirm ever comes back
            with pytest.raises(PublishTimeout):
                await pub.publish(outbound(names.exchange, "lost", mid="m1"))
            proxy.cut(hold_new=True)
            await wait_until(lambda: not pub.is_ready(), 10)
            assert not pub.is_ready()
            with pytest.raises(BrokerUnavailable):
                await pub.publish(outbound(names.exchange, "down", mid="m2"))
            proxy.restore()
            await asyncio.wait_for(pub.wait_ready(), 15)
            # the unconfirmed message may be published again, with its id
            assert await pub.publish(outbound(names.exchange, "lost", mid="m1")) is True


def test_recent_ids_are_bounded() -> None:
    recent = RecentIds(3)
    for n in range(5):
        recent.add(str(n))
    assert len(recent) == 3
    assert "0" not in recent and "4" in recent
    off = RecentIds(0)
    off.add("x")
    assert "x" not in off
