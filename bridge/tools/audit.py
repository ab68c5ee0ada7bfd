"""`bridge audit`: compare the providers' own journals with the archive.

    bridge audit --config bridge.toml --minutes 120

For each GREEN-API source (polled or webhook) that has an `api_url` and an API token
(`token_env` / `token_file`), the audit reads the instance's journals — `lastIncomingMessages`
and `lastOutgoingMessages` for the last `--minutes` — and the archive stream over the same
window, and compares the `idMessage`s: a journaled message is "in RabbitMQ" when the archive
holds its `incomingMessageReceived`, `outgoingMessageReceived` or `outgoingAPIMessageReceived`
notification for that instance. It prints per instance how many the journal lists, how many of
those the archive holds, and each missing one (id, time, kind, chat).

Journal entries younger than `--grace` seconds are not judged (listed as "recent"): GREEN-API
journals a message before its notification is delivered, and a poller may not have taken it
yet. The archive is read up to the audit's start (or until nothing more comes for a few
seconds). The audit only reads: it deletes, acknowledges and publishes nothing.

Exit status: 0 when nothing is missing; 1 when anything is; 2 for a bad config; 3 when a
journal or the archive could not be read (the other instances are still reported).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

import httpx
import msgspec
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from bridge.amqp.connection import open_connection
from bridge.arguments import audit as add_arguments
from bridge.config import Settings, Source, load
from bridge.errors import ConfigError
from bridge.tools.archive import (
    ArchiveError,
    ArchiveIdle,
    epoch_ms,
    exists,
    read_stream,
    received_at_ms,
)

__all__ = ["MESSAGE_EVENTS", "Report", "add_arguments", "audit", "run"]

#: The GREEN-API journals and the notifications that carry their messages.
JOURNALS: Final = ("lastIncomingMessages", "lastOutgoingMessages")
MESSAGE_EVENTS: Final = frozenset(
    {"incomingMessageReceived", "outgoingMessageReceived", "outgoingAPIMessageReceived"}
)
#: Seconds without a delivery after which the archive counts as read to its end.
ARCHIVE_IDLE: Final = 3.0
EXIT_MISSING = 1
EXIT_CONFIG = 2
EXIT_UNREADABLE = 3


class JournalEntry(msgspec.Struct, frozen=True):
    idMessage: str
    timestamp: int = 0
    type: str = ""
    typeMessage: str = ""
    chatId: str = ""


class _Body(msgspec.Struct):
    typeWebhook: str = ""
    idMessage: str = ""


_JOURNAL: Final = msgspec.json.Decoder(list[JournalEntry])
_BODY: Final = msgspec.json.Decoder(_Body)
_ENCODE: Final = msgspec.json.Encoder()


class Missing(msgspec.Struct, frozen=True):
    idMessage: str
    time: str  # ISO 8601, UTC
    type: str  # incoming | outgoing
    chatId: str


class Report(msgspec.Struct):
    provider: str
    instance: str
    journal: int = 0  # judged journal entries
    in_rabbitmq: int = 0
    missing: list[Missing] = msgspec.field(default_factory=list)
    recent: int = 0  # younger than the grace period: not judged
    error: str | None = None

    def text(self) -> str:
        head = f"{self.provider}:{self.instance}"
        if self.error is not None:
            return f"{head}  ERROR {self.error}"
        lines = [
            f"{head}  in journal {self.journal}  in RabbitMQ {self.in_rabbitmq}"
            f"  missing {len(self.missing)}  recent (not judged) {self.recent}"
        ]
        lines += [f"  missing {m.idMessage}  {m.time}  {m.type}  {m.chatId}" for m in self.missing]
        return "\n".join(lines)


def audited(settings: Settings, only: Iterable[str] = ()) -> tuple[list[Source], list[Source]]:
    """(sources the audit can read a journal for, GREEN-API sources it cannot)."""
    wanted = set(only)
    able: list[Source] = []
    unable: list[Source] = []
    for source in settings.config.sources:
        if source.provider != "greenapi" or (wanted and source.instance not in wanted):
            continue
        if source.api_url and source.name in settings.tokens:
            able.append(source)
        else:
            unable.append(source)
    return able, unable


async def journal(
    client: httpx.AsyncClient, source: Source, token: str, minutes: int
) -> list[JournalEntry]:
    """Both journals of one instance (a `JournalError`'s text never holds the URL or token)."""
    entries: list[JournalEntry] = []
    base = (source.api_url or "").rstrip("/")
    for route in JOURNALS:
        url = f"{base}/waInstance{source.instance}/{route}/{token}"
        try:
            response = await client.get(url, params={"minutes": minutes})
        except httpx.HTTPError as exc:
            raise JournalError(f"{route}: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise JournalError(f"{route}: HTTP {response.status_code}")
        try:
            entries += _JOURNAL.decode(response.content)
        except msgspec.DecodeError as exc:
            raise JournalError(f"{route}: unexpected answer: {exc}") from None
    return entries


class JournalError(Exception):
    """A journal could not be read (its text names the route, never the URL or token)."""


async def archived(
    url: str,
    stream: str,
    instances: Iterable[str],
    *,
    since: datetime,
    until_ms: int,
    idle: float = ARCHIVE_IDLE,
) -> dict[str, set[str]]:
    """{instance: idMessages of its message notifications in the archive since `since`}."""
    found: dict[str, set[str]] = {instance: set() for instance in instances}
    connection = await open_connection(url, timeout=10)
    try:
        if not await exists(connection, "queue", stream):
            raise ArchiveError(f"the archive stream {stream!r} does not exist")
        channel = await (await connection.channel()).get_underlay_channel()
        with contextlib.suppress(ArchiveIdle):
            async for message in read_stream(channel, stream, start=since, idle=idle):
                if not _collect(message.header.properties.headers, message.body, found, until_ms):
                    break
    finally:
        with contextlib.suppress(*CONNECTION_EXCEPTIONS):
            await connection.close()
    return found


def _collect(
    headers: Mapping[str, object] | None, body: bytes, found: dict[str, set[str]], until_ms: int
) -> bool:
    """Note one archived message; False once past the audit's start."""
    headers = headers or {}
    at = received_at_ms(headers)
    if at is None:
        return True
    if at > until_ms:
        return False
    ids = found.get(_text(headers.get("x-instance")))
    if ids is None or _text(headers.get("x-provider")) != "greenapi":
        return True
    try:
        note = _BODY.decode(body)
    except msgspec.DecodeError:
        return True
    if note.typeWebhook in MESSAGE_EVENTS and note.idMessage:
        ids.add(note.idMessage)
    return True


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def compare(
    source: Source, entries: Sequence[JournalEntry], ids: set[str], *, judged_until: float
) -> Report:
    """The report for one instance (pure)."""
    report = Report(provider=source.provider, instance=source.instance)
    for entry in sorted(entries, key=lambda e: (e.timestamp, e.idMessage)):
        if entry.timestamp > judged_until:
            report.recent += 1
            continue
        report.journal += 1
        if entry.idMessage in ids:
            report.in_rabbitmq += 1
        else:
            when = datetime.fromtimestamp(entry.timestamp, UTC).isoformat().replace("+00:00", "Z")
            report.missing.append(Missing(entry.idMessage, when, entry.type, entry.chatId))
    return report


async def audit(
    settings: Settings,
    *,
    minutes: int,
    grace: float = 60.0,
    only: Iterable[str] = (),
    stream: str | None = None,
    timeout: float = 30.0,
    idle: float = ARCHIVE_IDLE,
) -> list[Report]:
    """One report per auditable GREEN-API source; the archive counts as read to its end at
    the first message newer than the audit's start or after `idle` seconds without one."""
    cfg = settings.config
    sources, _ = audited(settings, only)
    now = time.time()
    async with httpx.AsyncClient(timeout=timeout) as client:
        journals = await asyncio.gather(
            *(journal(client, s, settings.token(s).reveal(), minutes) for s in sources),
            return_exceptions=True,
        )
    since = datetime.fromtimestamp(now, UTC) - timedelta(minutes=minutes)
    archive_error: str | None = None
    ids: dict[str, set[str]] = {}
    try:
        ids = await archived(
            cfg.amqp.url,
            stream or cfg.archive.stream_for(cfg.amqp),
            [s.instance for s in sources],
            since=since,
            until_ms=epoch_ms(datetime.fromtimestamp(now, UTC)),
            idle=idle,
        )
    except (ArchiveError, *CONNECTION_EXCEPTIONS, TimeoutError) as exc:
        archive_error = f"archive: {exc}"
    reports = []
    for source, entries in zip(sources, journals, strict=True):
        if isinstance(entries, BaseException):
            reports.append(Report(source.provider, source.instance, error=str(entries)))
        elif archive_error is not None:
            reports.append(Report(source.provider, source.instance, error=archive_error))
        else:
            found = ids.get(source.instance, set())
            reports.append(compare(source, entries, found, judged_until=now - grace))
    return reports


def run(args: argparse.Namespace) -> int:
    try:
        settings = load(args.config)
    except ConfigError as exc:
        print(f"bridge audit: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.minutes < 1:
        print("bridge audit: --minutes must be at least 1", file=sys.stderr)
        return EXIT_CONFIG
    sources, unable = audited(settings, args.instance)
    for source in unable:
        print(f"bridge audit: {source.name}: skipped, no api_url or API token", file=sys.stderr)
    if not sources:
        print("bridge audit: no GREEN-API source with an api_url and an API token", file=sys.stderr)
        return EXIT_CONFIG
    reports = asyncio.run(
        audit(
            settings,
            minutes=args.minutes,
            grace=args.grace,
            only=args.instance,
            stream=args.stream,
            timeout=args.timeout,
            idle=args.idle,
        )
    )
    for report in reports:
        print(_ENCODE.encode(report).decode() if args.json else report.text())
    if any(r.error for r in reports):
        return EXIT_UNREADABLE
    return EXIT_MISSING if any(r.missing for r in reports) else 0
