"""Confirmed, mandatory, persistent publishing with its own reconnect loop.

`AmqpPublisher.run()` keeps one connection and one confirm channel up: connect, declare the
topology, mark ready, wait for loss, back off, repeat. The bridge owns this loop rather than
using aio-pika's robust connection so that readiness includes the topology, reconnects follow
the one back-off policy, and a topology conflict stops the process instead of looping.

`publish()` returns only after `basic.ack`; every other outcome raises a `PublishError`.
Confirmed ids are remembered (bounded) so a redelivered notification is not published twice
while the process lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import Protocol

import aio_pika
import aiormq
import aiormq.exceptions
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from pamqp.commands import Basic

from bridge import APP_ID
from bridge.aio import Background, first
from bridge.amqp.connection import keep_connection
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
        self._channel: aiormq.Channel | None = None
        self._serving: aiormq.Channel | None = None  # the session's channel, ready or not
        self._renew = asyncio.Event()  # a nack: serve on a fresh channel (see `_session`)
        self._renewed = 0.0  # when the channel was last renewed (monotonic)
        self._recent = RecentIds(cfg.dedup_size)
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

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
        self._channel = self._serving = None
        if self._stop.is_set():
            await self._drain()

    async def _session(self, connection: aio_pika.Connection) -> None:
        """Open the confirm channel, declare the topology, serve until lost or stopped."""
        lost = asyncio.Event()
        connection.close_callbacks.add(lambda *_: lost.set())
        channel = await self._open_channel(connection, lost)
        await declare(channel, self._topo, timeout=self._cfg.connect_timeout)
        self._channel = self._serving
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
            channel = await self._open_channel(connection, lost)
            self._channel = self._serving
            log.info("broker.channel_renewed", reason="nack")
            with contextlib.suppress(*CONNECTION_EXCEPTIONS, TimeoutError):
                await asyncio.wait_for(old.close(), 5)

    async def _open_channel(
        self, connection: aio_pika.Connection, lost: asyncio.Event
    ) -> aio_pika.abc.AbstractChannel:
        """A confirm channel, the session's from now on; `lost` is set if it closes while it
        is (a replaced one closes quietly)."""
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        underlay = await channel.get_underlay_channel()
        assert isinstance(underlay, aiormq.Channel)
        channel.close_callbacks.add(lambda *_: lost.set() if self._serving is underlay else None)
        self._serving = underlay
        return channel

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
        channel = self._channel
        if channel is None or channel.is_closed:
            raise BrokerUnavailable("no confirm channel to RabbitMQ")
        properties = aiormq.spec.Basic.Properties(
            content_type="application/json",
            delivery_mode=2,
            message_id=out.message_id,
            timestamp=_timestamp(out.timestamp),
            message_type=out.event,
            app_id=APP_ID,
            headers=dict(out.headers),
        )
        self._in_flight += 1
        IN_FLIGHT.inc()
        self._idle.clear()
        started = time.perf_counter()
        try:
            result = await channel.basic_publish(
                out.body,
                exchange=self._topo.publish_exchange(out.exchange),
                routing_key=out.routing_key,
                properties=properties,
                mandatory=True,
                timeout=self._cfg.confirm_timeout,
            )
        except aiormq.exceptions.PublishError as exc:
            raise PublishReturned(f"returned by the broker: {exc}") from None
        except aiormq.exceptions.DeliveryError as exc:
            if time.monotonic() - self._renewed > 1.0:  # at most one renewal a second
                self._renew.set()
            raise PublishNacked(f"nacked by the broker: {exc}") from None
        except TimeoutError:
            raise PublishTimeout(f"no confirm within {self._cfg.confirm_timeout}s") from None
        except CONNECTION_EXCEPTIONS as exc:
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from None
        finally:
            self._in_flight -= 1
            IN_FLIGHT.dec()
            if not self._in_flight:
                self._idle.set()
        if not isinstance(result, Basic.Ack):
            raise PublishNacked(f"unexpected confirm frame {type(result).__name__}")
        CONFIRM_LATENCY.observe(time.perf_counter() - started)
        self._recent.add(out.message_id)
        return True


def _timestamp(seconds: int | None) -> datetime | None:
    if seconds is None:
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None
