"""Both consumer examples against the real broker: they count real messages and stop cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import aio_pika
import aiormq.exceptions
import pytest

from bridge.tools import queues
from examples import billing_consumer, plain_aiopika_consumer
from tests.conftest import AMQP_URL

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

EXAMPLES = [
    pytest.param(billing_consumer, id="bridge.consumer"),
    pytest.param(plain_aiopika_consumer, id="plain-aio-pika"),
]
A, B = "79001111111@c.us", "79002222222@c.us"


class Box:
    """A private exchange, consumer queue and dead-letter queue, deleted afterwards."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel) -> None:
        self.channel = channel
        prefix = f"t{uuid.uuid4().hex[:10]}"
        self.exchange = f"{prefix}.notifications"
        self.dead = f"{prefix}.dead"
        self.queue = f"{prefix}.billing.incoming"

    async def publish(self, key: str, body: bytes, mid: str, chat: str | None = None) -> None:
        headers: dict[str, Any] = {
            "x-provider": "greenapi", "x-instance": "1101000001", "x-event": key,
            "x-ingest": "poll", "x-received-at": 1700000000000,
        }  # fmt: skip
        if chat is not None:
            headers["x-chat-id"] = chat
            headers["x-message-key"] = f"1101000001:{chat}:{mid}"
        message = aio_pika.Message(
            body, message_id=mid, headers=headers, delivery_mode=2, timestamp=1700000000,
            content_type="application/json", type=key,
        )  # fmt: skip
        exchange = await self.channel.get_exchange(self.exchange, ensure=False)
        await exchange.publish(message, routing_key=key)

    async def ready(self, queue: str) -> int:
        declared = await self.channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count


@pytest.fixture
async def box() -> AsyncIterator[Box]:
    connection = await aio_pika.connect(AMQP_URL)
    box = Box(await connection.channel())
    await box.channel.declare_exchange(box.exchange, "topic", durable=True)
    todo = queues.plan(
        box.queue, ["incomingMessageReceived", "outgoingMessageStatus"],
        exchange=box.exchange, dead_letter=box.dead,
    )  # fmt: skip
    await queues.declare(AMQP_URL, todo)
    try:
        yield box
    finally:
        for delete, name in ((0, box.queue), (0, box.dead), (1, box.dead), (1, box.exchange)):
            async with connection.channel() as channel:
                with contextlib.suppress(aiormq.exceptions.AMQPError):
                    if delete == 0:
                        await channel.queue_delete(name)
                    else:
                        await channel.exchange_delete(name)
        await connection.close()


def incoming(n: int) -> bytes:
    return b'{"typeWebhook":"incomingMessageReceived","idMessage":"M%d"}' % n


@pytest.mark.parametrize("example", EXAMPLES)
async def test_example_counts_per_chat_skips_repeats_and_dead_letters_bad_bodies(
    box: Box, example: ModuleType
) -> None:
    for n, chat in enumerate([A, A, B, A, B]):
        await box.publish("incomingMessageReceived", incoming(n), f"m{n}", chat)
    await box.publish("incomingMessageReceived", incoming(0), "m0", A)  # republished
    status = b'{"typeWebhook":"outgoingMessageStatus","idMessage":"M0","status":"read"}'
    await box.publish("outgoingMessageStatus", status, "s0", A)
    await box.publish("incomingMessageReceived", b"not json", "bad", B)
    counts = await asyncio.wait_for(example.main(AMQP_URL, box.queue, limit=7), 15)
    assert counts == {A: 3, B: 2}
    dead = await box.channel.get_queue(box.dead, ensure=False)
    rejected = await dead.get(timeout=5)
    assert rejected.message_id == "bad"
    await rejected.ack()
    assert await box.ready(box.queue) == 0


@pytest.mark.parametrize("example", EXAMPLES)
async def test_example_stops_cleanly_on_its_stop_event(box: Box, example: ModuleType) -> None:
    stop = asyncio.Event()
    running = asyncio.create_task(example.main(AMQP_URL, box.queue, stop=stop, prefetch=2))
    for n in range(6):
        await box.publish("incomingMessageReceived", incoming(n), f"m{n}", A)
    for _ in range(100):
        if await box.ready(box.queue) == 0:
            break
        await asyncio.sleep(0.05)
    stop.set()
    counts = await asyncio.wait_for(running, 10)
    # Nothing lost: what was not counted before the stop is back in the queue.
    remaining = 0
    for _ in range(50):
        remaining = await box.ready(box.queue)
        if counts[A] + remaining == 6:
            break
        await asyncio.sleep(0.05)
    assert counts[A] + remaining == 6


@pytest.mark.parametrize("example", EXAMPLES)
async def test_example_stops_at_once_when_idle(box: Box, example: ModuleType) -> None:
    stop = asyncio.Event()
    running = asyncio.create_task(example.main(AMQP_URL, box.queue, stop=stop))
    await asyncio.sleep(0.2)
    stop.set()
    assert await asyncio.wait_for(running, 5) == {}
