"""The webhook app takes a reload's credentials at once and whole: a request is checked
against one complete set, the one in force when it arrived."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from bridge.config import Settings, load
from bridge.ingest.pipeline import Pipeline
from bridge.ingest.webhooks import Webhooks
from tests.component.test_webhooks import StubPublisher

OLD, NEW, OTHER = "old-hook-token-0123456789", "new-hook-token-0123456789", "other-token-01234567"
ENV = {"OLD": OLD, "NEW": NEW, "OTHER": OTHER}


def source(instance: str, token: str) -> str:
    return f"""
[[sources]]
provider = "greenapi"
mode = "webhook"
instance = "{instance}"
webhook_token_env = "{token}"
"""


def settings(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / f"b{len(list(tmp_path.iterdir()))}.toml"
    path.write_text(text)
    return load(path, ENV)


def body(instance: str) -> bytes:
    return (
        b'{"typeWebhook":"incomingCall","instanceData":{"idInstance":%s},"idMessage":"X"}'
        % instance.encode()
    )


async def post(client: httpx.AsyncClient, instance: str, token: str) -> int:
    response = await client.post(
        f"/webhooks/greenapi/{instance}",
        content=body(instance),
        headers={"Authorization": f"Bearer {token}"},
    )
    return response.status_code


async def test_reconfigure_swaps_sources_and_tokens(tmp_path: Path) -> None:
    first = settings(tmp_path, source("1101000002", "OLD") + source("1101000004", "OTHER"))
    stub = StubPublisher()
    hooks = Webhooks(first, Pipeline(first.config.amqp, stub))
    transport = httpx.ASGITransport(app=hooks, client=("10.1.2.3", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
        assert await post(client, "1101000002", OLD) == 200
        assert await post(client, "1101000004", OTHER) == 200
        assert await post(client, "1101000003", NEW) == 404
        second = source("1101000002", "NEW") + source("1101000003", "NEW")
        hooks.reconfigure(settings(tmp_path, second))
        assert await post(client, "1101000002", OLD) == 401  # the old token is gone
        assert await post(client, "1101000002", NEW) == 200
        assert await post(client, "1101000003", NEW) == 200  # added
        assert await post(client, "1101000004", OTHER) == 404  # removed
    published = [o.instance for o in stub.published]
    assert published == ["1101000002", "1101000004", "1101000002", "1101000003"]


async def test_a_request_in_flight_keeps_the_set_it_started_with(tmp_path: Path) -> None:
    """The body names no instance in the path, so the source is found by its credentials
    once the body is in: after a swap that removed the old token, a request that arrived
    before it is still checked against the old set, whole."""
    first = settings(tmp_path, source("1101000002", "OLD"))
    stub = StubPublisher()
    hooks = Webhooks(first, Pipeline(first.config.amqp, stub))
    release = asyncio.Event()
    answers: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await release.wait()
        return {"type": "http.request", "body": body("1101000002"), "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        answers.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/webhooks/greenapi",
        "headers": [(b"authorization", f"Bearer {OLD}".encode())],
        "query_string": b"",
        "client": ("10.1.2.3", 5555),
    }
    request = asyncio.create_task(hooks(scope, receive, send))
    await asyncio.sleep(0.05)  # the request is waiting for its body
    assert not request.done()
    hooks.reconfigure(settings(tmp_path, source("1101000002", "NEW")))
    release.set()
    await asyncio.wait_for(request, 5)
    assert answers[0]["status"] == 200
    assert [o.instance for o in stub.published] == ["1101000002"]
