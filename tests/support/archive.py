"""Helpers for the archive tests: publish notifications through the bridge's publisher, read
the stream back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage
from aiormq.abc import DeliveredMessage

from bridge.amqp.publisher import AmqpPublisher
from bridge.amqp.topology import topology
from bridge.config import AmqpConfig, ArchiveConfig
from bridge.envelope import Outbound, message_id
from bridge.tools.archive import read_stream
from tests.support.harness import Names


def amqp_config(names: Names, url: str) -> AmqpConfig:
    return AmqpConfig(
        url=url,
        exchange=names.exchange,
        unrouted_exchange=names.unrouted,
        invalid_exchange=names.invalid,
        confirm_timeout=10,
    )


def note(
    names: Names,
    n: int,
    *,
    event: str = "incomingMessageReceived",
    instance: str = "1101000001",
    provider: str = "greenapi",
    at_ms: int | None = None,
    extra: dict[str, str] | None = None,
) -> Outbound:
    """One notification as the pipeline builds it (the headers replay and audit read)."""
    body = json.dumps({"typeWebhook": event, "n": n, **(extra or {})}).encode()
    headers = {
        "x-provider": provider,
        "x-instance": instance,
        "x-event": event,
        "x-ingest": "webhook",
        "x-received-at": at_ms if at_ms is not None else int(time.time() * 1000),
    }
    return Outbound(
        exchange=names.exchange,
        routing_key=event,
        body=body,
        message_id=message_id(provider, instance, body),
        event=event,
        timestamp=1700000000 + n,
        headers=headers,
        provider=provider,
        instance=instance,
    )


@contextlib.asynccontextmanager
async def publishing(
    names: Names, url: str, archive: ArchiveConfig | None = None, extra: tuple[str, ...] = ()
) -> AsyncIterator[AmqpPublisher]:
    """The bridge's publisher on the `names` topology (the archive on unless told), plus the
    sources' own exchanges `extra`."""
    amqp = amqp_config(names, url)
    pub = AmqpPublisher(amqp, topology(amqp, extra, archive or ArchiveConfig()))
    task = asyncio.create_task(pub.run())
    try:
        await asyncio.wait_for(pub.wait_ready(), 30)
        yield pub
    finally:
        await pub.close(drain_timeout=5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


async def publish_all(pub: AmqpPublisher, outs: list[Outbound], window: int = 64) -> None:
    """Publish in order with up to `window` unconfirmed (each confirmed, or this raises)."""
    for start in range(0, len(outs), window):
        await asyncio.gather(*(pub.publish(o) for o in outs[start : start + window]))


async def read_archive(url: str, stream: str, n: int) -> list[DeliveredMessage]:
    """The stream's messages (from an hour ago): the first `n` (30 s patience), and any that
    follow within half a second."""
    connection = await aio_pika.connect(url)
    out: list[DeliveredMessage] = []
    async with connection:
        channel = await (await connection.channel()).get_underlay_channel()
        assert isinstance(channel, aiormq.Channel)
        start = datetime.now(UTC) - timedelta(hours=1)
        messages = read_stream(channel, stream, start=start, idle=30)
        async with contextlib.aclosing(messages):
            async for message in messages:
                out.append(message)
                if len(out) >= n:
                    break
            with contextlib.suppress(TimeoutError, StopAsyncIteration):
                while True:
                    out.append(await asyncio.wait_for(anext(messages), 0.5))
    return out


async def queue_count(url: str, queue: str) -> int:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        count = declared.declaration_result.message_count
        return int(count or 0)


async def drain_queue(url: str, queue: str, n: int) -> list[AbstractIncomingMessage]:
    """The first `n` messages of `queue`, consumed and acked (30 s patience)."""
    connection = await aio_pika.connect(url)
    out: list[AbstractIncomingMessage] = []
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1000)
        q = await channel.declare_queue(queue, passive=True)
        got = asyncio.Event()

        async def on_message(message: AbstractIncomingMessage) -> None:
            out.append(message)
            await message.ack()
            if len(out) >= n:
                got.set()

        tag = await q.consume(on_message)
        await asyncio.wait_for(got.wait(), 30)
        await q.cancel(tag)
    return out
