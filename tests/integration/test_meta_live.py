"""Meta webhooks over real sockets into the real RabbitMQ: the challenge, a signed batch split
into one confirmed message per item, the 200 only after all of them."""

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
from tests.component.test_webhook_meta import signed
from tests.conftest import AMQP_URL
from tests.support.harness import (
    Collected,
    Names,
    collector,
    delete_topology,
    settings_for,
    wait_until,
)
from tests.unit.test_meta import batch, compact, one_item

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SECRET = "meta-app-secret-5f1c2b3a4d"
VERIFY = "meta-live-verify-token-31"


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
provider = "meta"
mode = "webhook"
instance = "1234567890987654321"
app_secret_env = "SECRET"
verify_token_env = "VERIFY"
[[sources]]
provider = "meta"
mode = "webhook"
instance = "102290129340398"
app_secret_env = "SECRET"
"""


@contextlib.asynccontextmanager
async def live(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Collected]]:
    names = Names()
    service = Service(settings_for(tmp_path, config(names), {"SECRET": SECRET, "VERIFY": VERIFY}))
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


async def test_challenge_and_a_batch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    body = compact(batch())
    async with live(tmp_path) as (client, got):
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
    ours = [r for r in caplog.records if r.name.startswith(("bridge", "uvicorn", "aio"))]
    text = "\n".join(r.getMessage() + repr(getattr(r, "bridge_fields", "")) for r in ours)
    assert ours  # the bridge logged (at DEBUG) what it did
    for secret in (SECRET, VERIFY):
        assert secret not in text and secret not in metrics
