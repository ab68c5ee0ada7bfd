"""A failed connection attempt closes the half-made connection at once.

`aio_pika.connect()` drops it; its `__del__` then creates a `close()` coroutine, which nobody
awaits when the garbage collector gets to it outside a running loop — thousands of
RuntimeWarnings after a reconnect loop ran against a broker that was down.
"""

from __future__ import annotations

import aio_pika
import pytest

from bridge.amqp.connection import open_connection

pytestmark = pytest.mark.integration


async def test_a_failed_attempt_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[aio_pika.Connection] = []
    original = aio_pika.Connection.close

    async def recording_close(self: aio_pika.Connection, exc: BaseException | None = None) -> None:
        closed.append(self)
        await original(self, exc)

    monkeypatch.setattr(aio_pika.Connection, "close", recording_close)
    with pytest.raises(ConnectionError):
        await open_connection("amqp://guest:guest@127.0.0.1:9/", timeout=2)
    assert len(closed) == 1 and closed[0].is_closed


async def test_a_working_connection() -> None:
    connection = await open_connection(
        "amqp://guest:guest@127.0.0.1:5672/", timeout=5, heartbeat=10
    )
    async with connection:
        channel = await connection.channel()
        assert not channel.is_closed
