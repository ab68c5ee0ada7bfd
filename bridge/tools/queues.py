"""`bridge queues declare`: consumer queues on the notifications exchange.

    bridge queues declare billing.incoming --bind incomingMessageReceived --bind ack
    bridge queues declare chats --bind '#' --shards 4 --by chat

A consumer queue is durable, quorum (`x-queue-type`), single-active-consumer (FIFO for one
consumer at a time), dead-letters to `notifications.dead` (a durable fanout exchange with a
durable quorum queue of the same name, declared too) and has `x-delivery-limit` (default 20):
a message returned that often is dead-lettered instead of looping forever. It is bound to the
notifications exchange with every `--bind` key (topic patterns such as `#` or `messages.*`).

`--shards N --by chat` spreads the keys' messages over N such queues `NAME.0 … NAME.{N-1}`
through an `x-consistent-hash` exchange `NAME.hash` (plugin `rabbitmq_consistent_hash_exchange`)
hashing the `x-chat-id` header: every message of one chat lands in the same shard, in order, and
each shard has its own single active consumer. Messages without `x-chat-id` hash on the missing
header, so they all land in one and the same shard.

On a fresh broker (the notifications exchange does not exist yet) the bridge's own topology is
declared first, as `bridge run` declares it from the config (`--config`, else the defaults),
with `--exchange` declared like a source's own exchange: so consumer queues can be set up
before the bridge first runs.

Idempotent: objects that exist as asked are reported as `exists`; nothing existing is changed
or unbound. An object declared differently (`PRECONDITION_FAILED`) is an error naming it and
every argument that differs, exit status 2: each mismatch the broker names is adjusted in a
probe declare (on a fresh channel: the broker closes it on a mismatch) until the probe matches.

Output: a table on a terminal, else one JSON object per line (`--json` forces it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final, NamedTuple

import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from bridge.amqp import topology as bridge_topology
from bridge.amqp.connection import open_connection
from bridge.arguments import DEAD_LETTER, DELIVERY_LIMIT, queues_declare
from bridge.config import AmqpConfig, ArchiveConfig, load, mask_url
from bridge.errors import ConfigError, TopologyError

HASH_HEADER: Final = "x-chat-id"
EXIT_CONFIG: Final = 2
EXIT_BROKER: Final = 1
TIMEOUT: Final = 10.0

#: the command's arguments (defined in bridge.arguments, with every command's)
add_arguments = queues_declare


class Decl(NamedTuple):
    name: str
    kind: str  # an exchange type, or "queue"
    arguments: dict[str, Any]


class Binding(NamedTuple):
    source: str  # an exchange
    destination: str
    routing_key: str
    to_exchange: bool = False


class Plan(NamedTuple):
    """What to declare, in order (pure data)."""

    source: str  # the notifications exchange: exists, or the bridge's topology declares it
    exchanges: tuple[Decl, ...]
    queues: tuple[Decl, ...]
    bindings: tuple[Binding, ...]


class Row(NamedTuple):
    kind: str  # exchange | queue | binding
    name: str
    state: str  # created | exists | bound
    detail: dict[str, Any]


def consumer_arguments(dead_letter: str, delivery_limit: int) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-single-active-consumer": True,
        "x-dead-letter-exchange": dead_letter,
        "x-delivery-limit": delivery_limit,
    }


def plan(
    name: str,
    binds: Sequence[str],
    *,
    exchange: str,
    dead_letter: str = DEAD_LETTER,
    delivery_limit: int = DELIVERY_LIMIT,
    shards: int | None = None,
    by: str | None = None,
) -> Plan:
    """The objects for one `queues declare`; `ConfigError` for arguments that cannot work."""
    if not name.strip() or name.startswith("amq."):
        raise ConfigError(f"queue name {name!r}: must be non-empty and not start with 'amq.'")
    if not binds:
        raise ConfigError("at least one --bind KEY is needed")
    if any(not key or len(key.encode()) > 255 for key in binds):
        raise ConfigError("--bind: a routing key is 1..255 bytes")
    if delivery_limit < 1:
        raise ConfigError("--delivery-limit must be at least 1")
    if not dead_letter or dead_letter in (name, exchange):
        raise ConfigError("--dead-letter-exchange must be its own non-empty name")
    if by is not None and shards is None:
        raise ConfigError("--by needs --shards N")
    if shards is not None:
        if not 1 <= shards <= 1024:
            raise ConfigError("--shards must be between 1 and 1024")
        if (by or "chat") != "chat":
            raise ConfigError(f"--by {by}: only 'chat' is supported (hashing on {HASH_HEADER})")
    keys = tuple(dict.fromkeys(binds))
    arguments = consumer_arguments(dead_letter, delivery_limit)
    exchanges = [Decl(dead_letter, "fanout", {})]
    queues = [Decl(dead_letter, "queue", {"x-queue-type": "quorum"})]
    bindings = [Binding(dead_letter, dead_letter, "")]
    if shards is None:
        queues.append(Decl(name, "queue", arguments))
        bindings += [Binding(exchange, name, key) for key in keys]
    else:
        hashed = f"{name}.hash"
        exchanges.insert(0, Decl(hashed, "x-consistent-hash", {"hash-header": HASH_HEADER}))
        bindings += [Binding(exchange, hashed, key, to_exchange=True) for key in keys]
        for n in range(shards):
            queues.append(Decl(f"{name}.{n}", "queue", arguments))
            bindings.append(Binding(hashed, f"{name}.{n}", "1"))  # weight 1
    return Plan(exchange, tuple(exchanges), tuple(queues), tuple(bindings))


# -- conflicts ---------------------------------------------------------------------------------

_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for (?P<kind>queue|exchange) '.*' in vhost '.*': "
    r"received (?P<received>.+?) but current is (?P<current>.+?)\s*$"
)
_TYPED = re.compile(r"the value '(?P<value>.*)' of type '(?P<type>\w+)'")
_INTS = frozenset(
    {
        "byte",
        "short",
        "signedint",
        "long",
        "unsignedbyte",
        "unsignedshort",
        "unsignedint",
        "timestamp",
    }
)


class Difference(NamedTuple):
    argument: str
    wanted: str  # as the broker names it: "'quorum'" or "none"
    found: str
    found_value: Any  # the existing value, typed (None when unset); ... when unknown


def _value(text: str, like: Any) -> tuple[str, Any]:
    """Broker text of a value -> (display, typed value); `like` types the short form."""
    if text == "none":
        return "none", None
    typed = _TYPED.fullmatch(text)
    if typed:
        value, kind = typed["value"], typed["type"]
    elif text.startswith("'") and text.endswith("'"):
        value = text[1:-1]
        kind = {bool: "bool", int: "long", float: "double"}.get(type(like), "longstr")
    else:
        return text, ...
    shown = f"'{value}'"
    if kind == "bool":
        return shown, value == "true"
    if kind in _INTS:
        return shown, int(value)
    if kind in ("float", "double"):
        return shown, float(value)
    return shown, value if kind in ("longstr", "shortstr") else ...


def parse_inequivalent(text: str, wanted: dict[str, Any] | None = None) -> Difference | None:
    """The first difference named by a PRECONDITION_FAILED reply text, or None."""
    match = _INEQUIVALENT.search(text)
    if match is None:
        return None
    arg = match["arg"]
    like = (wanted or {}).get(arg, arg == "durable" or None)
    received, _ = _value(match["received"], like)
    found, value = _value(match["current"], like)
    return Difference(arg, received, found, value)


def describe_conflict(kind: str, name: str, differences: Sequence[Difference], raw: str) -> str:
    lines = [f"{kind} {name!r} already exists with different settings:"]
    lines += [f"  {d.argument}: wanted {d.wanted}, found {d.found}" for d in differences]
    if not differences:
        lines.append(f"  {raw}")
    if kind == "queue" and any(d.argument == "x-queue-type" for d in differences):
        lines.append("  (an existing classic queue cannot become a quorum queue)")
    lines.append(
        f"`queues declare` never changes an existing {kind}: delete it or choose another name."
    )
    return "\n".join(lines)


@contextlib.asynccontextmanager
async def _channel(connection: AbstractConnection) -> AsyncIterator[AbstractChannel]:
    """A fresh channel: RabbitMQ closes the channel on NOT_FOUND and PRECONDITION_FAILED."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        yield channel
    finally:
        if not channel.is_closed:
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await channel.close()


async def _differences(
    connection: AbstractConnection, queue: Decl, first: Difference | None
) -> list[Difference]:
    """Every argument of an existing queue that differs from `queue`, by probing declares."""
    probe, durable, found = dict(queue.arguments), True, list[Difference]()
    difference = first
    while difference is not None and len(found) < 16:
        if difference.found_value is ... or difference.argument in {d.argument for d in found}:
            break
        found.append(difference)
        if difference.argument == "durable":
            durable = bool(difference.found_value)
        elif not difference.argument.startswith("x-"):
            break
        elif difference.found_value is None:
            probe.pop(difference.argument, None)
        else:
            probe[difference.argument] = difference.found_value
        async with _channel(connection) as channel:
            try:
                await channel.declare_queue(
                    queue.name, durable=durable, arguments=probe, timeout=TIMEOUT
                )
                break
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                difference = parse_inequivalent(str(exc), probe)
    return found


async def _exists(connection: AbstractConnection, kind: str, name: str) -> bool:
    async with _channel(connection) as channel:
        try:
            if kind == "queue":
                await channel.declare_queue(name, passive=True, timeout=TIMEOUT)
            else:
                await channel.get_exchange(name, ensure=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
        except aiormq.exceptions.ChannelLockedResource:
            raise TopologyError(
                f"queue {name!r} exists as an exclusive queue of another connection"
            ) from None
    return True


async def _declare_exchange(connection: AbstractConnection, ex: Decl) -> Row:
    state = "exists" if await _exists(connection, "exchange", ex.name) else "created"
    async with _channel(connection) as channel:
        try:
            await channel.declare_exchange(
                ex.name, ex.kind, durable=True, arguments=ex.arguments, timeout=TIMEOUT
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            first = parse_inequivalent(str(exc), {"type": ex.kind, **ex.arguments})
            raise TopologyError(
                describe_conflict("exchange", ex.name, [first] if first else [], str(exc))
            ) from None
        except aiormq.exceptions.ConnectionCommandInvalid as exc:
            if "unknown exchange type" in str(exc):
                raise TopologyError(
                    f"exchange {ex.name!r}: RabbitMQ has no {ex.kind!r} exchange type; --shards"
                    " needs the plugin: rabbitmq-plugins enable rabbitmq_consistent_hash_exchange"
                ) from None
            raise
    return Row("exchange", ex.name, state, {"type": ex.kind, "arguments": ex.arguments})


async def _declare_queue(connection: AbstractConnection, queue: Decl) -> Row:
    state = "exists" if await _exists(connection, "queue", queue.name) else "created"
    async with _channel(connection) as channel:
        try:
            declared = await channel.declare_queue(
                queue.name, durable=True, arguments=queue.arguments, timeout=TIMEOUT
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            first = parse_inequivalent(str(exc), queue.arguments)
            found = await _differences(connection, queue, first)
            raise TopologyError(describe_conflict("queue", queue.name, found, str(exc))) from None
        result = declared.declaration_result
    detail = {
        "arguments": queue.arguments,
        "messages": result.message_count,
        "consumers": result.consumer_count,
    }
    return Row("queue", queue.name, state, detail)


async def _declare_own(connection: AbstractConnection, topo: bridge_topology.Topology) -> list[Row]:
    """The bridge's own objects (what `bridge run` declares), reported like the plan's."""
    rows: list[Row] = []
    for ex in topo.exchanges:
        state = "exists" if await _exists(connection, "exchange", ex.name) else "created"
        rows.append(Row("exchange", ex.name, state, {"type": ex.kind, "arguments": ex.arguments}))
    for q in topo.queues:
        state = "exists" if await _exists(connection, "queue", q.name) else "created"
        detail = {"arguments": dict(bridge_topology.QUORUM), "messages": 0, "consumers": 0}
        rows.append(Row("queue", q.name, state, detail))
    if topo.archive is not None:  # the stream `bridge replay` reads
        name = topo.archive.stream
        state = "exists" if await _exists(connection, "queue", name) else "created"
        detail = {"arguments": dict(topo.archive.arguments), "messages": 0, "consumers": 0}
        rows.append(Row("queue", name, state, detail))
    async with _channel(connection) as channel:
        await bridge_topology.declare(channel, topo, timeout=TIMEOUT)
    return rows


async def apply(
    connection: AbstractConnection, todo: Plan, own: bridge_topology.Topology | None = None
) -> list[Row]:
    """Declare the plan — first `own`, the bridge's topology, if `todo.source` does not exist
    yet; `TopologyError` on any conflict (nothing existing is changed)."""
    rows: list[Row] = []
    if not await _exists(connection, "exchange", todo.source):
        if own is None:
            raise TopologyError(
                f"exchange {todo.source!r} does not exist: `bridge run` declares it"
                " (or pass --exchange / --config)"
            )
        rows += await _declare_own(connection, own)
    rows += [await _declare_exchange(connection, ex) for ex in todo.exchanges]
    rows += [await _declare_queue(connection, q) for q in todo.queues]
    async with _channel(connection) as channel:
        for bind in todo.bindings:
            if bind.to_exchange:
                destination = await channel.get_exchange(bind.destination, ensure=False)
                await destination.bind(bind.source, bind.routing_key, timeout=TIMEOUT)
            else:
                queue = await channel.get_queue(bind.destination, ensure=False)
                await queue.bind(bind.source, bind.routing_key, timeout=TIMEOUT)
            detail = {"source": bind.source, "routing_key": bind.routing_key}
            rows.append(Row("binding", bind.destination, "bound", detail))
    return rows


# -- output --------------------------------------------------------------------------------------


def _summary(row: Row) -> str:
    detail = row.detail
    if row.kind == "binding":
        return f"from {detail['source']} key {detail['routing_key']!r}"
    args = ", ".join(f"{k.removeprefix('x-')}={v}" for k, v in detail["arguments"].items())
    if row.kind == "exchange":
        return f"{detail['type']} {args}".rstrip()
    return f"{args}; {detail['messages']} messages, {detail['consumers']} consumers"


def format_rows(rows: Sequence[Row], *, table: bool) -> str:
    """A table for a terminal, or one JSON object per line."""
    if not table:
        return "\n".join(
            json.dumps({"kind": r.kind, "name": r.name, "state": r.state, **r.detail}) for r in rows
        )
    width = max([len(r.name) for r in rows] + [4])
    lines = [f"{'KIND':<9} {'NAME':<{width}} {'STATE':<8} DETAIL"]
    lines += [f"{r.kind:<9} {r.name:<{width}} {r.state:<8} {_summary(r)}" for r in rows]
    return "\n".join(lines)


# -- command -------------------------------------------------------------------------------------


def broker_target(args: argparse.Namespace) -> tuple[str, str]:
    """(AMQP URL, exchange) from the arguments, else the config (`ConfigError` if invalid)."""
    amqp = AmqpConfig() if args.amqp_url else load(args.config, secrets=False).config.amqp
    return args.amqp_url or amqp.url, args.exchange or amqp.exchange


def own_topology(args: argparse.Namespace, exchange: str) -> bridge_topology.Topology:
    """What `bridge run` declares for the config (the defaults, with `--amqp-url`), and
    `exchange` declared like a source's own exchange if the config does not name it."""
    if args.amqp_url:
        amqp, extra, archive = AmqpConfig(), [], ArchiveConfig()
    else:
        cfg = load(args.config, secrets=False).config
        amqp, extra = cfg.amqp, [s.exchange for s in cfg.sources if s.exchange]
        archive = cfg.archive
    return bridge_topology.topology(amqp, [*extra, exchange], archive)


async def declare(url: str, todo: Plan, own: bridge_topology.Topology | None = None) -> list[Row]:
    connection = await open_connection(url, timeout=TIMEOUT)
    try:
        return await apply(connection, todo, own)
    finally:
        with contextlib.suppress(*CONNECTION_EXCEPTIONS):
            await connection.close()


def run(args: argparse.Namespace) -> int:
    try:
        url, exchange = broker_target(args)
        todo = plan(
            args.name,
            args.bind,
            exchange=exchange,
            dead_letter=args.dead_letter_exchange,
            delivery_limit=args.delivery_limit,
            shards=args.shards,
            by=args.by,
        )
        rows = asyncio.run(declare(url, todo, own_topology(args, exchange)))
    except ConfigError as exc:
        print(f"bridge queues declare: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (*CONNECTION_EXCEPTIONS, TimeoutError, OSError) as exc:
        print(f"bridge queues declare: broker {mask_url(url)}: {exc!r}", file=sys.stderr)
        return EXIT_BROKER
    print(format_rows(rows, table=sys.stdout.isatty() and not args.json))
    return 0
