"""Every AMQP connection of the bridge: to one node of a cluster, named, and kept.

`connect(target, role)` tries a cluster's nodes in turn and returns the first connection that
opens; `keep_connection()` keeps one up, moving to the next node at once when its node goes
and backing off only after every node failed. The node order is shuffled once per process
(`node_order`), so the replicas of a deployment spread over the nodes, and each process keeps
its order, so its connections meet on one node while it lives. Every connection carries the
client property `connection_name` = `bridge <host>/<pid> <role>` (`connection_name()`), the
name the management UI and `rabbitmqctl list_connections client_properties` show.

`aio_pika.connect()` drops the half-made connection object when connecting fails; its
`__del__` later creates a `close()` coroutine that is never awaited. A reconnect loop running
against a broker that is down makes thousands of them. `open_connection` closes the object on
failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aio_pika
from aio_pika.connection import make_url
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from bridge.aio import sleep_unless
from bridge.config import AmqpConfig, mask_url
from bridge.errors import ConfigError
from bridge.logs import Logger, get_logger
from bridge.retry import Backoff

_log = get_logger(__name__)

#: what `connect` takes as its target: a config (its `nodes`), one URL or several
#: (a string may list them comma-separated, as `BRIDGE_AMQP__URLS` and `--amqp-url` do)
Target = AmqpConfig | str | Sequence[str]
#: the errors that mean "this node cannot be used now, try another"
NODE_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_EXCEPTIONS, TimeoutError, OSError)

_orders: dict[tuple[str, ...], tuple[str, ...]] = {}


def nodes_of(target: Target) -> tuple[str, ...]:
    """The broker URLs a target names, in the order given."""
    if isinstance(target, AmqpConfig):
        return target.nodes
    if isinstance(target, str):
        urls = tuple(part.strip() for part in target.split(",") if part.strip())
    else:
        urls = tuple(target)
    if not urls:
        raise ConfigError("no broker URL given")
    return urls


def mask_urls(target: Target) -> str:
    """A target's URLs for a message, passwords masked, comma-separated."""
    return ",".join(mask_url(url) for url in nodes_of(target))


def node_order(urls: Sequence[str]) -> tuple[str, ...]:
    """`urls` in this process's order: shuffled at the first call, the same afterwards."""
    key = tuple(urls)
    order = _orders.get(key)
    if order is None:
        shuffled = list(key)
        random.SystemRandom().shuffle(shuffled)
        order = _orders[key] = tuple(shuffled)
    return order


def connection_name(role: str) -> str:
    """`bridge <host>/<pid> <role>`: the `connection_name` client property of a connection."""
    return f"bridge {socket.gethostname()}/{os.getpid()} {role}"


async def connect(
    target: Target,
    role: str,
    *,
    timeout: float | None = None,
    heartbeat: int | None = None,
    log: Logger | None = None,
) -> aio_pika.Connection:
    """A connection to the first node (in this process's order) that opens one; raises the
    last node's error when none does. `timeout`/`heartbeat` default to the config's
    `connect_timeout`/`heartbeat` (aio-pika's own defaults for a URL target). Logs
    `amqp.connected` (node, masked; role) and each failed node as `amqp.node_failed`."""
    log = log or _log
    if isinstance(target, AmqpConfig):
        timeout = target.connect_timeout if timeout is None else timeout
        heartbeat = target.heartbeat if heartbeat is None else heartbeat
    options: dict[str, Any] = {"client_properties": {"connection_name": connection_name(role)}}
    if heartbeat is not None:
        options["heartbeat"] = heartbeat
    order = node_order(nodes_of(target))
    for n, url in enumerate(order):
        try:
            connection = await open_connection(url, timeout=timeout, **options)
        except NODE_ERRORS as exc:
            log.warning(
                "amqp.node_failed",
                role=role,
                url=mask_url(url),
                error=type(exc).__name__,
                detail=str(exc)[:200],
            )
            if n == len(order) - 1:
                raise
            continue
        log.info("amqp.connected", role=role, url=mask_url(url))
        return connection
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover


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
    target: Target,
    session: Callable[[aio_pika.Connection], Awaitable[None]],
    *,
    stop: asyncio.Event,
    backoff: Backoff,
    timeout: float,
    heartbeat: int,
    role: str,
    after: Callable[[], Awaitable[None]],
    events: str,
    log: Logger,
) -> None:
    """Connect, run `session(connection)` until it returns, `after()`, close, repeat, until
    `stop` is set. Nodes are tried in this process's order, starting after the one last used:
    a lost or refused node makes the loop try the next one at once, and it backs off only after
    a whole round of nodes failed (with one node: after every failure). Connection trouble is
    logged as `<events>.connect_failed`, `<events>.setup_failed` and `<events>.lost` (with the
    node's masked URL), a connection as `<events>.connected`; any other exception from
    `session` (a `TopologyError`) propagates after `after()` and the close."""
    order = node_order(nodes_of(target))
    properties = {"connection_name": connection_name(role)}
    attempt = 0  # back-offs in a row
    tried = 0  # nodes tried so far, an index into `order` (modulo its length)
    failed = 0  # failures (connecting or setting up) in a row

    def pause() -> float:
        """After a round of failures (or any loss, with one node), back off; else none."""
        nonlocal attempt
        if len(order) > 1 and (failed == 0 or failed % len(order)):
            return 0.0
        attempt += 1
        return backoff.delay(attempt - 1)

    while not stop.is_set():
        url = order[tried % len(order)]
        tried += 1
        masked = mask_url(url)
        try:
            connection = await open_connection(
                url, timeout=timeout, heartbeat=heartbeat, client_properties=properties
            )
        except NODE_ERRORS as exc:
            failed += 1
            delay = pause()
            log.warning(
                f"{events}.connect_failed",
                url=masked,
                error=type(exc).__name__,
                detail=str(exc)[:200],
                retry_in=round(delay, 2),
            )
            await sleep_unless(stop, delay)
            continue
        log.info(f"{events}.connected", url=masked, role=role)
        try:
            await session(connection)
            attempt = failed = 0
        except NODE_ERRORS as exc:
            failed += 1
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
            delay = pause()
            log.warning(f"{events}.lost", url=masked, retry_in=round(delay, 2))
            await sleep_unless(stop, delay)


async def _close_quietly(connection: aio_pika.abc.AbstractConnection) -> None:
    try:
        await asyncio.wait_for(connection.close(), 5)
    except (*CONNECTION_EXCEPTIONS, TimeoutError):
        pass
