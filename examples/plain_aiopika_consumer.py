"""The billing consumer with plain aio-pika (no `bridge` import), for services that cannot
depend on the bridge package.

What it shows:

- the queue is declared by the operator (`bridge queues declare billing.incoming --bind
  incomingMessageReceived --bind outgoingMessageStatus`) and only checked here (`passive=True`);
- `prefetch`: at most that many unacknowledged messages are in flight to this consumer;
- manual ack after handling, `reject()` (dead-letters) for a body that does not decode;
- dedup on `message_id`: the bridge gives every redelivery of a notification the same id, and
  so does RabbitMQ after a lost connection, so a bounded LRU of acked ids skips repeats;
- the chat comes from the `x-chat-id` header (also the key `--shards N --by chat` hashes on).

    AMQP_URL=amqp://guest:guest@127.0.0.1:5672/ QUEUE=billing.incoming \\
        python examples/plain_aiopika_consumer.py
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections import Counter, OrderedDict

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueueIterator

log = logging.getLogger("billing.plain")


class RecentIds:
    """The last `size` acknowledged message ids (least recently seen evicted)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, message_id: str | None) -> bool:
        if message_id is None or message_id not in self._ids:
            return False
        self._ids.move_to_end(message_id)
        return True

    def add(self, message_id: str | None) -> None:
        if message_id is None or self.size == 0:
            return
        self._ids[message_id] = None
        self._ids.move_to_end(message_id)
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)


def chat_of(message: AbstractIncomingMessage) -> str:
    chat = message.headers.get("x-chat-id")
    if isinstance(chat, bytes):
        chat = chat.decode()
    return chat if isinstance(chat, str) else "(no chat)"


async def main(
    amqp_url: str,
    queue: str,
    *,
    stop: asyncio.Event | None = None,
    limit: int | None = None,
    prefetch: int = 32,
    dedup: int = 10_000,
) -> Counter[str]:
    """Consume until `stop` is set or `limit` messages were handled; the counts per chat."""
    counts: Counter[str] = Counter()
    recent = RecentIds(dedup)
    handled = 0
    connection = await aio_pika.connect_robust(amqp_url)  # reconnects by itself
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        source = await channel.declare_queue(queue, passive=True)
        async with source.iterator() as messages:
            watcher = asyncio.create_task(_close_on(stop, messages)) if stop else None
            async for message in messages:
                if recent.seen(message.message_id):
                    await message.ack()  # a redelivery of one already handled
                    continue
                try:
                    body = json.loads(message.body)
                except ValueError:
                    await message.reject()  # requeue=False: dead-lettered
                else:
                    if message.routing_key == "incomingMessageReceived":
                        counts[chat_of(message)] += 1
                    ident = body.get("idMessage", "") if isinstance(body, dict) else ""
                    log.info("%s chat=%s %s", message.routing_key, chat_of(message), ident)
                    await message.ack()
                    recent.add(message.message_id)
                handled += 1
                if limit is not None and handled >= limit:
                    break
            if watcher is not None:
                watcher.cancel()
    return counts  # leaving the blocks cancels the consumer; unacked messages return


async def _close_on(stop: asyncio.Event, messages: AbstractQueueIterator) -> None:
    """Stop consuming when `stop` is set: the loop ends after the message in hand."""
    await stop.wait()
    await messages.close()


def cli() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    queue = os.environ.get("QUEUE", "billing.incoming")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        for chat, n in (await main(url, queue, stop=stop)).most_common():
            print(f"{n:8d}  {chat}")

    asyncio.run(run())


if __name__ == "__main__":
    cli()
