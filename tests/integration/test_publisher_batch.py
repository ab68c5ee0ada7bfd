"""Batched publishing against the real broker: one write per loop iteration, one confirm per
message, and a lost connection never turns into a success."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from bridge.amqp.publisher import AmqpPublisher
from bridge.errors import BrokerUnavailable, PublishError
from bridge.metrics import REGISTRY, LoopHistogram
from tests.conftest import AMQP_URL
from tests.integration.test_publisher import outbound, publisher
from tests.support.harness import Names, wait_until
from tests.support.tcpproxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

BATCH = 400


def _writes(pub: AmqpPublisher) -> list[int]:
    """Record the size of every frame the publisher hands to aiormq's writer."""
    lane = pub._lane
    assert lane is not None
    queue = lane._queue
    sizes: list[int] = []
    put = queue.put_nowait

    def spy(frame: Any) -> None:
        sizes.append(len(frame.payload))
        put(frame)

    queue.put_nowait = spy  # type: ignore[method-assign]
    return sizes


async def _outcomes(pub: AmqpPublisher, exchange: str, key: str, n: int) -> list[Any]:
    return await asyncio.gather(
        *(
            pub.publish(outbound(exchange, key, body=b'{"n":%d}' % i, mid=f"b{i}"))
            for i in range(n)
        ),
        return_exceptions=True,
    )


async def test_a_batch_leaves_in_one_write_and_arrives_whole_and_in_order() -> None:
    names = Names()
    async with publisher(names) as pub:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(f"{names.prefix}.batch", auto_delete=True)
            await queue.bind(names.exchange, "batch")
            writes = _writes(pub)
            observed = REGISTRY.get_sample_value("bridge_confirm_latency_seconds_count") or 0
            results = await _outcomes(pub, names.exchange, "batch", BATCH)
            assert results == [True] * BATCH
            count = REGISTRY.get_sample_value("bridge_confirm_latency_seconds_count")
            assert count == observed + BATCH
            assert len(writes) == 1, writes  # all publishes of one iteration: one write
            got = []
            while len(got) < BATCH:
                message = await queue.get(timeout=5)
                got.append(message.message_id)
                assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
                assert message.headers["x-provider"] == "greenapi"
                await message.ack()
            await queue.delete(if_unused=False, if_empty=False)  # read by basic.get: no
            # consumer ever cancelled, so auto_delete would never remove it
            assert got == [f"b{i}" for i in range(BATCH)]


async def test_losing_the_connection_under_a_batch_acknowledges_none_of_it() -> None:
    names = Names()
    async with TcpProxy(target=("127.0.0.1", 5672)) as proxy:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        # a confirm deadline far away: what fails the batch must be the loss itself
        async with publisher(names, url=url, confirm_timeout=60, heartbeat=0) as pub:
            assert await pub.publish(outbound(names.exchange, "ok", mid="before")) is True
            proxy.blackhole()  # the batch goes out, no confirm comes back
            batch = asyncio.gather(
                *(
                    pub.publish(outbound(names.exchange, "lost", body=b"%d" % i, mid=f"l{i}"))
                    for i in range(BATCH)
                ),
                return_exceptions=True,
            )
            lane = pub._lane
            assert lane is not None
            await wait_until(lambda: len(lane._waiting) == BATCH and not lane._parts, 30)
            # the gauge is read when scraped: no update per publish
            assert REGISTRY.get_sample_value("bridge_publish_in_flight") == BATCH
            proxy.cut()  # the connection dies with every one of them unconfirmed
            results = await asyncio.wait_for(batch, 30)
            assert REGISTRY.get_sample_value("bridge_publish_in_flight") == 0
            assert not [r for r in results if r is True], "a publish succeeded without a confirm"
            assert all(isinstance(r, BrokerUnavailable) for r in results), {
                type(r).__name__ for r in results
            }
            assert not pub.is_ready()


async def test_a_cut_mid_stream_never_confirms_what_the_broker_did_not_take() -> None:
    """Cut while batches are in flight both ways: every publish that returned True is in the
    queue; every other one raised a PublishError."""
    names = Names()
    async with TcpProxy(target=("127.0.0.1", 5672)) as proxy:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        async with publisher(names, url=url, confirm_timeout=60, heartbeat=0) as pub:
            connection = await aio_pika.connect(AMQP_URL)
            async with connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(
                    f"{names.prefix}.cut", durable=True, arguments={"x-queue-type": "quorum"}
                )
                await queue.bind(names.exchange, "cut")
                try:
                    tasks: list[asyncio.Future[bool]] = []
                    for i in range(BATCH):
                        out = outbound(names.exchange, "cut", body=b"%d" % i, mid=f"b{i}")
                        tasks.append(asyncio.ensure_future(pub.publish(out)))
                        if i == 0:
                            # the moment one confirm is in, the connection dies under the rest
                            tasks[0].add_done_callback(lambda _: proxy.cut())
                        if i % 10 == 9:
                            await asyncio.sleep(0.001)  # the batch goes out in many writes
                    results = await asyncio.wait_for(
                        asyncio.gather(*tasks, return_exceptions=True), 30
                    )
                    confirmed = {f"b{i}" for i, r in enumerate(results) if r is True}
                    assert all(r is True or isinstance(r, PublishError) for r in results)
                    stored = set()
                    while True:
                        message = await queue.get(timeout=5, fail=False)
                        if message is None:
                            break
                        stored.add(message.message_id)
                        await message.ack()
                    assert 0 < len(confirmed) < BATCH  # the cut fell inside the stream
                    assert confirmed <= stored
                finally:
                    await queue.delete(if_unused=False, if_empty=False)


def test_the_confirm_latency_histogram_exposes_what_prometheus_client_would() -> None:
    bounds = (0.0005, 0.001, 0.01, 0.5, 1, 10)
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    lock_free = LoopHistogram("x_seconds", "doc", buckets=bounds, registry=ours)
    reference = Histogram("x_seconds", "doc", buckets=bounds, registry=theirs)
    for value in (0, 0.0005, 0.0006, 0.001, 0.3, 1, 9.99, 10, 11, 1e9):
        lock_free.observe(value)
        reference.observe(value)
    expected = [
        line for line in generate_latest(theirs).decode().splitlines() if "_created" not in line
    ]
    assert generate_latest(ours).decode().splitlines() == expected
