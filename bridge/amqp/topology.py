"""The RabbitMQ objects the bridge relies on, as data, declared idempotently.

| object                    | kind                                                 |
|---------------------------|------------------------------------------------------|
| `notifications`           | topic, durable, alternate-exchange = unrouted        |
| `notifications.unrouted`  | fanout, durable, + quorum queue of the same name     |
| `notifications.invalid`   | fanout, durable, + quorum queue of the same name     |
| `notifications.ingest`    | fanout, durable, bound to `notifications` and to the archive |
| `notifications.archive`   | stream (`x-max-age`, `x-max-length-bytes`)           |

With the archive on (the default) the bridge publishes to `notifications.ingest`: that fanout
hands every message to the stream and, through an exchange-to-exchange binding, to
`notifications`, whose alternate exchange still takes what no consumer queue matched (checked
on RabbitMQ 3.10). One confirm covers every matched queue and the archive. With the archive
off, the bridge publishes to `notifications` directly; the ingest fanout and the stream, if an
earlier run declared them, are left alone.

A source's own `exchange` is declared like `notifications`, with its own ingest fanout bound to
the same archive. A conflicting existing object
(`PRECONDITION_FAILED`) is a `TopologyError`: a config problem, not something to retry.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractChannel

from bridge.config import AmqpConfig, ArchiveConfig
from bridge.errors import TopologyError

QUORUM = {"x-queue-type": "quorum"}
DEFAULT_ARCHIVE = ArchiveConfig()


class ExchangeSpec(NamedTuple):
    name: str
    kind: str
    arguments: dict[str, str]


class QueueSpec(NamedTuple):
    name: str
    bind_to: str


class ArchiveSpec(NamedTuple):
    """The stream and, per topic exchange, the fanout the bridge publishes to instead."""

    stream: str
    arguments: dict[str, str | int]
    ingest: dict[str, str]  # topic exchange -> its ingest fanout


class Topology(NamedTuple):
    exchanges: tuple[ExchangeSpec, ...]
    queues: tuple[QueueSpec, ...]
    archive: ArchiveSpec | None = None

    def publish_exchange(self, exchange: str) -> str:
        """Where a message meant for `exchange` is published: its ingest fanout, if any."""
        if self.archive is None:
            return exchange
        return self.archive.ingest.get(exchange, exchange)


def stream_arguments(archive: ArchiveConfig) -> dict[str, str | int]:
    return {
        "x-queue-type": "stream",
        "x-max-age": archive.max_age,
        "x-max-length-bytes": archive.max_length_bytes,
        "x-stream-max-segment-size-bytes": archive.max_segment_size_bytes,
    }


def topology(
    amqp: AmqpConfig,
    extra_exchanges: Iterable[str] = (),
    archive: ArchiveConfig = DEFAULT_ARCHIVE,
) -> Topology:
    """The objects to declare for this config (pure)."""
    main = {"alternate-exchange": amqp.unrouted_exchange}
    names = dict.fromkeys([amqp.exchange, *extra_exchanges])
    exchanges = [
        ExchangeSpec(amqp.unrouted_exchange, "fanout", {}),
        ExchangeSpec(amqp.invalid_exchange, "fanout", {}),
        *(ExchangeSpec(name, "topic", main) for name in names),
    ]
    queues = [
        QueueSpec(amqp.unrouted_exchange, amqp.unrouted_exchange),
        QueueSpec(amqp.invalid_exchange, amqp.invalid_exchange),
    ]
    spec = None
    if archive.enabled:
        ingest = {name: archive.ingest_for(name) for name in names}
        exchanges += [ExchangeSpec(fanout, "fanout", {}) for fanout in ingest.values()]
        spec = ArchiveSpec(archive.stream_for(amqp), stream_arguments(archive), ingest)
    return Topology(tuple(exchanges), tuple(queues), spec)


async def declare(channel: AbstractChannel, topo: Topology, *, timeout: float) -> None:
    """Declare every object; `TopologyError` when the broker holds a different one."""
    try:
        for ex in topo.exchanges:
            await channel.declare_exchange(
                ex.name,
                aio_pika.ExchangeType(ex.kind),
                durable=True,
                arguments=dict(ex.arguments),
                timeout=timeout,
            )
        for q in topo.queues:
            queue = await channel.declare_queue(
                q.name, durable=True, arguments=dict(QUORUM), timeout=timeout
            )
            await queue.bind(q.bind_to, routing_key="#", timeout=timeout)
        if topo.archive is not None:
            await _declare_archive(channel, topo.archive, timeout=timeout)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise TopologyError(f"RabbitMQ holds a conflicting object: {exc}") from None
    except aiormq.exceptions.ChannelAccessRefused as exc:
        raise TopologyError(f"RabbitMQ refused access while declaring topology: {exc}") from None


async def _declare_archive(channel: AbstractChannel, spec: ArchiveSpec, *, timeout: float) -> None:
    stream = await channel.declare_queue(
        spec.stream, durable=True, arguments=dict(spec.arguments), timeout=timeout
    )
    for topic, fanout in spec.ingest.items():
        await stream.bind(fanout, routing_key="", timeout=timeout)
        destination = await channel.get_exchange(topic, ensure=False)
        await destination.bind(fanout, routing_key="", timeout=timeout)
