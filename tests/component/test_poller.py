"""The poller against scripted provider answers (httpx.MockTransport) and a stand-in publisher."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import httpx
import pytest

from bridge.config import AmqpConfig, PollConfig, Secret, Source
from bridge.envelope import Outbound
from bridge.errors import BrokerUnavailable, PublishNacked
from bridge.ingest.http import HttpxProviderHttp
from bridge.ingest.pipeline import Pipeline
from bridge.ingest.poller import Poller

TOKEN = "tok-abcdefghijklmnop"
NOTE = b'{"typeWebhook":"incomingMessageReceived","idMessage":"A1"}'


class StubPublisher:
    def __init__(self) -> None:
        self.published: list[Outbound] = []
        self.failures: list[Exception] = []
        self.ready = asyncio.Event()
        self.ready.set()

    def is_ready(self) -> bool:
        return self.ready.is_set()

    async def wait_ready(self) -> None:
        await self.ready.wait()

    async def publish(self, out: Outbound) -> bool:
        if self.failures:
            raise self.failures.pop(0)
        self.published.append(out)
        return True


def make(
    handler: Callable[[httpx.Request], httpx.Response],
) -> tuple[Poller, StubPublisher, list[str]]:
    calls: list[str] = []

    def record(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path.split('/')[2]}")
        return handler(request)

    client = HttpxProviderHttp(httpx.AsyncClient(transport=httpx.MockTransport(record)))
    source = Source(
        provider="greenapi",
        mode="poll",
        instance="1101",
        api_url="http://gw",
        token_env="T",
        receive_timeout=7,
    )
    stub = StubPublisher()
    poll = PollConfig(long_backoff=0.01, timeout_margin=3)
    poller = Poller(
        source, Secret(TOKEN), client=client, pipeline=Pipeline(AmqpConfig(), stub), poll=poll
    )
    return poller, stub, calls


class Script:
    """Answers receives from a list (then `null`), deletes with result true."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.deleted: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE":
            self.deleted.append(request.url.path.rsplit("/", 1)[1])
            return httpx.Response(200, content=b'{"result":true}')
        if self.answers:
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        return httpx.Response(200, content=b"null")


def head(receipt: int, body: bytes = NOTE) -> httpx.Response:
    return httpx.Response(200, content=b'{"receiptId":%d,"body":%s}' % (receipt, body))


async def run_until(poller: Poller, done: Callable[[], bool], timeout: float = 5) -> None:
    task = asyncio.create_task(poller.run())
    try:
        async with asyncio.timeout(timeout):
            while not done():
                await asyncio.sleep(0.005)
    finally:
        poller.stop()
        await asyncio.wait_for(task, 5)


async def test_receive_url_and_timeout() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"null")

    poller, _, _ = make(handler)
    await run_until(poller, lambda: len(seen) >= 1)
    request = seen[0]
    assert request.url.path == f"/waInstance1101/receiveNotification/{TOKEN}"
    assert request.url.params["receiveTimeout"] == "7"
    assert request.extensions["timeout"]["read"] == 10  # receive_timeout + timeout_margin


async def test_delete_only_after_publish_succeeds() -> None:
    script = Script(head(1), head(1), head(1))
    poller, stub, calls = make(script)
    stub.failures = [BrokerUnavailable("down"), PublishNacked("nack")]
    await run_until(poller, lambda: bool(script.deleted))
    assert calls[:4] == ["GET receiveNotification"] * 3 + ["DELETE deleteNotification"]
    assert script.deleted == ["1"]
    assert len(stub.published) == 1 and stub.published[0].body == NOTE


async def test_pauses_while_broker_not_ready() -> None:
    script = Script(head(5))
    poller, stub, calls = make(script)
    stub.ready.clear()
    task = asyncio.create_task(poller.run())
    await asyncio.sleep(0.1)
    assert calls == []  # nothing received while the broker is away
    stub.ready.set()
    while not script.deleted:
        await asyncio.sleep(0.01)
    poller.stop()
    await task


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("cut"),
        aiohttp.ClientPayloadError("bad chunk"),
        aiohttp.ServerDisconnectedError(),
        ConnectionResetError(),
        RuntimeError("a bug in a transport"),
    ],
)
async def test_network_errors_and_surprises_do_not_end_the_source(error: Exception) -> None:
    script = Script(error, error, head(9))
    poller, stub, _ = make(script)
    await run_until(poller, lambda: bool(script.deleted))
    assert poller.stopped_reason is None
    assert script.deleted == ["9"]


@pytest.mark.parametrize(
    ("status", "body", "stops"),
    [
        (401, b"Unauthorized", "unauthorized"),
        (403, b"Forbidden", "forbidden"),
        (400, b"Instance is deleted", "instance_deleted"),
        (466, b"{}", None),
        (429, b"", None),
        (500, b"", None),
        (400, b"instance account not authorized", None),
    ],
)
async def test_status_actions(status: int, body: bytes, stops: str | None) -> None:
    script = Script(httpx.Response(status, content=body), head(3))
    poller, _, _ = make(script)
    task = asyncio.create_task(poller.run())
    if stops:
        await asyncio.wait_for(task, 5)  # returns by itself
        assert poller.stopped_reason == stops
        assert script.deleted == []
    else:
        async with asyncio.timeout(5):
            while not script.deleted:
                await asyncio.sleep(0.005)
        poller.stop()
        await task
        assert poller.stopped_reason is None


async def test_delete_retries_server_errors_then_succeeds() -> None:
    answers = [
        httpx.Response(500),
        httpx.Response(502),
        httpx.Response(200, content=b""),
        httpx.Response(200, content=b'{"result":true}'),
    ]
    deletes: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE":
            deletes.append(1)
            return answers.pop(0)
        return head(4) if not deletes else httpx.Response(200, content=b"null")

    poller, stub, _ = make(handler)
    await run_until(poller, lambda: not answers)
    assert len(deletes) == 4 and len(stub.published) == 1


async def test_unauthorized_delete_stops_the_source() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE":
            return httpx.Response(401, content=b"Unauthorized")
        return head(4)

    poller, _, _ = make(handler)
    await asyncio.wait_for(poller.run(), 5)
    assert poller.stopped_reason == "unauthorized"


async def test_malformed_answers() -> None:
    script = Script(
        httpx.Response(200, content=b"<html>gateway</html>"),  # no receipt: back off, retry
        httpx.Response(200, content=b'{"receiptId":12,"body":{broken'),  # receipt: quarantine
        httpx.Response(200, content=b'{"receiptId":13}'),  # receipt, no body: quarantine
        head(14),
    )
    poller, stub, _ = make(script)
    await run_until(poller, lambda: len(script.deleted) == 3)
    assert script.deleted == ["12", "13", "14"]
    assert [o.exchange for o in stub.published] == [
        "notifications.invalid",
        "notifications.invalid",
        "notifications",
    ]
    assert stub.published[0].body == b'{"receiptId":12,"body":{broken'


async def test_stop_abandons_a_pending_long_poll() -> None:
    started = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        started.set()
        await asyncio.sleep(60)
        raise AssertionError("not reached")

    client = HttpxProviderHttp(httpx.AsyncClient(transport=httpx.MockTransport(hang)))
    source = Source(
        provider="greenapi", mode="poll", instance="1", api_url="http://gw", token_env="T"
    )
    poller = Poller(
        source,
        Secret(TOKEN),
        client=client,
        pipeline=Pipeline(AmqpConfig(), StubPublisher()),
        poll=PollConfig(),
    )
    task = asyncio.create_task(poller.run())
    await started.wait()
    poller.stop()
    await asyncio.wait_for(task, 1)


async def test_a_bug_while_handling_does_not_end_the_source() -> None:
    script = Script(head(21), head(21))
    poller, stub, _ = make(script)
    original = stub.publish
    calls = 0

    async def broken_once(out: Outbound) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("a bug")
        return await original(out)

    stub.publish = broken_once  # type: ignore[method-assign]
    await run_until(poller, lambda: bool(script.deleted))
    assert script.deleted == ["21"] and len(stub.published) == 1
