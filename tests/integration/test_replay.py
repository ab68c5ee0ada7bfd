"""`bridge replay` against the real broker: a consumer that acknowledged and dropped what it
got has exactly that back, filters and `--dry-run` count right, a broker restart mid-replay is
reported as incomplete (exit 3), never a silently short replay."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aio_pika
import pytest

from bridge.tools import replay as replay_tool
from bridge.tools.archive import parse_when
from tests.conftest import AMQP_URL
from tests.support.archive import drain_queue, note, publish_all, publishing, queue_count
from tests.support.harness import Names, delete_topology
from tests.support.rabbitnode import RabbitNode
from tests.support.tcpproxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]


def parser() -> argparse.ArgumentParser:
    out = argparse.ArgumentParser()
    replay_tool.add_arguments(out)
    return out


def bridge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def declare_queue(url: str, name: str, exchange: str, key: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(
            name, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(exchange, key)


async def delete_queues(url: str, *names: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        for name in names:
            await (await connection.channel()).queue_delete(name)


async def wait_count(url: str, queue: str, n: int) -> None:
    seen = [0]

    async def poll() -> None:
        while seen[0] < n:
            seen[0] = await queue_count(url, queue)
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), 30)


async def test_a_consumer_that_dropped_500_gets_exactly_those_back() -> None:
    names = Names()
    billing, crm = f"{names.prefix}.billing", f"{names.prefix}.crm"
    try:
        async with publishing(names, AMQP_URL) as pub:
            await declare_queue(AMQP_URL, billing, names.exchange, "incomingMessageReceived")
            await declare_queue(AMQP_URL, crm, names.exchange, "#")
            outs = [note(names, n) for n in range(500)]
            await publish_all(pub, outs)
            # the consumer acknowledged them all, then lost them (a bad deploy)
            dropped = await drain_queue(AMQP_URL, billing, 500)
            await drain_queue(AMQP_URL, crm, 500)
            later = note(
                names, 10_000, event="outgoingMessageStatus"
            )  # not billing's; arrives once the replay started: not replayed
            started = time.monotonic()
            run = asyncio.create_task(
                asyncio.to_thread(
                    bridge,
                    "replay",
                    "--amqp-url",
                    AMQP_URL,
                    "--stream",
                    names.archive,
                    "--since",
                    "10m",
                    "--to-queue",
                    billing,
                    "--json",
                )
            )
            await wait_count(AMQP_URL, billing, 1)  # reading: the end marker is in the stream
            await pub.publish(later)
            result = await run
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["matched"] == summary["published"] == 500
        back = await drain_queue(AMQP_URL, billing, 500)
        others = await queue_count(AMQP_URL, crm)
        extra = await queue_count(AMQP_URL, billing)
    finally:
        await delete_queues(AMQP_URL, billing, crm)
        await delete_topology(AMQP_URL, names)
    assert [m.message_id for m in back] == [m.message_id for m in dropped]
    assert [m.body for m in back] == [m.body for m in dropped]
    for old, new in zip(dropped, back, strict=True):
        replayed = dict(new.headers)
        assert isinstance(replayed.pop("x-replayed-at"), int)
        assert replayed == dict(old.headers)
        assert (new.type, new.timestamp, new.app_id) == (old.type, old.timestamp, old.app_id)
        assert new.routing_key == billing  # through the default exchange: this queue alone
    assert extra == 0
    assert others == 1  # crm got the late one live; none of the replay
    assert elapsed < 60


async def test_filters_dry_run_limit_and_the_same_ids_twice() -> None:
    names = Names()
    sink = f"{names.prefix}.sink"
    old = int(time.time() * 1000) - 3 * 3600 * 1000
    outs = [
        note(names, 0, at_ms=old),  # before --since
        *(note(names, n) for n in range(1, 6)),
        *(note(names, n, instance="1101000002") for n in range(6, 9)),
        *(note(names, n, event="outgoingMessageStatus") for n in range(9, 13)),
        *(
            note(names, n, provider="evolution", instance="sales", event="messages.upsert")
            for n in range(13, 15)
        ),
    ]
    try:
        async with publishing(names, AMQP_URL) as pub:
            await declare_queue(AMQP_URL, sink, names.exchange, "no.binding.matches")
            await publish_all(pub, outs)

        async def counts(*args: str) -> replay_tool.Summary:
            parsed = parser().parse_args(
                ["--since", "2h", "--stream", names.archive, "--amqp-url", AMQP_URL, *args]
            )
            plan = replay_tool.plan_from(parsed, datetime.now(UTC))
            return await replay_tool.replay(AMQP_URL, names.archive, plan)

        everything = await counts("--dry-run")
        # read: all the stream gave (the old one shares a chunk); matched: in the window
        assert (everything.read, everything.matched, everything.published) == (15, 14, 0)
        assert everything.complete and not everything.failed
        assert (await counts("--dry-run", "--event", "outgoingMessageStatus")).matched == 4
        assert (
            await counts("--dry-run", "--instance", "1101000002", "--instance", "sales")
        ).matched == 5
        assert (await counts("--dry-run", "--provider", "evolution")).matched == 2
        assert (
            await counts("--dry-run", "--provider", "greenapi", "--event", "messages.upsert")
        ).matched == 0
        assert (await counts("--dry-run", "--since", "4h")).matched == 15
        assert (await counts("--dry-run", "--limit", "3")).matched == 3
        assert await queue_count(AMQP_URL, sink) == 0  # dry runs publish nothing
        first = await counts("--instance", "1101000002", "--to-queue", sink)
        second = await counts("--instance", "1101000002", "--to-queue", sink)
        assert first.published == second.published == 3 and first.complete
        got = await drain_queue(AMQP_URL, sink, 6)
        to_exchange = await counts(
            "--event", "outgoingMessageStatus", "--to-exchange", names.exchange
        )
    finally:
        await delete_queues(AMQP_URL, sink)
        await delete_topology(AMQP_URL, names)
    ids = [m.message_id for m in got]
    assert ids[:3] == ids[3:] == [o.message_id for o in outs[6:9]]
    assert to_exchange.published == 4  # into the topic exchange: unrouted takes them, confirmed


async def test_a_return_fails_the_replay(tmp_path: Path) -> None:
    names = Names()
    try:
        async with publishing(names, AMQP_URL) as pub:
            await pub.publish(note(names, 1))
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            lonely = await (await connection.channel()).declare_exchange(
                f"{names.prefix}.lonely", "topic", auto_delete=False
            )
            try:
                result = await asyncio.to_thread(
                    bridge,
                    "replay",
                    "--amqp-url",
                    AMQP_URL,
                    "--stream",
                    names.archive,
                    "--since",
                    "10m",
                    "--to-exchange",
                    lonely.name,
                )
            finally:
                await lonely.delete()
    finally:
        await delete_topology(AMQP_URL, names)
    assert result.returncode == 1, result.stderr
    assert "published 0, failed 1" in result.stdout
    assert "returned" in result.stderr


async def test_a_broker_restart_mid_replay_resumes_and_nothing_is_short(
    own_rabbit: RabbitNode,
) -> None:
    names = Names()
    url = own_rabbit.amqp_url
    target = f"{names.prefix}.target"
    outs = [note(names, n) for n in range(3000)]
    try:
        async with publishing(names, url) as pub:
            await declare_queue(url, target, names.exchange, "no.binding.matches")
            await publish_all(pub, outs)
        parsed = parser().parse_args(["--since", "10m", "--to-queue", target, "--in-flight", "2"])
        plan = replay_tool.plan_from(parsed, datetime.now(UTC))
        task = asyncio.create_task(replay_tool.replay(url, names.archive, plan))
        await wait_count(url, target, 200)
        await asyncio.to_thread(own_rabbit.restart)  # stop the node, then boot it again
        summary = await asyncio.wait_for(task, 90)
        assert summary.reconnects >= 1, "the restart came after the replay had finished"
        assert summary.complete, summary.text()
        assert (summary.matched, summary.published, summary.failed) == (3000, 3000, 0)
        got = await drain_queue(url, target, await queue_count(url, target))
    finally:
        await asyncio.to_thread(own_rabbit.ensure_running)
        await delete_queues(url, target)
        await delete_topology(url, names)
    # every one arrived; the ones in flight at the crash may have arrived twice, same id
    assert {m.message_id for m in got} == {o.message_id for o in outs}
    assert len(got) - 3000 <= 2 + 2  # at most what was unconfirmed (in flight) at the crash


async def test_a_broker_that_stays_away_fails_the_replay_loudly() -> None:
    names = Names()
    target = f"{names.prefix}.target"
    try:
        async with (
            publishing(names, AMQP_URL) as pub,
            TcpProxy(target=("127.0.0.1", 5672)) as proxy,
        ):
            await declare_queue(AMQP_URL, target, names.exchange, "no.binding.matches")
            await publish_all(pub, [note(names, n) for n in range(3000)])
            url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
            parsed = parser().parse_args(
                ["--since", "10m", "--to-queue", target, "--in-flight", "2"]
            )
            plan = replay_tool.plan_from(parsed, datetime.now(UTC))
            task = asyncio.create_task(
                replay_tool.replay(url, names.archive, plan, reconnect_for=1.0)
            )
            await wait_count(AMQP_URL, target, 200)
            proxy.cut()  # connections reset, new ones refused
            summary = await asyncio.wait_for(task, 60)
    finally:
        await delete_queues(AMQP_URL, target)
        await delete_topology(AMQP_URL, names)
    assert not summary.complete and summary.published < 3000
    assert "INCOMPLETE" in summary.text() and "no connection for 1 s" in summary.text()


def test_times_parse_as_durations_or_iso() -> None:
    now = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
    assert parse_when("2h", now) == now - timedelta(hours=2)
    assert parse_when("1d12h30m", now) == now - timedelta(days=1, hours=12, minutes=30)
    assert parse_when("90s", now) == now - timedelta(seconds=90)
    assert parse_when("2026-01-31T10:00", now) == datetime(2026, 1, 31, 10, tzinfo=UTC)
    assert parse_when("2026-01-31T10:00+02:00", now) == datetime(2026, 1, 31, 8, tzinfo=UTC)
    with pytest.raises(ValueError, match="not a duration"):
        parse_when("yesterday", now)
