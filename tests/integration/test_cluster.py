"""The bridge on a three-node RabbitMQ cluster of the test session's own (`amqp.urls`).

* the bridge's quorum queues, and the consumer queues `bridge queues declare` makes, have a
  member on every node; `check-config` lists the nodes with their passwords masked;
* every connection carries `connection_name` = `bridge <host>/<pid> <role>`, as the
  management API shows it;

Nodes dying: the fault suite's cluster phase (tests/chaos/test_cluster_faults.py) kills each
node in turn under a fleet's mixed load, with the consumer helper and `bridge tail` running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import httpx
import pytest

from bridge.amqp.connection import connection_name
from bridge.app import Service
from bridge.consumer import Consumer
from bridge.tools.tail import tail
from tests.support.harness import (
    Names,
    bridge_toml,
    delete_topology,
    fake_greenapi,
    free_port,
    settings_for,
    token_for,
    wait_until,
)
from tests.support.rabbitnode import RabbitCluster, own_cluster

__all__ = ["own_cluster"]  # the fixture

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

BRIDGE = str(Path(sys.executable).with_name("bridge"))
#: the longest a connection may take to be working again on a live node after a kill
MOVE_BOUND = 10.0


def cluster_toml(urls: list[str], **kwargs: object) -> tuple[str, dict[str, str]]:
    """`bridge_toml` with `amqp.urls` instead of `amqp.url`."""
    text, env = bridge_toml(amqp_url=urls[0], **kwargs)  # type: ignore[arg-type]
    listed = ", ".join(f'"{url}"' for url in urls)
    return text.replace(f'url = "{urls[0]}"', f"urls = [{listed}]", 1), env


@pytest.fixture
async def cluster(own_cluster: RabbitCluster) -> AsyncIterator[RabbitCluster]:
    """The session's cluster, all three nodes running again after the test."""
    yield own_cluster
    await asyncio.to_thread(own_cluster.ensure_running)


async def delete_queues(url: str, *queues: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        for queue in queues:
            with contextlib.suppress(Exception):
                await (await connection.channel()).queue_delete(queue)


async def run_bridge(*args: str) -> tuple[int, int, str, str]:
    """`bridge *args` as a process: (exit status, pid, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        BRIDGE, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, process.pid, out.decode(), err.decode()


class Lines:
    """A `tail` output that keeps the lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.lines += [line for line in text.splitlines() if line]
        return len(text)

    def flush(self) -> None:
        pass


# -- topology and tools ----------------------------------------------------------------------


async def test_quorum_queues_span_the_nodes_and_the_tools_take_the_node_list(
    tmp_path: Path, cluster: RabbitCluster
) -> None:
    names = Names()
    text, env = cluster_toml(cluster.urls, names=names, api_url="http://127.0.0.1:9", instances=[])
    config = tmp_path / "bridge.toml"
    config.write_text(text)
    service = Service(settings_for(tmp_path, text, env))
    task = asyncio.create_task(service.run())
    queue = f"{names.prefix}.billing"
    try:
        await wait_until(service.publisher.is_ready, 60)
        status, _, shown, _ = await run_bridge("check-config", "--config", str(config))
        assert status == 0
        masked = [url.replace("guest:guest@", "guest:***@") for url in cluster.urls]
        assert json.loads(shown)["amqp"]["urls"] == masked
        status, _, _, errors = await run_bridge(
            "queues", "declare", queue, "--bind", "#", "--json", "--config", str(config)
        )
        assert status == 0, errors
        members = await asyncio.to_thread(cluster.queue_members)
        everyone = set(cluster.names)
        for name in (names.unrouted, names.invalid, queue, f"{names.exchange}.dead"):
            if name in members:
                assert members[name] == everyone, (name, members[name])
        assert members[names.unrouted] == members[names.invalid] == members[queue] == everyone
    finally:
        await service.shutdown()
        await asyncio.wait_for(task, 30)
        await delete_queues(cluster.urls[0], queue)
        await delete_topology(cluster.urls[0], names)


def test_check_config_masks_every_nodes_password(tmp_path: Path) -> None:
    urls = ["amqp://bridge:pw-one@rabbit-1/", "amqp://bridge:pw-two@rabbit-2/"]
    env = {**os.environ, "BRIDGE_AMQP__URLS": ",".join(urls)}
    shown = subprocess.run(
        [BRIDGE, "check-config"], capture_output=True, text=True, timeout=60, check=True,
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert json.loads(shown.stdout)["amqp"]["urls"] == [
        "amqp://bridge:***@rabbit-1/",
        "amqp://bridge:***@rabbit-2/",
    ]
    assert "pw-" not in shown.stdout + shown.stderr


# -- connection names ------------------------------------------------------------------------


async def test_every_connection_is_named_in_the_management_api(
    tmp_path: Path, cluster: RabbitCluster
) -> None:
    node = cluster.nodes[0]  # the one with the management plugin; every connection goes there
    names = Names()
    instance = "1101000950"
    queue = f"{names.prefix}.named"
    host, pid = socket.gethostname(), os.getpid()
    async with fake_greenapi([(instance, token_for(instance))], latency=0.002) as fake:
        text, env = bridge_toml(
            amqp_url=node.amqp_url, names=names, api_url=fake.url, instances=[instance]
        )
        config = tmp_path / "bridge.toml"
        config.write_text(text)
        service = Service(settings_for(tmp_path, text, env))
        task = asyncio.create_task(service.run())
        stop = asyncio.Event()
        tailing: asyncio.Task[int] | None = None
        consumer: Consumer | None = None
        try:
            await wait_until(lambda: bool(service.leases and service.leases.held()), 60)
            await wait_until(service.publisher.is_ready, 60)  # the exchange exists
            tailing = asyncio.create_task(
                tail(node.amqp_url, names.exchange, ["#"], out=Lines(), stop=stop)  # type: ignore[arg-type]
            )
            status, tool, _, errors = await run_bridge(
                "queues", "declare", queue, "--bind", "#", "--json", "--config", str(config)
            )
            assert status == 0, errors
            consumer = Consumer(node.amqp_url, queue)
            await consumer.start()
            roles = ("publisher", "lease", "tail", "consumer")
            expected = {connection_name(role) for role in roles}
            assert expected == {f"bridge {host}/{pid} {role}" for role in roles}
            shown: set[str] = set()

            async def listed() -> set[str]:
                async with httpx.AsyncClient(auth=("guest", "guest"), timeout=10) as http:
                    answer = await http.get(f"{node.management_url}/api/connections")
                    answer.raise_for_status()
                return {c["client_properties"].get("connection_name", "") for c in answer.json()}

            deadline = time.monotonic() + 30  # the management API's stats lag a few seconds
            while not expected <= shown and time.monotonic() < deadline:
                shown = await listed()
                await asyncio.sleep(0.5)
            assert expected <= shown, shown
            # `bridge queues declare` is gone by now: the node logged its name when it came
            log = node.log_file.read_text(errors="replace")
            assert f"bridge {host}/{tool} queues" in log
        finally:
            if consumer is not None:
                await consumer.close()
            stop.set()
            if tailing is not None:
                await asyncio.wait_for(tailing, 30)
            await service.shutdown()
            await asyncio.wait_for(task, 30)
            await delete_queues(node.amqp_url, queue, f"{names.exchange}.dead")
            await delete_topology(node.amqp_url, names)


async def test_tail_takes_the_node_list_and_skips_a_dead_node(cluster: RabbitCluster) -> None:
    """`bridge tail --amqp-url a,b,dead` (a port nothing listens on, as a node that is down):
    it binds on a live node, whatever its order, and prints what is published there."""
    names = Names()
    urls = [*cluster.urls[:2], f"amqp://guest:guest@127.0.0.1:{free_port()}/"]
    connection = await aio_pika.connect(cluster.urls[0])
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(names.exchange, "topic", auto_delete=True)
        process = await asyncio.create_subprocess_exec(
            BRIDGE, "tail", "--amqp-url", ",".join(urls), "--exchange", names.exchange,
            "--bind", "#", "--count", "1", "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stderr is not None
        while not (line := await asyncio.wait_for(process.stderr.readline(), 60)).startswith(
            b"tail: "
        ):
            assert line, "tail exited before binding"
        await exchange.publish(aio_pika.Message(b'{"n": 1}', message_id="m-1"), "some.key")
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0
        assert json.loads(out)["message_id"] == "m-1"
