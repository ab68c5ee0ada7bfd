"""Confirmed, mandatory, persistent publishing with its own reconnect loop.

`AmqpPublisher.run()` keeps one connection and one confirm channel up: connect, declare the
topology, mark ready, wait for loss, back off, repeat. The bridge owns this loop rather than
using aio-pika's robust connection so that readiness includes the topology, reconnects follow
the one back-off policy, and a topology conflict stops the process instead of looping.

`publish()` returns only after `basic.ack`; every other outcome raises a `PublishError`.
Confirmed ids are remembered (bounded) so a redelivered notification is not published twice
while the process lives.

Below `publish()` is `ConfirmLane`, the bridge's own publish path on one aiormq confirm
channel (docs/development.md says why). aiormq keeps the connection, its reader and writer
tasks, heartbeats, and the dispatch of `basic.ack`, `basic.nack` and `basic.return` to the
futures in `Channel.confirmations`; the lane replaces only `Channel.basic_publish`: frames are
encoded by `bridge.amqp.frames`, every publish of one event-loop iteration leaves in one
`ChannelFrame` through aiormq's write queue, and one timer enforces the confirm deadline.
The aiormq internals it relies on are pinned in `pyproject.toml` and checked by
`tests/integration/test_aiormq_contract.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Protocol

import aio_pika
import aiormq
import aiormq.exceptions
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from aiormq.abc import ChannelFrame
from pamqp.commands import Basic

from bridge.aio import Background, first
from bridge.amqp.connection import keep_connection
from bridge.amqp.frames import Encoder
from bridge.amqp.topology import Topology, declare
from bridge.config import AmqpConfig, mask_url
from bridge.dedup import RecentIds
from bridge.envelope import Outbound
from bridge.errors import (
    BrokerUnavailable,
    PublishNacked,
    PublishReturned,
    PublishTimeout,
)
from bridge.logs import get_logger
from bridge.metrics import BROKER_UP, CONFIRM_LATENCY, IN_FLIGHT
from bridge.retry import Backoff

log = get_logger(__name__)

#: Encoded frames handed to aiormq's writer and not yet drained by it (its `writer.drain()`
#: returns once the socket's buffer is under the transport's high-water mark): above this,
#: publishes wait until the writer catches up.
HIGH_WATER_BYTES = 1 << 20
#: The confirm deadline fires at most this fraction of `confirm_timeout` late.
SWEEP_SLACK = 0.05


class Publisher(Protocol):
    """What ingest paths see of the broker."""

    def is_ready(self) -> bool: ...

    async def wait_ready(self) -> None: ...

    async def publish(self, out: Outbound) -> bool:
        """Publish and wait for the confirm. False if it was confirmed before (duplicate)."""
        ...


class AmqpPublisher(Background):
    """The broker as the ingest paths see it. `async with publisher:` keeps the connection up
    until the block ends, then lets in-flight publishes drain and closes; `failed()` raises a
    topology conflict."""

    def __init__(self, cfg: AmqpConfig, topo: Topology, backoff: Backoff | None = None) -> None:
        self._cfg = cfg
        self._topo = topo
        self._backoff = backoff or Backoff(initial=0.2, maximum=10.0, floor=0.05)
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._lane: ConfirmLane | None = None
        self._serving: aiormq.Channel | None = None  # the session's channel, ready or not
        self._renew = asyncio.Event()  # a nack: serve on a fresh channel (see `_session`)
        self._renewed = 0.0  # when the channel was last renewed (monotonic)
        self._recent = RecentIds(cfg.dedup_size)
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        IN_FLIGHT.set_function(self._in_flight_now)

    def _in_flight_now(self) -> float:
        return self._in_flight

    # -- readiness ---------------------------------------------------------------------

    def is_ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    # -- the connection loop -----------------------------------------------------------

    async def run(self) -> None:
        """Keep a confirm channel up until `close()`; raises `TopologyError` (fatal)."""
        await keep_connection(
            self._cfg,
            self._session,
            stop=self._stop,
            backoff=self._backoff,
            timeout=self._cfg.connect_timeout,
            heartbeat=self._cfg.heartbeat,
            role="publisher",
            after=self._down,
            events="broker",
            log=log,
        )

    async def _down(self) -> None:
        self._ready.clear()
        BROKER_UP.set(0)
        lane, self._lane = self._lane, None
        self._serving = None
        if self._stop.is_set():
            await self._drain()
        if lane is not None:
            lane.close(BrokerUnavailable("the confirm channel to RabbitMQ closed"))

    async def _session(self, connection: aio_pika.Connection) -> None:
        """Open the confirm channel, declare the topology, serve until lost or stopped."""
        lost = asyncio.Event()
        connection.close_callbacks.add(lambda *_: lost.set())
        channel, underlay = await self._open_channel(connection, lost)
        await declare(channel, self._topo, timeout=self._cfg.connect_timeout)
        self._lane = ConfirmLane(underlay, self._cfg.confirm_timeout)
        self._ready.set()
        BROKER_UP.set(1)
        log.info("broker.ready", url=mask_url(str(connection.url.with_query(None))))
        # RabbitMQ 3.10: a channel whose first publish to a quorum queue went to a leader that
        # had just died keeps being nacked long after a new leader took over (a fresh channel
        # is not): after a nack, publishing moves to a fresh channel.
        while await first(self._stop, lost, self._renew) is self._renew:
            self._renew.clear()
            self._renewed = time.monotonic()
            old = channel
            channel, underlay = await self._open_channel(connection, lost)
            # the old lane fails what it still holds when its channel closes
            self._lane = ConfirmLane(underlay, self._cfg.confirm_timeout)
            log.info("broker.channel_renewed", reason="nack")
            with contextlib.suppress(*CONNECTION_EXCEPTIONS, TimeoutError):
                await asyncio.wait_for(old.close(), 5)

    async def _open_channel(
        self, connection: aio_pika.Connection, lost: asyncio.Event
    ) -> tuple[aio_pika.abc.AbstractChannel, aiormq.Channel]:
        """A confirm channel and its aiormq channel, the session's from now on; `lost` is set
        if it closes while it is (a replaced one closes quietly)."""
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        underlay = await channel.get_underlay_channel()
        assert isinstance(underlay, aiormq.Channel)
        channel.close_callbacks.add(lambda *_: lost.set() if self._serving is underlay else None)
        self._serving = underlay
        return channel, underlay

    async def close(self, drain_timeout: float = 10.0) -> None:
        """Stop reconnecting; in-flight publishes get `drain_timeout` to finish first."""
        try:
            await asyncio.wait_for(self._idle.wait(), drain_timeout)
        except TimeoutError:
            log.warning("broker.drain_timeout", in_flight=self._in_flight)
        self._stop.set()

    async def _drain(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self._cfg.confirm_timeout)

    # -- publishing --------------------------------------------------------------------

    async def publish(self, out: Outbound) -> bool:
        if out.message_id in self._recent:
            return False
        lane = self._lane
        if lane is None or lane.closed:
            raise BrokerUnavailable("no confirm channel to RabbitMQ")
        self._in_flight += 1
        self._idle.clear()
        started = time.perf_counter()
        try:
            result = await lane.publish(out, self._topo.publish_exchange(out.exchange))
        except aiormq.exceptions.PublishError as exc:
            raise PublishReturned(f"returned by the broker: {exc}") from None
        except aiormq.exceptions.DeliveryError as exc:
            if time.monotonic() - self._renewed > 1.0:  # at most one renewal a second
                self._renew.set()
            raise PublishNacked(f"nacked by the broker: {exc}") from None
        except CONNECTION_EXCEPTIONS as exc:
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from None
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
        if not isinstance(result, Basic.Ack):
            raise PublishNacked(f"unexpected confirm frame {type(result).__name__}")
        CONFIRM_LATENCY.observe(time.perf_counter() - started)
        self._recent.add(out.message_id)
        return True


class ConfirmLane:
    """Publishes on one aiormq confirm channel, below `Channel.basic_publish`.

    Each publish takes the channel's next delivery tag and puts a future where aiormq's reader
    resolves it: `channel.confirmations[tag]` (ack, nack; `multiple=true` acks resolve every
    tag up to theirs) and `channel.message_id_delivery_tag[message_id]` (return). Its frames
    are appended to the pending write; a callback at the end of the loop iteration hands all
    pending frames to aiormq's writer as one `ChannelFrame`. A nack, a return, the deadline or
    the channel's loss fails exactly the publishes it concerns; nothing is dropped: when the
    write queue is full or the writer has not drained `HIGH_WATER_BYTES`, publishes wait.

    Concurrent publishes of one `message_id` share one broker publish and its outcome, so a
    return is always matched to the one publish it belongs to.
    """

    def __init__(self, channel: aiormq.Channel, confirm_timeout: float) -> None:
        self._channel = channel
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[ChannelFrame] = channel.write_queue
        self._encode = Encoder(channel.number, channel.connection.connection_tune.frame_max)
        self._timeout = confirm_timeout
        self._slack = confirm_timeout * SWEEP_SLACK
        self.closed: BaseException | None = None
        #: tag -> (future, deadline, message id), in tag order, which is deadline order
        self._waiting: dict[int, tuple[asyncio.Future[Any], float, str]] = {}
        self._by_id: dict[str, asyncio.Future[Any]] = {}
        self._parts: list[bytes] = []
        self._flush_scheduled = False
        self._unsent = 0  # bytes handed to the writer, not yet drained
        self._stalled: asyncio.Task[None] | None = None  # a write waiting for queue room
        self._writable = asyncio.Event()
        self._writable.set()
        self._timer: asyncio.TimerHandle | None = None
        #: what a timed-out tag is left as in `confirmations`: a late confirm is then ignored
        #: quietly, as aiormq ignores one for a cancelled publish
        self._expired: asyncio.Future[Any] = self._loop.create_future()
        self._expired.cancel()
        self._closing = channel.closing
        self._closing.add_done_callback(self._on_channel_closed)

    # -- one publish -------------------------------------------------------------------

    async def publish(self, out: Outbound, exchange: str | None = None) -> Any:
        """Publish `out` (to `exchange` instead of `out.exchange` when given) and return its
        confirm frame (`Basic.Ack`); aiormq's `PublishError` (returned), `DeliveryError`
        (nacked), `PublishTimeout` or `BrokerUnavailable` raise."""
        if not out.message_id:  # a return is matched to its publish by message id
            raise ValueError("a publish needs a message_id")
        shared = self._by_id.get(out.message_id)
        if shared is not None:
            return await _outcome(shared)
        deadline = self._loop.time() + self._timeout
        if not self._writable.is_set():
            await self._wait_writable(deadline)
        channel = self._channel
        if self.closed is not None or channel.is_closed:
            raise BrokerUnavailable("the confirm channel to RabbitMQ closed")
        parts = self._parts
        mark = len(parts)
        self._encode.into(parts, out, exchange)  # raises before a tag is taken
        channel.delivery_tag += 1
        tag = channel.delivery_tag
        future = self._loop.create_future()
        channel.confirmations[tag] = future
        channel.message_id_delivery_tag[out.message_id] = tag
        self._waiting[tag] = (future, deadline, out.message_id)
        self._by_id[out.message_id] = future
        for part in parts[mark:]:
            self._unsent += len(part)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        if self._timer is None:
            self._arm(deadline)
        try:
            return await future
        finally:
            self._forget(tag, out.message_id, future)

    def _forget(self, tag: int, message_id: str, future: asyncio.Future[Any]) -> None:
        self._waiting.pop(tag, None)
        if self._by_id.get(message_id) is future:
            del self._by_id[message_id]
        ids = self._channel.message_id_delivery_tag
        if ids.get(message_id) == tag:
            del ids[message_id]

    async def _wait_writable(self, deadline: float) -> None:
        try:
            async with asyncio.timeout_at(deadline):
                while not self._writable.is_set():
                    await self._writable.wait()
        except TimeoutError:
            raise PublishTimeout(
                f"RabbitMQ took no frames for {self._timeout}s (socket or write queue full)"
            ) from None

    # -- writing -----------------------------------------------------------------------

    def _flush(self) -> None:
        """Hand every pending frame to aiormq's writer in one `ChannelFrame`."""
        self._flush_scheduled = False
        if self._stalled is not None or not self._parts or self.closed is not None:
            return
        payload = b"".join(self._parts)
        self._parts = []
        size = len(payload)
        drained = self._loop.create_future()
        drained.add_done_callback(lambda _: self._drained(size))
        frame = ChannelFrame(payload=payload, should_close=False, drain_future=drained)
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self._stalled = self._loop.create_task(self._put_when_room(frame))
        self._update_writable()

    async def _put_when_room(self, frame: ChannelFrame) -> None:
        await self._queue.put(frame)
        self._stalled = None
        self._update_writable()
        self._flush()  # what was published meanwhile

    def _drained(self, size: int) -> None:
        self._unsent -= size
        self._update_writable()

    def _update_writable(self) -> None:
        if (self._stalled is None and self._unsent <= HIGH_WATER_BYTES) or self.closed:
            self._writable.set()
        else:
            self._writable.clear()

    # -- deadlines ---------------------------------------------------------------------

    def _arm(self, when: float) -> None:
        self._timer = self._loop.call_at(when, self._sweep)

    def _sweep(self) -> None:
        """Fail every publish past its deadline; come back at the next deadline, but not
        sooner than `SWEEP_SLACK` of the timeout (at most that late, one timer for all)."""
        self._timer = None
        now = self._loop.time()
        confirmations = self._channel.confirmations
        ids = self._channel.message_id_delivery_tag
        expired = []
        for tag, (future, deadline, message_id) in self._waiting.items():
            if deadline > now:
                self._arm(max(deadline, now + self._slack))
                break
            expired.append((tag, future, message_id))
        for tag, future, message_id in expired:
            del self._waiting[tag]
            if confirmations.get(tag) is future:
                confirmations[tag] = self._expired
            if ids.get(message_id) == tag:
                del ids[message_id]  # a late return finds nothing to fail
            if not future.done():
                future.set_exception(PublishTimeout(f"no confirm within {self._timeout}s"))

    # -- loss --------------------------------------------------------------------------

    def _on_channel_closed(self, _: asyncio.Future[Any]) -> None:
        self.close(BrokerUnavailable("the confirm channel to RabbitMQ closed"))

    def close(self, exc: BaseException) -> None:
        """Fail every publish not yet confirmed with `exc`; later ones are refused."""
        if self.closed is not None:
            return
        self.closed = exc
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._stalled is not None:
            self._stalled.cancel()
        self._parts = []
        waiting, self._waiting = self._waiting, {}
        for future, _, _ in waiting.values():
            if not future.done():
                future.set_exception(exc)
        self._writable.set()
        if not self._closing.done():
            self._closing.cancel()  # the observer aiormq made for this lane


async def _outcome(shared: asyncio.Future[Any]) -> Any:
    """Wait for another publish of the same message, without cancelling it if this waiter
    is cancelled."""
    try:
        return await asyncio.shield(shared)
    except asyncio.CancelledError:
        if shared.cancelled():
            raise BrokerUnavailable("the publish this one joined was cancelled") from None
        raise
