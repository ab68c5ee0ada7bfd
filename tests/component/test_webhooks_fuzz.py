"""Property tests over the webhook routes: any body, any headers, any path suffix —
never a 5xx, never a crash, and nothing published unless the answer is 200."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bridge.config import load
from bridge.envelope import Outbound
from bridge.errors import BrokerUnavailable, PublishNacked, PublishReturned, PublishTimeout
from bridge.ingest.pipeline import Pipeline
from bridge.ingest.webhooks import Webhooks
from bridge.providers import chatapi
from tests.component.test_webhooks import (
    CHAT_TOKEN,
    CONFIG,
    ENV,
    EVO_TOKEN,
    GREEN_TOKEN,
    app,
    bearer,
)
from tests.unit.test_decoders_fuzz import JSON_TEXT

PATHS = st.sampled_from(
    ["/webhooks/greenapi", "/webhooks/greenapi/1101000002", "/webhooks/greenapi/1234", "/webhooks/greenapi/x",
     "/webhooks/evolution", "/webhooks/evolution/messages-upsert", "/webhooks/chatapi", "/webhooks/chatapi/x",
     "/webhooks/waha", "/webhooks/waha/x", "/webhooks/meta", "/webhooks/", "/webhooks/greenapi/1/2", "/readyz", "/healthz"]
)  # fmt: skip
TOKENS = st.sampled_from([GREEN_TOKEN, EVO_TOKEN, CHAT_TOKEN, "", "wrong", "Bearer", "\x00"])
HEADER_NAMES = st.sampled_from(
    [
        "authorization",
        "content-type",
        "content-length",
        "x-forwarded-for",
        "x-hook-secret",
        "x-junk",
    ]
)
HEADER_VALUES = st.one_of(
    TOKENS.map(lambda t: f"Bearer {t}"),
    TOKENS,
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
)
BODIES = st.one_of(
    st.binary(max_size=600),
    st.sampled_from([
        b'{"typeWebhook":"x","instanceData":{"idInstance":1101000002}}',
        b'{"event":"call","instance":"acme-sales","data":[]}',
        b'{"instanceId":"79926","messages":[{}],"ack":[1,"x",null]}',
        b'{"instanceId":79926,"surprise":[[],[{}]]}',
        b'{"event":"x","instance":"custom-header","apikey":"k","data":{"key":{"id":5}}}',
    ]),
)  # fmt: skip


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT"]),
    path=PATHS,
    query=st.sampled_from(
        ["", f"?token={CHAT_TOKEN}", f"?token={EVO_TOKEN}", "?token=", "?token=%00&token=x"]
    ),
    headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=4),
    body=BODIES,
)
def test_any_request_gets_a_deliberate_answer(
    tmp_path: Path, method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes
) -> None:
    async def go() -> tuple[int, int]:
        client, stub = app(tmp_path)
        sent = [(k, v) for k, v in headers if k != "content-length"]
        async with client:
            response = await client.request(method, path + query, content=body, headers=sent)
        return response.status_code, len(stub.published)

    try:
        status, published = asyncio.run(go())
    except httpx.LocalProtocolError:
        return  # the client refused to send such a header; nothing reached the app
    assert status < 500
    assert status in {200, 400, 401, 403, 404, 405, 408, 413}
    if status != 200 or not path.startswith("/webhooks/"):
        assert published == 0
    else:
        assert published >= 1


DEEP = b"[" * 1900 + b"]" * 1900  # deeper than the recursion limit, within max_body_bytes


@pytest.mark.parametrize(
    ("path", "token", "body"),
    [
        ("/webhooks/greenapi", GREEN_TOKEN, b'{"instanceData":%s}' % DEEP),
        ("/webhooks/greenapi", GREEN_TOKEN, b'{"instanceData":{"idInstance":"\xff"}}'),
        ("/webhooks/greenapi/1101000002", GREEN_TOKEN, b'{"typeWebhook":"x","j":%s}' % DEEP),
        ("/webhooks/evolution", EVO_TOKEN, b'{"event":"\xff","instance":"acme-sales"}'),
        ("/webhooks/chatapi", CHAT_TOKEN, b'{"instanceId":"79926","messages":[{"id":"\xff"}]}'),
        ("/webhooks/chatapi", CHAT_TOKEN, b'{"instanceId":"79926","messages":%s}' % DEEP),
    ],
)
async def test_deep_or_invalid_utf8_bodies_are_quarantined(
    tmp_path: Path, path: str, token: str, body: bytes
) -> None:
    client, stub = app(tmp_path)
    async with client:
        response = await client.post(path, content=body, headers=bearer(token))
    assert response.status_code == 200
    assert stub.published and all(o.body for o in stub.published)


@pytest.mark.parametrize(
    "body",
    [
        b'{"event":1,"instance":"acme-sales","apikey":"secret"}',  # event not a string
        b'{"event":"call","apikey":"secret"}',  # no instance
        b'{"event":"call","instance":"acme-sales","api\\u006bey":"secret"}',
    ],
)
async def test_evolution_secret_never_republished(tmp_path: Path, body: bytes) -> None:
    client, stub = app(tmp_path)
    async with client:
        response = await client.post("/webhooks/evolution", content=body, headers=bearer(EVO_TOKEN))
    assert response.status_code == 200
    [out] = stub.published
    assert b"secret" not in out.body


# -- the raw ASGI app: any scope, any chunks, a broker that fails at random ----------------

OUTCOMES = st.sampled_from(
    ["ack", "ack", "ack", "duplicate", "nack", "timeout", "returned", "down"]
)
FAILURES = {
    "nack": PublishNacked("nacked"),
    "timeout": PublishTimeout("no confirm"),
    "returned": PublishReturned("unroutable"),
    "down": BrokerUnavailable("no channel"),
}


class FlakyPublisher:
    """Confirms, nacks, times out, returns or is unavailable, per publish, from a script."""

    def __init__(self, ready: bool, outcomes: list[str]) -> None:
        self.ready = ready
        self.outcomes = outcomes
        self.attempted: list[Outbound] = []
        self.confirmed: list[Outbound] = []
        self.failed = 0

    def is_ready(self) -> bool:
        return self.ready

    async def wait_ready(self) -> None:
        return None

    async def publish(self, out: Outbound) -> bool:
        self.attempted.append(out)
        outcome = self.outcomes.pop(0) if self.outcomes else "ack"
        await asyncio.sleep(0)  # let a batch's publishes interleave
        if outcome in FAILURES:
            self.failed += 1
            raise FAILURES[outcome]
        self.confirmed.append(out)
        return outcome == "ack"


def _hooks(tmp_path: Path, publisher: FlakyPublisher) -> Webhooks:
    path = tmp_path / "b.toml"
    path.write_text(CONFIG.format(allow="[]", trusted="[]"))
    settings = load(path, ENV)
    return Webhooks(settings, Pipeline(settings.config.amqp, publisher))  # type: ignore[arg-type]


TOKEN_BYTES = st.sampled_from(
    [GREEN_TOKEN.encode(), EVO_TOKEN.encode(), CHAT_TOKEN.encode(), b"", b"wrong", b"\xff\x00"]
)
AUTH_VALUES = st.one_of(
    TOKEN_BYTES.map(lambda t: b"Bearer " + t),
    TOKEN_BYTES.map(lambda t: b"bEaReR  " + t + b" "),
    TOKEN_BYTES,
)
RAW_NAMES = st.one_of(
    st.sampled_from(
        [b"authorization", b"content-length", b"x-hook-secret", b"x-forwarded-for", b"host"]
    ),
    st.binary(min_size=1, max_size=20).map(bytes.lower),
)
RAW_VALUES = st.one_of(
    AUTH_VALUES,
    st.binary(max_size=60),
    st.text(max_size=30).map(lambda t: t.encode("utf-8")),
    st.sampled_from([b"-1", b"0", b"99999999999999999999", b"1" * 5000, b"0" * 4999 + b"5"]),
    st.integers(1, 70_000).map(lambda n: b"v" * n),  # huge values
)
RAW_HEADERS = st.lists(
    st.one_of(
        st.tuples(st.just(b"authorization"), AUTH_VALUES),
        st.tuples(st.just(b"x-hook-secret"), TOKEN_BYTES),
        st.tuples(RAW_NAMES, RAW_VALUES),
    ),
    max_size=6,
)  # repeated names allowed
RAW_PATHS = st.one_of(
    PATHS,
    st.tuples(
        st.sampled_from(["/webhooks/greenapi/", "/webhooks/evolution/", "/webhooks/chatapi/", "/"]),
        st.text(max_size=30),
    ).map("".join),
)
QUERIES = st.one_of(
    st.sampled_from(
        [b"", b"token=" + CHAT_TOKEN.encode(), b"token=" + EVO_TOKEN.encode(), b"token=%FF",
         b"token=%E2%82%AC&token=x", b"token=\xff", b"token", b"a=1&&token=%"]
    ),
    st.binary(max_size=40),
    st.binary(max_size=20).map(lambda b: b"token=" + b),
)  # fmt: skip
SHAPED_BODIES = st.one_of(
    BODIES,
    JSON_TEXT,
    st.sampled_from(
        [
            b'{"instanceId":"79926","messages":[{"id":"a"},{"id":"b"},{"id":"a"}],"ack":[{}]}',
            b'{"instanceId":79926,"messages":[],"chatUpdate":[{"new":{"id":"c"}}]}',
            b'{"typeWebhook":"incomingCall","instanceData":{"idInstance":"1101000002"}}',
            b'{"event":"messages.upsert","instance":"acme-sales","apikey":"k","data":{}}',
        ]
    ),
)


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["POST", "POST", "POST", "GET", "post"]),
    path=RAW_PATHS,
    query=QUERIES,
    headers=RAW_HEADERS,
    body=SHAPED_BODIES,
    cuts=st.lists(st.integers(0, 600), max_size=3),
    ready=st.sampled_from([True, True, True, False]),
    outcomes=st.lists(OUTCOMES, max_size=8),
)
@example(
    method="POST",
    path="/webhooks/chatapi",
    query=b"token=%E2%82%AC",
    headers=[],
    body=b'{"instanceId":"79926","messages":[{}]}',
    cuts=[],
    ready=True,
    outcomes=[],
)
@example(
    method="POST",
    path="/webhooks/evolution",
    query=b"token=%FF",
    headers=[(b"content-length", b"1" * 5000)],
    body=b"{}",
    cuts=[],
    ready=True,
    outcomes=[],
)
@example(
    method="POST", path="/webhooks/chatapi", query=b"token=" + CHAT_TOKEN.encode(), headers=[],
    body=b'{"instanceId":"79926","messages":[{"id":"a"},{"id":"b"}],"ack":[{}]}', cuts=[5],
    ready=True, outcomes=["ack", "ack", "nack"],
)  # fmt: skip
def test_raw_asgi_requests_and_a_flaky_broker(
    tmp_path: Path,
    method: str,
    path: str,
    query: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    cuts: list[int],
    ready: bool,
    outcomes: list[str],
) -> None:
    publisher = FlakyPublisher(ready, list(outcomes))
    hooks = _hooks(tmp_path, publisher)
    points = sorted({min(c, len(body)) for c in cuts})
    chunks = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        if chunks:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode("utf-8", "surrogatepass"),
        "query_string": query, "root_path": "", "headers": headers,
        "client": ("10.1.2.3", 5555), "server": ("bridge", 80),
    }  # fmt: skip
    asyncio.run(hooks(scope, receive, send))  # any exception here is a 500 from uvicorn

    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    status = sent[0]["status"]
    answer_headers = dict(sent[0]["headers"])  # type: ignore[call-overload]
    assert status in {200, 400, 401, 403, 404, 405, 408, 413, 503}
    if not path.startswith("/webhooks/"):
        return
    if status == 503:
        assert answer_headers[b"retry-after"] == b"7"
        assert publisher.failed or not ready, "503 without broker trouble"
    else:
        assert not publisher.failed, "a failed publish was not answered 503"
    if status != 200:
        if status != 503:
            assert publisher.attempted == [], "published, then refused"
        return
    # 200: every message of the request was confirmed
    assert publisher.attempted and publisher.confirmed == publisher.attempted
    provider = path.split("/")[2]
    for out in publisher.confirmed:
        assert out.headers["x-provider"] == provider
        if provider == "greenapi":
            assert out.body == body
        elif provider == "evolution":
            _assert_no_secret(out.body)
    if provider == "chatapi" and publisher.confirmed[0].exchange == "notifications":
        # the instance the body names, or the one source its credentials identify
        instance = publisher.confirmed[0].instance
        assert len(publisher.confirmed) == len(chatapi.parse(body).items(instance))


def _assert_no_secret(body: bytes) -> None:
    try:
        value = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return
    if isinstance(value, dict):
        assert not {"apikey", "api_key"} & set(value), "Evolution secret republished"


@pytest.mark.parametrize(
    ("query", "status"),
    [
        (b"token=%E2%82%AC", 401),
        (b"token=%FF", 401),
        (b"token=" + CHAT_TOKEN.encode(), 200),
        (b"token=" + CHAT_TOKEN.replace("-", "%2D").encode(), 200),
    ],
)
async def test_query_tokens_are_compared_as_bytes(
    tmp_path: Path, query: bytes, status: int
) -> None:
    client, stub = app(tmp_path)
    async with client:
        response = await client.post(
            "/webhooks/chatapi?" + query.decode(), content=b'{"instanceId":"79926","messages":[{}]}'
        )
    assert response.status_code == status


async def test_a_content_length_of_thousands_of_digits_is_413(tmp_path: Path) -> None:
    hooks = _hooks(tmp_path, FlakyPublisher(True, []))
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    headers = [(b"content-length", b"1" * 5000), (b"authorization", GREEN_TOKEN.encode())]
    scope = {"type": "http", "method": "POST", "path": "/webhooks/greenapi/1101000002",
             "query_string": b"", "headers": headers}  # fmt: skip
    await hooks(scope, receive, send)
    assert sent[0]["status"] == 413
