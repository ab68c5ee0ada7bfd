"""The fault suite: each fault injected under mixed polling and webhook load into a running
bridge fleet; after each, nothing acknowledged is lost, duplicates keep their ``message_id``,
per-instance order holds, no instance is polled twice at once, and memory stays bounded.

Size: ``BRIDGE_CHAOS_SIZE=full`` (the default; ``make chaos``) or ``quick`` (``make test``, and a shorter run while developing).
See docs/faults.md.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from fakeprovider.greenapi import Fault
from tests.chaos.conftest import SIZE
from tests.chaos.report import ROWS, Row
from tests.chaos.rig import (
    DELETE_TIMEOUT,
    POLL,
    PROCESSES,
    READ_TIMEOUT,
    Phase,
    Rig,
    rig_context,
    wait_for,
)
from tests.support.rabbitnode import RabbitNode

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(900),
]

MB = 2**20
#: no bridge process may ever exceed this
RSS_BOUND = 200 * MB
#: a process alive since the baseline may end a phase at most this much above its baseline
RSS_GROWTH = 24 * MB


@pytest.fixture(scope="module")
async def rig(
    own_rabbit: RabbitNode, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Rig]:
    async with rig_context(own_rabbit, tmp_path_factory.mktemp("chaos")) as rig:
        phase = rig.begin("none (baseline)")
        rig.feed(phase, SIZE.baseline)
        row = await settle(rig, phase)
        check(rig, row)
        rig.baseline_rss = {
            slot: (row.settled_pids[slot], rss) for slot, rss in row.settled_rss.items()
        }
        yield rig


@pytest.fixture(autouse=True)
async def recovered(rig: Rig) -> AsyncIterator[None]:
    """Whatever a test did: network restored, broker up, every bridge process running."""
    yield
    assert rig.proxy is not None
    rig.proxy.restore()
    await asyncio.to_thread(rig.node.ensure_running)
    for process in rig.fleet.processes:
        if process.pid is None:
            await rig.fleet.restart(process.slot)
    await rig.fleet.wait_ready()


async def settle(rig: Rig, phase: Phase) -> Row:
    row = await rig.settle(phase)
    ROWS.append(row)
    return row


def check(rig: Rig, row: Row) -> None:
    """The guarantees, after every phase."""
    notes = "; ".join(row.notes)
    assert row.drained, f"providers not drained: {notes}"
    assert row.lost == 0, f"{row.lost} acknowledged notifications missing in RabbitMQ: {notes}"
    assert row.acked == row.sent, notes
    assert row.found == row.sent, notes
    assert row.foreign == 0, notes
    assert row.id_changes == 0, f"a duplicate with a new message_id: {notes}"
    assert row.order_violations == 0, f"first copies out of provider order: {notes}"
    assert not row.overlapped, "two receives of one instance were in flight at once"
    assert not row.push_overlapped
    assert not rig.fleet.exited(), f"a bridge process exited by itself: {rig.fleet.exited()}"
    assert 0 < row.peak_rss < RSS_BOUND, f"peak RSS {row.peak_rss / MB:.0f} MB"
    for slot, rss in row.settled_rss.items():
        pid, base = rig.baseline_rss.get(slot, (None, 0))
        if pid == row.settled_pids[slot]:
            assert rss <= base + RSS_GROWTH, (
                f"slot {slot} grew from {base / MB:.0f} MB to {rss / MB:.0f} MB"
            )


def chunks(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if k < total % parts else 0) for k in range(parts)]


async def feed_and_wait(rig: Rig, phase: Phase, count: int, fraction: float = 0.25) -> None:
    """Feed ``count`` notifications and wait until a ``fraction`` of them was acknowledged:
    the fault that follows hits a pipeline with work in flight."""
    base = rig.acknowledged()
    rig.feed(phase, count)
    await rig.wait_acked(base + int(count * fraction), 120)


# -- 1. the broker restarts -------------------------------------------------------------------


async def test_broker_restart(rig: Rig) -> None:
    """stop_app/start_app (the VM stays, listeners close) and SIGKILL of the node + restart."""
    node = rig.node
    assert isinstance(node, RabbitNode)
    phase = rig.begin("broker restart (stop_app, kill -9)")
    actions = ["stop_app"] * SIZE.broker_soft + ["kill"] * SIZE.broker_hard
    parts = chunks(SIZE.broker_notes, len(actions) + 1)
    acks_while_down: list[int] = []
    for action, count in zip(actions, parts, strict=False):
        await feed_and_wait(rig, phase, count)
        if action == "stop_app":
            await asyncio.to_thread(node.stop_app)
            acks_while_down.append(await rig.quiet_ack_window(4.0))
            await asyncio.to_thread(node.start_app)
        else:
            await asyncio.to_thread(node.kill)
            acks_while_down.append(await rig.quiet_ack_window(3.0))
            await asyncio.to_thread(node.ensure_running)
        phase.injected += 1
        await rig.fleet.wait_ready()
    rig.feed(phase, parts[-1])
    row = await settle(rig, phase)
    check(rig, row)
    assert acks_while_down == [0] * len(actions), "acknowledged while the broker was down"


# -- 2. the network between bridge and broker is cut ------------------------------------------


async def test_network_cut(rig: Rig) -> None:
    """The TCP proxy resets every connection (and new ones) or blackholes them, then restores."""
    proxy = rig.proxy
    assert proxy is not None
    phase = rig.begin("network cut (reset, blackhole)")
    cuts: list[tuple[str, float]] = [("reset", 3.0)] * SIZE.net_reset + [
        ("blackhole", seconds) for seconds in SIZE.net_blackhole
    ]
    parts = chunks(SIZE.net_notes, len(cuts) + 1)
    acks_while_cut: list[int] = []
    for (kind, seconds), count in zip(cuts, parts, strict=False):
        await feed_and_wait(rig, phase, count)
        if kind == "reset":
            proxy.cut()
        else:
            proxy.blackhole()
        acks_while_cut.append(await rig.quiet_ack_window(seconds))
        proxy.restore()
        phase.injected += 1
        await rig.fleet.wait_ready()
    rig.feed(phase, parts[-1])
    row = await settle(rig, phase)
    check(rig, row)
    assert acks_while_cut == [0] * len(cuts), "acknowledged while the broker was unreachable"


# -- 3. bridge processes are SIGKILLed ---------------------------------------------------------


async def test_sigkill_bridge_processes(rig: Rig) -> None:
    """SIGKILL during the run, each killed process restarted at once (the processes share the
    polling instances through their leases)."""
    fleet = rig.fleet
    phase = rig.begin(f"SIGKILL bridge ({PROCESSES} proc{'s' if PROCESSES > 1 else ''})")
    total = SIZE.kill_notes
    base = rig.acknowledged()
    rig.feed(phase, total)
    for k in range(SIZE.kills):
        await rig.wait_acked(base + (k + 1) * total // (SIZE.kills + 1), 240)
        slot = k % fleet.size
        await fleet.kill(slot)
        phase.injected += 1
        await asyncio.sleep(0.3)
        await fleet.restart(slot)
    row = await settle(rig, phase)
    check(rig, row)
    assert sum(p.kills for p in fleet.processes) >= SIZE.kills


# -- 4. the provider misbehaves ----------------------------------------------------------------


def _fault_plan(round_: int) -> list[tuple[str, Fault]]:
    receive, delete = frozenset({"receive"}), frozenset({"delete"})
    plan = [
        ("5xx", Fault(kind="status", status=500, count=3, methods=receive)),
        ("5xx", Fault(kind="status", status=503, count=3, methods=delete)),
        ("429", Fault(kind="status", status=429, count=3, methods=receive)),
        ("429", Fault(kind="status", status=429, count=3, methods=delete)),
        ("timeout", Fault(kind="slow", delay=READ_TIMEOUT + 2.0, methods=receive)),
        ("empty", Fault(kind="empty", count=2, methods=receive)),
        ("empty", Fault(kind="empty", count=2, methods=delete)),
        ("drop", Fault(kind="drop", count=2, methods=receive)),
        ("drop", Fault(kind="drop", count=2, methods=delete)),
        (
            "5xx",
            Fault(kind="status", status=502, count=2, methods=frozenset({"receive", "delete"})),
        ),
    ]
    if round_ == 0:  # one delete slower than the poller's delete timeout per run
        plan.append(("timeout", Fault(kind="slow", delay=DELETE_TIMEOUT + 2.0, methods=delete)))
    return plan


async def test_provider_faults(rig: Rig) -> None:
    """5xx bursts, 429s, answers slower than the bridge's read timeout, empty bodies and
    dropped connections, on receiveNotification and deleteNotification of polling instances."""
    state = rig.fake.state
    phase = rig.begin("provider faults (5xx, 429, timeout, empty, drop)")
    parts = chunks(SIZE.fault_notes, SIZE.fault_rounds + 1)
    by_kind: Counter[str] = Counter()
    for round_, count in enumerate(parts[:-1]):
        plan = _fault_plan(round_)
        for k, ident in enumerate(POLL):
            label, fault = plan[(k + round_) % len(plan)]
            state.set_fault(ident, fault)
            by_kind[label] += fault.count
        rig.feed(phase, count)
        await wait_for(
            lambda: not any(state.instances[i].faults for i in POLL), 180, "faults consumed"
        )
    phase.injected = sum(by_kind.values())
    phase.notes.append(
        "injected answers: " + ", ".join(f"{k} {v}" for k, v in sorted(by_kind.items()))
    )
    rig.feed(phase, parts[-1])
    row = await settle(rig, phase)
    check(rig, row)
