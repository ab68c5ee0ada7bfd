"""Meta webhooks over real sockets into the real RabbitMQ: the challenge, a signed batch split
into one confirmed message per item, the 200 only after all of them."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from tests.component.test_webhook_meta import ENV, SECRET, SOURCES, signed
from tests.support.harness import wait_until
from tests.support.live import bridge_log_text, live_bridge
from tests.unit.test_meta import batch, compact, one_item

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

VERIFY = ENV["VERIFY"]


async def test_challenge_and_a_batch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    body = compact(batch())
    async with live_bridge(tmp_path, SOURCES, ENV) as (client, got):
        challenge = {"hub.mode": "subscribe", "hub.challenge": "731", "hub.verify_token": VERIFY}
        answer = await client.get("/webhooks/meta", params=challenge)
        assert answer.status_code == 200 and answer.text == "731"
        forged = await client.post("/webhooks/meta", content=body, headers=signed(body, "x" * 20))
        assert forged.status_code == 401
        for _ in range(2):  # Meta's redelivery: the same items, the same message_ids
            response = await client.post("/webhooks/meta", content=body, headers=signed(body))
            assert response.status_code == 200
        await wait_until(lambda: len(got.messages) >= 5)
        await asyncio.sleep(0.3)  # the redelivery's copies, if any, would have arrived
        metrics = (await client.get("/metrics")).text
    assert [(m.headers["x-instance"], m.routing_key) for m in got.messages] == [
        ("1234567890987654321", "messages"),
        ("1234567890987654321", "messages"),
        ("1234567890987654321", "statuses"),
        ("1234567890987654321", "errors"),
        ("102290129340398", "message_template_status_update"),
    ]  # the redelivery was confirmed again, and not republished: the bridge remembers its ids
    for message in got.messages:
        one_item(message.body)
        assert message.headers["x-provider"] == "meta"
    assert (
        json.loads(got.messages[0].body)["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
        == "wamid.xyzxyz"
    )
    text = bridge_log_text(caplog)
    for secret in (SECRET, VERIFY):
        assert secret not in text and secret not in metrics
