"""WAHA webhooks over real sockets into the real RabbitMQ: signed POSTs, the confirm, the 200."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bridge.app import Service
from tests.conftest import AMQP_URL
from tests.support.harness import (
    Collected,
    Names,
    collector,
    delete_topology,
    settings_for,
    wait_until,
)
from tests.unit.test_waha import WAHA, compact, sign

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

KEY = "waha-live-hmac-key-8c1f0e2a9b"
TOKEN = "waha-live-header-token-77"


def config(names: Names) -> str:
    return f"""
[amqp]
url = "{AMQP_URL}"
exchange = "{names.exchange}"
unrouted_exchange = "{names.unrouted}"
invalid_exchange = "{names.invalid}"
confirm_timeout = 3
[http]
listen = "127.0.0.1:0"
[[sources]]
provider = "waha"
mode = "webhook"
instance = "default"
hmac_key_env = "KEY"
webhook_token_env = "TOKEN"
webhook_header = "x-api-key"
"""


@contextlib.asynccontextmanager
async def live(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Collected, Names]]:
    names = Names()
    service = Service(settings_for(tmp_path, config(names), {"KEY": KEY, "TOKEN": TOKEN}))
    task = asyncio.create_task(service.run())
    try:
        async with collector(AMQP_URL, names.exchange) as got:
            await asyncio.wait_for(service.publisher.wait_ready(), 15)
            await asyncio.wait_for(service.http.listening.wait(), 5)
            base = f"http://127.0.0.1:{service.http_port}"
            async with httpx.AsyncClient(base_url=base) as client:
                yield client, got, names
    finally:
        await service.shutdown()
        await asyncio.wait_for(task, 30)
        await delete_topology(AMQP_URL, names)


def headers(body: bytes, key: str = KEY) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "WAHA/2026.9.1",
        "X-Webhook-Hmac": sign(key.encode(), body),
        "X-Webhook-Hmac-Algorithm": "sha512",
        "X-Api-Key": TOKEN,
    }


async def test_signed_samples_reach_rabbitmq_and_nothing_leaks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bodies = [compact(p) for p in sorted(WAHA.glob("*.json"))]
    async with live(tmp_path) as (client, got, _names):
        for body in bodies:  # a forged one first: refused, nothing published
            forged = await client.post(
                "/webhooks/waha", content=body, headers=headers(body, "x" * 20)
            )
            assert forged.status_code == 401
            response = await client.post("/webhooks/waha", content=body, headers=headers(body))
            assert response.status_code == 200, response.text
        await wait_until(lambda: len(got.messages) >= len(bodies))
        metrics = (await client.get("/metrics")).text
    assert len(got.messages) == len(bodies)
    for message, body in zip(got.messages, bodies, strict=True):
        event = json.loads(body)["event"]
        assert message.body == body  # byte for byte, non-ASCII included
        assert message.routing_key == event and message.type == event
        assert (
            message.headers["x-provider"] == "waha" and message.headers["x-instance"] == "default"
        )
        assert message.delivery_mode == 2 and message.message_id
    ours = [r for r in caplog.records if r.name.startswith(("bridge", "uvicorn", "aio"))]
    text = "\n".join(r.getMessage() + repr(getattr(r, "bridge_fields", "")) for r in ours)
    assert ours  # the bridge logged (at DEBUG) what it did
    for secret in (KEY, TOKEN):
        assert secret not in text and secret not in metrics
    assert 'bridge_webhook_responses_total{provider="waha",status="401"}' in metrics
