"""The fake GREEN-API provider over real sockets, plus the official SDK against it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest

from bridge.logs import TextFormatter
from fakeprovider.greenapi import (
    BadRequestError,
    FakeGreenApi,
    Fault,
    Instance,
    SlidingWindow,
    notification_response,
    parse_receive_timeout,
)
from fakeprovider.samples import sample_notifications
from fakeprovider.server import parse_listen, run_fake_provider, serve

ID = "1101000001"
TOKEN = "f1e2d3c4b5a6978812345678abcdef0123456789abcdef0123"
RECEIVE = f"/waInstance{ID}/receiveNotification/{TOKEN}"
DELETE = f"/waInstance{ID}/deleteNotification/{TOKEN}"
SCALE = 0.01  # a receiveTimeout of 5 s waits 50 ms


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
async def fake_server() -> AsyncIterator[tuple[FakeGreenApi, str]]:
    state = FakeGreenApi(timeout_scale=SCALE)
    port = _free_port()
    ready = asyncio.Event()
    task = asyncio.create_task(serve(state, "127.0.0.1", port, ready=ready))
    await asyncio.wait_for(ready.wait(), 5)
    yield state, f"http://127.0.0.1:{port}"
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
def fake(fake_server: tuple[FakeGreenApi, str]) -> FakeGreenApi:
    state = fake_server[0]
    state.reset()
    state.timeout_scale = SCALE
    state.add_instance(ID, TOKEN)
    return state


@pytest.fixture
async def client(fake_server: tuple[FakeGreenApi, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake_server[1], timeout=10) as http:
        yield http


async def _enqueue(client: httpx.AsyncClient, *raws: bytes) -> list[int]:
    response = await client.post(
        f"/_control/instances/{ID}/notifications", content=b"[" + b",".join(raws) + b"]"
    )
    assert response.status_code == 200, response.text
    ids: list[int] = response.json()["receiptIds"]
    return ids


# --- pure pieces ---------------------------------------------------------------------------------


def test_sliding_window_admits_limit_per_window() -> None:
    window = SlidingWindow(3, 1.0)
    assert [window.admit(t) for t in (0.0, 0.1, 0.2, 0.3)] == [True, True, True, False]
    assert not window.admit(0.99)
    assert window.admit(1.0)  # the event at 0.0 has left the window
    assert not window.admit(1.05)
    assert window.admit(1.1)


@pytest.mark.parametrize(
    ("query", "expected"),
    [(b"", 5), (b"receiveTimeout=5", 5), (b"receiveTimeout=60", 60), (b"x=1&receiveTimeout=7", 7)],
)
def test_receive_timeout_accepted(query: bytes, expected: int) -> None:
    assert parse_receive_timeout(query) == expected


@pytest.mark.parametrize("value", [b"4", b"61", b"0", b"abc", b"5.5", b"", b"-5", b"+5"])
def test_receive_timeout_rejected(value: bytes) -> None:
    with pytest.raises(BadRequestError):
        parse_receive_timeout(b"receiveTimeout=" + value)


def test_samples_are_notifications_with_exact_bytes() -> None:
    samples = sample_notifications()
    decoded = [json.loads(raw) for raw in samples]
    assert len(samples) == 18
    assert all("typeWebhook" in obj for obj in decoded)
    assert not any(raw.endswith((b"\n", b" ")) for raw in samples)
    assert b'"receiptId"' not in b"".join(samples)
    assert notification_response(7, b'{"a" : 1}') == b'{"receiptId":7,"body":{"a" : 1}}'


# --- provider protocol ---------------------------------------------------------------------------


async def test_fifo_with_increasing_receipt_ids(
    fake: FakeGreenApi, client: httpx.AsyncClient
) -> None:
    ids = await _enqueue(client, b'{"n":1}', b'{"n":2}', b'{"n":3}')
    assert ids == sorted(ids) and len(set(ids)) == 3
    for n, receipt_id in enumerate(ids, start=1):
        response = await client.get(RECEIVE)
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"receiptId": receipt_id, "body": {"n": n}}
        assert (await client.delete(f"{DELETE}/{receipt_id}")).json() == {"result": True}
    response = await client.get(RECEIVE)
    assert response.status_code == 200 and response.content == b"null"
    stats = fake.instance_stats(ID)
    assert (stats.enqueued, stats.delivered, stats.deleted, stats.outstanding) == (3, 3, 3, 0)
    assert stats.receives == 4 and stats.deleted_receipts == ids


async def test_head_is_returned_again_until_deleted(
    fake: FakeGreenApi, client: httpx.AsyncClient
) -> None:
    [first, second] = await _enqueue(client, b'{"n":1}', b'{"n":2}')
    for _ in range(3):
        assert (await client.get(RECEIVE)).json()["receiptId"] == first
    assert (await client.delete(f"{DELETE}/{second}")).json() == {"result": False}  # not the head
    assert (await client.delete(f"{DELETE}/{first}")).json() == {"result": True}
    assert (await client.delete(f"{DELETE}/{first}")).json() == {"result": False}  # stale
    assert (await client.delete(f"{DELETE}/999")).json() == {"result": False}  # unknown
    assert (await client.get(RECEIVE)).json()["receiptId"] == second
    stats = fake.instance_stats(ID)
    assert (stats.delivered, stats.deleted, stats.outstanding) == (4, 1, 1)


async def test_empty_queue_answers_null_after_the_scaled_timeout(
    fake: FakeGreenApi, client: httpx.AsyncClient
) -> None:
    started = time.monotonic()
    response = await client.get(RECEIVE, params={"receiveTimeout": 20})
    elapsed = time.monotonic() - started
    assert response.status_code == 200 and response.content == b"null"
    assert 0.18 <= elapsed < 5.0  # unscaled, the wait would be 20 s


async def test_long_poll_wakes_as_soon_as_a_notification_is_enqueued(
    fake: FakeGreenApi, client: httpx.AsyncClient
) -> None:
    fake.timeout_scale = 1.0
    started = time.monotonic()
    poll = asyncio.create_task(client.get(RECEIVE, params={"receiveTimeout": 30}))
    await asyncio.sleep(0.1)
    [receipt_id] = await _enqueue(client, b'{"late":true}')
    response = await poll
    assert response.json() == {"receiptId": receipt_id, "body": {"late": True}}
    assert time.monotonic() - started < 5.0  # a poll that did not wake would last 30 s


async def test_a_client_that_leaves_a_long_poll_is_no_longer_in_flight(
    fake: FakeGreenApi, client: httpx.AsyncClient
) -> None:
    fake.timeout_scale = 1.0
    poll = asyncio.create_task(client.get(RECEIVE, params={"receiveTimeout": 30}))
    await asyncio.sleep(0.1)
    assert fake.instances[ID].in_flight == 1
    poll.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await poll
    for _ in range(100):
        if fake.instances[ID].in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert fake.instances[ID].in_flight == 0
    fake.timeout_scale = SCALE
    assert (await client.get(RECEIVE)).content == b"null"
    assert not fake.instance_stats(ID).overlapped


@pytest.mark.parametrize(
    ("method", "path", "status", "body"),
    [
        ("GET", f"/waInstance9999999999/receiveNotification/{TOKEN}", 403, b"Forbidden"),
        ("GET", f"/waInstanceabc/receiveNotification/{TOKEN}", 400, b"idInstance"),
        ("GET", f"/waInstance{ID}/receiveNotification/wrong", 401, b"Unauthorized"),
        ("DELETE", f"/waInstance{ID}/deleteNotification/wrong/1", 401, b"Unauthorized"),
        ("DELETE", f"{DELETE}/abc", 400, b"Parameter receiptId must be a Number"),
        ("DELETE", f"{DELETE}/", 400, b"Parameter receiptId must be a Number"),
        ("GET", f"{RECEIVE}?receiveTimeout=4", 400, b"receiveTimeout"),
        ("GET", f"{RECEIVE}?receiveTimeout=61", 400, b"receiveTimeout"),
        ("GET", f"{RECEIVE}?receiveTimeout=abc", 400, b"receiveTimeout"),
        ("POST", RECEIVE, 404, b"Not Found"),
        ("GET", f"{DELETE}/1", 404, b"Not Found"),
        ("GET", f"/waInstance{ID}/sendMessage/{TOKEN}", 404, b"Not Found"),
        ("GET", "/", 404, b"Not Found"),
    ],
)
async def test_request_errors(
    fake: FakeGreenApi,
    client: httpx.AsyncClient,
    method: str,
    path: str,
    status: int,
    body: bytes,
) -> None:
    response = await client.request(method, path)
    assert response.status_code == status
    assert body in response.content
    if status == 400:
        assert "message" in response.json()


async def test_rate_limit_is_per_instance_and_method(
    fake: FakeGreenApi, client: httpx.AsyncClient
) -> None:
    started = time.monotonic()
    responses = await asyncio.gather(*(client.delete(f"{DELETE}/1") for _ in range(110)))
    burst = time.monotonic() - started
    statuses = [r.status_code for r in responses]
    assert statuses.count(429) >= 1
    if burst < 0.9:
        assert statuses.count(200) == 100 and statuses.count(429) == 10
    assert next(r for r in responses if r.status_code == 429).text == "Too Many Requests"
    assert (await client.get(RECEIVE)).status_code == 200  # receives have their own window


# --- faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 429])
async def test_status_fault_replaces_answers_without_losing_anything(
    fake: FakeGreenApi, client: httpx.AsyncClient, status: int
) -> None:
    [receipt_id] = await _enqueue(client, b'{"n":1}')
    fake.set_fault(ID, Fault(kind="status", status=status, count=2))
    assert (await client.get(RECEIVE)).status_code == status
    assert (await client.delete(f"{DELETE}/{receipt_id}")).status_code == status
    assert fake.instance_stats(ID).delivered == 0
    assert (await client.get(RECEIVE)).json()["receiptId"] == receipt_id
    assert (await client.delete(f"{DELETE}/{receipt_id}")).json() == {"result": True}


async def test_quota_fault_is_466_with_both_statuses(
    fake: FakeGreenApi, client: httpx.AsyncClient
) -> None:
    fake.set_fault(ID, Fault(kind="quota", methods=frozenset({"receive"})))
    response = await client.get(RECEIVE)
    assert response.status_code == 466
    body = response.json()
    assert body["invokeStatus"]["status"] == "QUOTE_EXCEEDED"
    assert body["correspondentsStatus"]["status"] == "CORRESPONDENTS_QUOTE_EXCEEDED"
    assert (await client.get(RECEIVE)).content == b"null"


async def test_empty_fault_gives_an_empty_200_and_keeps_the_head(
    fake: FakeGreenApi, client: httpx.AsyncClient
) -> None:
    [receipt_id] = await _enqueue(client, b'{"n":1}')
    fake.set_fault(ID, Fault(kind="empty"))
    fake.set_fault(ID, Fault(kind="empty", methods=frozenset({"delete"})))
    response = await client.get(RECEIVE)
    assert response.status_code == 200 and response.content == b""
    response = await client.delete(f"{DELETE}/{receipt_id}")
    assert response.status_code == 200 and response.content == b""
    stats = fake.instance_stats(ID)
    assert (stats.delivered, stats.deleted, stats.outstanding) == (0, 0, 1)
    assert (await client.get(RECEIVE)).json()["receiptId"] == receipt_id


async def test_drop_fault_is_a_transport_error_for_the_client(
    fake: FakeGreenApi, client: httpx.AsyncClient
) -> None:
    [receipt_id] = await _enqueue(client, b'{"n":1}')
    fake.set_fault(ID, Fault(kind="drop", count=2))
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get(RECEIVE)
    with pytest.raises(httpx.TransportError):
        await client.delete(f"{DELETE}/{receipt_id}")
    assert fake.instance_stats(ID).outstanding == 1
    assert (await client.get(RECEIVE)).json()["receiptId"] == receipt_id


async def test_slow_fault_delays_a_normal_answer(
    fake: FakeGreenApi, client: httpx.AsyncClient
) -> None:
    [receipt_id] = await _enqueue(client, b'{"n":1}')
    fake.set_fault(ID, Fault(kind="slow", delay=0.2, methods=frozenset({"delete"})))
    assert (await client.get(RECEIVE)).json()["receiptId"] == receipt_id
    started = time.monotonic()
    assert (await client.delete(f"{DELETE}/{receipt_id}")).json() == {"result": True}
    assert time.monotonic() - started >= 0.19


async def test_a_client_that_gives_up_on_a_slow_receive_is_no_longer_in_flight(
    fake: FakeGreenApi, client: httpx.AsyncClient
) -> None:
    [receipt_id] = await _enqueue(client, b'{"n":1}')
    fake.set_fault(ID, Fault(kind="slow", delay=30.0, methods=frozenset({"receive"})))
    with pytest.raises(httpx.ReadTimeout):
        await client.get(RECEIVE, timeout=httpx.Timeout(10, read=0.2))
    for _ in range(100):
        if fake.instances[ID].in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert fake.instances[ID].in_flight == 0
    # the client's retry is the only receive in flight: no overlap, and the head is still there
    assert (await client.get(RECEIVE)).json()["receiptId"] == receipt_id
    assert not fake.instance_stats(ID).overlapped
    assert fake.instance_stats(ID).delivered == 1


async def test_faults_queue_in_order_and_count_minus_one_lasts_until_cleared(
    fake: FakeGreenApi, client: httpx.AsyncClient
) -> None:
    response = await client.put(
        f"/_control/instances/{ID}/faults",
        content=b'[{"kind":"status","status":502,"methods":["receive"]},'
        b'{"kind":"status","status":503,"count":-1,"methods":["receive"]}]',
    )
    assert response.json() == {"faults": 2}
    statuses = [(await client.get(RECEIVE)).status_code for _ in range(4)]
    assert statuses == [502, 503, 503, 503]
    assert (await client.delete(f"{DELETE}/1")).json() == {"result": False}  # deletes unaffected
    assert (await client.delete(f"/_control/instances/{ID}/faults")).json() == {"cleared": 1}
    assert (await client.get(RECEIVE)).status_code == 200


# --- byte identity, overlap, latency -------------------------------------------------------------


async def test_bodies_are_spliced_byte_for_byte(
    fake: FakeGreenApi, client: httpx.AsyncClient
) -> None:
    samples = sample_notifications()
    ids = await _enqueue(client, *samples)
    odd = await client.post(f"/_control/instances/{ID}/raw", content=b'{"broken": \xff tru')
    ids += odd.json()["receiptIds"]
    for receipt_id, raw in zip(ids, [*samples, b'{"broken": \xff tru'], strict=True):
        response = await client.get(RECEIVE)
        assert response.content == b'{"receiptId":%d,"body":' % receipt_id + raw + b"}"
        assert (await client.delete(f"{DELETE}/{receipt_id}")).json() == {"result": True}


async def test_overlap_is_detected_only_for_concurrent_receives(
    fake: FakeGreenApi, client: httpx.AsyncClient
) -> None:
    await client.get(RECEIVE)
    await client.get(RECEIVE)
    assert not fake.instance_stats(ID).overlapped
    await asyncio.gather(client.get(RECEIVE), client.get(RECEIVE))
    assert fake.instance_stats(ID).overlapped
    stats = (await client.get("/_control/stats")).json()
    assert stats["overlapped"] is True and stats["instances"][ID]["overlapped"] is True


def test_a_receive_whose_client_is_gone_does_not_overlap() -> None:
    instance = Instance(ID, TOKEN, None, rate_limit=100)
    gone = instance.begin_receive(lambda: False)  # client closed; close not yet processed
    retry = instance.begin_receive()
    assert not instance.overlapped and instance.in_flight == 2
    instance.end_receive(gone)
    instance.end_receive(retry)
    first = instance.begin_receive()
    instance.begin_receive()
    assert instance.overlapped and len(instance.overlaps) == 1
    instance.end_receive(first)


async def test_a_retry_right_after_the_client_closed_its_long_poll_is_no_overlap(
    fake: FakeGreenApi, fake_server: tuple[FakeGreenApi, str]
) -> None:
    fake.timeout_scale = 1.0  # an empty long poll lasts 5 s
    port = int(fake_server[1].rsplit(":", 1)[1])
    request = f"GET {RECEIVE} HTTP/1.1\r\nhost: x\r\n\r\n".encode()
    first = socket.create_connection(("127.0.0.1", port))
    second = socket.create_connection(("127.0.0.1", port))  # idle in the client's pool
    first.sendall(request)
    instance = fake.instance(ID)
    deadline = time.monotonic() + 5
    while instance.in_flight != 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    # The client gives up and asks again at once on its other connection. The server's loop
    # does not run in between (these calls block it): it sees both in the same turn.
    first.close()
    second.sendall(request)
    time.sleep(0.05)  # noqa: ASYNC251 - holding the loop is the point
    try:
        while instance.receives < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert not instance.overlapped
        # the same request from a client still connected is an overlap
        third = socket.create_connection(("127.0.0.1", port))
        third.sendall(request)
        while instance.receives < 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert instance.overlapped
        third.close()
    finally:
        second.close()


async def test_latency_per_instance_overrides_the_global_default(
    fake: FakeGreenApi, client: httpx.AsyncClient
) -> None:
    async def timed_delete() -> float:
        started = time.monotonic()
        assert (await client.delete(f"{DELETE}/1")).status_code == 200
        return time.monotonic() - started

    # a latency well above what one local request may take on a busy machine
    assert (await client.put("/_control/latency", json={"latency": 1.0})).status_code == 200
    assert await timed_delete() >= 0.99
    await client.put(f"/_control/instances/{ID}/latency", json={"latency": 0.0})
    assert await timed_delete() < 0.9
    await client.put(f"/_control/instances/{ID}/latency", json={"latency": None})
    assert await timed_delete() >= 0.99


# --- control API ---------------------------------------------------------------------------------


async def test_control_instances_and_stats(fake: FakeGreenApi, client: httpx.AsyncClient) -> None:
    body = {"id": "1101000002", "token": "other", "latency": 0.0}
    assert (await client.post("/_control/instances", json=body)).json() == {
        "id": "1101000002",
        "created": True,
    }
    assert (await client.post("/_control/instances", json=body)).json()["created"] is False
    one = await client.post(
        "/_control/instances/1101000002/notifications", content=b' {"typeWebhook": "x"} '
    )
    assert one.json()["enqueued"] == 1
    [receipt_id] = one.json()["receiptIds"]
    second = "/waInstance1101000002/deleteNotification/other"
    assert (await client.delete(f"{second}/{receipt_id}")).json() == {"result": True}
    detail = (await client.get("/_control/instances/1101000002")).json()
    assert detail["deleted_receipts"] == [receipt_id]
    assert detail["enqueued"] == 1 and detail["outstanding"] == 0
    stats = (await client.get("/_control/stats")).json()
    assert set(stats["instances"]) == {ID, "1101000002"}
    assert "deleted_receipts" not in stats["instances"][ID]
    assert stats["totals"] == {"enqueued": 1, "delivered": 0, "deleted": 1, "outstanding": 0}
    assert (await client.post("/_control/reset")).status_code == 200
    assert (await client.get("/_control/stats")).json()["instances"] == {}


@pytest.mark.parametrize(
    ("method", "path", "content", "status"),
    [
        ("POST", "/_control/instances", b"{not json", 400),
        ("POST", "/_control/instances", b'{"id": "12"}', 400),
        ("POST", "/_control/instances", b'{"id": "x1", "token": "t"}', 400),
        ("POST", "/_control/instances", b'{"id": 5, "token": ""}', 400),
        ("POST", "/_control/instances", b'{"id": "1", "token": "t", "extra": 1}', 400),
        ("POST", "/_control/instances", b'{"id": "1", "token": "t", "latency": -1}', 400),
        ("POST", "/_control/instances", f'{{"id": "{ID}", "token": "t"}}'.encode(), 409),
        ("GET", "/_control/instances", b"", 405),
        ("POST", f"/_control/instances/{ID}/notifications", b"[1, 2]", 400),
        ("POST", f"/_control/instances/{ID}/notifications", b"[{]", 400),
        ("POST", f"/_control/instances/{ID}/notifications", b"", 400),
        ("POST", "/_control/instances/42/notifications", b"[]", 404),
        ("PUT", f"/_control/instances/{ID}/faults", b'{"kind": "boom"}', 400),
        ("PUT", f"/_control/instances/{ID}/faults", b'{"kind": "drop", "count": 0}', 400),
        ("PUT", f"/_control/instances/{ID}/faults", b'{"kind": "slow"}', 400),
        ("PUT", f"/_control/instances/{ID}/faults", b'{"kind": "status", "status": 99}', 400),
        ("PUT", f"/_control/instances/{ID}/faults", b'{"kind": "drop", "methods": ["x"]}', 400),
        ("PUT", f"/_control/instances/{ID}/faults", b'{"kind": "drop", "methods": []}', 400),
        ("PUT", f"/_control/instances/{ID}/latency", b'{"latency": "fast"}', 400),
        ("PUT", "/_control/latency", b'{"latency": null}', 400),
        ("PUT", "/_control/latency", b"[]", 400),
        ("GET", f"/_control/instances/{ID}/nothing", b"", 404),
        ("DELETE", f"/_control/instances/{ID}/raw", b"", 405),
        ("GET", "/_control/reset", b"", 405),
        ("GET", "/_control/nothing", b"", 404),
    ],
)
async def test_control_rejects_bad_input(
    fake: FakeGreenApi,
    client: httpx.AsyncClient,
    method: str,
    path: str,
    content: bytes,
    status: int,
) -> None:
    response = await client.request(method, path, content=content)
    assert response.status_code == status
    assert isinstance(response.json()["message"], str)
    assert fake.instance_stats(ID).enqueued == 0


# --- runner --------------------------------------------------------------------------------------


def test_parse_listen() -> None:
    assert parse_listen("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert parse_listen("[::1]:81") == ("::1", 81)
    for bad in ("8080", ":80", "host:", "host:http", "h:70000"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_listen(bad)


async def test_run_fake_provider_seeds_and_feeds(caplog: pytest.LogCaptureFixture) -> None:
    port = _free_port()
    caplog.set_level(logging.INFO, logger="fakeprovider")
    runner = asyncio.create_task(
        run_fake_provider(
            f"127.0.0.1:{port}",
            [(ID, TOKEN), ("1101000002", "second")],
            seed_samples=True,
            feed_interval=0.05,
            latency=0.0,
        )
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            for _ in range(200):
                with contextlib.suppress(httpx.ConnectError):
                    if (await http.get("/_control/stats")).status_code == 200:
                        break
                await asyncio.sleep(0.02)
            seeded = len(sample_notifications())
            first = await http.get(RECEIVE)
            assert first.json()["body"] == json.loads(sample_notifications()[0])
            deadline = time.monotonic() + 10  # the feeder adds to each instance every 0.05 s
            while True:
                stats = (await http.get("/_control/stats")).json()["instances"]
                fed = stats[ID]["enqueued"] > seeded and stats["1101000002"]["enqueued"] > seeded
                if fed or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert stats[ID]["enqueued"] > seeded and stats["1101000002"]["enqueued"] > seeded
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    [started] = [r for r in caplog.records if "fake.started" in r.getMessage()]
    line = TextFormatter().format(started)  # the event and its fields, as a terminal shows them
    assert ID in line and TOKEN not in line


async def test_run_fake_provider_raises_when_the_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            await asyncio.wait_for(
                run_fake_provider(
                    f"127.0.0.1:{port}",
                    [(ID, TOKEN)],
                    seed_samples=False,
                    feed_interval=None,
                    latency=0.0,
                ),
                5,
            )


# --- the official SDK ----------------------------------------------------------------------------


async def test_official_sdk_receives_and_deletes_every_sample(
    fake_server: tuple[FakeGreenApi, str], fake: FakeGreenApi
) -> None:
    from whatsapp_api_client_python import API  # type: ignore[import-untyped]

    samples = sample_notifications()
    fake.enqueue_many(ID, samples)
    sdk = API.GreenApi(ID, TOKEN, host=fake_server[1], host_timeout=10)
    seen = []
    for _ in range(len(samples) + 1):
        received = await asyncio.to_thread(sdk.receiving.receiveNotification)
        assert received.code == 200
        if received.data is None:
            break
        seen.append(received.data["body"])
        deleted = await asyncio.to_thread(
            sdk.receiving.deleteNotification, received.data["receiptId"]
        )
        assert (deleted.code, deleted.data) == (200, {"result": True})
    assert seen == [msgspec.json.decode(raw) for raw in samples]
    stats = fake.instance_stats(ID)
    assert (stats.outstanding, stats.deleted, stats.overlapped) == (0, len(samples), False)
