"""The fault suite's rig: a bridge fleet under mixed polling and webhook load, and the books.

Pieces, all started once per module:

* a private RabbitMQ node (``own_rabbit``) reached through a :class:`TcpProxy`, so that the
  network between bridge and broker can be cut;
* the fake GREEN-API in this process: ``POLL`` instances polled by the bridge, ``PUSH``
  instances pushed by the fake's own webhook pusher (one at a time, resent until HTTP 200),
  each aimed at one bridge process;
* ``CLIENT`` instances pushed by :class:`~tests.chaos.pushers.ClientPusher` here: one request
  at a time per instance, any bridge process (moving to the next one after a failure, like a
  load balancer), only HTTP 200 counts as acknowledged, anything else is retried;
* ``WAHA`` sessions and a Meta app with the ``META`` accounts, pushed by the fake WAHA and the
  fake Meta in this process (:class:`~tests.chaos.pushers.SignedPushers`): signed, concurrent,
  batched for Meta, retried until acknowledged; their order is not promised, so not checked;
* ``bridge run`` processes with one config (:class:`~tests.support.fleet.BridgeFleet`), three
  sharing the polling sources through their leases (``BRIDGE_CHAOS_PROCESSES``, 3);
* a durable quorum sink queue bound ``#`` to the bridge's exchange.

A phase (:meth:`Rig.begin` … :meth:`Rig.settle`) feeds new notifications, lets a test inject a
fault, waits until the providers got every notification acknowledged, drains the sink and
computes a :class:`~tests.chaos.report.Row`: sent, acknowledged, found, lost, duplicates (and
whether they kept their ``message_id``), order violations (GREEN-API streams), RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from tests.chaos.pushers import META, WAHA, ClientPusher, SignedPushers, mark_of, signed_sources
from tests.chaos.report import Row
from tests.support.fleet import BridgeFleet, RssSampler
from tests.support.harness import (
    FakeServer,
    Names,
    bridge_toml,
    declare_sink,
    fake_greenapi,
    token_for,
)
from tests.support.rabbitnode import RabbitNode
from tests.support.tcpproxy import TcpProxy

__all__ = ["PROCESSES", "READ_TIMEOUT", "Phase", "Rig", "rig_context"]

HOOK_TOKEN = "chaos-hook-token-0123456789abcdef"
POLL = [str(1101600000 + i) for i in range(12)]
PUSH = [str(1101610000 + i) for i in range(4)]
CLIENT = [str(1101620000 + i) for i in range(4)]
#: share of each phase's notifications that goes to the polling instances
POLL_SHARE = 0.7
RECEIVE_TIMEOUT = 5
TIMEOUT_MARGIN = 1
#: the bridge's read timeout for deleteNotification (poll.delete_timeout)
DELETE_TIMEOUT = 5.0
#: the bridge's read timeout for receiveNotification (receive_timeout + poll.timeout_margin)
READ_TIMEOUT = RECEIVE_TIMEOUT + TIMEOUT_MARGIN

PROCESSES = int(os.environ.get("BRIDGE_CHAOS_PROCESSES", "3"))

Kind = Literal["poll", "push", "client", "waha", "meta"]
#: the kinds whose provider delivers an instance's notifications in order
ORDERED: frozenset[Kind] = frozenset(("poll", "push", "client"))
SIGNED: frozenset[Kind] = frozenset(("waha", "meta"))


@dataclass
class Stream:
    """One provider instance's notifications, in the order they were given to the provider
    (for WAHA and Meta streams, ``sent`` holds the marks: see :mod:`tests.chaos.pushers`)."""

    instance: str
    kind: Kind
    sent: list[bytes] = field(default_factory=list)
    receipts: list[int] = field(default_factory=list)  # parallel to ``sent`` (poll, push)
    acked: int = 0  # client streams: how many got HTTP 200 (always a prefix of ``sent``)
    more: asyncio.Event = field(default_factory=asyncio.Event)
    refused: Counter[str] = field(default_factory=Counter)


@dataclass
class Phase:
    fault: str
    tag: str
    starts: dict[str, int]
    started: float = field(default_factory=time.monotonic)
    injected: int = 0
    notes: list[str] = field(default_factory=list)
    signed_dropped: int = 0  # WAHA and Meta events dropped by their fakes before the phase


@dataclass
class _Tally:
    copies: Counter[tuple[str, int]] = field(default_factory=Counter)
    ids: defaultdict[tuple[str, int], set[str | None]] = field(
        default_factory=lambda: defaultdict(set)
    )
    first_order: defaultdict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    foreign: int = 0


@dataclass(frozen=True)
class Drained:
    body: bytes
    message_id: str | None
    instance: str
    provider: str = "greenapi"


def _body(tag: str, instance: str, n: int) -> bytes:
    common = {
        "instanceData": {
            "idInstance": int(instance),
            "wid": "79001234567@c.us",
            "typeInstance": "whatsapp",
        },
        "timestamp": 1_700_000_000 + n,
        "idMessage": f"{tag}-{instance}-{n:06d}",
    }
    chat = f"7900{n % 17:07d}@c.us"
    if n % 5 == 4:
        note = {"typeWebhook": "outgoingMessageStatus", **common, "chatId": chat, "status": "sent"}
    else:
        note = {
            "typeWebhook": "incomingMessageReceived",
            **common,
            "senderData": {"chatId": chat, "sender": chat, "senderName": "chaos"},
            "messageData": {
                "typeMessage": "textMessage",
                "textMessageData": {"textMessage": f"note {n} of {instance}"},
            },
        }
    return json.dumps(note, separators=(",", ":")).encode()


def bridge_config(amqp_url: str, names: Names, api_url: str) -> tuple[str, dict[str, str]]:
    text, env = bridge_toml(
        amqp_url=amqp_url, names=names, api_url=api_url, instances=POLL,
        receive_timeout=RECEIVE_TIMEOUT, timeout_margin=TIMEOUT_MARGIN,
        amqp_extra="connect_timeout = 5\nheartbeat = 5",
        http_extra="retry_after = 1",
        extra=f'delete_timeout = {DELETE_TIMEOUT}\n[log]\nlevel = "info"',
        lease="interval = 1.0\nsettle = 3.0\nheartbeat = 5",  # the defaults, as deployed
    )  # fmt: skip
    env["CHAOS_HOOK"] = HOOK_TOKEN
    signed, signed_env = signed_sources()
    env.update(signed_env)
    lines = [text, *signed]
    for ident in PUSH + CLIENT:
        lines += [
            "[[sources]]",
            'provider = "greenapi"',
            'mode = "webhook"',
            f'instance = "{ident}"',
            'webhook_token_env = "CHAOS_HOOK"',
        ]
    return "\n".join(lines) + "\n", env


class Rig:
    def __init__(
        self,
        node: RabbitNode,
        proxy: TcpProxy,
        fake: FakeServer,
        fleet: BridgeFleet,
        names: Names,
        sink: str,
    ) -> None:
        self.node = node
        self.proxy = proxy
        self.fake = fake
        self.fleet = fleet
        self.names = names
        self.sink = sink
        self.sampler = RssSampler(fleet)
        self.streams = [
            *(Stream(i, "poll") for i in POLL),
            *(Stream(i, "push") for i in PUSH),
            *(Stream(i, "client") for i in CLIENT),
            *(Stream(i, "waha") for i in WAHA),
            *(Stream(i, "meta") for i in META),
        ]
        self._by_instance = {s.instance: s for s in self.streams}
        self._where: dict[bytes, tuple[str, int]] = {}  # body -> (instance, index)
        clients = [s for s in self.streams if s.kind == "client"]
        self.pusher = ClientPusher(fleet, clients, HOOK_TOKEN)
        self.signed = SignedPushers(fleet)
        #: settled RSS per slot after the baseline phase: (pid, bytes)
        self.baseline_rss: dict[int, tuple[int, int]] = {}
        self._phases = 0

    # -- load -------------------------------------------------------------------------------

    def begin(self, fault: str) -> Phase:
        self._phases += 1
        self.sampler.reset()
        starts = {s.instance: len(s.sent) for s in self.streams}
        return Phase(fault, f"p{self._phases}", starts, signed_dropped=self.signed.dropped())

    def feed(self, phase: Phase, total: int) -> None:
        """Append ``total`` new notifications: ``POLL_SHARE`` to the polling instances, the
        rest to the webhook instances, spread evenly."""
        polled = [s for s in self.streams if s.kind == "poll"]
        pushed = [s for s in self.streams if s.kind != "poll"]
        poll_total = round(total * POLL_SHARE)
        for group, amount in ((polled, poll_total), (pushed, total - poll_total)):
            for k, stream in enumerate(group):
                count = amount // len(group) + (1 if k < amount % len(group) else 0)
                self._append(phase, stream, count)

    def _append(self, phase: Phase, stream: Stream, count: int) -> None:
        start = len(stream.sent)
        numbers = [n - phase.starts[stream.instance] for n in range(start, start + count)]
        if stream.kind in SIGNED:
            marks = [f"{phase.tag}-{stream.instance}-{n:06d}" for n in numbers]
            bodies = [mark.encode() for mark in marks]
        else:
            bodies = [_body(phase.tag, stream.instance, n) for n in numbers]
        for offset, body in enumerate(bodies):
            self._where[body] = (stream.instance, start + offset)
        stream.sent += bodies
        if stream.kind == "client":
            stream.more.set()
        elif stream.kind in SIGNED:
            self.signed.append(stream.kind, stream.instance, list(zip(marks, numbers, strict=True)))
        else:
            stream.receipts += self.fake.state.enqueue_many(stream.instance, bodies)

    def acknowledged(self) -> int:
        """Notifications acknowledged to the providers so far (deleted, or answered 200)."""
        instances = self.fake.state.instances
        green = sum(
            s.acked if s.kind == "client" else instances[s.instance].deleted
            for s in self.streams
            if s.kind in ORDERED
        )
        return green + self.signed.delivered()

    def outstanding(self) -> int:
        instances = self.fake.state.instances
        green = sum(
            len(s.sent) - s.acked if s.kind == "client" else len(instances[s.instance].queue)
            for s in self.streams
            if s.kind in ORDERED
        )
        return green + self.signed.pending()

    async def wait_acked(self, target: int, timeout: float) -> None:
        await wait_for(lambda: self.acknowledged() >= target, timeout, f"{target} acknowledged")

    async def quiet_ack_window(self, seconds: float, grace: float = 1.5) -> int:
        """Acknowledgements made during ``seconds`` after a ``grace`` (for outages: must be 0;
        the grace lets deletes of publishes confirmed just before the fault land)."""
        await asyncio.sleep(grace)
        before = self.acknowledged()
        await asyncio.sleep(max(0.0, seconds - grace))
        return self.acknowledged() - before

    # -- books ------------------------------------------------------------------------------

    async def settle(self, phase: Phase, timeout: float = 240.0) -> Row:
        """Wait until every notification was acknowledged to its provider, drain the sink and
        account for the phase."""
        drained_in_time = True
        try:
            await wait_for(lambda: self.outstanding() == 0, timeout, "providers drained")
        except TimeoutError:
            drained_in_time = False
            phase.notes.append(f"{self.outstanding()} still unacknowledged after {timeout}s")
        await asyncio.sleep(1.0)  # a republish in flight would land now
        self.sampler.sample()
        messages = await self.drain()
        return self._account(phase, messages, drained_in_time)

    async def drain(self, idle: float = 1.5) -> list[Drained]:
        """Everything in the sink (consumed and acked), straight from the node."""
        out: list[Drained] = []
        connection = await aio_pika.connect(self.node.amqp_url)
        async with connection:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=2000)
            queue = await channel.declare_queue(self.sink, passive=True)
            last = time.monotonic()

            async def on_message(message: AbstractIncomingMessage) -> None:
                nonlocal last
                headers = message.headers
                instance, provider = str(headers["x-instance"]), str(headers["x-provider"])
                out.append(Drained(message.body, message.message_id, instance, provider))
                last = time.monotonic()
                await message.ack()

            tag = await queue.consume(on_message)
            while True:
                await asyncio.sleep(0.2)
                if time.monotonic() - last < idle:
                    continue
                probe = await channel.declare_queue(self.sink, passive=True)
                if not probe.declaration_result.message_count:
                    break
            await queue.cancel(tag)
        return out

    def _tally(self, messages: list[Drained]) -> _Tally:
        """Where each drained message came from: copies, message ids, first-copy order."""
        tally = _Tally()
        for message in messages:
            mark = mark_of(message.provider, message.body)
            where = self._where.get(message.body if mark is None else mark.encode())
            if where is None or where[0] != message.instance:
                tally.foreign += 1
                continue
            tally.copies[where] += 1
            tally.ids[where].add(message.message_id)
            if tally.copies[where] == 1:
                tally.first_order[where[0]].append(where[1])
        return tally

    def _account(self, phase: Phase, messages: list[Drained], drained_in_time: bool) -> Row:
        tally = self._tally(messages)
        copies, ids, first_order = tally.copies, tally.ids, tally.first_order
        foreign = tally.foreign
        deleted: set[int] = set()
        for ident in POLL + PUSH:
            deleted.update(self.fake.state.instance_stats(ident).deleted_receipts)
        signed_dropped = self.signed.dropped() - phase.signed_dropped
        sent = acked = found = lost = order_violations = id_changes = 0
        lost_examples: list[str] = []
        for stream in self.streams:
            start = phase.starts[stream.instance]
            indices = range(start, len(stream.sent))
            sent += len(indices)
            present = {i for i in indices if copies.get((stream.instance, i))}
            if stream.kind == "client":
                acked_idx = set(range(start, stream.acked))
            elif stream.kind in SIGNED:  # the fakes count, not per event: all, unless dropped
                acked_idx = present if signed_dropped or not drained_in_time else set(indices)
            else:
                acked_idx = {i for i in indices if stream.receipts[i] in deleted}
            acked += len(acked_idx)
            found += len(present)
            missing = sorted(acked_idx - present)
            lost += len(missing)
            lost_examples += [f"{stream.instance}#{i - start}" for i in missing[:3]]
            seq = first_order.get(stream.instance, []) if stream.kind in ORDERED else []
            order_violations += sum(1 for a, b in itertools.pairwise(seq) if b < a)
            id_changes += sum(1 for i in indices if len(ids.get((stream.instance, i), ())) > 1)
        in_phase = sum(copies.values())
        duplicates = in_phase - found
        if foreign:
            phase.notes.append(f"{foreign} messages in the sink that no provider sent")
        if id_changes:
            phase.notes.append(f"{id_changes} notifications republished with a new message_id")
        if lost_examples:
            phase.notes.append("lost: " + ", ".join(lost_examples[:10]))
        if signed_dropped:
            phase.notes.append(f"{signed_dropped} WAHA/Meta events dropped by their fakes")
        phase.notes += self.signed.notes()
        overlapped = [i for i in POLL if self.fake.state.instance_stats(i).overlapped]
        push_overlap = [i for i in PUSH if self.fake.state.push_stats(i).overlapped]
        for ident in overlapped:
            times = self.fake.state.instances[ident].overlaps
            stamps = ", ".join(
                time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
                for t in times[:5]
            )
            phase.notes.append(f"overlapping receives on {ident}: {len(times)} at {stamps}")
        if push_overlap:
            phase.notes.append(f"overlapping pushes on {len(push_overlap)} instances")
        settled = dict(self.sampler.last)
        return Row(
            fault=phase.fault,
            injected=phase.injected,
            sent=sent,
            acked=acked,
            found=found,
            lost=lost,
            duplicates=duplicates,
            order_violations=order_violations,
            peak_rss=self.sampler.peak,
            seconds=time.monotonic() - phase.started,
            processes=self.fleet.size,
            drained=drained_in_time,
            foreign=foreign,
            id_changes=id_changes,
            overlapped=bool(overlapped),
            push_overlapped=bool(push_overlap),
            settled_rss={slot: rss for slot, (_pid, rss) in settled.items()},
            settled_pids={slot: pid for slot, (pid, _rss) in settled.items()},
            notes=phase.notes,
        )


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def rig_context(node: RabbitNode, tmp: Path) -> AsyncIterator[Rig]:
    names = Names()
    async with contextlib.AsyncExitStack() as stack:
        proxy = await stack.enter_async_context(TcpProxy(target=(node.host, node.port)))
        fake = await stack.enter_async_context(
            fake_greenapi(
                [(i, token_for(i)) for i in POLL + PUSH],
                latency=0.002,
                rate_limit=1000,
                push_timeout=15,
                push_pause=0.2,
            )
        )
        sink = await declare_sink(node.amqp_url, names)
        text, env = bridge_config(f"amqp://guest:guest@127.0.0.1:{proxy.port}/", names, fake.url)
        config = tmp / "bridge.toml"
        config.write_text(text)
        fleet = BridgeFleet(config, env, size=PROCESSES, log_dir=tmp)
        rig = Rig(node, proxy, fake, fleet, names, sink)
        stack.push_async_callback(_delete_sink, node, names, sink)
        stack.push_async_callback(fleet.stop)
        await fleet.start()
        stack.push_async_callback(rig.sampler.stop)
        rig.sampler.start()
        for k, ident in enumerate(PUSH):
            process = fleet.processes[k % fleet.size]
            fake.state.set_webhook(ident, f"{process.url}/webhooks/greenapi/{ident}", HOOK_TOKEN)
        stack.push_async_callback(rig.pusher.aclose)
        rig.pusher.start()
        stack.push_async_callback(rig.signed.aclose)
        rig.signed.start()
        yield rig


async def _delete_sink(node: RabbitNode, names: Names, sink: str) -> None:
    await asyncio.to_thread(node.ensure_running)
    connection = await aio_pika.connect(node.amqp_url)
    async with connection:
        for queue in (sink, names.unrouted, names.invalid, names.archive):
            with contextlib.suppress(Exception):
                await (await connection.channel()).queue_delete(queue)
        exchanges = (names.ingest, names.exchange, names.unrouted, names.invalid, names.members)
        for exchange in exchanges:
            with contextlib.suppress(Exception):
                await (await connection.channel()).exchange_delete(exchange)
