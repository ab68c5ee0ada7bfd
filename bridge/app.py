"""The composition root: build the publisher, pipeline and pollers from settings; run; stop.

`run()` opens the components in an `AsyncExitStack`, each an async context manager that
starts on enter and drains on exit. A stop (`shutdown()`) tells the pollers and the HTTP server
at once, then the stack closes the components in reverse:

1. the pollers abandon pending long polls and finish the notification in hand (publish,
   confirm, delete);
2. the HTTP server stops accepting and lets in-flight requests finish;
3. the polling leases are freed (the other processes take them over): nothing is received
   from there on;
4. in-flight publishes drain and the AMQP connection closes;
5. the provider HTTP client closes, when the service made it.

Each drain gets `STOP_TIMEOUT` seconds.

`reload()` (`SIGHUP`) applies the file read again while the service runs
(`bridge.reload.diff` says what changes): the webhook routes and credentials are swapped
whole; a removed source's poller stops as on a stop (the notification in hand finishes) and
its lease is released to the other processes; an added one starts (taking a lease first); a
changed one stops, then starts with its new settings, on the lease it holds. Keys read only at
start keep their running value, with a "needs a restart" warning.

A fatal error (a topology conflict) in the publisher's or the leases' connection loop fails
the `asyncio.TaskGroup` around the stack: the stack drains as above and `run()` raises it.
`SIGKILL` at any moment loses nothing: the provider was not acknowledged for what was not
confirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Self

import uvicorn

from bridge.aio import STOP_TIMEOUT, finish, first
from bridge.amqp.lease import LeaseKeeper
from bridge.amqp.publisher import AmqpPublisher
from bridge.amqp.topology import topology
from bridge.config import Settings, Source
from bridge.httpserver import EmbeddedServer, bind, guarded_protocol, split_listen
from bridge.ingest.http import AiohttpProviderHttp, ProviderHttp
from bridge.ingest.pipeline import Pipeline
from bridge.ingest.poller import Poller
from bridge.ingest.webhooks import Webhooks
from bridge.logs import get_logger
from bridge.metrics import (
    INSTANCE_AUTHORIZED,
    INSTANCE_STATE,
    LAST_NOTIFICATION,
    SILENT_AFTER,
    SOURCE_UP,
    STATE_CHECKED,
)
from bridge.monitor import Monitor
from bridge.reload import Change, diff, summary
from bridge.retry import Backoff

log = get_logger(__name__)


class Service:
    def __init__(self, settings: Settings, *, client: ProviderHttp | None = None) -> None:
        cfg = settings.config
        self.settings = settings
        extra = [s.exchange for s in cfg.sources if s.exchange]
        self._exchanges = frozenset(extra)  # declared at connect: a reload cannot add one
        # broker reconnects (publisher and leases): the poll policy, capped at 10 s
        reconnect = Backoff(
            initial=cfg.poll.backoff_initial, maximum=min(cfg.poll.backoff_max, 10.0), floor=0.05
        )
        self._reconnect = reconnect
        self.publisher = AmqpPublisher(cfg.amqp, topology(cfg.amqp, extra, cfg.archive), reconnect)
        self.pipeline = Pipeline(cfg.amqp, self.publisher)
        self._own_client = client is None
        self.client = client or AiohttpProviderHttp(max_connections=cfg.poll.max_connections)
        polled = [source for source in cfg.sources if source.mode == "poll"]
        self.leases: LeaseKeeper | None = None
        if polled and cfg.lease.enabled:
            self.leases = LeaseKeeper(cfg.lease, cfg.amqp, polled, reconnect)
        self._pollers = _Pollers(self._poller(source, settings) for source in polled)
        self.webhooks = Webhooks(settings, self.pipeline)
        http = cfg.http
        self.http = EmbeddedServer(
            uvicorn.Config(
                self.webhooks,
                http=guarded_protocol(http.header_timeout),
                lifespan="off",
                log_config=None,
                access_log=False,
                server_header=False,
                timeout_keep_alive=int(http.keepalive_timeout),
                timeout_graceful_shutdown=int(http.drain_timeout),
                backlog=2048,
                # the app reads X-Forwarded-For itself, only from http.trusted_proxies
                proxy_headers=False,
            )
        )
        self.http_port: int | None = None
        self._stop = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = False
        self._opened = asyncio.Event()
        self._reloading = asyncio.Lock()
        self._fatal: asyncio.TaskGroup | None = None
        self._leasing: contextlib.AsyncExitStack | None = None  # where the leases run
        self._monitoring: contextlib.AsyncExitStack | None = None  # where the monitor runs

    @property
    def pollers(self) -> list[Poller]:
        """The pollers of the polling sources, in the order they started."""
        return self._pollers.pollers()

    def _poller(self, source: Source, settings: Settings) -> Poller:
        return Poller(
            source,
            settings.token(source),
            client=self.client,
            pipeline=self.pipeline,
            poll=settings.config.poll,
            lease=self.leases.add(source) if self.leases is not None else None,
        )

    async def run(self) -> None:
        """Run until `shutdown()`; a fatal error (a topology conflict) propagates."""
        log.info(
            "service.starting",
            pollers=len(self.pollers),
            exchange=self.settings.config.amqp.exchange,
            webhooks=len(self.settings.config.sources) - len(self.pollers),
        )
        self._running = True
        try:
            async with asyncio.TaskGroup() as fatal, contextlib.AsyncExitStack() as stack:
                await self._open(stack, fatal)
                await self._stop.wait()
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
        finally:
            self._stopped.set()

    async def _open(self, stack: contextlib.AsyncExitStack, fatal: asyncio.TaskGroup) -> None:
        """Start the components in order; `stack` stops them in reverse."""
        stack.callback(log.info, "service.stopped")
        if self._own_client:
            await stack.enter_async_context(contextlib.aclosing(self.client))
        await stack.enter_async_context(self.publisher)
        fatal.create_task(self.publisher.failed(), name="publisher failed")
        self._fatal = fatal
        self._leasing = await stack.enter_async_context(contextlib.AsyncExitStack())
        if self.leases is not None:
            await self._keep_leases(self.leases)
        await stack.enter_async_context(self._serving())
        await stack.enter_async_context(self._pollers)
        self._monitoring = await stack.enter_async_context(contextlib.AsyncExitStack())
        await self._monitoring.enter_async_context(Monitor(self.settings, self.client))
        stack.callback(self._stopping)
        self._opened.set()

    async def _keep_leases(self, leases: LeaseKeeper) -> None:
        """The leases run (at start, or from the reload that added the first polling source)
        until the service stops, closed after the pollers and the HTTP server."""
        assert self._leasing is not None and self._fatal is not None
        await self._leasing.enter_async_context(leases)
        self._fatal.create_task(leases.failed(), name="leases failed")

    def _stopping(self) -> None:
        """First of the stop: the pollers and the HTTP server are told at once, then each
        component drains in the order above."""
        log.info("service.stopping")
        self._pollers.close()
        self.http.should_exit = True  # stop accepting; in-flight requests finish

    async def reload(self, loaded: Settings) -> Change | None:
        """Run with `loaded` (the file read again) from now on, as far as it can change live;
        returns what changed, or None once the service is stopping. One reload at a time."""
        async with self._reloading:
            await first(self._stop, self._opened)
            if self._stop.is_set():
                return None
            change = diff(self.settings, loaded, exchanges=self._exchanges)
            for key in change.restart:
                log.warning(
                    "config.needs_restart", key=key, hint="the running value stays until a restart"
                )
            self.webhooks.reconfigure(change.settings)
            resumed = await self._repoll(change)
            if change.monitor and self._monitoring is not None:  # a new one, on the new sources
                await self._monitoring.aclose()
                if not self._stop.is_set():
                    monitor = Monitor(change.settings, self.client)
                    await self._monitoring.enter_async_context(monitor)
            for source in self.settings.config.sources:
                if source.name in change.removed:
                    _forget_gauges(source)
            self.settings = change.settings
            for name in change.added:
                if name in self.webhooks.open_sources():
                    log.warning("webhook.unauthenticated_source", source=name)
            log.info(
                "config.reloaded",
                **summary(change),
                resumed=resumed,
                pollers=len(self.pollers),
                webhooks=len(change.settings.config.sources) - len(self.pollers),
            )
            return change

    async def _repoll(self, change: Change) -> int:
        """Stop, start and restart pollers as `change` says; a poller that stopped on a
        permanent error restarts too. Returns how many of those restarted."""
        ended = [p.source for p in self.pollers if p.stopped_reason is not None]
        sources = change.settings.config.sources
        resumed = [s for s in ended if s.name not in change.stop and s in sources]
        stopped = await self._pollers.stop([*change.stop, *(s.name for s in resumed)])
        starting = [*change.start, *resumed]
        still = {s.name for s in starting}
        for poller in stopped:
            source = poller.source
            if source.name in still:
                continue
            if self.leases is not None:
                self.leases.remove(source)  # after its last notification: another may take it
            SOURCE_UP.remove(source.provider, source.instance)  # polled no more
        cfg = change.settings.config
        if starting and self.leases is None and cfg.lease.enabled and not self._stop.is_set():
            self.leases = LeaseKeeper(cfg.lease, cfg.amqp, (), self._reconnect)
            await self._keep_leases(self.leases)
        for source in starting:
            self._pollers.start(self._poller(source, change.settings))
        return len(resumed)

    async def shutdown(self) -> None:
        """Stop gracefully (in the order above); returns once `run()` has."""
        self._stop.set()
        if self._running:
            await self._stopped.wait()

    @contextlib.asynccontextmanager
    async def _serving(self) -> AsyncIterator[None]:
        """The HTTP server listens until the block ends, then stops accepting and lets the
        requests in flight finish."""
        host, port = split_listen(self.settings.config.http.listen)
        sock = bind(host, port)
        self.http_port = sock.getsockname()[1]
        task = asyncio.create_task(self.http.serve(sockets=[sock]), name="http")
        for name in self.webhooks.open_sources():
            log.warning("webhook.unauthenticated_source", source=name)
        log.info("http.listening", listen=f"{host}:{self.http_port}")
        try:
            yield
        finally:
            self.http.should_exit = True
            await finish([task], STOP_TIMEOUT)


def _forget_gauges(source: Source) -> None:
    """A removed source's gauges go with it (its counters stay until the process ends):
    no alert fires for an instance nobody configures any more."""
    labels = (source.provider, source.instance)
    for gauge in (SOURCE_UP, SILENT_AFTER, INSTANCE_AUTHORIZED, STATE_CHECKED):
        gauge.remove(*labels)
    INSTANCE_STATE.remove_by_labels({"provider": source.provider, "instance": source.instance})
    LAST_NOTIFICATION.times.pop(labels, None)


class _Pollers:
    """The running pollers, by source name, each with its task. Entering starts them;
    leaving (or `close()`) tells every one to stop, then each abandons its pending long poll
    and finishes the notification in hand. Meanwhile a reload stops and starts them one by
    one; none starts once closing began."""

    def __init__(self, pollers: Iterable[Poller]) -> None:
        self._running: dict[str, tuple[Poller, asyncio.Task[None] | None]] = {
            p.source.name: (p, None) for p in pollers
        }
        self._open = False
        self._ending: set[asyncio.Task[None]] = set()  # stopped by a reload, not ended yet

    def pollers(self) -> list[Poller]:
        return [poller for poller, _ in self._running.values()]

    def start(self, poller: Poller) -> None:
        name = poller.source.name
        if not self._open or name in self._running:
            return
        task = asyncio.create_task(poller.run(), name=f"poll {name}")
        self._running[name] = (poller, task)

    async def stop(self, names: Iterable[str]) -> list[Poller]:
        """Stop these pollers (each finishes the notification in hand); returns them."""
        stopping = [self._running.pop(name) for name in names if name in self._running]
        for poller, _ in stopping:
            poller.stop()
        tasks = [task for _, task in stopping if task is not None]
        self._ending.update(tasks)
        try:
            await finish(tasks, STOP_TIMEOUT)
        finally:
            self._ending.difference_update(tasks)
        return [poller for poller, _ in stopping]

    def close(self) -> None:
        """Tell every poller to stop; no poller starts from now on."""
        self._open = False
        for poller, _ in self._running.values():
            poller.stop()

    async def __aenter__(self) -> Self:
        self._open = True
        for poller, _ in list(self._running.values()):
            del self._running[poller.source.name]
            self.start(poller)
        return self

    async def __aexit__(self, *_: object) -> None:
        self.close()
        await self.stop(list(self._running))
        if self._ending:  # a reload's: the leases and the broker outlast them too
            await asyncio.wait(self._ending, timeout=STOP_TIMEOUT)
