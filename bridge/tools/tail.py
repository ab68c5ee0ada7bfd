"""`bridge tail`: print what arrives on a binding, the "is my webhook arriving?" view.

    bridge tail --bind incomingMessageReceived --bind 'messages.*'
    bridge tail --bind '#' --json --count 10 | jq .body

Tail binds its own queue to the exchange: server-named, classic (`x-queue-type: classic`),
exclusive and auto-delete, capped at 10,000 messages (oldest dropped). A topic exchange copies
every message to each bound queue, so consumer queues keep receiving everything; tail's copies
are acknowledged after printing and its queue vanishes with it, so nothing is ever requeued
into a real queue.

One side effect: while tail runs, a message that matches *only* tail's binding counts as
routed and does not reach the alternate exchange (`notifications.unrouted`). To watch what no
consumer takes, tail that exchange instead: `bridge tail --exchange notifications.unrouted
--bind '#'`.

Output: on a terminal (or `--pretty`) a readable block per message: time, routing key,
provider/instance, message_id, chat and message key, the body pretty-printed (cut at 40
lines). Otherwise (or `--json`) one JSON object per line: `routing_key`, `message_id`,
`timestamp` (epoch seconds, the provider's event time), `headers`, `body` (the JSON body,
or the body as a string when it is not JSON). `--count N` exits after N messages; Ctrl-C and
SIGTERM exit cleanly with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, NamedTuple, TextIO

import aiormq.exceptions
import msgspec
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from bridge import arguments
from bridge.aio import first
from bridge.amqp.connection import Target, connect, mask_urls
from bridge.errors import ConfigError
from bridge.tools.queues import broker_target

__all__ = ["Seen", "add_arguments", "format_json", "format_pretty", "run", "seen", "tail"]

EXIT_CONFIG: Final = 2
EXIT_BROKER: Final = 1
MAX_LINES: Final = 40
MAX_LENGTH: Final = 10_000
TIMEOUT: Final = 10.0
#: seconds between a lost connection and the next connect
RECONNECT_PAUSE: Final = 0.5

#: the command's arguments (defined in bridge.arguments, with every command's)
add_arguments = arguments.tail


class Seen(NamedTuple):
    """One message as tail shows it (pure data)."""

    routing_key: str
    message_id: str | None
    timestamp: int | None  # epoch seconds
    headers: dict[str, Any]  # JSON-able values
    body: bytes


def jsonable(value: object) -> Any:
    """A header value as JSON can carry it (bytes as text, datetimes as ISO 8601)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def epoch(value: datetime | None) -> int | None:
    if value is None:
        return None
    return int((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp())


def seen(message: AbstractIncomingMessage) -> Seen:
    return Seen(
        message.routing_key or "",
        message.message_id,
        epoch(message.timestamp),
        {str(k): jsonable(v) for k, v in message.headers.items()},
        message.body,
    )


def parse_body(body: bytes) -> Any:
    """The body as JSON when it parses, else as text."""
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body.decode("utf-8", "replace")


def format_json(item: Seen) -> str:
    """One line: routing_key, message_id, timestamp, headers, body."""
    record = {
        "routing_key": item.routing_key,
        "message_id": item.message_id,
        "timestamp": item.timestamp,
        "headers": item.headers,
        "body": parse_body(item.body),
    }
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)


def _when(item: Seen) -> str:
    received = item.headers.get("x-received-at")
    if item.timestamp is not None:
        moment = datetime.fromtimestamp(item.timestamp, UTC)
    elif isinstance(received, int):
        moment = datetime.fromtimestamp(received / 1000, UTC)
    else:
        return "-"
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def format_pretty(item: Seen, max_lines: int = MAX_LINES) -> str:
    """A readable block: a header line, the bridge's identifiers, the body cut at max_lines."""
    headers = item.headers
    source = "/".join(str(headers[k]) for k in ("x-provider", "x-instance") if k in headers)
    lines = [f"── {_when(item)}  {item.routing_key}  {source or '-'}"]
    ids = [f"id {item.message_id or '-'}"]
    ids += [
        f"{label} {headers[k]}"
        for k, label in (("x-chat-id", "chat"), ("x-message-key", "key"), ("x-error", "error"))
        if k in headers
    ]
    lines.append("   " + "  ".join(ids))
    body = parse_body(item.body)
    text = body if isinstance(body, str) else json.dumps(body, indent=2, ensure_ascii=False)
    body_lines = text.splitlines() or [""]
    if len(body_lines) > max_lines:
        hidden = len(body_lines) - max_lines
        body_lines = [*body_lines[:max_lines], f"… {hidden} more lines"]
    lines += ["   " + line for line in body_lines]
    return "\n".join(lines)


async def tail(
    url: Target,
    exchange: str,
    keys: Sequence[str],
    *,
    out: TextIO,
    pretty: bool = False,
    count: int | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> int:
    """Print messages until `count` were printed or `stop` is set; returns how many.

    `url` may name a cluster's nodes (a list, or comma-separated): tail connects to the first
    that answers and, when its connection is lost, binds a new queue on the next live node
    (what was published in between is not shown). `ConfigError` when the exchange does not
    exist. `on_ready(queue_name)` runs each time the queue is bound: from then on every
    matching message is printed.
    """
    stop = stop or asyncio.Event()
    printed = 0
    render = format_pretty if pretty else format_json

    def show(message: AbstractIncomingMessage) -> None:
        nonlocal printed
        text = render(seen(message))
        printed += 1
        if count is not None and printed >= count:
            stop.set()
        try:
            out.write(text + "\n")
            out.flush()
        except BrokenPipeError:  # e.g. `| head`
            stop.set()

    while not stop.is_set():
        connection = await connect(url, "tail", timeout=TIMEOUT)
        try:
            lost = await _follow(connection, exchange, keys, show, stop)
            if on_ready is not None:
                on_ready(lost.queue)
            await first(stop, lost.event)
        finally:
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await connection.close()
        if not stop.is_set():
            await asyncio.sleep(RECONNECT_PAUSE)  # the broker may be closing every connection
    return printed


class _Bound(NamedTuple):
    queue: str
    event: asyncio.Event  # set when the connection or channel is lost


async def _follow(
    connection: AbstractConnection,
    exchange: str,
    keys: Sequence[str],
    show: Callable[[AbstractIncomingMessage], None],
    stop: asyncio.Event,
) -> _Bound:
    """Tail's own queue on this connection, bound and consumed."""
    lost = asyncio.Event()
    connection.close_callbacks.add(lambda *_: lost.set())
    channel = await connection.channel()
    channel.close_callbacks.add(lambda *_: lost.set())
    await channel.set_qos(prefetch_count=100)
    try:
        source = await channel.get_exchange(exchange, ensure=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        raise ConfigError(f"exchange {exchange!r} does not exist") from None
    queue = await channel.declare_queue(
        None,
        exclusive=True,
        auto_delete=True,
        timeout=TIMEOUT,
        arguments={"x-queue-type": "classic", "x-max-length": MAX_LENGTH},
    )
    for key in dict.fromkeys(keys):
        await queue.bind(source, key, timeout=TIMEOUT)

    async def on_message(message: AbstractIncomingMessage) -> None:
        if stop.is_set():
            return  # left unacked: it dies with tail's queue
        show(message)
        await message.ack()

    await queue.consume(on_message)
    return _Bound(queue.name, lost)


def _fail(message: str, status: int) -> int:
    print(f"bridge tail: {message}", file=sys.stderr)
    return status


def run(args: argparse.Namespace) -> int:
    if args.count is not None and args.count < 1:
        return _fail("--count must be at least 1", EXIT_CONFIG)
    try:
        url, exchange = broker_target(args)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    pretty = args.pretty or (not args.json and sys.stdout.isatty())
    keys: list[str] = args.bind

    def ready(queue: str) -> None:
        shown = ", ".join(repr(k) for k in keys)
        print(f"tail: {exchange} [{shown}] -> {queue}; Ctrl-C to stop", file=sys.stderr)

    async def main() -> int:
        stop = asyncio.Event()
        if threading.current_thread() is threading.main_thread():
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
        return await tail(
            url,
            exchange,
            keys,
            out=sys.stdout,
            pretty=pretty,
            count=args.count,
            stop=stop,
            on_ready=ready,
        )

    try:
        asyncio.run(main())
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    except (*CONNECTION_EXCEPTIONS, TimeoutError, OSError) as exc:
        return _fail(f"broker {mask_urls(url)}: {exc!r}", EXIT_BROKER)
    except KeyboardInterrupt:
        pass
    return 0
