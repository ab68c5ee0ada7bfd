"""The fake provider's runner: uvicorn embedded in the caller's event loop, and the CLI entry.

``serve`` binds, serves until cancelled, then answers every pending long poll with ``null`` and
lets uvicorn drain (its ``Server.shutdown`` is the model). Signal capture is off: signals belong
to the process's root coroutine. While it serves, one :class:`~fakeprovider.push.PushHub` runs
the webhook pushers of every provider; stopping the server cancels them and closes the
hub's HTTP client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
from typing import Final

import uvicorn

from bridge.aio import first
from bridge.config import split_host_port
from bridge.httpserver import EmbeddedServer, bind
from bridge.logs import get_logger
from bridge.tools.simulate import renumbered
from fakeprovider.app import DROP_LOG_MESSAGE, create_app
from fakeprovider.chatapi import FakeChatApi
from fakeprovider.evolution import FakeEvolution
from fakeprovider.greenapi import FakeGreenApi
from fakeprovider.meta import FakeMeta
from fakeprovider.push import PushHub
from fakeprovider.samples import sample_notifications
from fakeprovider.waha import FakeWaha

__all__ = ["create_app", "parse_listen", "run_fake_provider", "serve", "serve_socket"]

logger = get_logger(__name__)

_GRACEFUL_SHUTDOWN: Final = 10


class _QuietDrops(logging.Filter):
    """Hide uvicorn's error line for the deliberate incomplete responses of ``drop``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != DROP_LOG_MESSAGE


async def serve(
    state: FakeGreenApi,
    host: str,
    port: int,
    *,
    ready: asyncio.Event | None = None,
    evolution: FakeEvolution | None = None,
    chatapi: FakeChatApi | None = None,
    waha: FakeWaha | None = None,
    meta: FakeMeta | None = None,
) -> None:
    """Serve ``state`` on host:port until cancelled, then drain long polls and shut down."""
    await serve_socket(
        state,
        bind(host, port),
        ready=ready,
        evolution=evolution,
        chatapi=chatapi,
        waha=waha,
        meta=meta,
    )


async def serve_socket(
    state: FakeGreenApi,
    sock: socket.socket,
    *,
    ready: asyncio.Event | None = None,
    evolution: FakeEvolution | None = None,
    chatapi: FakeChatApi | None = None,
    waha: FakeWaha | None = None,
    meta: FakeMeta | None = None,
) -> None:
    """Like :func:`serve` on an already bound socket (port 0 lets the OS choose).

    ``evolution``, ``chatapi``, ``waha`` and ``meta`` are served and pushed too (new empty
    ones when left out, reachable through the control API only).
    """
    evolution = evolution or FakeEvolution()
    chatapi = chatapi or FakeChatApi()
    waha = waha or FakeWaha()
    meta = meta or FakeMeta()
    host, port = sock.getsockname()[:2]
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # see bridge.httpserver.bind
    config = uvicorn.Config(
        create_app(state, evolution=evolution, chatapi=chatapi, waha=waha, meta=meta),
        host=host,
        port=port,
        log_level="warning",
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="on",
        http="httptools",
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN,
    )
    server = EmbeddedServer(config, ready)
    quiet = _QuietDrops()
    uvicorn_logger = logging.getLogger("uvicorn.error")
    uvicorn_logger.addFilter(quiet)
    state.draining = False
    hub = PushHub()
    providers = (state, evolution, chatapi, waha, meta)
    for provider in providers:
        provider.attach(hub)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            server.should_exit = True
            state.release_waiters()
            await task
        raise
    finally:
        for provider in providers:
            provider.detach()
        await hub.aclose()
        uvicorn_logger.removeFilter(quiet)
        sock.close()


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) into its parts; ValueError when malformed."""
    try:
        return split_host_port(listen)
    except ValueError as exc:
        raise ValueError(f"listen address {exc}") from None


def _describe(ids: list[str], limit: int = 10) -> str:
    shown = ",".join(ids[:limit])
    return shown if len(ids) <= limit else f"{shown},...(+{len(ids) - limit} more)"


async def _feed(state: FakeGreenApi, ids: list[str], samples: list[bytes], interval: float) -> None:
    """Every `interval` seconds, one more sample per instance, renumbered so each is new."""
    for n, raw in enumerate(itertools.cycle(samples)):
        await asyncio.sleep(interval)
        for id in ids:
            if id in state.instances:
                state.enqueue(id, renumbered(raw, f"FEED{id}{n:08d}"))


def _states(
    instances: list[tuple[str, str]],
    evolution: list[tuple[str, str]],
    chatapi: list[tuple[str, str]],
    latency: float,
    evolution_api_key: str | None,
) -> tuple[FakeGreenApi, FakeEvolution, FakeChatApi]:
    """The three providers' states with their instances; ValueError naming a bad one."""
    state = FakeGreenApi(latency=latency)
    for id, token in instances:
        if not (id.isascii() and id.isdigit()) or not token or "/" in token:
            raise ValueError(f"instance must be DIGITS:TOKEN, got id {id!r}")
        state.add_instance(id, token)
    evolution_state = FakeEvolution(api_key=evolution_api_key)
    for name, token in evolution:
        if not name or "/" in name or not token:
            raise ValueError(f"evolution instance must be NAME:TOKEN, got name {name!r}")
        evolution_state.add_instance(name, token)
    chatapi_state = FakeChatApi()
    for id, token in chatapi:
        if not id or "/" in id or not token:
            raise ValueError(f"chatapi instance must be ID:TOKEN, got id {id!r}")
        chatapi_state.add_instance(id, token)
    return state, evolution_state, chatapi_state


def _waha_state(sessions: list[tuple[str, str]], api_key: str | None) -> FakeWaha:
    """The WAHA sessions, each with the HMAC key its webhooks sign with ("" = unsigned)."""
    state = FakeWaha(api_key=api_key)
    for name, key in sessions:
        state.add_session(name, key or None)  # ValueError names a bad name
    return state


def _meta_state(apps: list[tuple[str, str, str]]) -> FakeMeta:
    """One app per (app secret, verify token), subscribed to its WABAs; its name is
    ``app1``, ``app2``... in the order of first appearance."""
    state = FakeMeta()
    names: dict[tuple[str, str], str] = {}
    for waba, secret, token in apps:
        name = names.setdefault((secret, token), f"app{len(names) + 1}")
        state.add_app(name, secret, [waba], verify_token=token or None)
    return state


async def run_fake_provider(
    listen: str,
    instances: list[tuple[str, str]],
    *,
    seed_samples: bool,
    feed_interval: float | None,
    latency: float,
    evolution: list[tuple[str, str]] | None = None,
    chatapi: list[tuple[str, str]] | None = None,
    evolution_api_key: str | None = None,
    waha: list[tuple[str, str]] | None = None,
    waha_api_key: str | None = None,
    meta: list[tuple[str, str, str]] | None = None,
) -> None:
    """Build the fake's state, optionally seed and feed samples, and serve until cancelled.

    ``instances`` are GREEN-API ``(id, token)`` pairs (polling until a ``webhookUrl`` is set
    through ``setSettings``); ``evolution`` holds ``(name, token)`` pairs of Evolution v2
    instances (``evolution_api_key`` is the global ``apikey``), ``chatapi`` ``(id, token)``
    pairs of Chat API instances (configured through the control API), ``waha`` holds
    ``(session, hmac key)`` pairs of WAHA sessions (``waha_api_key`` is the ``X-Api-Key`` its
    sessions API wants; none: any), ``meta`` ``(WABA, app secret, verify token)`` triples
    of Meta apps (their callback URL set through the control API).
    """
    host, port = parse_listen(listen)
    state, evolution_state, chatapi_state = _states(
        instances, evolution or [], chatapi or [], latency, evolution_api_key
    )
    waha_state = _waha_state(waha or [], waha_api_key)
    meta_state = _meta_state(meta or [])
    ids = [id for id, _ in instances]
    samples = sample_notifications()
    if seed_samples:
        for id in ids:
            state.enqueue_many(id, samples)
    ready = asyncio.Event()
    server = asyncio.create_task(
        serve(
            state,
            host,
            port,
            ready=ready,
            evolution=evolution_state,
            chatapi=chatapi_state,
            waha=waha_state,
            meta=meta_state,
        )
    )
    feeder: asyncio.Task[None] | None = None
    try:
        if await first(ready, server) is server:
            await server  # it ended before listening: raise its error
            return
        logger.info(
            "fake.started",
            listen=f"{host}:{port}",
            instances=_describe(ids),
            evolution=_describe(list(evolution_state.instances)),
            chatapi=_describe(list(chatapi_state.instances)),
            waha=_describe(list(waha_state.sessions)),
            meta=_describe([w for app in meta_state.apps.values() for w in app.wabas]),
            seeded=len(samples) if seed_samples else 0,
            feed_interval=feed_interval,
            latency=latency,
        )
        if feed_interval is not None and feed_interval > 0 and samples:
            feeder = asyncio.create_task(_feed(state, ids, samples, feed_interval))
        await server
    finally:
        if feeder is not None:
            feeder.cancel()
        if not server.done():
            server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server
