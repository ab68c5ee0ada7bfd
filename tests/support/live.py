"""A bridge service in the test's event loop on a free port, its RabbitMQ topology of its own,
an HTTP client at it and a collector of what it publishes: for signed-webhook live tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bridge.app import Service
from tests.conftest import AMQP_URL
from tests.support.harness import Collected, Names, collector, delete_topology, settings_for


def config(names: Names, sources: str) -> str:
    return f"""
[amqp]
url = "{AMQP_URL}"
exchange = "{names.exchange}"
unrouted_exchange = "{names.unrouted}"
invalid_exchange = "{names.invalid}"
confirm_timeout = 3
[http]
listen = "127.0.0.1:0"
{sources}"""


@contextlib.asynccontextmanager
async def live_bridge(
    tmp_path: Path, sources: str, env: dict[str, str]
) -> AsyncIterator[tuple[httpx.AsyncClient, Collected]]:
    names = Names()
    service = Service(settings_for(tmp_path, config(names, sources), env))
    task = asyncio.create_task(service.run())
    try:
        async with collector(AMQP_URL, names.exchange) as got:
            await asyncio.wait_for(service.publisher.wait_ready(), 15)
            await asyncio.wait_for(service.http.listening.wait(), 5)
            base = f"http://127.0.0.1:{service.http_port}"
            async with httpx.AsyncClient(base_url=base) as client:
                yield client, got
    finally:
        await service.shutdown()
        await asyncio.wait_for(task, 30)
        await delete_topology(AMQP_URL, names)


def bridge_log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every record of the bridge and its servers and clients, message and fields."""
    ours = [r for r in caplog.records if r.name.startswith(("bridge", "uvicorn", "aio"))]
    assert ours  # the bridge logged (at DEBUG) what it did
    return "\n".join(r.getMessage() + repr(getattr(r, "bridge_fields", "")) for r in ours)
