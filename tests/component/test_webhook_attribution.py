"""Bodies that name no instance belong to the one source whose credentials they carry.

Through the ASGI app with a stand-in publisher: Evolution's global `error` webhook, Chat API's
documentation bodies without `instanceId`, 1msg's `channelId`, GREEN-API without
`instanceData`; and quarantine only when no single source can be told.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.component.test_webhooks import StubPublisher, app_of, bearer
from tests.unit.test_providers import CHATAPI_ACK, CHATAPI_CHAT_UPDATE, EVOLUTION_ERROR, ONEMSG

CONFIG = """
[[sources]]
provider = "greenapi"
mode = "webhook"
instance = "1101000002"
webhook_token_env = "GREEN"

[[sources]]
provider = "evolution"
mode = "webhook"
instance = "sales-bot"
webhook_token_env = "EVO"

[[sources]]
provider = "evolution"
mode = "webhook"
instance = "support-bot"
webhook_token_env = "EVO2"
webhook_header = "x-hook-secret"

[[sources]]
provider = "chatapi"
mode = "webhook"
instance = "79926"
webhook_token_env = "CHAT"

[[sources]]
provider = "chatapi"
mode = "webhook"
instance = "1234"
webhook_token_env = "ONEMSG"
"""
SHARED = """
[[sources]]
provider = "chatapi"
mode = "webhook"
instance = "1"
webhook_token_env = "CHAT"

[[sources]]
provider = "chatapi"
mode = "webhook"
instance = "2"
webhook_token_env = "CHAT"
"""
ENV = {
    "GREEN": "green-tok",
    "EVO": "evo-tok",
    "EVO2": "evo2-tok",
    "CHAT": "chat-tok",
    "ONEMSG": "one-tok",
}


def app(tmp_path: Path, config: str = CONFIG) -> tuple[httpx.AsyncClient, StubPublisher]:
    return app_of(tmp_path, config, ENV)


async def test_evolution_global_error_webhook_goes_to_the_source_of_its_token(
    tmp_path: Path,
) -> None:
    client, stub = app(tmp_path)
    response = await client.post(
        "/webhooks/evolution/error", content=EVOLUTION_ERROR, headers=bearer("evo-tok")
    )
    assert response.status_code == 200
    [out] = stub.published
    assert out.exchange == "notifications" and out.routing_key == "error"
    assert out.instance == "sales-bot" and out.headers["x-instance"] == "sales-bot"
    assert "api_key" not in json.loads(out.body)
    # the other Evolution source's credentials, in its own header
    response = await client.post(
        "/webhooks/evolution", content=EVOLUTION_ERROR, headers={"X-Hook-Secret": "evo2-tok"}
    )
    assert response.status_code == 200
    assert stub.published[-1].instance == "support-bot"
    # the same token in a header the source does not read identifies nobody
    response = await client.post(
        "/webhooks/evolution", content=EVOLUTION_ERROR, headers=bearer("evo2-tok")
    )
    assert response.status_code == 401 and len(stub.published) == 2


async def test_chatapi_bodies_without_instance_id(tmp_path: Path) -> None:
    client, stub = app(tmp_path)
    for body, kind in [(CHATAPI_ACK, "ack"), (CHATAPI_CHAT_UPDATE, "chatUpdate")]:
        response = await client.post("/webhooks/chatapi?token=chat-tok", content=body)
        assert response.status_code == 200
        out = stub.published[-1]
        assert out.exchange == "notifications" and out.routing_key == kind
        assert out.instance == "79926"
        assert json.loads(out.body) == {"instanceId": "79926", kind: json.loads(body)[kind][0]}


async def test_onemsg_channel_id(tmp_path: Path) -> None:
    client, stub = app(tmp_path)
    response = await client.post("/webhooks/chatapi", content=ONEMSG, headers=bearer("one-tok"))
    assert response.status_code == 200
    [out] = stub.published
    assert out.instance == "1234" and out.routing_key == "message"
    assert json.loads(out.body)["channelId"] == 1234
    # a channel named in the body is checked against that source's credentials
    response = await client.post("/webhooks/chatapi", content=ONEMSG, headers=bearer("chat-tok"))
    assert response.status_code == 401 and len(stub.published) == 1


async def test_greenapi_without_instance_data(tmp_path: Path) -> None:
    client, stub = app(tmp_path)
    body = b'{"typeWebhook":"incomingCall","idMessage":"X","timestamp":1700000000}'
    response = await client.post("/webhooks/greenapi", content=body, headers=bearer("green-tok"))
    assert response.status_code == 200
    [out] = stub.published
    assert out.exchange == "notifications" and out.instance == "1101000002"
    assert out.body == body


async def test_no_single_source_quarantines_and_no_source_refuses(tmp_path: Path) -> None:
    client, stub = app(tmp_path, SHARED)
    response = await client.post(
        "/webhooks/chatapi", content=CHATAPI_ACK, headers=bearer("chat-tok")
    )
    assert response.status_code == 200
    [out] = stub.published
    assert out.exchange == "notifications.invalid" and out.body == CHATAPI_ACK
    assert "2 sources accept its credentials" in str(out.headers["x-error"])
    response = await client.post("/webhooks/chatapi", content=CHATAPI_ACK, headers=bearer("nope"))
    assert response.status_code == 401 and len(stub.published) == 1
    # a body that names its instance is not ambiguous
    body = b'{"instanceId":"2","ack":[{"id":"a","status":"sent"}]}'
    response = await client.post("/webhooks/chatapi", content=body, headers=bearer("chat-tok"))
    assert response.status_code == 200 and stub.published[-1].instance == "2"
