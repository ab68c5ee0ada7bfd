"""Per-instance polling leases on RabbitMQ: each instance is polled by one process at a time.

A lease is an exclusive queue `bridge.lease.<provider>.<instance>`: RabbitMQ lets one
connection declare it and deletes it when that connection goes, so a process that dies or is
cut off loses its leases without doing anything. Each process (a member):

1. keeps its own connection for leases, heartbeat `lease.heartbeat`;
2. beats every `lease.interval` on the fanout exchange `lease.exchange` — its id, the leases
   it can take (its polling sources), the ones it holds — and hears everyone's beats
   (`bridge.placement.Members`; silent for 3 intervals = gone, a stopping member says so);
3. computes the same plan as every other member (`bridge.placement.assign`), takes the
   leases the plan gives it that no live member says it holds, and hands over the ones the
   plan gives to a member seen for 2 intervals: revoke, let the poller finish the
   notification in hand, delete the queue.

Two rules keep a cut-off holder and a new holder from receiving at once. A holder revokes
every lease once its last confirmed beat is 2 intervals old (it may be cut off and not know
it yet). A new holder waits `lease.settle` (> 2 intervals) after taking a lease before its
first receive.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterable

import aio_pika
import aiormq.exceptions
import msgspec
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from bridge import APP_ID
from bridge.aio import Background, first
from bridge.amqp.connection import keep_connection
from bridge.amqp.lease_state import Lease, LeaseState
from bridge.config import AmqpConfig, LeaseConfig, Source
from bridge.errors import TopologyError
from bridge.logs import get_logger
from bridge.metrics import LEASE_CHANGES, LEASE_HELD, LEASE_MEMBERS
from bridge.placement import BEAT_DECODER, BEAT_ENCODER, Beat, Members, assign
from bridge.retry import Backoff

__all__ = ["QUIESCE_TIMEOUT", "Lease", "LeaseKeeper", "LeaseState", "lease_name", "member_id"]

log = get_logger(__name__)

QUIESCE_TIMEOUT = 60.0  # longest wait for a poller to finish its notification before a handover


def lease_name(source: Source) -> str:
    return f"bridge.lease.{source.provider}.{source.instance}"


def member_id() -> str:
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"


class LeaseKeeper(Background):
    """Takes, holds and hands over the leases of this process's polling sources.

    `async with keeper:` holds leases until the block ends, then says so to the other members
    and closes the connection (which frees every lease); `failed()` raises a topology
    conflict on the members exchange.
    """

    def __init__(
        self,
        cfg: LeaseConfig,
        amqp: AmqpConfig,
        sources: Iterable[Source],
        backoff: Backoff | None = None,
    ) -> None:
        self._cfg = cfg
        self._amqp = amqp
        self._backoff = backoff or Backoff(initial=0.2, maximum=10.0, floor=0.05)
        self.member = member_id()
        self.leases = {lease_name(s): Lease(lease_name(s), s.provider, s.instance) for s in sources}
        self._sources = list(self.leases)
        for lease in self.leases.values():  # exported from the start: 0 = not held here
            LEASE_HELD.labels(lease.provider, lease.instance).set(0)
        self._members = Members(expiry=3 * cfg.interval)
        self._suspended = False
        self._suspend_timer: asyncio.TimerHandle | None = None
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._exchange: AbstractExchange | None = None
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._channel: AbstractChannel | None = None  # for declares; closed by a refusal
        self._channel_lock = asyncio.Lock()
        self._plan_key: frozenset[tuple[str, frozenset[str]]] | None = None
        self._plan: dict[str, str] = {}

    def lease(self, source: Source) -> Lease:
        return self.leases[lease_name(source)]

    def add(self, source: Source) -> Lease:
        """Take `source`'s lease too (a reload added it): the next plan may give it here."""
        name = lease_name(source)
        lease = self.leases.get(name)
        if lease is None:
            lease = self.leases[name] = Lease(name, source.provider, source.instance)
            LEASE_HELD.labels(lease.provider, lease.instance).set(0)
        lease.retired = False  # removed and added again before its release: kept
        if name not in self._sources:
            self._sources.append(name)
        self._wake.set()
        return lease

    def remove(self, source: Source) -> None:
        """Give up `source`'s lease (a reload removed it; its poller has stopped): the other
        members no longer hear it offered, a held one is released at once, then forgotten."""
        lease = self.leases.get(lease_name(source))
        if lease is None:
            return
        lease.retired = True
        self._sources = [name for name in self._sources if name != lease.name]
        if not lease.held:
            self._forget(lease)
        self._wake.set()

    def held(self) -> set[str]:
        return {name for name, lease in self.leases.items() if lease.held}

    def _held(self) -> list[Lease]:
        return [lease for lease in self.leases.values() if lease.held]

    async def run(self) -> None:
        """Hold leases until `close()`; raises `TopologyError` (fatal)."""
        await keep_connection(
            self._amqp.url,
            self._session,
            stop=self._stop,
            backoff=self._backoff,
            timeout=self._amqp.connect_timeout,
            heartbeat=self._cfg.heartbeat,
            name=f"bridge {APP_ID} leases {self.member}",
            after=self._down,
            events="lease.broker",
            log=log,
        )

    async def close(self) -> None:
        """Stop: say so to the other members; closing the connection frees every lease."""
        self._stop.set()
        self._wake.set()

    # -- one connection ----------------------------------------------------------------

    async def _session(self, connection: aio_pika.abc.AbstractConnection) -> None:
        lost = asyncio.Event()
        connection.close_callbacks.add(lambda *_: lost.set())
        channel = await connection.channel(publisher_confirms=True)
        channel.close_callbacks.add(lambda *_: lost.set())
        timeout = self._amqp.connect_timeout
        try:
            exchange = await channel.declare_exchange(
                self._cfg.exchange, aio_pika.ExchangeType.FANOUT, durable=True, timeout=timeout
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise TopologyError(f"RabbitMQ holds a conflicting object: {exc}") from None
        inbox = await channel.declare_queue(
            exclusive=True,
            arguments={"x-message-ttl": int(self._members.expiry * 1000)},
            timeout=timeout,
        )
        await inbox.bind(exchange, timeout=timeout)
        self._members = Members(expiry=3 * self._cfg.interval)  # a fresh view per connection
        await inbox.consume(self._on_beat, no_ack=True, timeout=timeout)
        self._connection, self._exchange = connection, exchange
        self._suspended = True  # until the first beat is confirmed
        loop = asyncio.get_running_loop()
        planning_from = loop.time() + 1.5 * self._cfg.interval  # hear the others first
        log.info("lease.connected", member=self.member)
        beats = asyncio.create_task(self._beats(lost), name="lease beats")
        try:
            while not self._stop.is_set() and not lost.is_set() and not beats.done():
                gone = self._members.expire(loop.time())
                if gone:
                    log.info("lease.members_gone", members=gone)
                LEASE_MEMBERS.set(len(self._members) + 1)
                if loop.time() >= planning_from:
                    await self._rebalance()
                self._wake.clear()
                await first(self._stop, lost, self._wake, timeout=self._cfg.interval)
        finally:
            beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beats  # re-raises what ended the beats (a lost connection)
        if self._stop.is_set() and not lost.is_set():
            with contextlib.suppress(*CONNECTION_EXCEPTIONS, TimeoutError):
                await self._publish(Beat(member=self.member, leaving=True))

    async def _down(self) -> None:
        lost = self._held()
        for lease in lost:
            if lease.release is not None:
                lease.release.cancel()
            self._drop(lease)
        if self._suspend_timer is not None:
            self._suspend_timer.cancel()
        self._suspended = False
        self._connection = self._exchange = self._channel = None
        if lost and not self._stop.is_set():
            LEASE_CHANGES.labels("lost").inc(len(lost))
            names = sorted(lease.name for lease in lost)
            log.warning("lease.lost", count=len(lost), leases=_few(names))

    # -- beats -------------------------------------------------------------------------

    async def _beats(self, lost: asyncio.Event) -> None:
        """Beat every interval, on its own: a long rebalance must not delay a beat."""
        while not self._stop.is_set() and not lost.is_set():
            await self._beat()
            await first(self._stop, lost, timeout=self._cfg.interval)

    async def _on_beat(self, message: AbstractIncomingMessage) -> None:
        try:
            beat = BEAT_DECODER.decode(message.body)
        except msgspec.DecodeError:
            log.warning("lease.bad_beat", size=len(message.body))
            return
        if beat.member == self.member:
            return
        if self._members.saw(beat, asyncio.get_running_loop().time()):
            log.info(
                "lease.member_seen" if not beat.leaving else "lease.member_left",
                member=beat.member,
                sources=len(beat.sources),
            )
            self._wake.set()

    async def _beat(self) -> None:
        beat = Beat(
            member=self.member,
            sources=self._sources,
            held=sorted(self.held()),
            interval=self._cfg.interval,
        )
        try:
            await self._publish(beat)
        except TimeoutError:
            log.warning("lease.beat_unconfirmed", member=self.member)
            return
        loop = asyncio.get_running_loop()
        if self._suspend_timer is not None:
            self._suspend_timer.cancel()
        self._suspend_timer = loop.call_later(2 * self._cfg.interval, self._suspend)
        if self._suspended:
            self._suspended = False
            held = self._held()
            if held:
                log.info("lease.resumed", held=len(held))
            for lease in held:
                if lease.state is LeaseState.HELD:
                    lease.grant()

    async def _publish(self, beat: Beat) -> None:
        assert self._exchange is not None
        message = aio_pika.Message(BEAT_ENCODER.encode(beat), content_type="application/json")
        await self._exchange.publish(message, routing_key="", timeout=self._cfg.interval)

    def _suspend(self) -> None:
        """No beat confirmed for 2 intervals: this process may be cut off; stop receiving.
        Leases settled meanwhile stay unusable until a beat is confirmed again."""
        if self._suspended:
            return
        self._suspended = True
        held = self._held()
        if held:
            LEASE_CHANGES.labels("suspended").inc()
            log.warning("lease.suspended", held=len(held))
            for lease in held:
                lease.revoke()

    # -- the plan ----------------------------------------------------------------------

    async def _rebalance(self) -> None:
        view = self._members.sources()
        view[self.member] = frozenset(self._sources)
        key = frozenset(view.items())
        if key != self._plan_key:
            self._plan_key, self._plan = key, assign(view)
        now = asyncio.get_running_loop().time()
        holders = self._members.holders(exclude=self.member)
        acquired: list[str] = []
        for name, lease in list(self.leases.items()):  # a reload may add or remove meanwhile
            target = self._plan.get(name)
            if lease.state in (LeaseState.SETTLING, LeaseState.HELD):
                age = 2 * self._cfg.interval
                handover = target not in (None, self.member) and self._members.stable(
                    target, now, age
                )
                if lease.retired or handover:
                    lease.state = LeaseState.RELEASING
                    lease.release = asyncio.create_task(
                        self._release(lease), name=f"release {name}"
                    )
            elif (
                lease.state is LeaseState.IDLE
                and not lease.retired
                and target == self.member
                and name not in holders
                and await self._acquire(lease)
            ):
                acquired.append(name)
            if self._stop.is_set():
                return
        if acquired:
            LEASE_CHANGES.labels("acquired").inc(len(acquired))
            log.info(
                "lease.acquired", count=len(acquired), held=len(self._held()), leases=_few(acquired)
            )

    async def _acquire(self, lease: Lease) -> bool:
        async with self._declaring() as channel:
            if lease.retired:  # removed by a reload while this waited
                return False
            try:
                await channel.declare_queue(
                    lease.name, exclusive=True, timeout=self._amqp.connect_timeout
                )
            except aiormq.exceptions.ChannelLockedResource:
                self._channel = None  # held by another connection; the refusal closed it
                self._locked(lease)
                return False
            except (
                aiormq.exceptions.ChannelPreconditionFailed,
                aiormq.exceptions.ChannelAccessRefused,
            ) as exc:
                self._channel = None
                log.error("lease.refused", lease=lease.name, detail=str(exc)[:200])
                return False
        lease.locked_since, lease.locked_reported = None, False
        LEASE_HELD.labels(lease.provider, lease.instance).set(1)
        self._settle_later(lease)
        return True

    @contextlib.asynccontextmanager
    async def _declaring(self) -> AsyncIterator[AbstractChannel]:
        """The channel for lease declares and deletes, one operation at a time (a refusal
        closes it, which must not fail another operation midway)."""
        async with self._channel_lock:
            if self._channel is None or self._channel.is_closed:
                assert self._connection is not None
                self._channel = await self._connection.channel(publisher_confirms=False)
            yield self._channel

    def _locked(self, lease: Lease) -> None:
        """The plan gives us `lease`, no live member says it holds it, yet its queue is taken.
        Normal for a while (a holder cut off until RabbitMQ's heartbeat frees its queue);
        past that, say so once: something that is not a live bridge holds the queue."""
        now = asyncio.get_running_loop().time()
        if lease.locked_since is None:
            lease.locked_since = now
        patience = 3 * self._members.expiry + 2 * self._cfg.heartbeat
        if not lease.locked_reported and now - lease.locked_since > patience:
            lease.locked_reported = True
            LEASE_CHANGES.labels("locked").inc()
            log.warning(
                "lease.locked",
                lease=lease.name,
                seconds=round(now - lease.locked_since),
                hint="a connection that is not a live bridge holds this queue: close it in "
                "the management UI, or delete a queue of that name declared by something else",
            )

    def _settle_later(self, lease: Lease) -> None:
        """Held: usable after `lease.settle` (unless suspended then)."""
        lease.state = LeaseState.SETTLING
        loop = asyncio.get_running_loop()
        lease.settle_timer = loop.call_later(self._cfg.settle, self._settle, lease)

    def _settle(self, lease: Lease) -> None:
        lease.settle_timer = None
        if lease.state is LeaseState.SETTLING:
            lease.state = LeaseState.HELD
            if not self._suspended:
                lease.grant()

    async def _release(self, lease: Lease) -> None:
        """Hand a lease over: stop receiving, finish the notification in hand, free it."""
        try:
            lease.revoke()
            lease.cancel_settle()
            if not await lease.quiesce(QUIESCE_TIMEOUT):
                log.warning("lease.quiesce_timeout", lease=lease.name)
            async with self._declaring() as channel:
                await channel.queue_delete(lease.name, timeout=self._amqp.connect_timeout)
            self._drop(lease)
            LEASE_CHANGES.labels("released").inc()
            log.info("lease.released", lease=lease.name, held=len(self._held()))
        except (*CONNECTION_EXCEPTIONS, TimeoutError) as exc:
            self._channel = None
            log.warning("lease.release_failed", lease=lease.name, error=repr(exc))
            if lease.state is LeaseState.RELEASING:  # still ours: usable again after settle
                self._settle_later(lease)  # unless the next plan retries the hand-over
        finally:
            if lease.release is asyncio.current_task():
                lease.release = None

    def _drop(self, lease: Lease) -> None:
        """No longer held here."""
        lease.revoke()
        lease.cancel_settle()
        lease.state = LeaseState.IDLE
        lease.release = None
        LEASE_HELD.labels(lease.provider, lease.instance).set(0)
        if lease.retired:
            self._forget(lease)

    def _forget(self, lease: Lease) -> None:
        """A retired lease, no longer held: gone from the keeper and from the metrics."""
        if self.leases.get(lease.name) is lease:
            del self.leases[lease.name]
            LEASE_HELD.remove(lease.provider, lease.instance)


def _few(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, … ({len(names) - limit} more)"
