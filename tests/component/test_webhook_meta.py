"""GET and POST /webhooks/meta through the ASGI app: the challenge, signatures, batches."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import httpx
import pytest

from bridge.envelope import Outbound
from bridge.errors import PublishNacked
from tests.component.test_webhooks import StubPublisher, app_of
from tests.unit.test_meta import META, batch, compact

SECRET = "meta-app-secret-5f1c2b3a4d"
SOURCES = """
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
CONFIG = "[http]\nretry_after = 7\n" + SOURCES
ENV = {"SECRET": SECRET, "VERIFY": "verify-token-0123"}


def app(
    tmp_path: Path, stub: StubPublisher | None = None
) -> tuple[httpx.AsyncClient, StubPublisher]:
    return app_of(tmp_path, CONFIG, ENV, stub)


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}


async def test_subscription_check(tmp_path: Path) -> None:
    client, stub = app(tmp_path)
    ok = await client.get(
        "/webhooks/meta",
        params={
            "hub.mode": "subscribe",
            "hub.challenge": "1158201444",
            "hub.verify_token": "verify-token-0123",
        },
    )
    assert ok.status_code == 200 and ok.text == "1158201444"
    assert ok.headers["content-type"].startswith("text/plain")
    for params in (
        {"hub.mode": "subscribe", "hub.challenge": "1", "hub.verify_token": "wrong"},
        {"hub.mode": "subscribe", "hub.challenge": "1"},
        {"hub.mode": "other", "hub.challenge": "1", "hub.verify_token": "verify-token-0123"},
    ):
        refused = await client.get("/webhooks/meta", params=params)
        assert refused.status_code == 403
    assert (await client.get("/webhooks/waha")).status_code == 405  # no such check there
    assert stub.published == []


async def test_samples_are_published_one_item_each(tmp_path: Path) -> None:
    client, stub = app(tmp_path)
    known = {"1234567890987654321", "102290129340398"}
    for path in sorted(META.glob("*.json")):
        original = json.loads(path.read_bytes())
        original["entry"][0]["id"] = (
            "102290129340398"
            if original["entry"][0]["id"] not in known
            else original["entry"][0]["id"]
        )
        body = compact(original)
        response = await client.post("/webhooks/meta", content=body, headers=signed(body))
        assert response.status_code == 200, (path.name, response.text)
        out = stub.published[-1]
        assert out.exchange == "notifications" and json.loads(out.body) == original
        assert out.instance == original["entry"][0]["id"]


async def test_a_batch_of_two_accounts(tmp_path: Path) -> None:
    client, stub = app(tmp_path)
    body = compact(batch())
    response = await client.post("/webhooks/meta", content=body, headers=signed(body))
    assert response.status_code == 200
    assert [(o.instance, o.routing_key) for o in stub.published] == [
        ("1234567890987654321", "messages"),
        ("1234567890987654321", "messages"),
        ("1234567890987654321", "statuses"),
        ("1234567890987654321", "errors"),
        ("102290129340398", "message_template_status_update"),
    ]
    assert stub.published[0].headers["x-phone-number-id"] == "1122334455667"
    assert stub.published[0].headers["x-message-key"] == "wamid.xyzxyz"
    assert stub.published[2].headers["x-message-key"] == "wamid.xyzxyz:sent"


async def test_signature_failures(tmp_path: Path) -> None:
    client, stub = app(tmp_path)
    body = compact(batch())
    other = compact(json.loads((META / "messages.text.pywa.json").read_bytes()))
    for headers in (
        {},
        signed(body, "wrong-secret-0123456"),
        signed(other),
        {"X-Hub-Signature-256": "sha256="},
    ):
        response = await client.post("/webhooks/meta", content=body, headers=headers)
        assert response.status_code == 401
    # non-ASCII as Meta sends it (escaped) and raw: each verified over its own bytes
    text = json.loads(other)
    text["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] = "äöå 😮"
    for raw in (
        compact(text),
        json.dumps(text, separators=(",", ":"), ensure_ascii=False).encode(),
    ):
        response = await client.post("/webhooks/meta", content=raw, headers=signed(raw))
        assert response.status_code == 200
    assert len(stub.published) == 2


async def test_unknown_account_is_404_and_undecodable_is_quarantined(tmp_path: Path) -> None:
    client, stub = app(tmp_path)
    original = json.loads((META / "messages.text.pywa.json").read_bytes())
    original["entry"][0]["id"] = "999"
    body = compact(original)
    assert (
        await client.post("/webhooks/meta", content=body, headers=signed(body))
    ).status_code == 404
    bad = b'{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[]}]}'
    response = await client.post("/webhooks/meta", content=bad, headers=signed(bad))
    assert response.status_code == 200
    assert stub.published[-1].exchange == "notifications.invalid"
    assert stub.published[-1].instance == "102290129340398"


class NackOne(StubPublisher):
    """Nacks the first publish of the message with this key, once."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.ids: list[str] = []

    async def publish(self, out: Outbound) -> bool:
        self.ids.append(out.message_id)
        if out.headers.get("x-message-key") == self.key:
            self.key = ""
            raise PublishNacked("nack")
        return await super().publish(out)


async def test_one_nacked_item_fails_the_post_and_the_redelivery_shares_ids(tmp_path: Path) -> None:
    nacking = NackOne("wamid.two")
    client, _ = app(tmp_path, nacking)
    body = compact(batch())
    first = await client.post("/webhooks/meta", content=body, headers=signed(body))
    assert first.status_code == 503 and first.headers["retry-after"] == "7"
    tried = list(nacking.ids)
    again = await client.post("/webhooks/meta", content=body, headers=signed(body))
    assert again.status_code == 200
    assert nacking.ids[len(tried) :] == tried  # the same message_ids, item for item


async def test_simulate_posts_as_meta_does(tmp_path: Path) -> None:
    from bridge.tools.simulate import build_posts, load_samples

    client, stub = app(tmp_path)
    posts = build_posts(
        "meta", "http://bridge", load_samples("meta"), instance="102290129340398", hmac_key=SECRET
    )
    assert len(posts) == len(list(META.glob("*.json")))
    for post in posts:
        assert post.url == "http://bridge/webhooks/meta" and b"\n" not in post.body
        response = await client.post("/webhooks/meta", content=post.body, headers=post.headers)
        assert response.status_code == 200, response.text
    assert {o.instance for o in stub.published} == {"102290129340398"}
    assert len(stub.published) == len(posts)


def test_configure_meta_prints_what_the_dashboard_needs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bridge.cli import main

    monkeypatch.setenv("META_VERIFY", "verify-token-0123")
    assert (
        main(
            [
                "configure",
                "meta",
                "--webhook-url",
                "https://hooks.example.com/",
                "--verify-token-env",
                "META_VERIFY",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Callback URL:  https://hooks.example.com/webhooks/meta" in out
    assert "Verify token:  verify-token-0123" in out
    monkeypatch.delenv("META_VERIFY")
    assert (
        main(
            [
                "configure",
                "meta",
                "--webhook-url",
                "https://h/webhooks/meta",
                "--verify-token-env",
                "META_VERIFY",
            ]
        )
        == 1
    )
    assert "META_VERIFY is not set" in capsys.readouterr().err
    assert main(["configure", "meta", "--webhook-url", "ftp://h", "--verify-token-env", "X"]) == 1
