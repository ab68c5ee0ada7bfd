"""Opening an AMQP connection so that a failed attempt leaves nothing behind.

`aio_pika.connect()` drops the half-made connection object when connecting fails; its
`__del__` later creates a `close()` coroutine that is never awaited. A reconnect loop running
against a broker that is down makes thousands of them. This closes the object on failure.
"""

from __future__ import annotations

import contextlib
from typing import Any

import aio_pika
from aio_pika.connection import make_url
from aio_pika.exceptions import CONNECTION_EXCEPTIONS


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
