"""Reading the archive, a RabbitMQ stream: shared by `bridge replay` and `bridge audit`.

A stream is read by a consumer that names where to start (`x-stream-offset`: here a
timestamp, so RabbitMQ starts at the first chunk written at or after it) and acknowledges what
it got: the acknowledgements only grant credit, nothing is removed. The prefetch bounds what
RabbitMQ sends ahead. A stream never ends: the caller decides where to stop (`bridge replay`
at an end marker it appended before reading, `bridge audit` at the first message newer than
its start or when nothing more comes).

Times: the bridge's `x-received-at` header (epoch milliseconds) is the notification's time;
the stream's chunk timestamps only choose where to start, `SKEW` earlier to absorb the clocks
of several bridge replicas and of the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import aiormq
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from aiormq.abc import DeliveredMessage

from bridge.errors import BridgeError

#: Start reading this much before the requested time; messages before it are skipped.
SKEW = timedelta(minutes=1)
#: Deliveries RabbitMQ sends ahead of our acknowledgements (a stream consumer needs one).
PREFETCH = 500

_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


class ArchiveError(BridgeError):
    """The archive cannot be read to its end: missing stream, lost connection, silence."""


class ArchiveIdle(ArchiveError):
    """Nothing arrived for the idle timeout."""


def parse_when(text: str, now: datetime) -> datetime:
    """`2h`, `30m`, `1d12h`, `90s` (that long before `now`) or an ISO 8601 time (UTC when
    it names no zone); ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match and any(match.groups()):
        days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
        return now - timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"not a duration (2h, 30m, 1d) nor an ISO time (2026-01-31T10:00Z): {text!r}"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def received_at_ms(headers: Mapping[str, Any] | None) -> int | None:
    """The bridge's `x-received-at` (epoch ms), None for a message the bridge did not write."""
    value = (headers or {}).get("x-received-at")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def epoch_ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


async def exists(connection: aio_pika.abc.AbstractConnection, kind: str, name: str) -> bool:
    """Whether the queue or exchange exists (a passive declare, on a channel of its own)."""
    channel = await connection.channel()
    try:
        if kind == "queue":
            await channel.declare_queue(name, passive=True, timeout=10)
        else:
            await channel.declare_exchange(name, passive=True, timeout=10)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return False
    with contextlib.suppress(*CONNECTION_EXCEPTIONS):
        await channel.close()
    return True


async def read_stream(
    channel: aiormq.abc.AbstractChannel,
    stream: str,
    *,
    start: datetime | int,
    idle: float,
    prefetch: int = PREFETCH,
) -> AsyncGenerator[DeliveredMessage, None]:
    """The stream's messages from `start - SKEW` on (or from offset `start`), each
    acknowledged when the next is asked for. `ArchiveIdle` when nothing came for `idle`
    seconds, `ArchiveError` when the channel or connection is lost."""
    inbox: asyncio.Queue[DeliveredMessage] = asyncio.Queue()
    await channel.basic_qos(prefetch_count=prefetch)
    ok = await channel.basic_consume(
        stream,
        inbox.put,
        no_ack=False,
        arguments={"x-stream-offset": start - SKEW if isinstance(start, datetime) else start},
    )
    closing = channel.closing  # the channel's own future: awaited, never cancelled here
    try:
        while True:
            getter = asyncio.ensure_future(inbox.get())
            done, _ = await asyncio.wait(
                {getter, closing}, timeout=idle, return_when=asyncio.FIRST_COMPLETED
            )
            if getter not in done:
                getter.cancel()
                if closing in done:
                    raise ArchiveError(f"lost the connection to RabbitMQ: {_reason(closing)}")
                raise ArchiveIdle(f"nothing arrived from {stream} for {idle:g} s")
            message = getter.result()
            yield message
            try:
                await channel.basic_ack(message.delivery_tag or 0)
            except (*CONNECTION_EXCEPTIONS, aiormq.exceptions.AMQPError) as exc:
                raise ArchiveError(f"lost the connection to RabbitMQ: {exc!r}") from None
    finally:
        if not channel.is_closed and ok.consumer_tag:
            with contextlib.suppress(Exception):
                await channel.basic_cancel(ok.consumer_tag)


def _reason(closing: asyncio.Future[Any]) -> str:
    if closing.cancelled():
        return "closed"
    exc = closing.exception()
    return f"{type(exc).__name__}: {exc}" if exc is not None else "closed"
