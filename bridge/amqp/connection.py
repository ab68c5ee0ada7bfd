"""Opening an AMQP connection so that a failed attempt leaves nothing behind, and keeping one.

`aio_pika.connect()` drops the half-made connection object when connecting fails; its
`__del__` later creates a `close()` coroutine that is never awaited. A reconnect loop running
against a broker that is down makes thousands of them. This closes the object on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
from aio_pika.connection import make_url
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from bridge.aio import sleep_unless
from bridge.config import mask_url
from bridge.logs import Logger
from bridge.retry import Backoff


async def open_connection(
    url: str, *, timeout: float | None = None, **kwargs: Any
) -> aio_pika.Connection:
    """Like `aio_pika.connect(url, timeout=…, **kwargs)`, closing the object if it fails."""
    properties = kwargs.pop("client_properties", None)
    extra = {"client_properties": properties} if properties is not None else {}
    connection = aio_pika.Connection(make_url(url, **kwargs), **extra)
    try:
        await connection.connect(timeout=timeout)
    except BaseException:
        with contextlib.suppress(*CONNECTION_EXCEPTIONS, TimeoutError):
            await connection.close()
        raise
    return connection


async def keep_connection(
    url: str,
    session: Callable[[aio_pika.Connection], Awaitable[None]],
    *,
    stop: asyncio.Event,
    backoff: Backoff,
    timeout: float,
    heartbeat: int,
    name: str,
    after: Callable[[], Awaitable[None]],
    events: str,
    log: Logger,
) -> None:
    """Connect, run `session(connection)` until it returns, `after()`, close, back off, repeat,
    until `stop` is set. Connection trouble is logged as `<events>.connect_failed`,
    `<events>.setup_failed` and `<events>.lost`; any other exception from `session`
    (a `TopologyError`) propagates after `after()` and the close."""
    attempt = 0
    masked = mask_url(url)
    while not stop.is_set():
        try:
            connection = await open_connection(
                url,
                timeout=timeout,
                heartbeat=heartbeat,
                client_properties={"connection_name": name},
            )
        except (*CONNECTION_EXCEPTIONS, TimeoutError) as exc:
            delay = backoff.delay(attempt)
            attempt += 1
            log.warning(
                f"{events}.connect_failed",
                url=masked,
                error=type(exc).__name__,
                detail=str(exc)[:200],
                retry_in=round(delay, 2),
            )
            await sleep_unless(stop, delay)
            continue
        try:
            await session(connection)
            attempt = 0
        except (*CONNECTION_EXCEPTIONS, TimeoutError) as exc:
            log.warning(
                f"{events}.setup_failed",
                url=masked,
                error=type(exc).__name__,
                detail=str(exc)[:200],
            )
        finally:
            await after()
            await _close_quietly(connection)
        if not stop.is_set():
            delay = backoff.delay(attempt)
            attempt += 1
            log.warning(f"{events}.lost", url=masked, retry_in=round(delay, 2))
            await sleep_unless(stop, delay)


async def _close_quietly(connection: aio_pika.abc.AbstractConnection) -> None:
    try:
        await asyncio.wait_for(connection.close(), 5)
    except (*CONNECTION_EXCEPTIONS, TimeoutError):
        pass
