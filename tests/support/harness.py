"""Helpers for component and integration tests: a fake GREEN-API server, bridge settings,
unique topology names on the shared broker, and a consumer that collects what arrived."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from bridge.app import Service
from bridge.config import Settings, load
from fakeprovider.greenapi import FakeGreenApi
from fakeprovider.server import serve_socket


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Service]:
    """A `Service` running on `settings`, ready to publish; stopped when the block ends."""
    service = Service(settings)
    task = asyncio.create_task(service.run())
    try:
        await asyncio.wait_for(service.publisher.wait_ready(), 15)
        yield service
    finally:
        await service.shutdown()
        await asyncio.wait_for(task, 30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class FakeServer:
    state: FakeGreenApi
    url: str


@contextlib.asynccontextmanager
async def fake_greenapi(
    instances: Iterable[tuple[str, str]] = (), **kwargs: float
) -> AsyncIterator[FakeServer]:
    """Serve a FakeGreenApi on a free localhost port for the duration of the block."""
    kwargs.setdefault("timeout_scale", 0.02)
    state = FakeGreenApi(**kwargs)  # type: ignore[arg-type]
    for ident, token in instances:
        state.add_instance(ident, token)
    sock = socket.create_server(("127.0.0.1", 0), backlog=2048)
    port = sock.getsockname()[1]
    ready = asyncio.Event()
    task = asyncio.create_task(serve_socket(state, sock, ready=ready))
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield FakeServer(state, f"http://127.0.0.1:{port}")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass
class Names:
    """Unique exchange and queue names so tests never touch the default topology."""

    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")

    @property
    def exchange(self) -> str:
        return f"{self.prefix}.notifications"

    @property
    def unrouted(self) -> str:
        return f"{self.prefix}.notifications.unrouted"

    @property
    def invalid(self) -> str:
        return f"{self.prefix}.notifications.invalid"

    @property
    def archive(self) -> str:
        """The stream (`archive.stream`'s default for this exchange)."""
        return f"{self.prefix}.notifications.archive"

    @property
    def ingest(self) -> str:
        """The fanout the bridge publishes to while the archive is on."""
        return f"{self.prefix}.notifications.ingest"

    @property
    def members(self) -> str:
        return f"{self.prefix}.members"


def token_for(instance: str) -> str:
    return f"tok-{instance}-{'x' * 24}"


def bridge_toml(
    *,
    amqp_url: str,
    names: Names,
    api_url: str,
    instances: Iterable[str],
    receive_timeout: int = 5,
    timeout_margin: float = 5,
    extra: str = "",
    source_extra: str = "",
    amqp_extra: str = "",
    http_extra: str = "",
    archive_extra: str = "",
    lease: str = "interval = 0.25\nsettle = 0.75",
) -> tuple[str, dict[str, str]]:
    """A config polling ``instances`` with quick back-offs; ``extra`` goes into ``[poll]`` and
    may open further tables."""
    lines = [
        "[amqp]",
        f'url = "{amqp_url}"',
        f'exchange = "{names.exchange}"',
        f'unrouted_exchange = "{names.unrouted}"',
        f'invalid_exchange = "{names.invalid}"',
        "confirm_timeout = 5",
        amqp_extra,
        "[archive]",  # named after the exchange: deleted with it by delete_topology
        f'stream = "{names.archive}"',
        archive_extra,
        "[http]",
        'listen = "127.0.0.1:0"',
        http_extra,
        "[poll]",
        "backoff_initial = 0.05",
        "backoff_max = 0.5",
        "long_backoff = 1",
        f"timeout_margin = {timeout_margin}",
        extra,
        "[lease]",  # quick hand-overs in tests; the defaults are documented in configuration
        f'exchange = "{names.members}"',
        lease,
    ]
    env: dict[str, str] = {}
    for ident in instances:
        lines += [
            "[[sources]]",
            'provider = "greenapi"',
            'mode = "poll"',
            f'instance = "{ident}"',
            f'api_url = "{api_url}"',
            f'token_env = "TOKEN_{ident}"',
            f"receive_timeout = {receive_timeout}",
            source_extra,
        ]
        env[f"TOKEN_{ident}"] = token_for(ident)
    return "\n".join(lines) + "\n", env


def settings_for(tmp_path: Path, text: str, env: dict[str, str]) -> Settings:
    path = tmp_path / f"bridge-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(text)
    return load(path, env)


@dataclass
class Collected:
    messages: list[AbstractIncomingMessage] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


@contextlib.asynccontextmanager
async def collector(
    amqp_url: str, exchange: str, binding: str = "#", *, declare_exchange: bool = True
) -> AsyncIterator[Collected]:
    """A server-named queue bound to `exchange` that records every delivery (acked)."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        if declare_exchange:
            await channel.declare_exchange(
                exchange,
                aio_pika.ExchangeType.TOPIC,
                durable=True,
                arguments={"alternate-exchange": exchange + ".unrouted"},
            )
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, routing_key=binding)
        got = Collected()

        async def on_message(message: AbstractIncomingMessage) -> None:
            got.messages.append(message)
            got.arrived.set()
            await message.ack()

        await queue.consume(on_message)
        yield got
    finally:
        await connection.close()


def first_copies(messages: Iterable[AbstractIncomingMessage]) -> dict[str, list[bytes]]:
    """Per `x-instance`, the distinct bodies in the order their first copies arrived."""
    order: dict[str, list[bytes]] = {}
    seen: set[tuple[str, bytes]] = set()
    for message in messages:
        ident = str(message.headers["x-instance"])
        if (ident, message.body) not in seen:
            seen.add((ident, message.body))
            order.setdefault(ident, []).append(message.body)
    return order


def one_id_per_body(messages: Iterable[AbstractIncomingMessage]) -> bool:
    """Every copy of a body carries the same `message_id` (duplicates are recognisable)."""
    ids: dict[bytes, set[str | None]] = {}
    for message in messages:
        ids.setdefault(message.body, set()).add(message.message_id)
    return all(len(v) == 1 for v in ids.values())


async def wait_until(
    predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


async def delete_topology(amqp_url: str, names: Names) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        for queue in (names.unrouted, names.invalid, names.archive):
            with contextlib.suppress(Exception):
                await channel.queue_delete(queue)
        exchanges = (names.ingest, names.exchange, names.unrouted, names.invalid, names.members)
        for exchange in exchanges:
            with contextlib.suppress(Exception):
                await channel.exchange_delete(exchange)
    finally:
        await connection.close()


async def declare_sink(amqp_url: str, names: Names) -> str:
    """A durable quorum queue bound with `#` to the test's exchange: survives broker restarts."""
    sink = f"{names.prefix}.all"
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            names.exchange, "topic", durable=True, arguments={"alternate-exchange": names.unrouted}
        )
        queue = await channel.declare_queue(
            sink, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(exchange, "#")
    return sink


async def drain_sink(amqp_url: str, sink: str) -> list[AbstractIncomingMessage]:
    """Every message in the sink, acked; then the sink is deleted."""
    connection = await aio_pika.connect(amqp_url)
    out: list[AbstractIncomingMessage] = []
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(sink, passive=True)
        while (message := await queue.get(fail=False, timeout=5)) is not None:
            out.append(message)
            await message.ack()
        await queue.delete(if_unused=False, if_empty=False)
    return out


@contextlib.asynccontextmanager
async def http_receiver(
    handle: Callable[[Any], Awaitable[Any]],
) -> AsyncIterator[str]:
    """A local aiohttp server sending every POST to `handle`; yields its base URL."""
    from aiohttp import web

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
