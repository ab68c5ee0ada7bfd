"""The fake WAHA: the pure pieces (signature, retry delays, ids), its sessions API, its control
API and the runner, over real sockets. The pusher is in ``test_fake_waha_push.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest

from bridge.tools import waha
from fakeprovider.server import run_fake_provider
from fakeprovider.waha_push import retry_after, retry_delay
from tests.support.harness import http_receiver, wait_until
from tests.support.wahafake import (
    API_KEY,
    ID_RE,
    SESSION,
    Fake,
    Receiver,
    api_client,
    hook,
    retries,
    serve_fake,
)

WAHA_SAMPLES = Path(__file__).parents[2] / "bridge" / "data" / "samples" / "waha"


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver()
    async with http_receiver(recv.handle) as url:
        recv.url = url
        yield recv


@pytest.fixture(scope="module")
async def fake_server() -> AsyncIterator[Fake]:
    async with serve_fake() as fake:
        yield fake


@pytest.fixture
def fake(fake_server: Fake, receiver: Receiver) -> Fake:
    receiver.reset()
    return fake_server.fresh()


@pytest.fixture
async def client(fake_server: Fake) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(fake_server) as http:
        yield http


# --- pure pieces ---------------------------------------------------------------------------------


def test_the_documented_signature_vector() -> None:
    body = (WAHA_SAMPLES / "signature-vector.body").read_bytes()
    documented = re.search(
        r"X-Webhook-Hmac: ([0-9a-f]{128})", (WAHA_SAMPLES / "SOURCES.txt").read_text()
    )
    assert documented is not None
    assert body == b'{"event":"message","session":"default","engine":"WEBJS"}'
    assert waha.sign(body, "my-secret-key") == documented.group(1)
    headers = waha.webhook_headers(body, key="my-secret-key")
    assert headers["X-Webhook-Hmac"] == documented.group(1)
    assert headers["X-Webhook-Hmac-Algorithm"] == "sha512"
    assert "X-Webhook-Hmac" not in waha.webhook_headers(body, key="")


def test_retry_delays_per_policy() -> None:
    assert [retry_delay("constant", n, 2) for n in (1, 2, 3)] == [2, 2, 2]
    assert [retry_delay("linear", n, 2) for n in (1, 2, 3)] == [2, 4, 6]
    assert [retry_delay("exponential", n, 2, rand=0.0) for n in (1, 2, 3)] == [4, 8, 16]
    assert retry_delay("exponential", 1, 2, rand=1.0) == pytest.approx(4.8)  # +20 % at most
    assert retry_delay("exponential", 2, 2, jitter=0.0, rand=1.0) == 8
    for policy in ("constant", "linear", "exponential"):  # Retry-After is a floor everywhere
        assert retry_delay(policy, 1, 0.5, after=30, jitter=0.0) == 30  # type: ignore[arg-type]
    assert retry_delay("constant", 1, 0, after=0) == 0  # delaySeconds 0: no wait


def test_retry_after_reads_seconds_and_dates() -> None:
    def answer(value: str | None) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": value} if value else {})

    assert retry_after(answer("3")) == 3 and retry_after(answer("0.25")) == 0.25
    soon = datetime.now(UTC) + timedelta(seconds=20)
    assert 18 < retry_after(answer(format_datetime(soon, usegmt=True))) <= 20
    assert retry_after(answer("soon")) == 0 and retry_after(answer("-4")) == 0
    assert retry_after(answer(None)) == 0 and retry_after(None) == 0


def test_event_and_request_ids() -> None:
    now = 1769113497155
    event_id = waha.event_id(now)
    assert ID_RE.fullmatch(event_id)
    assert event_id[4:14] == "01kfkp3bj3"  # the captured sample's time part, same millisecond
    ids = {waha.request_id() for _ in range(2000)}
    assert len(ids) == 2000 and all(re.fullmatch(r"[0-9a-z]{9,16}", i) for i in ids)


# --- sessions API --------------------------------------------------------------------------------


async def test_sessions_api_create_get_update(fake: Fake, client: httpx.AsyncClient) -> None:
    item = hook(
        "http://bridge:8080/webhooks/waha",
        hmac={"key": "k1"},
        retries=retries("linear", 1, 3),
        customHeaders=[{"name": "X-A", "value": "1"}],
    )
    config = {"metadata": {"tenant": "t1"}, "webhooks": [item], "proxy": None}
    created = await client.post(
        "/api/sessions", json={"name": "new", "config": config, "start": True}
    )
    assert created.status_code == 201
    assert created.json()["name"] == "new" and created.json()["status"] == "WORKING"
    again = await client.post("/api/sessions", json={"name": "new"})
    assert again.status_code == 422 and "Use PUT to update it" in again.json()["message"]
    got = (await client.get("/api/sessions/new")).json()
    assert got["config"] == config and got["me"]["id"].endswith("@c.us")
    assert got["engine"] == {"engine": "GOWS"}
    # PUT replaces the whole config and restarts the session
    updated = await client.put("/api/sessions/new", json={"config": {"webhooks": []}})
    assert updated.status_code == 200 and updated.json()["config"] == {"webhooks": []}
    stats = fake.waha.stats("new")
    assert (stats.restarts, stats.webhooks) == (1, 0)
    listed = (await client.get("/api/sessions")).json()
    assert {s["name"] for s in listed} == {SESSION, "new"}
    unnamed = await client.post("/api/sessions", json={})
    assert re.fullmatch(r"session_[0-9a-z]{26}", unnamed.json()["name"])
    assert unnamed.json()["status"] == "STOPPED"  # start defaults to false


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("GET", "/api/sessions/nobody", None, 404, "does not exist"),
        ("PUT", "/api/sessions/nobody", {"config": {}}, 404, "does not exist"),
        (
            "PUT",
            f"/api/sessions/{SESSION}",
            {"config": {"webhooks": [hook("not-a-url")]}},
            400,
            "must be a URL address",
        ),
        (
            "PUT",
            f"/api/sessions/{SESSION}",
            {"config": {"webhooks": [{"url": "http://x/h", "events": ["message.nope"]}]}},
            400,
            "each value in events",
        ),
        (
            "PUT",
            f"/api/sessions/{SESSION}",
            {"config": {"webhooks": [{"url": "http://x/h"}]}},
            400,
            "events",
        ),
        (
            "PUT",
            f"/api/sessions/{SESSION}",
            {"config": {"webhooks": [hook("http://x/h", retries=retries("sometimes", 1, 1))]}},
            400,
            "policy",
        ),
        ("PUT", f"/api/sessions/{SESSION}", {"config": []}, 400, "config must be an object"),
        ("POST", "/api/sessions", {"name": "bad name"}, 400, "name must match"),
        ("DELETE", f"/api/sessions/{SESSION}", None, 404, "Cannot DELETE"),
    ],
)
async def test_sessions_api_errors(
    fake: Fake,
    client: httpx.AsyncClient,
    method: str,
    path: str,
    body: object,
    status: int,
    message: str,
) -> None:
    response = await client.request(method, path, json=body)
    assert response.status_code == status
    assert response.json()["statusCode"] == status
    assert message in str(response.json()["message"])
    assert fake.waha.sessions[SESSION].webhooks == []


async def test_sessions_api_wants_the_api_key(fake: Fake, fake_server: Fake) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as http:
        for headers in ({}, {"X-Api-Key": "wrong"}):
            response = await http.get(f"/api/sessions/{SESSION}", headers=headers)
            assert response.status_code == 401
            assert response.json() == {
                "message": "Unauthorized",
                "error": "Unauthorized",
                "statusCode": 401,
            }
        assert (await http.get("/api/sessions", headers={"x-api-key": API_KEY})).status_code == 200


# --- control API and the runner ------------------------------------------------------------------


async def test_control_api(fake: Fake, receiver: Receiver) -> None:
    async with httpx.AsyncClient(base_url=fake.url, timeout=5) as http:
        created = await http.post("/_control/waha/sessions", json={"name": "ctl", "hmac_key": "ck"})
        assert created.json() == {"name": "ctl", "created": True}
        same = await http.post("/_control/waha/sessions", json={"name": "ctl", "hmac_key": "ck"})
        assert same.json() == {"name": "ctl", "created": False}
        other = await http.post("/_control/waha/sessions", json={"name": "ctl", "hmac_key": "x"})
        assert other.status_code == 409
        bad = await http.post("/_control/waha/sessions", json={"name": "a/b"})
        assert bad.status_code == 400
        hook = await http.put(
            "/_control/waha/sessions/ctl/webhook", json={"url": f"{receiver.url}/ctl"}
        )
        stored = hook.json()["config"]["webhooks"]
        assert stored == [{"url": f"{receiver.url}/ctl", "events": ["*"], "hmac": {"key": "ck"}}]
        again = await http.put(
            "/_control/waha/sessions/ctl/webhook",
            json={"url": f"{receiver.url}/ctl", "events": ["message"]},
        )
        assert len(again.json()["config"]["webhooks"]) == 1  # same URL: replaced
        events = [{"event": "message", "payload": {"n": 1}}, {"event": "call.received"}]
        answer = await http.post("/_control/waha/sessions/ctl/events", json=events)
        assert answer.json() == {"enqueued": 2, "scheduled": 1}
        await wait_until(lambda: fake.waha.stats("ctl").successes == 1)
        hit = receiver.on("/ctl")[0]
        assert hit.headers["x-webhook-hmac"] == waha.sign(hit.body, "ck")
        stats = (await http.get("/_control/waha/sessions/ctl")).json()
        assert stats["attempts"] == 1 and stats["skipped"] == 1 and stats["webhooks"] == 1
        assert set((await http.get("/_control/waha/stats")).json()) == {SESSION, "ctl"}
        delivery = await http.put("/_control/waha/delivery", json={"timeout": 2, "jitter": 0.1})
        assert delivery.json() == {"timeout": 2.0, "jitter": 0.1}
        assert (await http.put("/_control/waha/delivery", json={"jitter": 1})).status_code == 400
        assert (await http.get("/_control/waha/sessions/none")).status_code == 404
        bad_hook = await http.put("/_control/waha/sessions/ctl/webhook", json={"url": "ftp://x"})
        assert bad_hook.status_code == 400 and "URL" in bad_hook.json()["message"]
        assert (
            await http.post("/_control/waha/sessions/ctl/events", json={"payload": {}})
        ).status_code == 400
        assert (await http.post("/_control/reset")).status_code == 200
        assert fake.waha.sessions == {}


async def test_run_fake_provider_serves_waha_sessions() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    runner = asyncio.create_task(
        run_fake_provider(
            f"127.0.0.1:{port}",
            [],
            seed_samples=False,
            feed_interval=None,
            latency=0.0,
            waha=[("default", "k-default"), ("plain", "")],
            waha_api_key="api",
        )
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            for _ in range(200):
                with contextlib.suppress(httpx.ConnectError):
                    if (await http.get("/_control/stats")).status_code == 200:
                        break
                await asyncio.sleep(0.02)
            got = await http.get("/api/sessions/default", headers={"X-Api-Key": "api"})
            assert (got.status_code, got.json()["config"]) == (200, {})
            stats = (await http.get("/_control/waha/stats")).json()
            assert set(stats) == {"default", "plain"}
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
