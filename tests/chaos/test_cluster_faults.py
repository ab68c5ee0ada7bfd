"""The fault suite's cluster phase: the bridge fleet given a three-node RabbitMQ cluster
(``amqp.urls``), each node SIGKILLed in turn under mixed polling and webhook load, and brought
back. Besides the guarantees every phase checks (nothing acknowledged lost, duplicates only
with one ``message_id``, per-instance order, no overlapping receives), ingest carries on on the
live nodes: no provider stream waits longer than ``STALL_BOUND`` for an acknowledgement after
a kill. See docs/faults.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aio_pika
import pytest

from bridge.consumer import Consumer
from bridge.tools.tail import tail
from tests.chaos.conftest import SIZE
from tests.chaos.report import ROWS
from tests.chaos.rig import ORDERED, Rig, StallWatch, rig_context, wait_for
from tests.chaos.test_faults import check, feed_and_wait
from tests.support.rabbitnode import RabbitCluster

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(600),
]

#: the longest any stream may wait for an acknowledgement after a node was killed
STALL_BOUND = 10.0
#: while a node is down: this many notifications every ``TRICKLE_EVERY`` seconds, so that
#: every stream has work waiting whenever the node dies
TRICKLE = 50
TRICKLE_EVERY = 0.5
#: seconds of trickle and watch after each kill; the killed node is restarted only then, so a
#: bridge waiting for its node would stall for all of ``WATCH``, more than ``STALL_BOUND``
WATCH = 10.5
DOWN = WATCH


#: what the test's own consumer helper and `bridge tail` take: GREEN-API's status updates
STATUS = "outgoingMessageStatus"


class Lines:
    """`bridge tail`'s output, kept."""

    def __init__(self) -> None:
        self.lines = 0

    def write(self, text: str) -> int:
        self.lines += text.count("\n")
        return len(text)

    def flush(self) -> None:
        pass


class Helpers:
    """The consumer helper (on a quorum queue bound ``STATUS``) and `bridge tail` (bound
    ``STATUS``) in the test process, given the cluster's nodes: one of the kills hits the node
    they are on (the process's first in its node order), and they move."""

    def __init__(self, rig: Rig, urls: list[str]) -> None:
        self.queue = f"{rig.names.prefix}.helper"
        self.urls = urls
        self.exchange = rig.names.exchange
        self.consumer = Consumer(urls, self.queue, prefetch=200)
        self.bodies: set[bytes] = set()
        self.out = Lines()
        self.binds: list[int] = []  # lines printed when tail (re)bound its queue
        self.stop = asyncio.Event()
        self._tasks: list[asyncio.Task[object]] = []

    async def start(self) -> None:
        connection = await aio_pika.connect(self.urls[0])
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(
                self.queue, durable=True, arguments={"x-queue-type": "quorum"}
            )
            await queue.bind(self.exchange, STATUS)
        await self.consumer.start()
        self._tasks = [
            asyncio.create_task(self._consume()),
            asyncio.create_task(
                tail(self.urls, self.exchange, [STATUS], out=self.out, stop=self.stop,  # type: ignore[arg-type]
                     on_ready=lambda _: self.binds.append(self.out.lines))
            ),
        ]  # fmt: skip

    async def _consume(self) -> None:
        async for delivery in self.consumer:
            self.bodies.add(delivery.body)
            await delivery.ack()

    async def close(self) -> None:
        self.stop.set()
        await self.consumer.close()
        for task in self._tasks:
            await asyncio.wait_for(task, 30)
        connection = await aio_pika.connect(self.urls[0])
        async with connection:
            with contextlib.suppress(Exception):
                await (await connection.channel()).queue_delete(self.queue)


def status_bodies(rig: Rig, starts: dict[str, int]) -> set[bytes]:
    """The GREEN-API status updates given to the providers since ``starts``."""
    return {
        body
        for stream in rig.streams
        if stream.kind in ORDERED
        for body in stream.sent[starts[stream.instance] :]
        if STATUS.encode() in body
    }


async def restart_later(cluster: RabbitCluster, index: int) -> None:
    await asyncio.sleep(DOWN)
    await asyncio.to_thread(cluster.restart, index)


@pytest.fixture(scope="module")
async def cluster_rig(
    own_cluster: RabbitCluster, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Rig]:
    async with rig_context(own_cluster, tmp_path_factory.mktemp("chaos-cluster")) as rig:
        await rig.fleet.wait_ready()
        yield rig
    await asyncio.to_thread(own_cluster.ensure_running)


async def test_cluster_node_kills(cluster_rig: Rig) -> None:
    """SIGKILL of each node of the cluster in turn (its Erlang VM), restarted on its data
    directory ``DOWN`` seconds later (it is down for 18 s or more); the bridge processes,
    spread over the nodes by their shuffled node order, move to live nodes. New notifications
    trickle in for ``WATCH`` seconds after each kill, watched for stalls."""
    rig = cluster_rig
    cluster = rig.node
    assert isinstance(cluster, RabbitCluster)
    members = await asyncio.to_thread(cluster.queue_members)
    for queue in (rig.sink, rig.names.unrouted, rig.names.invalid):
        assert members[queue] == set(cluster.names), f"{queue}: members {members[queue]}"
    helpers = Helpers(rig, cluster.urls)
    await helpers.start()
    await wait_for(lambda: len(helpers.binds) == 1, 30, "tail bound")
    phase = rig.begin("cluster node kill -9 (each of 3 nodes)")
    half = SIZE.cluster_notes // 2
    stalls: list[tuple[float, str]] = []
    for index in range(len(cluster.nodes)):
        await feed_and_wait(rig, phase, half // len(cluster.nodes))
        watch = StallWatch(rig)
        stop = asyncio.Event()

        async def feeding(stop: asyncio.Event = stop) -> None:
            while not stop.is_set():
                rig.feed(phase, TRICKLE)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), TRICKLE_EVERY)

        watch.start()
        await asyncio.to_thread(cluster.kill, index)
        phase.injected += 1
        restart = asyncio.create_task(restart_later(cluster, index))
        feeder = asyncio.create_task(feeding())
        try:
            await asyncio.sleep(WATCH)
        finally:
            stop.set()
            await feeder
            stalls.append((await watch.stop(), watch.worst))
            await restart  # the next kill waits for the cluster to be whole again
        phase.notes.append(
            f"node {index + 1} down {DOWN + cluster.timings['restart']:.1f} s (booted in"
            f" {cluster.timings['boot']:.1f} s); longest stall"
            f" {stalls[-1][0]:.1f} s ({stalls[-1][1]})"
        )
    rig.feed(phase, SIZE.cluster_notes - half)
    row = await rig.settle(phase)
    ROWS.append(row)
    check(rig, row)
    expected = status_bodies(rig, phase.starts)
    try:
        await wait_for(lambda: helpers.bodies >= expected, 60, "the consumer helper has all")
    finally:
        await helpers.close()
    assert helpers.consumer.stats["reconnects"] >= 1, "the helper's node was never killed?"
    assert len(helpers.binds) >= 2, "tail did not rebind on another node"
    assert helpers.out.lines > helpers.binds[-1], "tail printed nothing after it moved"
    longest, worst = max(stalls)
    assert longest <= STALL_BOUND, f"{worst} waited {longest:.1f} s after a node was killed"
    assert not rig.fleet.exited()
