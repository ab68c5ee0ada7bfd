"""WAHA webhooks over real sockets into the real RabbitMQ: signed POSTs, the confirm, the 200."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.support.harness import (
    wait_until,
)
from tests.support.live import bridge_log_text, live_bridge
from tests.unit.test_waha import WAHA, compact, sign

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

KEY = "waha-live-hmac-key-8c1f0e2a9b"
TOKEN = "waha-live-header-token-77"


SOURCES = """
[[sources]]
provider = "waha"
mode = "webhook"
instance = "default"
hmac_key_env = "KEY"
webhook_token_env = "TOKEN"
webhook_header = "x-api-key"
"""
ENV = {"KEY": KEY, "TOKEN": TOKEN}


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
    async with live_bridge(tmp_path, SOURCES, ENV) as (client, got):
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
    text = bridge_log_text(caplog)
    for secret in (KEY, TOKEN):
        assert secret not in text and secret not in metrics
    assert 'bridge_webhook_responses_total{provider="waha",status="401"}' in metrics
