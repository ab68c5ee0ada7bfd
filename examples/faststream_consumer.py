"""A bridge queue read with a FastStream subscriber: FastStream decodes the body by its
`content_type` (`application/json`) into the handler's `dict` argument; the bridge's metadata is
on the `RabbitMessage`.

    AMQP_URL=amqp://guest:guest@127.0.0.1:5672/ QUEUE=billing.incoming \\
        python examples/faststream_consumer.py
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from faststream import FastStream
from faststream.rabbit import Channel, RabbitBroker, RabbitQueue
from faststream.rabbit.annotations import RabbitMessage

Handled = Callable[[dict[str, Any], RabbitMessage], None]


def app(amqp_url: str, queue: str, then: Handled = lambda _n, _m: None) -> RabbitBroker:
    broker = RabbitBroker(amqp_url)

    # the queue is the operator's (`bridge queues declare`): consumed, never declared here;
    # one message at a time, so the handler sees them in the queue's order
    @broker.subscriber(RabbitQueue(queue, declare=False), channel=Channel(prefetch_count=1))
    async def on_notification(notification: dict[str, Any], message: RabbitMessage) -> None:
        headers = message.headers
        print(message.raw_message.type, headers["x-instance"], headers.get("x-chat-id"))
        then(notification, message)  # acked when the handler returns

    return broker


async def main(
    amqp_url: str, queue: str, *, limit: int, timeout: float | None = None
) -> list[tuple[dict[str, Any], RabbitMessage]]:
    """Consume until `limit` messages were handled; each (notification, message)."""
    handled: list[tuple[dict[str, Any], RabbitMessage]] = []
    enough = asyncio.Event()

    def then(notification: dict[str, Any], message: RabbitMessage) -> None:
        handled.append((notification, message))
        if len(handled) >= limit:
            enough.set()

    async with app(amqp_url, queue, then) as broker:
        await broker.start()
        await asyncio.wait_for(enough.wait(), timeout)
    return handled


if __name__ == "__main__":
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    asyncio.run(FastStream(app(url, os.environ.get("QUEUE", "billing.incoming"))).run())
