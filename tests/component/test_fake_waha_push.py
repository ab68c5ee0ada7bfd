"""The fake WAHA's pusher over real sockets: envelope, headers and signature, retries per
policy, Retry-After, drops, network errors, concurrency.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import logging
import socket
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from bridge.tools import waha
from fakeprovider.push import PushHub
from fakeprovider.waha import FakeWaha
from fakeprovider.waha_push import WahaWebhook
from tests.support.harness import http_receiver, wait_until
from tests.support.wahafake import (
    ID_RE,
    KEY,
    SESSION,
    Fake,
    Receiver,
    api_client,
    hook,
    put_webhooks,
    retries,
    serve_fake,
)


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


# --- push ----------------------------------------------------------------------------------------


async def test_envelope_headers_and_signature(
    fake: Fake, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    custom = [
        {"name": "Authorization", "value": "Bearer t"},
        {"name": "x-webhook-request-id", "value": "mine"},
    ]
    hooks = [
        hook(f"{receiver.url}/a", hmac={"key": KEY}, customHeaders=custom),
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
    # the pusher counts a success once it has read the answer, after the receiver saw the hit
    await wait_until(lambda: fake.waha.stats(SESSION).successes == 3)
    stats = fake.waha.stats(SESSION)
    assert (stats.enqueued, stats.deliveries, stats.successes, stats.skipped) == (3, 3, 3, 1)


async def test_without_metadata_the_key_is_left_out(
    fake: Fake, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    await put_webhooks(client, [hook(f"{receiver.url}/m")])
    fake.waha.enqueue(SESSION, "session.status", b'{"name": "sales",  "status": "WORKING"}')
    await wait_until(lambda: len(receiver.hits) == 1)
    body = receiver.hits[0].body
    assert b'"metadata"' not in body
    assert b'"payload":{"name":"sales","status":"WORKING"}' in body  # compacted


@pytest.mark.parametrize(
    ("policy", "gaps"),
    [
        ("constant", [0.5, 0.5, 0.5]),
        ("linear", [0.5, 1.0, 1.5]),
        ("exponential", [1.0, 2.0, 4.0]),
    ],
)
async def test_retries_follow_the_policy(
    fake: Fake, client: httpx.AsyncClient, receiver: Receiver, policy: str, gaps: list[float]
) -> None:
    path = f"/{policy}"
    plan = retries(policy, 0.5, 5)
    await put_webhooks(client, [hook(f"{receiver.url}{path}", retries=plan, hmac={"key": KEY})])
    receiver.script[path] = [(500, {}), (404, {}), (401, {})]  # 4xx is retried too
    fake.waha.enqueue(SESSION, "message", {"n": 1})
    await wait_until(lambda: fake.waha.stats(SESSION).successes == 1, 30)
    hits = receiver.on(path)
    assert len(hits) == 4
    measured = [b.at - a.at for a, b in itertools.pairwise(hits)]
    for seen, planned in zip(measured, gaps, strict=True):
        # never early; late by at most 20 % jitter and a stall a busy machine can cause, which
        # still tells the policies apart (the gaps differ by at least 0.5 s)
        assert planned * 0.9 <= seen < planned * 1.2 + 0.45
    assert len({h.body for h in hits}) == 1
    assert len({h.headers["x-webhook-request-id"] for h in hits}) == 1
    assert len({h.headers["x-webhook-hmac"] for h in hits}) == 1
    stats = fake.waha.stats(SESSION)
    assert stats.statuses == {"500": 1, "404": 1, "401": 1, "200": 1}
    assert (stats.attempts, stats.failures, stats.dropped, stats.pending) == (4, 3, 0, 0)


async def test_retry_after_is_honoured(
    fake: Fake, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    await put_webhooks(client, [hook(f"{receiver.url}/ra", retries=retries("constant", 0.01, 3))])
    receiver.script["/ra"] = [(503, {"Retry-After": "1"}), (429, {})]
    fake.waha.enqueue(SESSION, "message", {"n": 1})
    await wait_until(lambda: fake.waha.stats(SESSION).successes == 1)
    first, second, third = receiver.on("/ra")
    assert second.at - first.at >= 0.98
    assert third.at - second.at < 0.8  # no Retry-After on the 429: back to delaySeconds


async def test_dropped_after_the_last_attempt(
    fake: Fake, client: httpx.AsyncClient, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fakeprovider")
    await put_webhooks(
        client,
        [
            hook(f"{receiver.url}/d", retries=retries("constant", 0.01, 2)),
            hook(f"{receiver.url}/once", retries=retries("linear", 1, 0)),
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
    fake.waha.timeout = 1.0  # far above an answer on a busy machine; the hang is endless
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}/x"
    await put_webhooks(
        client,
        [
            hook(dead, retries=retries("constant", 0.01, 2)),
            hook(f"{receiver.url}/slow", retries=retries("constant", 0.01, 2)),
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
    await put_webhooks(client, [hook(f"{receiver.url}/many")])
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
    await put_webhooks(client, [hook(f"{receiver.url}/s")])
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
