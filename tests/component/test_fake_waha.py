"""The fake WAHA: its sessions API and its webhook pusher, over real sockets.

A small aiohttp server stands in for the bridge: it records every request and answers from a
per-path script (``(status, headers)`` to give first, status ``0`` = hang until the fake's
timeout), 200 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from bridge.tools import waha
from fakeprovider.greenapi import FakeGreenApi
from fakeprovider.push import PushHub
from fakeprovider.server import run_fake_provider, serve_socket
from fakeprovider.waha import FakeWaha
from fakeprovider.waha_push import WahaWebhook, retry_after, retry_delay
from tests.support.harness import http_receiver

WAHA_SAMPLES = Path(__file__).parents[2] / "bridge" / "data" / "samples" / "waha"
API_KEY = "waha-api-key-0123"
KEY = "session-hmac-key-1"
SESSION = "sales"
ID_RE = re.compile(r"evt_[0-9abcdefghjkmnpqrstvwxyz]{26}")


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    url: str = ""
    hits: list[Hit] = field(default_factory=list)
    script: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    delay: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0

    def reset(self) -> None:
        self.hits.clear()
        self.script.clear()
        self.delay = 0.0
        self.max_in_flight = 0

    def on(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path == path]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.hits.append(Hit(request.path, headers, body, time.monotonic()))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            planned = self.script.get(request.path)
            status, extra = planned.pop(0) if planned else (200, {})
            if status == 0:
                await asyncio.sleep(2)
                status = 200
            if self.delay:
                await asyncio.sleep(self.delay)
            return web.Response(status=status, text="ok", headers=extra)
        finally:
            self.in_flight -= 1


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver()
    async with http_receiver(recv.handle) as url:
        recv.url = url
        yield recv


@dataclass
class Fake:
    waha: FakeWaha
    url: str


@pytest.fixture(scope="module")
async def fake_server() -> AsyncIterator[Fake]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    fake = Fake(FakeWaha(api_key=API_KEY), f"http://127.0.0.1:{sock.getsockname()[1]}")
    ready = asyncio.Event()
    task = asyncio.create_task(serve_socket(FakeGreenApi(), sock, ready=ready, waha=fake.waha))
    await asyncio.wait_for(ready.wait(), 5)
    yield fake
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
def fake(fake_server: Fake, receiver: Receiver) -> Fake:
    receiver.reset()
    fake_server.waha.reset()
    fake_server.waha.timeout, fake_server.waha.jitter = 5.0, 0.0
    fake_server.waha.add_session(SESSION, KEY)
    return fake_server


@pytest.fixture
async def client(fake_server: Fake) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"X-Api-Key": API_KEY}
    async with httpx.AsyncClient(base_url=fake_server.url, headers=headers, timeout=10) as http:
        yield http


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def _hook(url: str, **extra: object) -> dict[str, object]:
    return {"url": url, "events": ["*"], **extra}


def _retries(policy: str, delay: float, attempts: int) -> dict[str, object]:
    return {"policy": policy, "delaySeconds": delay, "attempts": attempts}


async def _put_webhooks(client: httpx.AsyncClient, hooks: list[dict[str, object]]) -> None:
    response = await client.put(f"/api/sessions/{SESSION}", json={"config": {"webhooks": hooks}})
    assert response.status_code == 200, response.text


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
    hook = _hook(
        "http://bridge:8080/webhooks/waha",
        hmac={"key": "k1"},
        retries=_retries("linear", 1, 3),
        customHeaders=[{"name": "X-A", "value": "1"}],
    )
    config = {"metadata": {"tenant": "t1"}, "webhooks": [hook], "proxy": None}
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
            {"config": {"webhooks": [_hook("not-a-url")]}},
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
            {"config": {"webhooks": [_hook("http://x/h", retries=_retries("sometimes", 1, 1))]}},
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


# --- push ----------------------------------------------------------------------------------------


async def test_envelope_headers_and_signature(
    fake: Fake, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    custom = [
        {"name": "Authorization", "value": "Bearer t"},
        {"name": "x-webhook-request-id", "value": "mine"},
    ]
    hooks = [
        _hook(f"{receiver.url}/a", hmac={"key": KEY}, customHeaders=custom),
        {"url": f"{receiver.url}/b", "events": ["message.*"]},
        {"url": f"{receiver.url}/c", "events": ["session.status"]},
    ]
    response = await client.put(
        f"/api/sessions/{SESSION}",
        json={"config": {"metadata": {"tenant": "t1"}, "webhooks": hooks}},
    )
    assert response.status_code == 200
    payload = {"id": "false_1@c.us_AAA", "body": "Olá, João \u2028 ✓", "fromMe": False}
    assert fake.waha.enqueue(SESSION, "message", payload) == 1  # "message.*" is not "message"
    assert fake.waha.enqueue(SESSION, "message.ack", {"id": "x", "ack": 3}) == 2
    assert fake.waha.enqueue(SESSION, "engine.event", {"event": "x"}) == 0  # not in "*"
    await wait_until(lambda: len(receiver.hits) == 3)
    [hit] = [h for h in receiver.on("/a") if b'"event":"message"' in h.body]
    envelope = json.loads(hit.body)
    assert list(envelope) == [
        "id",
        "timestamp",
        "event",
        "session",
        "metadata",
        "me",
        "payload",
        "engine",
        "environment",
    ]
    assert ID_RE.fullmatch(envelope["id"]) and envelope["session"] == SESSION
    assert envelope["payload"] == payload and envelope["metadata"] == {"tenant": "t1"}
    assert abs(envelope["timestamp"] - time.time() * 1000) < 60_000
    assert envelope["engine"] == "GOWS" and envelope["environment"]["version"] == waha.VERSION
    assert envelope["me"]["id"].endswith("@c.us")
    # compact raw UTF-8, as JSON.stringify writes it
    assert hit.body == json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()
    assert "Olá, João".encode() in hit.body
    expected = hmac.new(KEY.encode(), hit.body, hashlib.sha512).hexdigest()
    assert hit.headers["x-webhook-hmac"] == expected
    assert hit.headers["x-webhook-hmac-algorithm"] == "sha512"
    assert hit.headers["x-webhook-timestamp"] == str(envelope["timestamp"])
    assert hit.headers["user-agent"] == "WAHA/2026.9.1"
    assert hit.headers["content-type"] == "application/json"
    assert hit.headers["authorization"] == "Bearer t"
    assert hit.headers["x-webhook-request-id"] != "mine"  # WAHA's own header wins
    acks = [h for h in receiver.hits if b"message.ack" in h.body]
    assert {h.path for h in acks} == {"/a", "/b"}
    assert acks[0].body == acks[1].body  # one event: the same id and bytes for every webhook
    assert acks[0].headers["x-webhook-request-id"] != acks[1].headers["x-webhook-request-id"]
    unsigned = receiver.on("/b")[0].headers
    assert "x-webhook-hmac" not in unsigned and "x-webhook-hmac-algorithm" not in unsigned
    stats = fake.waha.stats(SESSION)
    assert (stats.enqueued, stats.deliveries, stats.successes, stats.skipped) == (3, 3, 3, 1)


async def test_without_metadata_the_key_is_left_out(
    fake: Fake, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    await _put_webhooks(client, [_hook(f"{receiver.url}/m")])
    fake.waha.enqueue(SESSION, "session.status", b'{"name": "sales",  "status": "WORKING"}')
    await wait_until(lambda: len(receiver.hits) == 1)
    body = receiver.hits[0].body
    assert b'"metadata"' not in body
    assert b'"payload":{"name":"sales","status":"WORKING"}' in body  # compacted


@pytest.mark.parametrize(
    ("policy", "gaps"),
    [
        ("constant", [0.1, 0.1, 0.1]),
        ("linear", [0.1, 0.2, 0.3]),
        ("exponential", [0.2, 0.4, 0.8]),
    ],
)
async def test_retries_follow_the_policy(
    fake: Fake, client: httpx.AsyncClient, receiver: Receiver, policy: str, gaps: list[float]
) -> None:
    path = f"/{policy}"
    retries = _retries(policy, 0.1, 5)
    await _put_webhooks(
        client, [_hook(f"{receiver.url}{path}", retries=retries, hmac={"key": KEY})]
    )
    receiver.script[path] = [(500, {}), (404, {}), (401, {})]  # 4xx is retried too
    fake.waha.enqueue(SESSION, "message", {"n": 1})
    await wait_until(lambda: fake.waha.stats(SESSION).successes == 1)
    hits = receiver.on(path)
    assert len(hits) == 4
    measured = [b.at - a.at for a, b in itertools.pairwise(hits)]
    for seen, planned in zip(measured, gaps, strict=True):
        assert planned * 0.9 <= seen < planned * 1.5 + 0.1
    assert len({h.body for h in hits}) == 1
    assert len({h.headers["x-webhook-request-id"] for h in hits}) == 1
    assert len({h.headers["x-webhook-hmac"] for h in hits}) == 1
    stats = fake.waha.stats(SESSION)
    assert stats.statuses == {"500": 1, "404": 1, "401": 1, "200": 1}
    assert (stats.attempts, stats.failures, stats.dropped, stats.pending) == (4, 3, 0, 0)


async def test_retry_after_is_honoured(
    fake: Fake, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    await _put_webhooks(
        client, [_hook(f"{receiver.url}/ra", retries=_retries("constant", 0.01, 3))]
    )
    receiver.script["/ra"] = [(503, {"Retry-After": "0.4"}), (429, {})]
    fake.waha.enqueue(SESSION, "message", {"n": 1})
    await wait_until(lambda: fake.waha.stats(SESSION).successes == 1)
    first, second, third = receiver.on("/ra")
    assert second.at - first.at >= 0.38
    assert third.at - second.at < 0.3  # no Retry-After on the 429: back to delaySeconds


async def test_dropped_after_the_last_attempt(
    fake: Fake, client: httpx.AsyncClient, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fakeprovider")
    await _put_webhooks(
        client,
        [
            _hook(f"{receiver.url}/d", retries=_retries("constant", 0.01, 2)),
            _hook(f"{receiver.url}/once", retries=_retries("linear", 1, 0)),
        ],
    )
    receiver.script["/d"] = [(500, {})] * 10
    receiver.script["/once"] = [(400, {})]
    fake.waha.enqueue(SESSION, "message", {"n": 1})
    await wait_until(lambda: fake.waha.stats(SESSION).pending == 0)
    assert (len(receiver.on("/d")), len(receiver.on("/once"))) == (3, 1)  # attempts = retries
    stats = fake.waha.stats(SESSION)
    assert (stats.dropped, stats.successes, stats.attempts) == (2, 0, 4)
    drops = [r for r in caplog.records if r.getMessage() == "fake.waha_dropped"]
    assert len(drops) == 2
    fields = drops[0].bridge_fields  # type: ignore[attr-defined]
    assert fields["session"] == SESSION and fields["event_name"] == "message"
    assert ID_RE.fullmatch(fields["event_id"]) and fields["request_id"]
    assert {f.bridge_fields["outcome"] for f in drops} == {"500", "400"}  # type: ignore[attr-defined]


async def test_network_errors_and_timeouts_are_retried(
    fake: Fake, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    fake.waha.timeout = 0.3
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}/x"
    await _put_webhooks(
        client,
        [
            _hook(dead, retries=_retries("constant", 0.01, 2)),
            _hook(f"{receiver.url}/slow", retries=_retries("constant", 0.01, 2)),
        ],
    )
    receiver.script["/slow"] = [(0, {})]  # hangs past the timeout once
    fake.waha.enqueue(SESSION, "message", {"n": 1})
    await wait_until(lambda: fake.waha.stats(SESSION).pending == 0)
    stats = fake.waha.stats(SESSION)
    assert stats.statuses == {"error": 3, "timeout": 1, "200": 1}
    assert (stats.dropped, stats.successes) == (1, 1)
    assert len(receiver.on("/slow")) == 2


async def test_events_are_sent_concurrently(
    fake: Fake, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    await _put_webhooks(client, [_hook(f"{receiver.url}/many")])
    receiver.delay = 0.2
    started = time.monotonic()
    for n in range(20):
        fake.waha.enqueue(SESSION, "message", {"n": n})
    await wait_until(lambda: fake.waha.stats(SESSION).successes == 20)
    assert time.monotonic() - started < 3.0  # one at a time: 20 x 0.2 s = 4 s
    assert fake.waha.stats(SESSION).max_in_flight > 1 and receiver.max_in_flight > 1
    ids = {json.loads(h.body)["id"] for h in receiver.hits}
    assert len(ids) == 20


async def test_a_stopped_session_sends_nothing(
    fake: Fake, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    await _put_webhooks(client, [_hook(f"{receiver.url}/s")])
    assert (await client.post(f"/api/sessions/{SESSION}/stop")).json()["status"] == "STOPPED"
    assert fake.waha.enqueue(SESSION, "message", {"n": 1}) == 0
    assert (await client.post(f"/api/sessions/{SESSION}/start")).json()["status"] == "WORKING"
    assert fake.waha.enqueue(SESSION, "message", {"n": 2}) == 1
    await wait_until(lambda: len(receiver.hits) == 1)
    assert json.loads(receiver.hits[0].body)["payload"] == {"n": 2}


async def test_deliveries_wait_for_the_server(receiver: Receiver) -> None:
    state = FakeWaha()
    state.add_session("early")
    state.sessions["early"].set_webhook(WahaWebhook(url=f"{receiver.url}/early", events=["*"]))
    assert state.enqueue("early", "message", {"n": 1}) == 1
    receiver.reset()
    hub = PushHub()
    state.attach(hub)
    try:
        await wait_until(lambda: state.stats("early").successes == 1)
    finally:
        state.detach()
        await hub.aclose()
    assert "x-webhook-hmac" not in receiver.hits[0].headers


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
