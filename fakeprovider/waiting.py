"""The fake provider's request plumbing: reading a body or header, and waiting on a long
poll while watching whether its client is still connected.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

from bridge.asgi import Receive, Scope
from fakeprovider.greenapi import Instance

__all__ = [
    "connected_check",
    "header",
    "read_body",
    "settle",
    "sleep_unless_gone",
    "until_disconnect",
    "wait_for_enqueue",
]


def settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def connected_check(receive: Receive) -> Callable[[], bool]:
    """Whether the request's client still holds its connection, read from the socket itself
    (a FIN or reset the server has not processed yet counts as gone). Relies on uvicorn's
    request cycle exposing its transport; without it every client counts as connected."""
    transport = getattr(getattr(receive, "__self__", None), "transport", None)

    def connected() -> bool:
        if transport is None:
            return True
        if transport.is_closing():
            return False
        sock = transport.get_extra_info("socket")
        if sock is None:
            return True
        try:
            with socket.socket(fileno=os.dup(sock.fileno())) as peek:
                data = peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True  # nothing to read: the connection is open
        except OSError:
            return False  # reset
        return data != b""  # b"": the client closed its side

    return connected


async def until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def read_body(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def sleep_unless_gone(delay: float, receive: Receive) -> bool:
    """Sleep ``delay`` seconds unless the client disconnects first; False on a disconnect."""
    watcher = asyncio.ensure_future(until_disconnect(receive))
    try:
        done, _ = await asyncio.wait({watcher}, timeout=delay)
    finally:
        watcher.cancel()
    if not done:
        return True
    if not watcher.cancelled():
        watcher.exception()  # a failing receive also means the client is gone
    return False


async def wait_for_enqueue(
    loop: asyncio.AbstractEventLoop, instance: Instance, timeout: float, receive: Receive
) -> bool:
    """Wait for an enqueue, the timeout or a disconnect; False only on a disconnect."""
    waiter: asyncio.Future[None] = loop.create_future()
    instance.waiters.add(waiter)
    timer = loop.call_later(timeout, settle, waiter)
    watcher = loop.create_task(until_disconnect(receive))
    watcher.add_done_callback(lambda _: settle(waiter))
    try:
        await waiter
    except BaseException:
        watcher.cancel()
        raise
    finally:
        timer.cancel()
        instance.waiters.discard(waiter)
    if not watcher.done():
        watcher.cancel()
        return True
    if not watcher.cancelled():
        watcher.exception()  # retrieve it: a failing receive also means the client is gone
    return False
