"""A small billing service on `bridge.consumer`: counts incoming messages per chat.

Declare its queue once (quorum, single active consumer, dead-letters to notifications.dead):

    bridge queues declare billing.incoming \\
        --bind incomingMessageReceived --bind outgoingMessageStatus

Run it (Ctrl-C or SIGTERM stops it after the message in hand; unacked ones return to the
queue):

    AMQP_URL=amqp://guest:guest@127.0.0.1:5672/ QUEUE=billing.incoming \\
        .venv/bin/python examples/billing_consumer.py

Every incoming message adds one to its chat's count (chat from the bridge's `x-chat-id` header);
every outgoing status is logged. A body that does not decode is rejected, which dead-letters
it; anything else is acknowledged. Redeliveries of an acknowledged notification carry the same
`message_id` and are skipped by the consumer's dedup.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections import Counter

import msgspec

from bridge.consumer import Consumer, Delivery

log = logging.getLogger("billing")


class Status(msgspec.Struct):
    """The part of a GREEN-API `outgoingMessageStatus` body billing needs."""

    idMessage: str = ""
    status: str = ""


def handle(delivery: Delivery, counts: Counter[str]) -> None:
    """Count or log one notification; raises on a body that does not decode."""
    if delivery.routing_key == "outgoingMessageStatus":
        status = delivery.json(Status)
        log.info("status chat=%s message=%s %s", delivery.chat_id, status.idMessage, status.status)
        return
    delivery.json()  # must be JSON, else it is rejected (dead-lettered)
    chat = delivery.chat_id or "(no chat)"
    counts[chat] += 1
    log.info("incoming chat=%s instance=%s total=%d", chat, delivery.instance, counts[chat])


async def main(
    amqp_url: str,
    queue: str,
    *,
    stop: asyncio.Event | None = None,
    limit: int | None = None,
    prefetch: int = 32,
) -> Counter[str]:
    """Consume until `stop` is set or `limit` deliveries were handled; the counts per chat."""
    counts: Counter[str] = Counter()
    handled = 0
    async with Consumer(amqp_url, queue, prefetch=prefetch, dedup=10_000) as consumer:
        watcher = asyncio.create_task(_stop_on(stop, consumer)) if stop else None
        try:
            async for delivery in consumer:
                try:
                    handle(delivery, counts)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    log.warning("rejected %s: %s", delivery.message_id, exc)
                    await delivery.reject()
                else:
                    await delivery.ack()
                handled += 1
                if limit is not None and handled >= limit:
                    consumer.stop()
        finally:
            if watcher is not None:
                watcher.cancel()
        log.info("stopped: %d handled, %d duplicates skipped", handled, consumer.skipped)
    return counts


async def _stop_on(stop: asyncio.Event, consumer: Consumer) -> None:
    await stop.wait()
    consumer.stop()


def cli() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    queue = os.environ.get("QUEUE", "billing.incoming")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        counts = await main(url, queue, stop=stop)
        for chat, n in counts.most_common():
            print(f"{n:8d}  {chat}")

    asyncio.run(run())


if __name__ == "__main__":
    cli()
