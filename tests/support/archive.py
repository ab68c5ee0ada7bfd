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
from bridge.tools.archive import ArchiveIdle, read_stream
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
    names: Names, url: str, archive: ArchiveConfig | None = None
) -> AsyncIterator[AmqpPublisher]:
    """The bridge's publisher on the `names` topology (the archive on unless told)."""
    amqp = amqp_config(names, url)
    pub = AmqpPublisher(amqp, topology(amqp, (), archive or ArchiveConfig()))
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


async def read_archive(url: str, stream: str, *, idle: float = 3.0) -> list[DeliveredMessage]:
    """Everything in the stream (from an hour ago), until nothing more comes for `idle` s."""
    connection = await aio_pika.connect(url)
    out: list[DeliveredMessage] = []
    async with connection:
        channel = await (await connection.channel()).get_underlay_channel()
        assert isinstance(channel, aiormq.Channel)
        start = datetime.now(UTC) - timedelta(hours=1)
        with contextlib.suppress(ArchiveIdle):
            async for message in read_stream(channel, stream, start=start, idle=idle):
                out.append(message)
    return out


async def queue_count(url: str, queue: str) -> int:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        count = declared.declaration_result.message_count
        return int(count or 0)


async def drain_queue(url: str, queue: str) -> list[AbstractIncomingMessage]:
    """Every message now in `queue`, acked."""
    connection = await aio_pika.connect(url)
    out: list[AbstractIncomingMessage] = []
    async with connection:
        channel = await connection.channel()
        q = await channel.declare_queue(queue, passive=True)
        while (message := await q.get(fail=False, timeout=10)) is not None:
            out.append(message)
            await message.ack()
    return out
