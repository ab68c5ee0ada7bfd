"""POST /webhooks/waha through the ASGI app: signatures, sessions, quarantine, replays."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.component.test_webhooks import StubPublisher, app_of
from tests.unit.test_waha import EMOJI, WAHA, compact, sign

KEY = "waha-hmac-key-0123456789abcdef"
OTHER = "other-session-key-0123456789"
CONFIG = """
[[sources]]
provider = "waha"
mode = "webhook"
instance = "default"
hmac_key_env = "KEY"

[[sources]]
provider = "waha"
mode = "webhook"
instance = "sales"
hmac_key_env = "OTHER"
webhook_token_env = "TOKEN"
webhook_header = "x-api-key"
"""
ENV = {"KEY": KEY, "OTHER": OTHER, "TOKEN": "waha-header-token"}


def app(tmp_path: Path) -> tuple[httpx.AsyncClient, StubPublisher]:
    return app_of(tmp_path, CONFIG, ENV)


def signed(body: bytes, key: str = KEY, **extra: str) -> dict[str, str]:
    return {
        "X-Webhook-Hmac": sign(key.encode(), body),
        "X-Webhook-Hmac-Algorithm": "sha512",
        "X-Webhook-Request-Id": "18a767mkh37y0h",
        "Content-Type": "application/json",
        **extra,
    }


async def test_every_sample_is_published_unchanged(tmp_path: Path) -> None:
    client, stub = app(tmp_path)
    for path in sorted(WAHA.glob("*.json")):
        body = compact(path)
        response = await client.post("/webhooks/waha", content=body, headers=signed(body))
        assert response.status_code == 200, (path.name, response.text)
        out = stub.published[-1]
        assert out.exchange == "notifications" and out.body == body
        assert out.routing_key == out.event == out.headers["x-event"]
        assert out.instance == "default" and out.headers["x-provider"] == "waha"


async def test_signature_failures_are_401_and_publish_nothing(tmp_path: Path) -> None:
    client, stub = app(tmp_path)
    body = EMOJI.replace(b'"s"', b'"default"')
    bad = [
        {},
        {"X-Webhook-Hmac": ""},
        signed(body, key="wrong-key-0123456789"),
        signed(b'{"event":"message","session":"default"}'),  # another body's signature
        signed(body, **{"X-Webhook-Hmac-Algorithm": "sha1"}),
        signed(body, OTHER),  # another session's key
    ]
    for headers in bad:
        response = await client.post("/webhooks/waha", content=body, headers=headers)
        assert response.status_code == 401, headers
    assert stub.published == []
    response = await client.post("/webhooks/waha", content=body, headers=signed(body))
    assert response.status_code == 200 and stub.published[0].body == body  # emoji, raw UTF-8


async def test_token_and_signature_together(tmp_path: Path) -> None:
    client, stub = app(tmp_path)
    body = b'{"event":"session.status","session":"sales","payload":{"status":"WORKING"}}'
    response = await client.post("/webhooks/waha", content=body, headers=signed(body, OTHER))
    assert response.status_code == 401  # the header token is missing
    headers = signed(body, OTHER, **{"X-Api-Key": "waha-header-token"})
    response = await client.post("/webhooks/waha", content=body, headers=headers)
    assert response.status_code == 200 and stub.published[0].instance == "sales"


async def test_replayed_post_shares_its_message_id(tmp_path: Path) -> None:
    client, stub = app(tmp_path)
    body = compact(WAHA / "message.text.gows-2026.1.2.capture.json")
    for _ in range(2):  # WAHA's retry: the same bytes, the same headers
        response = await client.post("/webhooks/waha", content=body, headers=signed(body))
        assert response.status_code == 200
    first, again = stub.published
    assert first.message_id == again.message_id
    assert first.headers["x-event-id"] == again.headers["x-event-id"]
    assert str(first.headers["x-event-id"]).startswith("evt_")


async def test_unknown_session_is_404_and_bad_bodies_are_quarantined(tmp_path: Path) -> None:
    client, stub = app(tmp_path)
    body = b'{"event":"message","session":"nobody"}'
    response = await client.post("/webhooks/waha", content=body, headers=signed(body))
    assert response.status_code == 404 and stub.published == []
    # signed, but not an envelope: it belongs to the one source whose key signed it
    for bad in (b"{not json", b'{"session":"default"}'):
        response = await client.post("/webhooks/waha", content=bad, headers=signed(bad))
        assert response.status_code == 200
        assert stub.published[-1].exchange == "notifications.invalid"
        assert stub.published[-1].instance == "default" and stub.published[-1].body == bad
    response = await client.post("/webhooks/waha", content=b"{x", headers=signed(b"{y"))
    assert response.status_code == 401 and len(stub.published) == 2


async def test_broker_trouble_is_503(tmp_path: Path) -> None:
    client, stub = app(tmp_path)
    stub.ready = False
    body = compact(WAHA / "message.docs.json")
    response = await client.post("/webhooks/waha", content=body, headers=signed(body))
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
