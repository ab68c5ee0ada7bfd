"""The fake providers' webhook pushers and settings APIs, over real sockets.

A small aiohttp server stands in for the bridge: it records every request and answers from a
per-path script (statuses to give first, ``0`` = hang until released), 200 otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import re
import socket
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from aiohttp import web

from bridge.providers.evolution import config_name, url_suffix
from fakeprovider.chatapi import ChatApiConfig, FakeChatApi, batch_body
from fakeprovider.evolution import FakeEvolution
from fakeprovider.evolution_push import EVENTS, RetryPolicy, local_time_z, webhook_jwt
from fakeprovider.greenapi import FakeGreenApi
from fakeprovider.push import backoff_delay
from fakeprovider.samples import numbered_notifications, sample_notifications
from fakeprovider.server import run_fake_provider, serve_socket
from fakeprovider.settings import SettingsError, apply_settings, default_settings
from tests.support.harness import http_receiver

ID = "1101000001"
TOKEN = "f1e2d3c4b5a6978812345678abcdef0123456789abcdef0123"
HOOK_TOKEN = "hook-secret-1"
EVO = "sales-bot"
EVO_TOKEN = "B6D711FCDE4D-4F69"
PAUSE = 0.05


@dataclass
class Hit:
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """Records requests; ``script[path]`` lists the statuses to answer first (0 = hang)."""

    url: str = ""
    hits: list[Hit] = field(default_factory=list)
    script: dict[str, list[int]] = field(default_factory=dict)
    delay: float = 0.0
    in_flight: Counter[str] = field(default_factory=Counter)
    max_in_flight: Counter[str] = field(default_factory=Counter)
    total_in_flight: int = 0
    max_total: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def reset(self) -> None:
        self.release.set()
        self.release = asyncio.Event()
        self.hits.clear()
        self.script.clear()
        self.delay = 0.0
        self.max_in_flight.clear()  # in_flight stays: a released hang still finishes
        self.max_total = 0

    def bodies(self, path: str | None = None) -> list[bytes]:
        return [h.body for h in self.hits if path is None or h.path == path]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        path = request.path
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.hits.append(Hit(path, request.query_string, headers, body, time.monotonic()))
        self.in_flight[path] += 1
        self.total_in_flight += 1
        self.max_in_flight[path] = max(self.max_in_flight[path], self.in_flight[path])
        self.max_total = max(self.max_total, self.total_in_flight)
        try:
            planned = self.script.get(path)
            status = planned.pop(0) if planned else 200
            if status == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.release.wait(), 10)
                status = 200
            if self.delay:
                await asyncio.sleep(self.delay)
            return web.Response(status=status, text="ok")
        finally:
            self.in_flight[path] -= 1
            self.total_in_flight -= 1


def _socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    return sock


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver()
    async with http_receiver(recv.handle) as url:
        recv.url = url
        yield recv
        recv.release.set()


@dataclass
class Fakes:
    green: FakeGreenApi
    evolution: FakeEvolution
    chatapi: FakeChatApi
    url: str


@pytest.fixture(scope="module")
async def fakes_server() -> AsyncIterator[Fakes]:
    fakes = Fakes(
        FakeGreenApi(timeout_scale=0.01, settings_api=True, push_pause=PAUSE, push_timeout=5),
        FakeEvolution(api_key="global-key"),
        FakeChatApi(),
        "",
    )
    sock = _socket()
    fakes.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    ready = asyncio.Event()
    task = asyncio.create_task(
        serve_socket(
            fakes.green, sock, ready=ready, evolution=fakes.evolution, chatapi=fakes.chatapi
        )
    )
    await asyncio.wait_for(ready.wait(), 5)
    yield fakes
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
def fakes(fakes_server: Fakes, receiver: Receiver) -> Fakes:
    receiver.reset()
    fakes_server.green.reset()
    fakes_server.green.push_pause, fakes_server.green.push_timeout = PAUSE, 5.0
    fakes_server.green.add_instance(ID, TOKEN)
    fakes_server.evolution.reset()
    fakes_server.evolution.retry = RetryPolicy(
        timeout=5.0, max_attempts=4, initial_delay=0.01, max_delay=0.04, jitter=0.2
    )
    fakes_server.evolution.add_instance(EVO, EVO_TOKEN)
    fakes_server.chatapi.reset()
    return fakes_server


@pytest.fixture
async def client(fakes_server: Fakes) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fakes_server.url, timeout=10) as http:
        yield http


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


# --- pure pieces ---------------------------------------------------------------------------------


def test_settings_apply_and_validate() -> None:
    start = default_settings(ID)
    assert start.webhookUrl == "" and start.incomingWebhook == "no" and not start.pushing
    after = apply_settings(start, b'{"webhookUrl": "http://h/x", "incomingWebhook": "yes", "x": 1}')
    assert after.pushing and after.incomingWebhook == "yes" and after.wid == start.wid
    assert apply_settings(after, b'{"unknownKey": "yes"}') == after  # ignored, not an error
    for bad in (b"", b"[]", b"{}", b"null", b"{", b'{"stateWebhook": "maybe"}',
                b'{"stateWebhook": true}', b'{"webhookUrl": 5}',
                b'{"delaySendMessagesMilliseconds": 100}'):  # fmt: skip
        with pytest.raises(SettingsError):
            apply_settings(start, bad)
    with pytest.raises(SettingsError, match="stateWebhook must be 'yes' or 'no'"):
        apply_settings(start, b'{"stateWebhook": "on"}')


def test_backoff_doubles_caps_and_jitters() -> None:
    delays = [backoff_delay(n, 5, 300, 0.2, rand=0.5) for n in range(1, 10)]
    assert delays == [5, 10, 20, 40, 80, 160, 300, 300, 300]
    assert backoff_delay(3, 5, 300, 0.2, rand=0.0) == pytest.approx(16)
    assert backoff_delay(3, 5, 300, 0.2, rand=1.0) == pytest.approx(24)
    assert backoff_delay(1, 5, 300, 0.2, rand=0.0) == 5  # floored at the initial delay


def test_event_name_spellings() -> None:
    assert config_name("messages.upsert") == "MESSAGES_UPSERT"
    assert config_name("group-participants.update") == "GROUP_PARTICIPANTS_UPDATE"
    assert url_suffix("group-participants.update") == "group-participants-update"
    assert url_suffix("typebot.change-status") == "typebot-change-status"


def test_local_time_has_a_literal_z_and_the_offset() -> None:
    now = datetime(2025, 9, 15, 1, 52, 43, 731000, tzinfo=UTC)
    assert local_time_z(-3, now) == "2025-09-14T22:52:43.731Z"


def test_webhook_jwt_is_hs256_with_evolution_claims() -> None:
    token = webhook_jwt("secret", now=1000)
    head, payload, signature = token.split(".")
    expected = hmac.new(b"secret", f"{head}.{payload}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(signature + "==") == expected
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    assert claims == {"iat": 1000, "exp": 1600, "app": "evolution", "action": "webhook"}


def test_batch_body_keeps_arrays_and_order() -> None:
    body = batch_body("42", [("ack", b'{"a":1}'), ("messages", b'{"m":1}'), ("ack", b'{"a":2}')])
    assert json.loads(body) == {
        "instanceId": "42",
        "messages": [{"m": 1}],
        "ack": [{"a": 1}, {"a": 2}],
    }
    assert b"chatUpdate" not in body


# --- GREEN-API: settings -------------------------------------------------------------------------


async def test_get_and_set_settings(fakes: Fakes, client: httpx.AsyncClient) -> None:
    base = f"/waInstance{ID}"
    settings = (await client.get(f"{base}/getSettings/{TOKEN}")).json()
    assert settings["webhookUrl"] == "" and settings["webhookUrlToken"] == ""
    assert "wid" in settings and settings["incomingWebhook"] == "no"
    for toggle in ("outgoingWebhook", "stateWebhook", "incomingCallWebhook", "keepOnlineStatus",
                   "pollMessageWebhook", "editedMessageWebhook", "deletedMessageWebhook",
                   "markIncomingMessagesReaded", "outgoingAPIMessageWebhook"):  # fmt: skip
        assert settings[toggle] == "no"
    body = {"webhookUrl": "http://127.0.0.1:9/x", "incomingWebhook": "yes", "nope": 1}
    response = await client.post(f"{base}/setSettings/{TOKEN}", json=body)
    assert (response.status_code, response.json()) == (200, {"saveSettings": True})
    assert fakes.green.settings(ID).incomingWebhook == "yes"
    assert fakes.green.settings(ID).pushing
    # one call per second per instance and method
    assert (await client.post(f"{base}/setSettings/{TOKEN}", json=body)).status_code == 429
    assert (await client.get(f"{base}/getSettings/{TOKEN}")).status_code == 429
    assert (await client.get(f"{base}/getSettings/wrong")).status_code == 401
    assert (await client.get(f"/waInstance9999/getSettings/{TOKEN}")).status_code == 403
    assert (await client.get(f"{base}/setSettings/{TOKEN}")).status_code == 404


@pytest.mark.parametrize(
    "content",
    [b"", b"[]", b"{}", b'"x"', b'{"incomingWebhook": "maybe"}', b'{"outgoingWebhook": 1}'],
)
async def test_set_settings_rejects_bad_bodies(
    fakes: Fakes, client: httpx.AsyncClient, content: bytes
) -> None:
    response = await client.post(f"/waInstance{ID}/setSettings/{TOKEN}", content=content)
    assert response.status_code == 400 and "message" in response.json()
    assert fakes.green.settings(ID) == default_settings(ID)


async def test_control_settings_and_push_timing(fakes: Fakes, client: httpx.AsyncClient) -> None:
    response = await client.put(f"/_control/instances/{ID}/settings", json={"stateWebhook": "yes"})
    assert response.json()["stateWebhook"] == "yes"
    assert (
        await client.put(f"/_control/instances/{ID}/settings", content=b"{}")
    ).status_code == 400
    assert (await client.get(f"/_control/instances/{ID}/settings")).json()["stateWebhook"] == "yes"
    assert (await client.get("/_control/instances/42/settings")).status_code == 404
    timing = await client.put("/_control/push", json={"pause": 0.01, "timeout": 2})
    assert timing.json() == {"timeout": 2.0, "pause": 0.01}
    assert (fakes.green.push_pause, fakes.green.push_timeout) == (0.01, 2.0)
    assert (await client.put("/_control/push", json={"pause": -1})).status_code == 400
    push = (await client.get(f"/_control/instances/{ID}/push")).json()
    assert push["attempts"] == 0 and push["pushing"] is False


# --- GREEN-API: push -----------------------------------------------------------------------------


async def test_push_fifo_bearer_and_exact_bytes(
    fakes: Fakes, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    samples = sample_notifications()
    receipts = fakes.green.enqueue_many(ID, samples)
    response = await client.post(
        f"/waInstance{ID}/setSettings/{TOKEN}",
        json={
            "webhookUrl": f"{receiver.url}/webhooks/greenapi/{ID}",
            "webhookUrlToken": HOOK_TOKEN,
        },
    )
    assert response.json() == {"saveSettings": True}
    await wait_until(lambda: not fakes.green.instances[ID].queue)
    assert receiver.bodies() == samples
    for hit in receiver.hits:
        assert hit.path == f"/webhooks/greenapi/{ID}"
        assert hit.headers["authorization"] == f"Bearer {HOOK_TOKEN}"
        assert hit.headers["content-type"] == "application/json"
    stats = fakes.green.push_stats(ID)
    assert (stats.attempts, stats.successes, stats.failures) == (len(samples), len(samples), 0)
    assert stats.statuses == {"200": len(samples)} and not stats.overlapped
    assert stats.deleted_receipts == receipts and stats.outstanding == 0
    assert fakes.green.instance_stats(ID).deleted == len(samples)


async def test_no_header_without_token_and_null_polls_while_pushing(
    fakes: Fakes, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.script["/nt"] = [503] * 1000
    fakes.green.set_webhook(ID, f"{receiver.url}/nt")
    fakes.green.enqueue(ID, b'{"n":1}')
    await wait_until(lambda: len(receiver.hits) >= 2)
    assert "authorization" not in receiver.hits[0].headers
    response = await client.get(f"/waInstance{ID}/receiveNotification/{TOKEN}")
    assert response.content == b"null"  # queued, but pushed instead of polled
    # back to polling: the pusher stops and the head is served again
    fakes.green.set_webhook(ID, "")
    polled = (await client.get(f"/waInstance{ID}/receiveNotification/{TOKEN}")).json()
    assert polled["body"] == {"n": 1}
    await asyncio.sleep(PAUSE * 3)
    count = len(receiver.hits)
    await asyncio.sleep(PAUSE * 3)
    assert len(receiver.hits) == count
    assert fakes.green.instances[ID].pusher is not None and fakes.green.instances[ID].pusher.done()


async def test_non_200_pauses_and_resends_the_same_bytes(fakes: Fakes, receiver: Receiver) -> None:
    receiver.script["/h"] = [503, 500, 201, 204]  # only exactly 200 counts
    raws = [b'{"n":1}', b'{"n": 2}']
    fakes.green.enqueue_many(ID, raws)
    fakes.green.set_webhook(ID, f"{receiver.url}/h", HOOK_TOKEN)
    await wait_until(lambda: fakes.green.push_stats(ID).successes == 2)
    assert receiver.bodies() == [raws[0]] * 5 + [raws[1]]
    gaps = [b.at - a.at for a, b in zip(receiver.hits, receiver.hits[1:5], strict=False)]
    assert min(gaps) >= PAUSE * 0.9
    stats = fakes.green.push_stats(ID)
    assert stats.statuses == {"503": 1, "500": 1, "201": 1, "204": 1, "200": 2}
    assert (stats.attempts, stats.failures) == (6, 4)


async def test_timeout_and_connection_errors_resend(fakes: Fakes, receiver: Receiver) -> None:
    fakes.green.push_timeout = 0.2
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}/x"
    fakes.green.enqueue(ID, b'{"n":1}')
    fakes.green.set_webhook(ID, dead)
    await wait_until(lambda: fakes.green.push_stats(ID).statuses.get("error", 0) >= 2)
    receiver.script["/slow"] = [0]
    fakes.green.set_webhook(ID, f"{receiver.url}/slow")
    await wait_until(lambda: fakes.green.push_stats(ID).successes == 1)
    stats = fakes.green.push_stats(ID)
    assert stats.statuses["timeout"] == 1 and stats.statuses["200"] == 1
    assert receiver.bodies() == [b'{"n":1}', b'{"n":1}'] and not stats.overlapped


async def test_twenty_instances_push_one_at_a_time_in_order(
    fakes: Fakes, receiver: Receiver
) -> None:
    receiver.delay = 0.001
    ids = [str(1102000000 + n) for n in range(20)]
    expected: dict[str, list[bytes]] = {}
    for id in ids:
        fakes.green.add_instance(id, f"tok{id}")
        expected[id] = numbered_notifications(50, prefix=f"I{id}N")
        fakes.green.enqueue_many(id, expected[id])
    for id in ids:  # switch them on while their queues are full; twice must not start two
        fakes.green.set_webhook(id, f"{receiver.url}/webhooks/greenapi/{id}", f"hook{id}")
        fakes.green.set_webhook(id, f"{receiver.url}/webhooks/greenapi/{id}", f"hook{id}")
    await wait_until(lambda: all(not fakes.green.instances[i].queue for i in ids), 15)
    seen: defaultdict[str, list[bytes]] = defaultdict(list)
    for hit in receiver.hits:
        id = hit.path.rsplit("/", 1)[1]
        assert hit.headers["authorization"] == f"Bearer hook{id}"
        seen[id].append(hit.body)
    for id in ids:
        assert seen[id] == expected[id]
        stats = fakes.green.push_stats(id)
        assert not stats.overlapped and stats.max_in_flight == 1 and stats.successes == 50
        assert receiver.max_in_flight[f"/webhooks/greenapi/{id}"] == 1
    assert receiver.max_total > 1  # instances do push in parallel


# --- Evolution: webhook/set and find -------------------------------------------------------------


def _v2(url: str, **extra: object) -> dict[str, object]:
    return {"webhook": {"enabled": True, "url": url, **extra}}


async def test_evolution_set_and_find_v2(fakes: Fakes, client: httpx.AsyncClient) -> None:
    headers = {"apikey": EVO_TOKEN}
    assert (await client.get(f"/webhook/find/{EVO}", headers=headers)).json() is None
    body = _v2("http://x/h", headers={"authorization": "Bearer t"}, byEvents=True,
               events=["MESSAGES_UPSERT"])  # fmt: skip
    response = await client.post(f"/webhook/set/{EVO}", json=body, headers=headers)
    assert response.status_code == 201
    row = response.json()
    assert set(row) == {"id", "url", "headers", "enabled", "events", "webhookByEvents",
                        "webhookBase64", "createdAt", "updatedAt", "instanceId"}  # fmt: skip
    assert (row["url"], row["headers"], row["events"]) == (
        "http://x/h",
        {"authorization": "Bearer t"},
        ["MESSAGES_UPSERT"],
    )
    assert (row["webhookByEvents"], row["webhookBase64"], row["enabled"]) == (True, False, True)
    assert (await client.get(f"/webhook/find/{EVO}", headers=headers)).json() == row
    every = await client.post(
        f"/webhook/set/{EVO}", json=_v2("http://x/h"), headers={"apikey": "global-key"}
    )
    assert every.status_code == 201 and every.json()["events"] == list(EVENTS)
    assert every.json()["id"] == row["id"]
    off = {"webhook": {"enabled": False, "url": "http://x/h", "events": ["CALL"]}}
    assert (await client.post(f"/webhook/set/{EVO}", json=off, headers=headers)).json()[
        "events"
    ] == []


@pytest.mark.parametrize(
    ("path", "headers", "body", "status", "message"),
    [
        (f"/webhook/set/{EVO}", {}, _v2("http://x"), 401, "Unauthorized"),
        (f"/webhook/set/{EVO}", {"apikey": "wrong"}, _v2("http://x"), 401, "Unauthorized"),
        (f"/webhook/find/{EVO}", {"apikey": "wrong"}, None, 401, "Unauthorized"),
        ("/webhook/set/nobody", {"apikey": EVO_TOKEN}, _v2("http://x"), 404, "does not exist"),
        (
            f"/webhook/set/{EVO}",
            {"apikey": EVO_TOKEN},
            {"webhook": {"enabled": True}},
            400,
            'requires property "url"',
        ),
        (
            f"/webhook/set/{EVO}",
            {"apikey": EVO_TOKEN},
            _v2("http://x", events=["NOPE"]),
            400,
            "enum values",
        ),
        (f"/webhook/set/{EVO}", {"apikey": EVO_TOKEN}, _v2(""), 400, "cannot be empty"),
    ],
)
async def test_evolution_api_errors(
    fakes: Fakes,
    client: httpx.AsyncClient,
    path: str,
    headers: dict[str, str],
    body: object,
    status: int,
    message: str,
) -> None:
    if body is None:
        response = await client.get(path, headers=headers)
    else:
        response = await client.post(path, json=body, headers=headers)
    assert response.status_code == status
    assert response.json()["status"] == status
    assert message in str(response.json()["response"]["message"])


async def test_flat_v1_body_on_v2_is_the_real_400(fakes: Fakes, client: httpx.AsyncClient) -> None:
    flat = {"enabled": True, "url": "http://x/h", "webhook_by_events": False, "events": []}
    response = await client.post(f"/webhook/set/{EVO}", json=flat, headers={"apikey": EVO_TOKEN})
    assert response.status_code == 400
    assert response.json() == {
        "status": 400,
        "error": "Bad Request",
        "response": {"message": [['instance requires property "webhook"']]},
    }


async def test_evolution_v1_flat_body(fakes: Fakes, client: httpx.AsyncClient) -> None:
    fakes.evolution.add_instance("old", "old-token", v1=True)
    headers = {"apikey": "old-token"}
    empty = (await client.get("/webhook/find/old", headers=headers)).json()
    assert empty == {"url": "", "enabled": False, "events": [], "webhook_by_events": False,
                     "webhook_base64": False}  # fmt: skip
    flat = {"url": "http://x/h", "webhook_by_events": True, "events": ["MESSAGES_UPSERT"]}
    response = await client.post("/webhook/set/old", json=flat, headers=headers)
    assert response.status_code == 201
    stored = {"url": "http://x/h", "enabled": True, "events": ["MESSAGES_UPSERT"],
              "webhook_by_events": True, "webhook_base64": False}  # fmt: skip
    assert response.json() == {"webhook": {"instanceName": "old", "webhook": stored}}
    assert (await client.get("/webhook/find/old", headers=headers)).json() == stored
    nested = await client.post("/webhook/set/old", json=_v2("http://x/h"), headers=headers)
    assert nested.status_code == 400 and "url" in nested.text
    bad_url = await client.post("/webhook/set/old", json={"url": "not a url"}, headers=headers)
    assert bad_url.status_code == 400 and 'Invalid \\"url\\" property' in bad_url.text


# --- Evolution: push -----------------------------------------------------------------------------


def _upsert(n: int) -> dict[str, object]:
    return {"key": {"remoteJid": "5511@s.whatsapp.net", "fromMe": False, "id": f"K{n}"}, "n": n}


async def test_evolution_envelope_headers_and_filter(fakes: Fakes, receiver: Receiver) -> None:
    evo = fakes.evolution
    evo.add_instance("quiet", "quiet-token", sender=None, expose_token=False)
    set_body = _v2(f"{receiver.url}/evo", headers={"authorization": "Bearer hook"},
                   events=["MESSAGES_UPSERT", "GROUP_PARTICIPANTS_UPDATE"])  # fmt: skip
    assert (
        evo.handle_api("POST", f"/webhook/set/{EVO}", EVO_TOKEN, json.dumps(set_body).encode())[0]
        == 201
    )
    assert (
        evo.handle_api(
            "POST",
            "/webhook/set/quiet",
            "quiet-token",
            json.dumps(_v2(f"{receiver.url}/q")).encode(),
        )[0]
        == 201
    )
    assert evo.enqueue(EVO, "messages.upsert", _upsert(1))
    assert evo.enqueue(EVO, "group-participants.update", {"id": "g"})
    assert not evo.enqueue(EVO, "connection.update", {"state": "open"})  # filtered out
    assert evo.enqueue("quiet", "connection.update", b'{"state":"open"}')
    await wait_until(lambda: len(receiver.hits) == 3)
    by_path = {h.path: h for h in receiver.hits}
    q = json.loads(by_path["/q"].body)
    assert q["apikey"] is None and "sender" not in q and q["data"] == {"state": "open"}
    hits = [h for h in receiver.hits if h.path == "/evo"]
    envelope = next(json.loads(h.body) for h in hits if b"messages.upsert" in h.body)
    assert list(envelope) == ["event", "instance", "data", "destination", "date_time", "sender",
                              "server_url", "apikey"]  # fmt: skip
    assert envelope["event"] == "messages.upsert" and envelope["instance"] == EVO
    assert envelope["data"] == _upsert(1) and envelope["destination"] == f"{receiver.url}/evo"
    assert envelope["server_url"] == "http://fake-evolution" and envelope["apikey"] == EVO_TOKEN
    assert envelope["sender"].endswith("@s.whatsapp.net")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", envelope["date_time"])
    sent = datetime.fromisoformat(envelope["date_time"].replace("Z", "+00:00"))
    assert abs(sent - (datetime.now(UTC) - timedelta(hours=3))) < timedelta(minutes=1)
    assert hits[0].headers["authorization"] == "Bearer hook"
    assert hits[0].headers["content-type"] == "application/json"
    assert hits[0].headers["user-agent"].startswith("axios/")
    stats = evo.stats(EVO)
    assert (stats.enqueued, stats.deliveries, stats.skipped, stats.successes) == (3, 2, 1, 2)


async def test_evolution_by_events_retries_and_final_statuses(
    fakes: Fakes, receiver: Receiver
) -> None:
    evo = fakes.evolution
    body = _v2(f"{receiver.url}/evo", byEvents=True)
    assert (
        evo.handle_api("POST", f"/webhook/set/{EVO}", EVO_TOKEN, json.dumps(body).encode())[0]
        == 201
    )
    receiver.script["/evo/messages-upsert"] = [503, 0, 500]  # retried; 0 = hang past the timeout
    receiver.script["/evo/connection-update"] = [404]  # final at once
    receiver.script["/evo/messages-update"] = [500] * 10  # gives up after max_attempts
    receiver.script["/evo/send-message"] = [202]  # any 2xx is fine
    evo.retry.timeout = 0.2
    for event in ("messages.upsert", "connection.update", "messages.update", "send.message"):
        evo.enqueue(EVO, event, {"e": event})
    await wait_until(lambda: evo.stats(EVO).pending == 0)
    paths = Counter(h.path for h in receiver.hits)
    assert paths == {"/evo/messages-upsert": 4, "/evo/connection-update": 1,
                     "/evo/messages-update": 4, "/evo/send-message": 1}  # fmt: skip
    for hit in receiver.hits:
        assert json.loads(hit.body)["destination"] == f"{receiver.url}/evo"  # no suffix
    stats = evo.stats(EVO)
    assert (stats.successes, stats.given_up, stats.attempts) == (2, 2, 10)
    assert stats.statuses == {"503": 1, "timeout": 1, "500": 5, "200": 1, "404": 1, "202": 1}


async def test_evolution_pushes_concurrently(fakes: Fakes, receiver: Receiver) -> None:
    evo = fakes.evolution
    evo.handle_api(
        "POST", f"/webhook/set/{EVO}", EVO_TOKEN, json.dumps(_v2(f"{receiver.url}/c")).encode()
    )
    receiver.delay = 0.2
    started = time.monotonic()
    for n in range(20):
        evo.enqueue(EVO, "messages.upsert", _upsert(n))
    await wait_until(lambda: evo.stats(EVO).successes == 20)
    assert time.monotonic() - started < 3.0  # one at a time: 20 x 0.2 s = 4 s
    assert evo.stats(EVO).max_in_flight > 1 and receiver.max_in_flight["/c"] > 1


async def test_evolution_control_api(
    fakes: Fakes, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    created = await client.post(
        "/_control/evolution/instances", json={"name": "ctl", "token": "ctl-t"}
    )
    assert created.json() == {"name": "ctl", "created": True}
    assert (
        await client.post("/_control/evolution/instances", json={"name": "ctl", "token": "x"})
    ).status_code == 409
    await client.post(
        "/webhook/set/ctl", json=_v2(f"{receiver.url}/ctl"), headers={"apikey": "ctl-t"}
    )
    events = [
        {"event": "messages.upsert", "data": _upsert(1)},
        {"event": "call", "data": {"id": "c"}},
    ]
    assert (await client.post("/_control/evolution/instances/ctl/events", json=events)).json() == {
        "enqueued": 2, "scheduled": 2}  # fmt: skip
    await wait_until(lambda: fakes.evolution.stats("ctl").successes == 2)
    stats = (await client.get("/_control/evolution/instances/ctl")).json()
    assert stats["attempts"] == 2 and stats["statuses"] == {"200": 2}
    assert set((await client.get("/_control/evolution/stats")).json()) == {EVO, "ctl"}
    retry = await client.put(
        "/_control/evolution/retry", json={"max_attempts": 3, "initial_delay": 0.01}
    )
    assert retry.json()["max_attempts"] == 3 and fakes.evolution.retry.max_attempts == 3
    assert (await client.put("/_control/evolution/retry", json={"jitter": 2})).status_code == 400
    assert (await client.get("/_control/evolution/instances/none")).status_code == 404
    assert (
        await client.post("/_control/evolution/instances/ctl/events", json={"data": 1})
    ).status_code == 400


# --- Chat API ------------------------------------------------------------------------------------


async def test_chatapi_batches_mixed_items(fakes: Fakes, receiver: Receiver) -> None:
    config = ChatApiConfig(
        webhook_url=f"{receiver.url}/chat?x=1", batch_size=3, batch_interval=0.05
    )
    fakes.chatapi.add_instance("79926", "chat-token", config)
    items = [("messages", {"id": "m1"}), ("ack", {"id": "m0", "status": "delivered"}),
             ("messages", {"id": "m2"}), ("chatUpdate", {"old": None, "new": {"id": "c"}}),
             ("ack", {"id": "m1", "status": "viewed"}), ("messages", {"id": "m3"}),
             ("messages", {"id": "m4"})]  # fmt: skip
    fakes.chatapi.enqueue_many("79926", items)
    await wait_until(lambda: fakes.chatapi.stats("79926").items_delivered == 7)
    bodies = [json.loads(b) for b in receiver.bodies("/chat")]
    assert bodies == [
        {"instanceId": "79926", "messages": [{"id": "m1"}, {"id": "m2"}],
         "ack": [{"id": "m0", "status": "delivered"}]},
        {"instanceId": "79926", "messages": [{"id": "m3"}], "ack": [{"id": "m1", "status": "viewed"}],
         "chatUpdate": [{"old": None, "new": {"id": "c"}}]},
        {"instanceId": "79926", "messages": [{"id": "m4"}]},
    ]  # fmt: skip
    assert all(h.query == "x=1&token=chat-token" for h in receiver.hits)
    stats = fakes.chatapi.stats("79926")
    assert (stats.batches, stats.queued, stats.overlapped) == (3, 0, False)


async def test_chatapi_retries_until_200_and_gives_up(fakes: Fakes, receiver: Receiver) -> None:
    config = ChatApiConfig(webhook_url=f"{receiver.url}/c2", auth="bearer", batch_interval=0.0,
                           retry_pause=0.01, max_attempts=3)  # fmt: skip
    fakes.chatapi.add_instance("1", "tok1", config)
    receiver.script["/c2"] = [500, 202]
    fakes.chatapi.enqueue("1", "messages", b'{"id":"a"}')
    await wait_until(lambda: fakes.chatapi.stats("1").batches == 1)
    assert receiver.bodies("/c2") == [b'{"instanceId":"1","messages":[{"id":"a"}]}'] * 3
    assert (
        receiver.hits[0].headers["authorization"] == "Bearer tok1" and receiver.hits[0].query == ""
    )
    receiver.script["/c2"] = [500] * 3
    fakes.chatapi.enqueue("1", "ack", {"id": "a", "status": "delivered"})
    await wait_until(lambda: fakes.chatapi.stats("1").given_up == 1)
    stats = fakes.chatapi.stats("1")
    assert (stats.items_dropped, stats.attempts, stats.statuses["500"]) == (1, 6, 4)


async def test_chatapi_control_api(
    fakes: Fakes, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    body = {"id": "55", "token": "t55", "batch_interval": 0.01, "auth": "none"}
    assert (await client.post("/_control/chatapi/instances", json=body)).json() == {
        "id": "55",
        "created": True,
    }
    items = [{"kind": "messages", "item": {"id": "z"}}, {"kind": "ack", "item": {"id": "z"}}]
    assert (await client.post("/_control/chatapi/instances/55/items", json=items)).json() == {
        "enqueued": 2
    }
    assert (await client.get("/_control/chatapi/instances/55")).json()["queued"] == 2  # no URL yet
    configured = await client.put(
        "/_control/chatapi/instances/55", json={"webhook_url": f"{receiver.url}/c55"}
    )
    assert configured.json()["config"]["webhook_url"].endswith("/c55")
    await wait_until(lambda: fakes.chatapi.stats("55").batches == 1)
    assert json.loads(receiver.hits[0].body) == {
        "instanceId": "55",
        "messages": [{"id": "z"}],
        "ack": [{"id": "z"}],
    }
    assert "authorization" not in receiver.hits[0].headers
    for bad in ({"kind": "status", "item": {}}, {"kind": "messages"}):
        assert (
            await client.post("/_control/chatapi/instances/55/items", json=bad)
        ).status_code == 400
    assert (
        await client.put("/_control/chatapi/instances/55", json={"batch_size": 0})
    ).status_code == 400
    assert (
        await client.put("/_control/chatapi/instances/55", json={"bogus": 1})
    ).status_code == 400
    assert set((await client.get("/_control/chatapi/stats")).json()) == {"55"}
    assert (await client.post("/_control/reset")).status_code == 200
    assert fakes.chatapi.instances == {} and fakes.evolution.instances == {}


# --- lifecycle -----------------------------------------------------------------------------------


async def test_stopping_the_server_stops_pushers(receiver: Receiver) -> None:
    green = FakeGreenApi(settings_api=True)
    green.add_instance(ID, TOKEN)
    green.enqueue(ID, b'{"n":1}')
    green.set_webhook(ID, f"{receiver.url}/hang")  # before the server: starts when it does
    receiver.script["/hang"] = [0]
    task = asyncio.create_task(serve_socket(green, _socket()))
    await wait_until(lambda: len(receiver.bodies("/hang")) == 1)
    pusher = green.instances[ID].pusher
    assert pusher is not None and not pusher.done()
    started = time.monotonic()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 8 and pusher.done()  # the receiver holds it 10 s
    assert green.instance_stats(ID).outstanding == 1  # never acknowledged


async def test_run_fake_provider_serves_all_three() -> None:
    sock = _socket()
    port = sock.getsockname()[1]
    sock.close()
    runner = asyncio.create_task(
        run_fake_provider(
            f"127.0.0.1:{port}",
            [(ID, TOKEN)],
            seed_samples=False,
            feed_interval=None,
            latency=0.0,
            evolution=[(EVO, EVO_TOKEN)],
            chatapi=[("77", "t77")],
        )
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            for _ in range(200):
                with contextlib.suppress(httpx.ConnectError):
                    if (await http.get("/_control/stats")).status_code == 200:
                        break
                await asyncio.sleep(0.02)
            assert (await http.get(f"/waInstance{ID}/getSettings/{TOKEN}")).status_code == 200
            find = await http.get(f"/webhook/find/{EVO}", headers={"apikey": EVO_TOKEN})
            assert (find.status_code, find.json()) == (200, None)
            assert set((await http.get("/_control/chatapi/stats")).json()) == {"77"}
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
