"""A consumer helper for services that read the bridge's queues.

::

    async with Consumer(amqp_url, "billing.incoming", prefetch=32, dedup=10_000) as consumer:
        async for delivery in consumer:
            try:
                await handle(delivery.json())
            except TemporaryError:
                await delivery.nack(requeue=True)   # back to the head of the queue
            except Exception:
                await delivery.reject()             # dead-letters (notifications.dead)
            else:
                await delivery.ack()

The queue must exist (`bridge queues declare billing.incoming --bind …`): it is declared
passively at start, and a missing queue raises `QueueNotFound`.

Settling: every delivery is settled exactly once with `ack()`, `nack(requeue=…)` or `reject()`.
Deliveries left unsettled go back to the queue when the consumer closes (RabbitMQ requeues
whatever a closed channel held). A quorum queue counts every return: after its
`x-delivery-limit` (20 by `bridge queues declare`) a message is dead-lettered, so a poison
message cannot loop forever. Order: a requeued message goes back to the head of the queue, but
the `prefetch - 1` messages already sent to this consumer come first; use `prefetch=1` where a
retried message must be handled before the next one.

Dedup: the ids of the last `dedup` acknowledged messages are kept (LRU). A later delivery with
one of them is acknowledged and skipped without being yielded (`consumer.skipped`). The bridge
gives every redelivery of a notification the same `message_id`, and so does RabbitMQ when it
redelivers after a lost connection: an ack the broker never received brings the message back,
and the dedup catches it. The id is remembered when `ack()` is called, even if the ack could
not be sent. For business-level dedup across restarts use `message_key` (`x-message-key`).

Reconnect: when the connection or channel is lost the consumer reconnects with back-off
(`bridge.retry.Backoff`), declares the queue passively again and resumes (a silent network
partition is noticed by AMQP heartbeats: `?heartbeat=10` in the URL shortens the default).
Deliveries buffered from the lost channel are dropped (RabbitMQ redelivers them); settling a
delivery whose channel is gone is a no-op counted in `consumer.stats["lost"]`.

A RabbitMQ cluster: give the nodes' URLs (a list, or one string, comma-separated) instead of
one URL. Each connect tries them in turn (in an order shuffled once per process), so when the
consumer's node goes it resumes on a live one; the queue should be a quorum queue (as `bridge
queues declare` makes them), which survives the loss of a minority of the nodes.

Stop: `stop()` (synchronous, safe from a signal handler) or leaving the `async with` ends the
iteration after the delivery being handled; the consumer is cancelled (`basic.cancel`) and
the connection closed, returning every unsettled delivery to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Final, TypeVar, overload

import aiormq.exceptions
import msgspec
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
    ConsumerTag,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from bridge.aio import first, sleep_unless
from bridge.amqp.connection import Target, connect, mask_urls
from bridge.dedup import RecentIds
from bridge.errors import ConfigError
from bridge.logs import get_logger
from bridge.retry import Backoff

__all__ = ["Consumer", "Delivery", "QueueNotFound", "SeenIds"]

T = TypeVar("T")
log = get_logger(__name__)
_RECONNECT: Final = Backoff(initial=0.5, maximum=15.0, floor=0.05)
_LOST: Final = (aiormq.exceptions.ChannelInvalidStateError, *CONNECTION_EXCEPTIONS)


class QueueNotFound(ConfigError):
    """The queue to consume does not exist."""


SeenIds = RecentIds  # the consumer's dedup: the ids of the last `dedup` acks


def header_text(headers: Mapping[str, object], name: str) -> str | None:
    """A header as text (str or UTF-8 bytes), else None."""
    value = headers.get(name)
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None


class Delivery:
    """One message from the queue, settled once with `ack`, `nack` or `reject`.

    `body` is the bytes as published; `message_id` is the same for every redelivery;
    `timestamp` is the provider's event time; `provider`, `instance`, `event`, `chat_id` and
    `message_key` are the bridge's `x-…` headers (None when absent). `message` is the
    underlying aio-pika message, for anything else (settle through the Delivery).
    """

    __slots__ = (
        "_consumer",
        "_settled",
        "body",
        "chat_id",
        "event",
        "headers",
        "instance",
        "message",
        "message_id",
        "message_key",
        "provider",
        "redelivered",
        "routing_key",
        "timestamp",
    )

    def __init__(self, message: AbstractIncomingMessage, consumer: Consumer) -> None:
        headers: Mapping[str, object] = message.headers
        self.message = message
        self.body: bytes = message.body
        self.routing_key: str = message.routing_key or ""
        self.message_id: str | None = message.message_id
        self.redelivered: bool = bool(message.redelivered)
        self.timestamp: datetime | None = message.timestamp
        self.headers = headers
        self.provider = header_text(headers, "x-provider")
        self.instance = header_text(headers, "x-instance")
        self.event = header_text(headers, "x-event")
        self.chat_id = header_text(headers, "x-chat-id")
        self.message_key = header_text(headers, "x-message-key")
        self._consumer = consumer
        self._settled = False

    @property
    def settled(self) -> bool:
        return self._settled

    @overload
    def json(self) -> Any: ...
    @overload
    def json(self, type: type[T]) -> T: ...
    def json(self, type: Any = Any) -> Any:
        """The body decoded as JSON, optionally into a msgspec type (`msgspec.DecodeError` /
        `msgspec.ValidationError` when it does not fit)."""
        return msgspec.json.decode(self.message.body, type=type)

    async def ack(self) -> None:
        """Processed: remove it from the queue; its id is remembered for dedup."""
        if self.message_id and not self._settled:
            self._consumer.seen.add(self.message_id)
        await self._settle("acked", self.message.ack)

    async def nack(self, *, requeue: bool = True) -> None:
        """Not processed: back to the queue (`requeue=True`) or dead-lettered."""
        await self._settle("nacked", lambda: self.message.nack(requeue=requeue))

    async def reject(self) -> None:
        """Cannot be processed: dead-letter it (`basic.reject` without requeue)."""
        await self._settle("rejected", lambda: self.message.reject(requeue=False))

    async def _settle(self, outcome: str, send: Callable[[], Awaitable[None]]) -> None:
        if self._settled:
            raise RuntimeError(f"delivery {self.message_id} is already settled")
        self._settled = True
        stats = self._consumer.stats
        stats[outcome] += 1
        try:
            await send()
        except _LOST:
            stats["lost"] += 1
            log.warning(
                "consumer.settle_lost",
                queue=self._consumer.queue,
                outcome=outcome,
                message_id=self.message_id,
            )

    def __repr__(self) -> str:
        return f"<Delivery {self.routing_key} {self.message_id}>"


_WAKE: Final = None  # put in the buffer to wake the iterator (stop or failure)


class Consumer:
    """Iterate over a queue's deliveries with manual settling, dedup and reconnects."""

    def __init__(
        self,
        url: Target,
        queue: str,
        *,
        prefetch: int = 32,
        dedup: int = 10_000,
        connect_timeout: float = 10.0,
        backoff: Backoff = _RECONNECT,
    ) -> None:
        if prefetch < 1:
            raise ValueError("prefetch must be >= 1")
        self.queue = queue
        self.seen = RecentIds(dedup)
        #: delivered, acked, nacked, rejected, skipped, lost (settles not sent), reconnects
        self.stats: Counter[str] = Counter()
        self._url = url
        self._prefetch = prefetch
        self._connect_timeout = connect_timeout
        self._backoff = backoff
        self._buffer: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()
        self._stopping = asyncio.Event()
        self._failure: BaseException | None = None
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._consuming: tuple[AbstractQueue, ConsumerTag] | None = None
        self._supervisor: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Consumer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect, check the queue exists, start consuming. Raises `QueueNotFound`."""
        if self._supervisor is not None:
            raise RuntimeError("consumer already started")
        lost = await self._connect()
        self._supervisor = asyncio.create_task(self._supervise(lost), name=f"consumer {self.queue}")

    def stop(self) -> None:
        """End the iteration after the current delivery (safe from a signal handler)."""
        if not self._stopping.is_set():
            self._stopping.set()
            self._buffer.put_nowait(_WAKE)

    @property
    def skipped(self) -> int:
        """Deliveries acked and skipped because their `message_id` was acked recently."""
        return self.stats["skipped"]

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def close(self) -> None:
        """Stop, cancel the consumer and close the connection: unsettled deliveries return."""
        self.stop()
        if self._supervisor is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self._disconnect()

    # -- iteration --------------------------------------------------------------------------

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> Delivery:
        while True:
            if self._failure is not None:
                raise self._failure
            if self._stopping.is_set():
                raise StopAsyncIteration
            message = await self._buffer.get()
            if message is _WAKE:
                continue
            if _channel_gone(message):
                continue  # from a lost channel: RabbitMQ redelivers it
            self.stats["delivered"] += 1
            delivery = Delivery(message, self)
            if not self.seen.seen(message.message_id):
                return delivery
            await delivery._settle("skipped", message.ack)

    # -- connection ---------------------------------------------------------------------------

    async def _connect(self) -> asyncio.Event:
        """One connection, channel and consumer; the event is set when either is lost."""
        connection = await connect(self._url, "consumer", timeout=self._connect_timeout, log=log)
        lost = asyncio.Event()
        try:
            connection.close_callbacks.add(lambda *_: lost.set())
            channel = await connection.channel()
            channel.close_callbacks.add(lambda *_: lost.set())
            await channel.set_qos(prefetch_count=self._prefetch)
            try:
                queue = await channel.declare_queue(self.queue, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                raise QueueNotFound(
                    f"queue {self.queue!r} does not exist: declare it with "
                    f"`bridge queues declare {self.queue} --bind <routing key>`"
                ) from None
            tag = await queue.consume(self._on_message)
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        self._connection, self._channel = connection, channel
        self._consuming = (queue, tag)
        return lost

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._buffer.put_nowait(message)

    async def _supervise(self, lost: asyncio.Event) -> None:
        url = mask_urls(self._url)
        try:
            while await first(self._stopping, lost) is lost:  # a stop wins a tie
                self.stats["reconnects"] += 1
                await self._disconnect()
                log.warning("consumer.lost", queue=self.queue, url=url)
                attempt = 0
                while True:
                    if await sleep_unless(self._stopping, self._backoff.delay(attempt)):
                        return
                    try:
                        lost = await self._connect()
                    except (*CONNECTION_EXCEPTIONS, TimeoutError, OSError) as exc:
                        attempt += 1
                        log.warning(
                            "consumer.connect_failed",
                            queue=self.queue,
                            url=url,
                            error=type(exc).__name__,
                        )
                        continue
                    log.info("consumer.reconnected", queue=self.queue)
                    break
            await self._cancel()
        except Exception as exc:
            self._failure = exc
            self._buffer.put_nowait(_WAKE)

    async def _cancel(self) -> None:
        """basic.cancel: no new deliveries; the channel stays open to settle the current one."""
        consuming, self._consuming = self._consuming, None
        if consuming is not None and self._channel is not None and not self._channel.is_closed:
            queue, tag = consuming
            with contextlib.suppress(*_LOST, TimeoutError):
                await queue.cancel(tag, timeout=self._connect_timeout)

    async def _disconnect(self) -> None:
        connection, channel = self._connection, self._channel
        self._connection = self._channel = None
        self._consuming = None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()  # cancels the consumer; unacked deliveries return
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(Exception):
                await connection.close()


def _channel_gone(message: AbstractIncomingMessage) -> bool:
    try:
        message.channel  # noqa: B018 - raises once the channel is closed
    except aiormq.exceptions.ChannelInvalidStateError:
        return True
    return False
