"""`bridge queues declare` before the bridge ever ran: it declares the bridge's topology first.

Fresh names stand for a fresh broker: the config names an exchange, unrouted and invalid
exchanges and a source exchange no test declared, and everything is deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import aiormq.exceptions
import pytest

from bridge.amqp.publisher import AmqpPublisher
from bridge.amqp.topology import topology
from bridge.config import load
from bridge.tools import queues
from tests.conftest import AMQP_URL
from tests.support.harness import Names

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

BRIDGE = Path(sys.executable).parent / "bridge"


def config(names: Names) -> str:
    return f"""
[amqp]
url = "{AMQP_URL}"
exchange = "{names.exchange}"
unrouted_exchange = "{names.unrouted}"
invalid_exchange = "{names.invalid}"
[[sources]]
provider = "greenapi"
mode = "webhook"
instance = "1101000002"
webhook_token_env = "GREEN"
exchange = "{names.prefix}.crm"
"""


@contextlib.asynccontextmanager
async def fresh(
    tmp_path: Path,
) -> AsyncIterator[tuple[Names, Path, aio_pika.abc.AbstractConnection]]:
    names = Names()
    path = tmp_path / "bridge.toml"
    path.write_text(config(names))
    connection = await aio_pika.connect(AMQP_URL)
    try:
        yield names, path, connection
    finally:
        queues = [names.unrouted, names.invalid, f"{names.prefix}.billing", f"{names.prefix}.dead",
                  names.archive]  # fmt: skip
        exchanges = [
            names.exchange, names.unrouted, names.invalid, f"{names.prefix}.crm",
            f"{names.prefix}.dead", names.ingest, f"{names.prefix}.crm.ingest",
        ]  # fmt: skip
        for kind, name in [*(("q", q) for q in queues), *(("e", e) for e in exchanges)]:
            async with connection.channel() as cleanup:
                with contextlib.suppress(aiormq.exceptions.AMQPError):
                    if kind == "q":
                        await cleanup.queue_delete(name)
                    else:
                        await cleanup.exchange_delete(name)
        await connection.close()


def declare(path: Path, names: Names, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [
        str(BRIDGE), "queues", "declare", f"{names.prefix}.billing", "--bind",
        "incomingMessageReceived", "--config", str(path), "--dead-letter-exchange",
        f"{names.prefix}.dead", "--json", *extra,
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


async def test_on_a_fresh_broker_the_bridge_topology_is_declared_first(tmp_path: Path) -> None:
    async with fresh(tmp_path) as (names, path, connection):
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
            async with connection.channel() as probe:
                await probe.get_exchange(names.exchange, ensure=True)
        channel = await connection.channel()
        done = declare(path, names)
        assert done.returncode == 0, done.stderr
        rows = [json.loads(line) for line in done.stdout.splitlines()]
        states = {(r["kind"], r["name"]): r["state"] for r in rows}
        for key in [
            ("exchange", names.exchange), ("exchange", names.unrouted),
            ("exchange", names.invalid), ("exchange", f"{names.prefix}.crm"),
            ("queue", names.unrouted), ("queue", names.invalid),
            ("queue", f"{names.prefix}.billing"),
        ]:  # fmt: skip
            assert states[key] == "created", key
        main = next(r for r in rows if r["name"] == names.exchange)
        assert main["arguments"] == {"alternate-exchange": names.unrouted}

        # Routed notifications reach the consumer queue, the rest the unrouted queue.
        exchange = await channel.get_exchange(names.exchange, ensure=False)
        await exchange.publish(aio_pika.Message(b"{}"), routing_key="incomingMessageReceived")
        await exchange.publish(aio_pika.Message(b"{}"), routing_key="nobodyListens")
        billing = await channel.declare_queue(f"{names.prefix}.billing", passive=True)
        unrouted = await channel.declare_queue(names.unrouted, passive=True)
        async with billing.iterator() as messages:  # single active consumer: no basic.get
            first = await asyncio.wait_for(anext(messages), 10)
            assert first.routing_key == "incomingMessageReceived"
            await first.ack()
        assert (await unrouted.get(timeout=5)).routing_key == "nobodyListens"

        # The bridge starting afterwards agrees with every object (no PRECONDITION_FAILED) ...
        cfg = load(path, {"GREEN": "g" * 24}).config
        publisher = AmqpPublisher(cfg.amqp, topology(cfg.amqp, [f"{names.prefix}.crm"]))
        task = asyncio.create_task(publisher.run())
        try:
            await asyncio.wait_for(publisher.wait_ready(), 15)
        finally:
            await publisher.close(drain_timeout=1)
            await asyncio.wait_for(task, 10)
        # ... and declaring again reports what exists.
        again = declare(path, names)
        assert again.returncode == 0, again.stderr
        states = {
            (r["kind"], r["name"]): r["state"] for r in map(json.loads, again.stdout.splitlines())
        }
        assert states[("queue", f"{names.prefix}.billing")] == "exists"
        assert ("exchange", names.unrouted) not in states, (
            "the exchange existed: nothing redeclared"
        )


async def test_an_exchange_given_on_the_command_line_is_declared_with_the_topology(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In-process this time (the command's `run`), with `--exchange` naming the source's own."""
    async with fresh(tmp_path) as (names, path, connection):
        channel = await connection.channel()
        other = f"{names.prefix}.crm"
        argv = [
            f"{names.prefix}.billing", "--bind", "incomingMessageReceived", "--config",
            str(path), "--dead-letter-exchange", f"{names.prefix}.dead", "--exchange", other,
        ]  # fmt: skip
        parser = argparse.ArgumentParser()
        queues.add_arguments(parser)
        assert await asyncio.to_thread(queues.run, parser.parse_args(argv)) == 0
        out = capsys.readouterr().out
        declared = {json.loads(line)["name"] for line in out.splitlines()}
        assert {other, names.exchange, names.unrouted, names.invalid} <= declared
        exchange = await channel.get_exchange(other, ensure=False)
        await exchange.publish(aio_pika.Message(b"{}"), routing_key="nobodyListens")
        unrouted = await channel.declare_queue(names.unrouted, passive=True)
        assert (await unrouted.get(timeout=5)).routing_key == "nobodyListens"
