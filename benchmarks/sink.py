"""Where `bridge bench compare` checks that notifications arrived, and how late.

Every variant publishes to the same run's exchange; a quorum queue bound `#` to it (a consumer
queue as `bridge queues declare` makes them) takes everything, and one no-ack consumer counts
what arrives by the run letter that begins each body's `idMessage`, so each variant's
notifications are told apart. A polled notification's `idMessage` also carries the wall-clock
time it was put in the provider's queue (`poll_tag`): its latency is that to its arrival here,
measured the same way whoever moved it.
"""

from __future__ import annotations

import asyncio
import re
import time
from array import array
from collections import Counter
from typing import Final

import aio_pika
import aiormq
from aiormq.abc import DeliveredMessage

from bridge.amqp.topology import QUORUM, declare, topology
from bridge.config import AmqpConfig

__all__ = ["Sink", "poll_tag"]

_ID_MESSAGE: Final = re.compile(rb'"idMessage":\s*"([^"]+)"')
_STAMP_DIGITS: Final = 16


def poll_tag(letter: str) -> str:
    """An `idMessage` prefix (append a counter) carrying the enqueue time, µs since the epoch."""
    return f"{letter}{time.time_ns() // 1000:0{_STAMP_DIGITS}d}"


class Sink:
    """The run's topology (the bridge's own, declared up front) plus the sink queue, and the
    consumer on it. `count(letter)`, `latencies(letter)` (seconds, for poll tags)."""

    def __init__(self, amqp_url: str, prefix: str, *, timed: str = "") -> None:
        self.amqp_url = amqp_url
        self.prefix = prefix
        self.exchange = f"{prefix}.notifications"
        self.queue = f"{prefix}.sink"
        self.timed = timed.encode()
        self._counts: Counter[int] = Counter()
        self._latencies: dict[int, array[float]] = {ord(c): array("d") for c in timed}
        self.unreadable = 0
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._consumer: tuple[aiormq.Channel, str] | None = None

    async def start(self) -> None:
        config = AmqpConfig(
            url=self.amqp_url,
            exchange=self.exchange,
            unrouted_exchange=f"{self.prefix}.unrouted",
            invalid_exchange=f"{self.prefix}.invalid",
        )
        self._connection = await aio_pika.connect(self.amqp_url)
        channel = await self._connection.channel()
        await declare(channel, topology(config), timeout=10)
        queue = await channel.declare_queue(self.queue, durable=True, arguments=dict(QUORUM))
        await queue.bind(self.exchange, routing_key="#")
        underlay = await channel.get_underlay_channel()
        assert isinstance(underlay, aiormq.Channel)
        ok = await underlay.basic_consume(self.queue, self._on_message, no_ack=True)
        self._consumer = (underlay, ok.consumer_tag or "")

    async def _on_message(self, message: DeliveredMessage) -> None:
        arrived = time.time_ns() // 1000
        found = _ID_MESSAGE.search(message.body)
        if found is None:
            self.unreadable += 1
            return
        tag = found[1]
        letter = tag[0]
        self._counts[letter] += 1
        if letter in self.timed:
            stamp = tag[1 : 1 + _STAMP_DIGITS]
            if stamp.isdigit():
                self._latencies[letter].append((arrived - int(stamp)) / 1e6)

    def count(self, letter: str) -> int:
        return self._counts[ord(letter)]

    def latencies(self, letter: str) -> array[float]:
        return self._latencies[ord(letter)]

    async def wait_for(self, letter: str, count: int, timeout: float) -> bool:
        """Whether `count` notifications of `letter` arrived within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.count(letter) < count:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def close(self) -> None:
        """Stop consuming and delete the sink queue (the caller deletes the topology)."""
        if self._connection is None:
            return
        try:
            if self._consumer is not None:
                underlay, tag = self._consumer
                await underlay.basic_cancel(tag)
            channel = await self._connection.channel()
            await channel.queue_delete(self.queue)
        finally:
            await self._connection.close()
            self._connection = None
