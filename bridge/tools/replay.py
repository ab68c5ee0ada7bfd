"""`bridge replay`: republish notifications from the archive stream.

    bridge replay --since 2h --to-queue billing.incoming
    bridge replay --since 2026-01-31T09:00Z --until 2026-01-31T10:00Z \\
        --event incomingMessageReceived --instance 1101000001 --to-exchange notifications
    bridge replay --since 30m --provider evolution --dry-run

What is read: the stream from `--since` (a timestamp offset), each message the bridge wrote
whose `x-received-at` lies in [`--since`, `--until`] and matches every filter given
(`--event`, `--instance`, `--provider`; each repeatable, any of its values), at most `--limit`
of them. Where it stops: at `--until`, or at the stream's end as it was when the replay
started. That end is found exactly: before reading, the replay appends an end marker to the
stream (an empty message with header `x-replay-marker`, which replays and audits skip) and
stops when it reads it back — a busy stream does not keep it going, a quiet one does not make
it stop early.

Where it goes: `--to-queue Q` publishes through the default exchange, so only that queue's
consumer sees the replay; `--to-exchange X` publishes with each message's own routing key (or
`--routing-key`) to every queue bound there. Each message keeps its body, `message_id`,
properties and headers, plus `x-replayed-at` (epoch ms, the replay's start): a replay run
twice gives the same `message_id`s, for consumers to deduplicate on. Publishing is confirmed
and mandatory, with at most `--in-flight` messages unconfirmed (back-pressure on the reader).

A lost connection (a broker restart) is reopened for up to `RECONNECT_FOR` seconds and the
replay reads on, by stream offset, from the first message it had not seen confirmed: those in
flight at the cut may be published twice, with the same `message_id`.

`--dry-run` publishes nothing and prints the counts. The summary (read, matched, published,
failed, reconnects, seconds) goes to stdout; a progress bar to stderr on a terminal. Exit
status: 0 when every matched message was confirmed; 1 when any was nacked or returned; 3 when
the replay was cut short (no connection for `RECONNECT_FOR`, the end marker not read): it
never ends silently short — run it again, consumers see the same `message_id`s; 2 for bad
arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, TextIO

import aio_pika
import aiormq
import aiormq.exceptions
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from bridge import APP_ID
from bridge.amqp.connection import Target, connect
from bridge.arguments import replay as add_arguments
from bridge.config import AmqpConfig, ArchiveConfig, load, mask_url
from bridge.errors import ConfigError
from bridge.retry import Backoff
from bridge.tools.archive import (
    ArchiveError,
    ArchiveIdle,
    epoch_ms,
    exists,
    parse_when,
    read_stream,
    received_at_ms,
)

__all__ = ["MARKER", "Filters", "Plan", "Summary", "add_arguments", "replay", "run"]

#: The end marker's header: its value is the replay's own id.
MARKER = "x-replay-marker"
#: Headers RabbitMQ adds to stream deliveries: not part of the notification.
STREAM_HEADERS = frozenset({"x-stream-offset", "x-stream-chunk-timestamp"})
TIMEOUT = 10.0
CONFIRM_TIMEOUT = 30.0
#: Seconds without any delivery before the marker is read: the replay fails, loudly.
IDLE_TIMEOUT = 60.0
#: After a lost connection: reconnect for this long, then give up (loudly).
RECONNECT_FOR = 120.0
RECONNECT = Backoff(initial=0.5, maximum=5.0, floor=0.1)
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class Filters(NamedTuple):
    events: frozenset[str] = frozenset()
    instances: frozenset[str] = frozenset()
    providers: frozenset[str] = frozenset()

    def match(self, headers: dict[str, Any]) -> bool:
        wanted = (
            ("x-event", self.events),
            ("x-instance", self.instances),
            ("x-provider", self.providers),
        )
        return all(not want or _text(headers.get(key, "")) in want for key, want in wanted)


class Plan(NamedTuple):
    since: datetime
    until: datetime | None
    filters: Filters
    exchange: str  # "" = the default exchange (--to-queue)
    routing_key: str | None  # None = each message's own
    dry_run: bool = False
    limit: int | None = None
    in_flight: int = 256


@dataclass
class Summary:
    read: int = 0
    matched: int = 0
    published: int = 0
    failed: int = 0
    seconds: float = 0.0
    reconnects: int = 0
    complete: bool = False
    error: str | None = None
    failures: list[str] = field(default_factory=list)  # the first few, for the operator

    def text(self) -> str:
        line = (
            f"read {self.read}, matched {self.matched}, published {self.published},"
            f" failed {self.failed}, in {self.seconds:.1f} s"
        )
        if self.reconnects:
            line += f" ({self.reconnects} reconnects)"
        if not self.complete:
            line += f"\nINCOMPLETE: {self.error}; run it again (same message_ids)"
        return line

    def fail(self, detail: str) -> None:
        self.failed += 1
        if len(self.failures) < 10:
            self.failures.append(detail)


class Progress:
    """`replay ▕████    ▏ 52% read … matched … published …` on stderr, on a terminal only;
    the fraction is how far the messages' times are between --since and the end."""

    WIDTH = 30

    def __init__(self, start_ms: int, end_ms: int, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.enabled = self.out.isatty()
        self.start_ms, self.span = start_ms, max(end_ms - start_ms, 1)
        self._last = 0.0

    def update(self, at_ms: int, summary: Summary, *, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < 0.1):
            return
        self._last = now
        share = min(max((at_ms - self.start_ms) / self.span, 0.0), 1.0)
        bar = "█" * int(share * self.WIDTH)
        self.out.write(
            f"\rreplay ▕{bar:<{self.WIDTH}}▏ {share:4.0%} read {summary.read}"
            f" matched {summary.matched} published {summary.published}"
        )
        self.out.flush()

    def close(self) -> None:
        if self.enabled:
            self.out.write("\n")
            self.out.flush()


def properties(message: DeliveredMessage, replayed_at: int) -> aiormq.spec.Basic.Properties:
    """The message's own properties and headers (less the stream's), plus `x-replayed-at`.
    `user_id` is left out: RabbitMQ refuses it unless it is the replaying user."""
    p = message.header.properties
    headers = {k: v for k, v in (p.headers or {}).items() if k not in STREAM_HEADERS}
    headers["x-replayed-at"] = replayed_at
    return aiormq.spec.Basic.Properties(
        content_type=p.content_type,
        content_encoding=p.content_encoding,
        headers=headers,
        delivery_mode=p.delivery_mode,
        priority=p.priority,
        correlation_id=p.correlation_id,
        reply_to=p.reply_to,
        expiration=p.expiration,
        message_id=p.message_id,
        timestamp=p.timestamp,
        message_type=p.message_type,
        app_id=p.app_id,
    )


class _Position:
    """How far the replay got, in stream offsets, across reconnects."""

    def __init__(self) -> None:
        self.counted = -1  # the highest offset read and counted
        self.unconfirmed: set[int] = set()  # sent, no answer yet
        self.redo: set[int] = set()  # sent, but the connection went before the answer

    def resume_at(self) -> int:
        """Where to read on from after a lost connection."""
        self.redo |= self.unconfirmed
        self.unconfirmed.clear()
        return min(self.redo) if self.redo else self.counted + 1


class _Sender:
    """Confirmed, mandatory publishes with at most `in_flight` unconfirmed."""

    def __init__(
        self,
        channel: aiormq.abc.AbstractChannel,
        plan: Plan,
        summary: Summary,
        position: _Position,
        replayed_at: int,
    ) -> None:
        self.channel, self.plan, self.summary = channel, plan, summary
        self.position = position
        self.slots = asyncio.Semaphore(plan.in_flight)
        self.pending: set[asyncio.Task[None]] = set()
        self.replayed_at = replayed_at

    async def send(self, message: DeliveredMessage, offset: int) -> None:
        await self.slots.acquire()
        self.position.unconfirmed.add(offset)
        task = asyncio.create_task(self._publish(message, offset))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _publish(self, message: DeliveredMessage, offset: int) -> None:
        key = self.plan.routing_key
        if key is None:
            key = message.routing_key or ""
        mid = message.header.properties.message_id
        try:
            result = await self.channel.basic_publish(
                message.body,
                exchange=self.plan.exchange,
                routing_key=key,
                properties=properties(message, self.replayed_at),
                mandatory=True,
                timeout=CONFIRM_TIMEOUT,
            )
        except aiormq.exceptions.PublishError as exc:
            self.summary.fail(f"{mid}: returned: {exc}")
        except aiormq.exceptions.DeliveryError as exc:
            self.summary.fail(f"{mid}: nacked: {exc}")
        except TimeoutError:
            self.summary.fail(f"{mid}: no confirm within {CONFIRM_TIMEOUT:g} s")
        except (*CONNECTION_EXCEPTIONS, aiormq.exceptions.AMQPError):
            self.position.redo.add(offset)  # sent again after the reconnect
        else:
            if isinstance(result, Basic.Ack):
                self.summary.published += 1
            else:
                self.summary.fail(f"{mid}: {type(result).__name__}")
        finally:
            self.position.unconfirmed.discard(offset)
            self.slots.release()

    async def drain(self) -> None:
        if self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)


async def _check(connection: aio_pika.abc.AbstractConnection, stream: str, plan: Plan) -> None:
    if not await exists(connection, "queue", stream):
        raise ConfigError(f"the archive stream {stream!r} does not exist (is archive.enabled on?)")
    if plan.dry_run:
        return
    if plan.exchange == "":
        if not await exists(connection, "queue", plan.routing_key or ""):
            raise ConfigError(f"queue {plan.routing_key!r} does not exist")
    elif not await exists(connection, "exchange", plan.exchange):
        raise ConfigError(f"exchange {plan.exchange!r} does not exist")


class _Outage:
    """Since when the replay has been without a working session, and the back-off between
    attempts: a refused connection and a node that answers but cannot serve the stream yet
    (still recovering it) both wait, never loop tightly."""

    def __init__(self, reconnect_for: float) -> None:
        self.reconnect_for = reconnect_for
        self.since: float | None = None
        self.attempt = 0

    def begin(self) -> None:
        """A session that had read on was lost: a new outage."""
        self.since, self.attempt = time.monotonic(), 0

    async def wait(self) -> bool:
        """Back off before the next attempt; False once `reconnect_for` has passed."""
        assert self.since is not None
        if time.monotonic() - self.since > self.reconnect_for:
            return False
        await asyncio.sleep(RECONNECT.delay(self.attempt))
        self.attempt += 1
        return True


class _Replay:
    """One replay: its marker, position and counts, over one connection after another."""

    def __init__(self, stream: str, plan: Plan, out: TextIO | None) -> None:
        self.stream, self.plan, self.out = stream, plan, out
        self.summary = Summary()
        self.position = _Position()
        self.marker = uuid.uuid4().hex
        self.started: datetime | None = None  # set once the end marker is in the stream
        self.start: datetime | int = plan.since
        self.progress: Progress | None = None
        self.replayed_at = epoch_ms(datetime.now(UTC))

    async def session(self, connection: aio_pika.abc.AbstractConnection) -> None:
        """Read on from `start` over this connection; `ArchiveError` when it is lost."""
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        publisher = await channel.get_underlay_channel()
        if self.started is None:
            await _check(connection, self.stream, self.plan)
            await publisher.basic_publish(
                b"",
                exchange="",
                routing_key=self.stream,
                properties=aiormq.spec.Basic.Properties(
                    delivery_mode=2, app_id=APP_ID, headers={MARKER: self.marker}
                ),
                mandatory=True,
                timeout=CONFIRM_TIMEOUT,
            )
            self.started = datetime.now(UTC)
            end = epoch_ms(self.plan.until or self.started)
            self.progress = Progress(epoch_ms(self.plan.since), end, self.out)
        reader = await (await connection.channel()).get_underlay_channel()
        sender = _Sender(publisher, self.plan, self.summary, self.position, self.replayed_at)
        try:
            await self._copy(reader, sender)
        finally:
            await sender.drain()

    async def lost(self, exc: BaseException, outage: _Outage, *, read_on: bool) -> bool:
        """The session was lost: read on from where it was after a back-off; False when the
        broker has not come back within the outage's time."""
        summary = self.summary
        summary.error = f"lost the connection: {exc}"
        self.start = self.position.resume_at()
        summary.reconnects += 1
        if outage.since is None or read_on:
            outage.begin()
        if not await outage.wait():
            summary.error = f"{summary.error}; not back within {outage.reconnect_for:g} s"
            return False
        return True

    async def _copy(self, reader: aiormq.abc.AbstractChannel, sender: _Sender) -> None:
        plan, summary, position = self.plan, self.summary, self.position
        since, until = epoch_ms(plan.since), (epoch_ms(plan.until) if plan.until else None)
        messages = read_stream(reader, self.stream, start=self.start, idle=IDLE_TIMEOUT)
        async with contextlib.aclosing(messages):
            async for message in messages:
                headers = message.header.properties.headers or {}
                offset = _offset(headers)
                if offset <= position.counted:  # read before the connection was lost
                    if offset in position.redo:
                        position.redo.discard(offset)
                        await sender.send(message, offset)
                    continue
                position.counted = offset
                if _text(headers.get(MARKER, "")) == self.marker:
                    return
                at = received_at_ms(headers)
                if at is None:  # another replay's marker, or not a message of the bridge
                    continue
                if until is not None and at > until + 60_000:
                    return  # past the window (and any replica's clock skew)
                summary.read += 1
                if self.progress is not None:
                    self.progress.update(at, summary)
                if at < since or (until is not None and at > until):
                    continue
                if not plan.filters.match(headers):
                    continue
                summary.matched += 1
                if not plan.dry_run:
                    await sender.send(message, offset)
                if plan.limit is not None and summary.matched >= plan.limit:
                    return


def _offset(headers: dict[str, Any]) -> int:
    value = headers.get("x-stream-offset")
    return value if isinstance(value, int) else -1


async def replay(
    url: Target,
    stream: str,
    plan: Plan,
    *,
    out: TextIO | None = None,
    reconnect_for: float = RECONNECT_FOR,
) -> Summary:
    """Replay per `plan`. A connection lost after the start (a broker restart) is reopened
    for up to `reconnect_for` seconds and the replay goes on where it was; the summary says
    whether it got to the end (`complete`)."""
    run = _Replay(stream, plan, out)
    summary = run.summary
    started = time.monotonic()
    outage = _Outage(reconnect_for)
    try:
        while True:
            try:
                connection = await connect(url, "replay", timeout=TIMEOUT)
            except (*CONNECTION_EXCEPTIONS, TimeoutError) as exc:
                if outage.since is None:
                    raise
                if not await outage.wait():
                    summary.error = (
                        f"{summary.error}; no connection for {reconnect_for:g} s: {exc!r}"
                    )
                    break
                continue
            progress = run.position.counted
            try:
                await run.session(connection)
            except ArchiveIdle as exc:
                summary.error = f"{exc} before the end marker"
                break
            except (ArchiveError, *CONNECTION_EXCEPTIONS, aiormq.exceptions.AMQPError) as exc:
                if run.started is None:
                    raise
                if not await run.lost(exc, outage, read_on=run.position.counted > progress):
                    break
                continue
            else:
                summary.complete, summary.error = True, None
                break
            finally:
                with contextlib.suppress(*CONNECTION_EXCEPTIONS, aiormq.exceptions.AMQPError):
                    await connection.close()
    finally:
        if run.progress is not None:
            run.progress.close()
        summary.seconds = time.monotonic() - started
    unanswered = summary.matched - summary.published - summary.failed
    if summary.complete and unanswered and not plan.dry_run:
        summary.complete, summary.error = False, "some publishes were never answered"
    return summary


# -- the command -----------------------------------------------------------------------------


def archive_target(args: argparse.Namespace) -> tuple[str, str]:
    """(AMQP URL, stream) from the arguments, else the config (`ConfigError` if invalid)."""
    if args.amqp_url:
        amqp, archive = AmqpConfig(), ArchiveConfig()
    else:
        config = load(args.config, secrets=False).config
        amqp, archive = config.amqp, config.archive
    return args.amqp_url or ",".join(amqp.nodes), args.stream or archive.stream_for(amqp)


def plan_from(args: argparse.Namespace, now: datetime) -> Plan:
    """The plan the arguments describe; ValueError for ones that cannot work together."""
    since = parse_when(args.since, now)
    until = parse_when(args.until, now) if args.until else None
    if until is not None and until <= since:
        raise ValueError("--until must be later than --since")
    if not args.dry_run and not (args.to_exchange or args.to_queue):
        raise ValueError("say where to: --to-queue Q or --to-exchange X (or --dry-run)")
    if args.to_queue and args.routing_key:
        raise ValueError("--routing-key goes with --to-exchange (a queue is its own key)")
    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be at least 1")
    if args.in_flight < 1:
        raise ValueError("--in-flight must be at least 1")
    filters = Filters(frozenset(args.event), frozenset(args.instance), frozenset(args.provider))
    exchange, key = ("", args.to_queue) if args.to_queue else (args.to_exchange or "", None)
    return Plan(
        since=since,
        until=until,
        filters=filters,
        exchange=exchange,
        routing_key=key if args.to_queue else args.routing_key,
        dry_run=args.dry_run,
        limit=args.limit,
        in_flight=args.in_flight,
    )


def run(args: argparse.Namespace) -> int:
    try:
        url, stream = archive_target(args)
        plan = plan_from(args, datetime.now(UTC))
    except (ConfigError, ValueError) as exc:
        print(f"bridge replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        summary = asyncio.run(replay(url, stream, plan))
    except ConfigError as exc:
        print(f"bridge replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (*CONNECTION_EXCEPTIONS, TimeoutError) as exc:
        print(f"bridge replay: broker {mask_url(url)}: {exc!r}", file=sys.stderr)
        return EXIT_INCOMPLETE
    if args.json:
        print(json.dumps(asdict(summary)))
    else:
        print(summary.text())
        for failure in summary.failures:
            print(f"failed: {failure}", file=sys.stderr)
    if not summary.complete:
        return EXIT_INCOMPLETE
    return EXIT_FAILED if summary.failed else 0
