"""The RabbitMQ objects the bridge relies on, as data, declared idempotently.

| object                    | kind                                                 |
|---------------------------|------------------------------------------------------|
| `notifications`           | topic, durable, alternate-exchange = unrouted        |
| `notifications.unrouted`  | fanout, durable, + quorum queue of the same name     |
| `notifications.invalid`   | fanout, durable, + quorum queue of the same name     |

A source's own `exchange` is declared like `notifications`. A conflicting existing object
(`PRECONDITION_FAILED`) is a `TopologyError`: a config problem, not something to retry.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractChannel

from bridge.config import AmqpConfig
from bridge.errors import TopologyError

QUORUM = {"x-queue-type": "quorum"}


class ExchangeSpec(NamedTuple):
    name: str
    kind: str
    arguments: dict[str, str]


class QueueSpec(NamedTuple):
    name: str
    bind_to: str


class Topology(NamedTuple):
    exchanges: tuple[ExchangeSpec, ...]
    queues: tuple[QueueSpec, ...]


def topology(amqp: AmqpConfig, extra_exchanges: Iterable[str] = ()) -> Topology:
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
    return Topology(tuple(exchanges), tuple(queues))


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
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise TopologyError(f"RabbitMQ holds a conflicting object: {exc}") from None
    except aiormq.exceptions.ChannelAccessRefused as exc:
        raise TopologyError(f"RabbitMQ refused access while declaring topology: {exc}") from None
