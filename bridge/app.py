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

Each drain gets `STOP_TIMEOUT` seconds. A fatal error (a topology conflict) in the
publisher's or the leases' connection loop fails the `asyncio.TaskGroup` around the stack: the
stack drains as above and `run()` raises it. `SIGKILL` at any moment loses nothing: the
provider was not acknowledged for what was not confirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import uvicorn

from bridge.aio import STOP_TIMEOUT, finish
from bridge.amqp.lease import LeaseKeeper
from bridge.amqp.publisher import AmqpPublisher
from bridge.amqp.topology import topology
from bridge.config import Settings
from bridge.httpserver import EmbeddedServer, bind, guarded_protocol, split_listen
from bridge.ingest.http import AiohttpProviderHttp, ProviderHttp
from bridge.ingest.pipeline import Pipeline
from bridge.ingest.poller import Poller
from bridge.ingest.webhooks import Webhooks
from bridge.logs import get_logger
from bridge.monitor import Monitor
from bridge.retry import Backoff

log = get_logger(__name__)


class Service:
    def __init__(self, settings: Settings, *, client: ProviderHttp | None = None) -> None:
        cfg = settings.config
        self.settings = settings
        extra = [s.exchange for s in cfg.sources if s.exchange]
        # broker reconnects (publisher and leases): the poll policy, capped at 10 s
        reconnect = Backoff(
            initial=cfg.poll.backoff_initial, maximum=min(cfg.poll.backoff_max, 10.0), floor=0.05
        )
        self.publisher = AmqpPublisher(cfg.amqp, topology(cfg.amqp, extra), reconnect)
        self.pipeline = Pipeline(cfg.amqp, self.publisher)
        self._own_client = client is None
        self.client = client or AiohttpProviderHttp(max_connections=cfg.poll.max_connections)
        polled = [source for source in cfg.sources if source.mode == "poll"]
        self.leases: LeaseKeeper | None = None
        if polled and cfg.lease.enabled:
            self.leases = LeaseKeeper(cfg.lease, cfg.amqp, polled, reconnect)
        self.pollers = [
            Poller(
                source,
                settings.token(source),
                client=self.client,
                pipeline=self.pipeline,
                poll=cfg.poll,
                lease=self.leases.lease(source) if self.leases is not None else None,
            )
            for source in polled
        ]
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
        if self.leases is not None:
            await stack.enter_async_context(self.leases)
            fatal.create_task(self.leases.failed(), name="leases failed")
        await stack.enter_async_context(self._serving())
        await stack.enter_async_context(_polling(self.pollers))
        await stack.enter_async_context(Monitor(self.settings, self.client))
        stack.callback(self._stopping)

    def _stopping(self) -> None:
        """First of the stop: the pollers and the HTTP server are told at once, then each
        component drains in the order above."""
        log.info("service.stopping")
        for poller in self.pollers:
            poller.stop()
        self.http.should_exit = True  # stop accepting; in-flight requests finish

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


@contextlib.asynccontextmanager
async def _polling(pollers: list[Poller]) -> AsyncIterator[None]:
    """The pollers poll until the block ends; then each abandons its pending long poll and
    finishes the notification in hand."""
    tasks = [asyncio.create_task(p.run(), name=f"poll {p.source.name}") for p in pollers]
    try:
        yield
    finally:
        for poller in pollers:
            poller.stop()
        await finish(tasks, STOP_TIMEOUT)
