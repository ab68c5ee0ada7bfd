"""The composition root: build the publisher, pipeline and pollers from settings; run; stop.

Graceful stop (`shutdown()`): pollers abandon pending long polls and finish the notification
in hand (publish, confirm, delete); then the polling leases are freed (the other processes
take them over), in-flight publishes drain and the connection closes.
`SIGKILL` at any moment loses nothing: the provider was not acknowledged for what was not
confirmed.
"""

from __future__ import annotations

import asyncio
import contextlib

import uvicorn

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
        self._http_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._publisher_task: asyncio.Task[None] | None = None
        self._lease_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    async def run(self) -> None:
        """Run until `shutdown()`; a fatal error (topology conflict) propagates."""
        log.info(
            "service.starting",
            pollers=len(self.pollers),
            exchange=self.settings.config.amqp.exchange,
            webhooks=len(self.settings.config.sources) - len(self.pollers),
        )
        self._publisher_task = asyncio.create_task(self.publisher.run(), name="publisher")
        host, port = split_listen(self.settings.config.http.listen)
        sock = bind(host, port)
        self.http_port = sock.getsockname()[1]
        self._http_task = asyncio.create_task(self.http.serve(sockets=[sock]), name="http")
        for name in self.webhooks.open_sources():
            log.warning("webhook.unauthenticated_source", source=name)
        log.info("http.listening", listen=f"{host}:{self.http_port}")
        if self.leases is not None:
            self._lease_task = asyncio.create_task(self.leases.run(), name="leases")
        self._tasks = [
            asyncio.create_task(p.run(), name=f"poll {p.source.name}") for p in self.pollers
        ]
        stopped = asyncio.create_task(self._stopped.wait())
        fatal = {self._publisher_task, *([self._lease_task] if self._lease_task else [])}
        try:
            done, _ = await asyncio.wait({*fatal, stopped}, return_when=asyncio.FIRST_COMPLETED)
            for task in done & fatal:
                task.result()  # raises the fatal error
        finally:
            stopped.cancel()
            if not self._stopped.is_set():
                await self.shutdown()

    async def shutdown(self, timeout: float = 15.0) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("service.stopping")
        for poller in self.pollers:
            poller.stop()
        self.http.should_exit = True  # stop accepting; in-flight requests finish
        waiting = [*self._tasks, *([self._http_task] if self._http_task else [])]
        if waiting:
            _, pending = await asyncio.wait(waiting, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
        if self.leases is not None and self._lease_task is not None:
            await self.leases.close()  # after the pollers: nothing is received from here on
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._lease_task, timeout)
        await self.publisher.close()
        if self._publisher_task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._publisher_task, timeout)
        if self._own_client:
            await self.client.aclose()
        log.info("service.stopped")
