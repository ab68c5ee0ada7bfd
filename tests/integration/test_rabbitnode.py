"""The broker-breaking test infrastructure itself: a private RabbitMQ node and a TCP proxy.

Run: ``.venv/bin/pytest -p no:cacheprovider -o pythonpath=. tests/integration/test_rabbitnode.py``
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:  # when pytest runs without pythonpath = ["."]
    sys.path.insert(0, _ROOT)

from bridge.amqp.connection import open_connection  # noqa: E402 - after the sys.path line
from tests.support.rabbitnode import RabbitNode, own_rabbit  # noqa: E402, F401 - own_rabbit: a fixture
from tests.support.tcpproxy import TcpProxy  # noqa: E402 - after the sys.path line

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# What a failed connection attempt may raise, depending on where it fails.
CONNECT_ERRORS = (aio_pika.exceptions.AMQPConnectionError, ConnectionError, OSError, TimeoutError)


@pytest.fixture
async def rabbit(own_rabbit: RabbitNode) -> AsyncIterator[RabbitNode]:  # noqa: F811 - the fixture, by name
    """The session's private node, brought back up after each test whatever it did to it."""
    yield own_rabbit
    await asyncio.to_thread(own_rabbit.ensure_running)


def _queue_name() -> str:
    return f"bridgetest.{uuid.uuid4().hex[:12]}"


def _persistent(body: bytes) -> aio_pika.Message:
    return aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)


class _Watch:
    """Events for a robust connection losing and regaining its broker."""

    def __init__(self, connection: AbstractRobustConnection) -> None:
        self.lost = asyncio.Event()
        self.reconnected = asyncio.Event()
        connection.close_callbacks.add(self._set(self.lost))
        connection.reconnect_callbacks.add(self._set(self.reconnected))

    @staticmethod
    def _set(event: asyncio.Event) -> Callable[..., None]:
        def callback(*_: Any) -> None:
            event.set()

        return callback


async def _robust(url: str) -> tuple[AbstractRobustConnection, _Watch]:
    connection = await aio_pika.connect_robust(url, reconnect_interval=0.5, timeout=10)
    return connection, _Watch(connection)


async def _roundtrip(connection: aio_pika.abc.AbstractConnection, queue_name: str) -> None:
    channel = await connection.channel()
    queue = await channel.declare_queue(queue_name, durable=True)
    await channel.default_exchange.publish(_persistent(b"ping"), routing_key=queue_name)
    message = await queue.get(timeout=5)
    assert message.body == b"ping"
    await message.ack()
    await channel.close()


async def test_node_basics(rabbit: RabbitNode) -> None:
    assert rabbit.name.startswith("bridgetest-") and rabbit.name != "rabbit@localhost"
    assert rabbit.port != 5672
    assert rabbit.amqp_url == f"amqp://guest:guest@127.0.0.1:{rabbit.port}/"
    assert rabbit.beam_pids()
    status = await asyncio.to_thread(rabbit.rabbitmqctl, "status")
    assert rabbit.name in status


async def test_publish_and_consume_persistent_message(rabbit: RabbitNode) -> None:
    name = _queue_name()
    async with await aio_pika.connect(rabbit.amqp_url) as connection:
        channel = await connection.channel()  # publisher confirms: publish returns on ack
        queue = await channel.declare_queue(name, durable=True)
        await channel.default_exchange.publish(
            aio_pika.Message(
                b"hello",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id="m-1",
                content_type="application/json",
            ),
            routing_key=name,
        )
        assert (await asyncio.to_thread(rabbit.list_queues))[name] == 1

        message = await queue.get(timeout=5)
        assert message.body == b"hello"
        assert message.message_id == "m-1"
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        await message.ack()
        await queue.delete(if_unused=False, if_empty=False)
    assert name not in await asyncio.to_thread(rabbit.list_queues)


async def test_stop_app_outage_then_start_app_recovery(rabbit: RabbitNode) -> None:
    name = _queue_name()
    connection, watch = await _robust(rabbit.amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, durable=True)
        await channel.default_exchange.publish(_persistent(b"before"), routing_key=name)

        await asyncio.to_thread(rabbit.stop_app)
        await asyncio.wait_for(watch.lost.wait(), 15)
        assert not connection.connected.is_set()
        assert not rabbit.is_amqp_up()
        with pytest.raises(CONNECT_ERRORS):
            await open_connection(rabbit.amqp_url, timeout=5)  # closes what a failed try made

        await asyncio.to_thread(rabbit.start_app)
        await asyncio.wait_for(watch.reconnected.wait(), 30)
        assert connection.connected.is_set()

        # the persistent message survived the outage; the restored channel works
        message = await queue.get(timeout=5)
        assert message.body == b"before"
        await message.ack()
        await channel.default_exchange.publish(_persistent(b"after"), routing_key=name)
        message = await queue.get(timeout=5)
        assert message.body == b"after"
        await message.ack()
        await queue.delete()
    finally:
        await connection.close()


async def test_close_all_connections_is_survived_by_robust_connection(rabbit: RabbitNode) -> None:
    connection, watch = await _robust(rabbit.amqp_url)
    try:
        await connection.channel()
        closed = await asyncio.to_thread(rabbit.close_all_connections, "test says so")
        assert closed >= 1
        await asyncio.wait_for(watch.lost.wait(), 10)
        await asyncio.wait_for(watch.reconnected.wait(), 20)
        await _roundtrip(connection, _queue_name())
    finally:
        await connection.close()


async def test_proxy_cut_and_restore(rabbit: RabbitNode) -> None:
    async with TcpProxy(target=(rabbit.host, rabbit.port)) as proxy:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        connection, watch = await _robust(url)
        try:
            name = _queue_name()
            await _roundtrip(connection, name)
            assert proxy.connections == 1

            proxy.cut()
            await asyncio.wait_for(watch.lost.wait(), 10)
            with pytest.raises(CONNECT_ERRORS):
                await open_connection(url, timeout=3)
            await asyncio.sleep(1.5)  # several reconnect attempts, all refused
            assert not watch.reconnected.is_set()
            assert proxy.connections == 0

            proxy.restore()
            await asyncio.wait_for(watch.reconnected.wait(), 15)
            await _roundtrip(connection, name)
            assert proxy.connections == 1
            await (await connection.channel()).queue_delete(name)
        finally:
            await connection.close()


async def test_proxy_blackhole_is_detected_by_heartbeat(rabbit: RabbitNode) -> None:
    async with TcpProxy(target=(rabbit.host, rabbit.port)) as proxy:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/?heartbeat=1"
        connection, watch = await _robust(url)
        try:
            proxy.blackhole()  # no RST, no FIN: only missed heartbeats reveal it
            await asyncio.wait_for(watch.lost.wait(), 15)
            proxy.restore()
            await asyncio.wait_for(watch.reconnected.wait(), 20)
            await _roundtrip(connection, _queue_name())
        finally:
            await connection.close()


#: How long a queue exists before the node is killed. RabbitMQ 3.10 answers queue.declare-ok
#: before the declaration is safe from a SIGKILL: of 45 queues declared, published to and
#: killed at once (the disk busy with other writes), 4 were gone after the restart, and in 1 of
#: 12 runs of this test without the pause the queue came back empty; with this pause between the declare and the publish, and the kill still straight after the
#: confirm, 0 of 20 (and 0 of 20 pausing after the confirm instead). Queues a bridge relies on
#: exist long before a crash; what this test checks is that a confirmed message survives one.
DECLARED_BEFORE_KILL = 2.0


async def test_kill_and_restart_keeps_durable_data(rabbit: RabbitNode) -> None:
    name = _queue_name()
    connection, watch = await _robust(rabbit.amqp_url)
    try:
        channel = await connection.channel()
        await channel.declare_queue(name, durable=True)
        await asyncio.sleep(DECLARED_BEFORE_KILL)
        # confirmed, then killed at once: no time for anything but what the confirm promised
        await channel.default_exchange.publish(_persistent(b"crash-safe"), routing_key=name)

        old_pids = rabbit.beam_pids()
        await asyncio.to_thread(rabbit.kill)
        assert not rabbit.beam_pids()
        await asyncio.wait_for(watch.lost.wait(), 10)

        await asyncio.to_thread(rabbit.restart)
        assert rabbit.beam_pids() and rabbit.beam_pids() != old_pids
        await asyncio.wait_for(watch.reconnected.wait(), 30)
        # a classic queue recovers its index after the restart: its count may read 0 at first
        for _ in range(60):
            if (await asyncio.to_thread(rabbit.list_queues)).get(name) == 1:
                break
            await asyncio.sleep(0.5)
        assert (await asyncio.to_thread(rabbit.list_queues))[name] == 1
        queue = await channel.get_queue(name)
        message = await queue.get(timeout=5)
        assert message.body == b"crash-safe"
        await message.ack()
        await queue.delete()
    finally:
        await connection.close()


async def test_proxy_half_close_and_cut_without_broker() -> None:
    """Plain echo server: bytes flow both ways, EOF is passed on as a half-close."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # until the client's half-close
        writer.write(data.upper())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    target = ("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        async with TcpProxy(target=target) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"abc" * 50_000)
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b"ABC" * 50_000
            writer.close()

            # cut: a live connection is reset, new ones are dropped right after accept
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            await asyncio.sleep(0.1)
            proxy.cut()
            assert await asyncio.wait_for(_read_or_reset(reader), 5) == b""
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            assert await asyncio.wait_for(_read_or_reset(reader), 5) == b""
            writer.close()

            # held connections go through once restored
            proxy.cut(hold_new=True)
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"held")
            writer.write_eof()
            read = asyncio.ensure_future(reader.read())
            await asyncio.sleep(0.2)
            assert not read.done()
            proxy.restore()
            assert await asyncio.wait_for(read, 5) == b"HELD"
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def _read_or_reset(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.read()
    except ConnectionResetError:
        return b""
