"""uvicorn embedded in the caller's event loop, with a header-read deadline.

Signal capture is off (signals belong to the process's root coroutine). `GuardedProtocol` closes
a connection whose request line and headers do not arrive within `header_timeout` seconds —
uvicorn itself arms no timer before the first request of a connection, so a client that
connects and trickles bytes would otherwise hold a connection forever. Body deadlines are the
ASGI app's (it reads the body).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import weakref
from collections.abc import Generator
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bridge.config import split_host_port

__all__ = [
    "EmbeddedServer",
    "GuardedProtocol",
    "bind",
    "guarded_protocol",
    "split_listen",
]

_TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus a deadline for request line and headers.

    One sweeper task per protocol class checks the deadlines of live connections twice per
    `header_timeout` (a per-request timer cost ~5 % of a webhook's CPU).
    """

    header_timeout: float = 10.0
    _live: weakref.WeakSet[GuardedProtocol]
    _sweeper: asyncio.Task[None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: float | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline = self.loop.time() + self.header_timeout
        cls = type(self)
        cls._live.add(self)
        if cls._sweeper is None or cls._sweeper.done():
            cls._sweeper = self.loop.create_task(cls._sweep(self.loop))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:
            self._deadline = self.loop.time() + self.header_timeout

    def on_headers_complete(self) -> None:
        self._deadline = None
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline = None
        type(self)._live.discard(self)
        super().connection_lost(exc)

    @classmethod
    async def _sweep(cls, loop: asyncio.AbstractEventLoop) -> None:
        interval = min(cls.header_timeout / 2, 1.0)
        while cls._live:
            await asyncio.sleep(interval)
            now = loop.time()
            for protocol in list(cls._live):
                if protocol._deadline is not None and protocol._deadline <= now:
                    protocol._too_slow()

    def _too_slow(self) -> None:
        self._deadline = None
        type(self)._live.discard(self)
        if not self.transport.is_closing():
            with contextlib.suppress(Exception):
                self.transport.write(_TIMEOUT_408)
            self.transport.close()


def guarded_protocol(header_timeout: float) -> type[GuardedProtocol]:
    """A protocol class with its own deadline and its own set of live connections."""
    attrs = {"header_timeout": header_timeout, "_live": weakref.WeakSet(), "_sweeper": None}
    return type("GuardedProtocol", (GuardedProtocol,), attrs)


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signals alone and reports when it listens."""

    def __init__(self, config: uvicorn.Config, listening: asyncio.Event | None = None) -> None:
        super().__init__(config)
        self.listening = listening or asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.listening.set()


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (`proto` TCP so that asyncio sets TCP_NODELAY)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted sockets inherit it: uvicorn writes head and body separately, and Nagle's
        # algorithm with delayed ACKs would add ~40 ms to every answer
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def split_listen(listen: str) -> tuple[str, int]:
    """`http.listen` (validated by the config) as (host, port)."""
    return split_host_port(listen)
