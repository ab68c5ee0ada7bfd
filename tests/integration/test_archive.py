"""The archive stream on the real broker: it receives everything the bridge publishes while
consumer queues and `notifications.unrouted` get exactly what they got without it; turning it
on and off on an existing broker; its retention arguments as declared."""

from __future__ import annotations

import asyncio
import json

import aio_pika
import pytest

from bridge.amqp.topology import declare, topology
from bridge.config import ArchiveConfig
from bridge.errors import TopologyError
from tests.conftest import AMQP_URL
from tests.support.archive import (
    amqp_config,
    drain_queue,
    note,
    publish_all,
    publishing,
    queue_count,
    read_archive,
)
from tests.support.harness import Names, delete_topology
from tests.support.rabbitnode import RabbitNode

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


async def test_archive_gets_everything_and_unrouted_still_only_the_unmatched() -> None:
    names = Names()
    consumer = f"{names.prefix}.consumer"
    try:
        async with publishing(names, AMQP_URL) as pub:
            connection = await aio_pika.connect(AMQP_URL)
            async with connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(
                    consumer, durable=True, arguments={"x-queue-type": "quorum"}
                )
                await queue.bind(names.exchange, "incomingMessageReceived")
            matched = [note(names, n) for n in range(20)]
            unmatched = [note(names, n, event="outgoingMessageStatus") for n in range(20, 30)]
            await publish_all(pub, [*matched, *unmatched])
        # every publish was confirmed: each queue holds what it will ever hold
        got = await drain_queue(AMQP_URL, consumer, 20)
        unrouted = await drain_queue(AMQP_URL, names.unrouted, 10)
        left = [await queue_count(AMQP_URL, q) for q in (consumer, names.unrouted)]
        archived = await read_archive(AMQP_URL, names.archive, 30)
    finally:
        await _delete_queue(consumer)
        await delete_topology(AMQP_URL, names)
    assert left == [0, 0]
    assert [m.message_id for m in got] == [o.message_id for o in matched]
    assert [m.message_id for m in unrouted] == [o.message_id for o in unmatched]
    assert [m.routing_key for m in unrouted] == ["outgoingMessageStatus"] * 10
    everything = [*matched, *unmatched]
    assert [m.header.properties.message_id for m in archived] == [o.message_id for o in everything]
    assert [m.body for m in archived] == [o.body for o in everything]
    assert [m.routing_key for m in archived] == [o.routing_key for o in everything]
    # a consumer sees the same message as without the archive, the exchange field aside
    assert got[0].body == matched[0].body and got[0].headers["x-instance"] == "1101000001"
    assert got[0].exchange == names.ingest


async def test_with_the_archive_a_publish_nobody_else_takes_is_confirmed_and_archived() -> None:
    names = Names()
    try:
        async with publishing(names, AMQP_URL) as pub:
            await _delete_queue(names.unrouted)  # the alternate exchange routes nowhere now
            assert await pub.publish(note(names, 1)) is True  # the stream took it: no return
        archived = await read_archive(AMQP_URL, names.archive, 1)
    finally:
        await delete_topology(AMQP_URL, names)
    assert [json.loads(m.body)["n"] for m in archived] == [1]


async def test_a_sources_own_exchange_feeds_the_same_archive() -> None:
    names = Names()
    crm = f"{names.prefix}.crm"
    consumer = f"{names.prefix}.consumer"
    try:
        async with publishing(names, AMQP_URL, extra=(crm,)) as pub:
            connection = await aio_pika.connect(AMQP_URL)
            async with connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(
                    consumer, durable=True, arguments={"x-queue-type": "quorum"}
                )
                await queue.bind(crm, "#")
            await pub.publish(note(names, 1))
            await pub.publish(note(names, 2)._replace(exchange=crm))
        got = await drain_queue(AMQP_URL, consumer, 1)
        archived = await read_archive(AMQP_URL, names.archive, 2)
    finally:
        await _delete_queue(consumer)
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            for name in (f"{crm}.ingest", crm):
                await (await connection.channel()).exchange_delete(name)
        await delete_topology(AMQP_URL, names)
    assert [json.loads(m.body)["n"] for m in got] == [2]
    assert got[0].exchange == f"{crm}.ingest"
    assert [json.loads(m.body)["n"] for m in archived] == [1, 2]


async def test_turning_the_archive_on_and_off_on_an_existing_broker() -> None:
    names = Names()
    consumer = f"{names.prefix}.consumer"
    off = ArchiveConfig(enabled=False)
    try:
        async with publishing(names, AMQP_URL, off) as pub:  # a broker from before the archive
            connection = await aio_pika.connect(AMQP_URL)
            async with connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(
                    consumer, durable=True, arguments={"x-queue-type": "quorum"}
                )
                await queue.bind(names.exchange, "#")
            await pub.publish(note(names, 1))
        async with publishing(names, AMQP_URL) as pub:  # on: declared beside it, no conflict
            await pub.publish(note(names, 2))
        async with publishing(names, AMQP_URL, off) as pub:  # off again: left in place, unused
            await pub.publish(note(names, 3))
        got = await drain_queue(AMQP_URL, consumer, 3)
        archived = await read_archive(AMQP_URL, names.archive, 1)
    finally:
        await _delete_queue(consumer)
        await delete_topology(AMQP_URL, names)
    assert [json.loads(m.body)["n"] for m in got] == [1, 2, 3]
    assert [json.loads(m.body)["n"] for m in archived] == [2]


async def test_other_retention_on_an_existing_archive_is_a_config_error_not_a_loop() -> None:
    names = Names()
    amqp = amqp_config(names, AMQP_URL)
    try:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            await declare(await connection.channel(), topology(amqp), timeout=10)
            changed = topology(amqp, (), ArchiveConfig(max_age="1D"))
            with pytest.raises(TopologyError, match="conflicting"):
                await declare(await connection.channel(), changed, timeout=10)
    finally:
        await delete_topology(AMQP_URL, names)


async def test_the_stream_holds_its_retention_arguments(own_rabbit: RabbitNode) -> None:
    names = Names()
    archive = ArchiveConfig(
        max_age="36h", max_length_bytes=5_000_000, max_segment_size_bytes=500_000
    )
    amqp = amqp_config(names, own_rabbit.amqp_url)
    connection = await aio_pika.connect(own_rabbit.amqp_url)
    async with connection:
        await declare(await connection.channel(), topology(amqp, (), archive), timeout=10)
        try:
            out = await asyncio.to_thread(
                own_rabbit.rabbitmqctl,
                "-q",
                "list_queues",
                "name",
                "arguments",
                "--formatter",
                "json",
            )
            rows = {row["name"]: row["arguments"] for row in json.loads(out)}
        finally:
            channel = await connection.channel()
            await channel.queue_delete(names.archive)
            for name in (names.unrouted, names.invalid):
                await channel.queue_delete(name)
            for name in (names.ingest, names.exchange, names.unrouted, names.invalid):
                await channel.exchange_delete(name)
    # rabbitmqctl lists each argument as [name, AMQP type, value]
    assert {name: value for name, _kind, value in rows[names.archive]} == {
        "x-queue-type": "stream",
        "x-max-age": "36h",
        "x-max-length-bytes": 5_000_000,
        "x-stream-max-segment-size-bytes": 500_000,
    }


async def _delete_queue(name: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        await (await connection.channel()).queue_delete(name)
