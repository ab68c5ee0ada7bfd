"""The webhook ASGI app through httpx.ASGITransport, with a stand-in publisher."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from bridge.config import load
from bridge.envelope import Outbound
from bridge.errors import PublishNacked, PublishTimeout
from bridge.ingest.pipeline import Pipeline
from bridge.ingest.webhooks import Webhooks
from tests.conftest import SAMPLES, greenapi_samples

GREEN_TOKEN = "green-hook-token-0123456789"
EVO_TOKEN = "evo-hook-token-0123456789"
CHAT_TOKEN = "chat-hook-token-0123456789"
CONFIG = """
[http]
max_body_bytes = 4096
body_timeout = 0.5
retry_after = 7
allow_ips = {allow}
trusted_proxies = {trusted}

[[sources]]
provider = "greenapi"
mode = "webhook"
instance = "1101000002"
webhook_token_env = "GREEN"

[[sources]]
provider = "greenapi"
mode = "webhook"
instance = "1234"
webhook_token_env = "GREEN"

[[sources]]
provider = "evolution"
mode = "webhook"
instance = "acme-sales"
webhook_token_env = "EVO"

[[sources]]
provider = "evolution"
mode = "webhook"
instance = "custom-header"
webhook_token_env = "EVO"
webhook_header = "x-hook-secret"

[[sources]]
provider = "chatapi"
mode = "webhook"
instance = "79926"
webhook_token_env = "CHAT"
"""
ENV = {"GREEN": GREEN_TOKEN, "EVO": EVO_TOKEN, "CHAT": CHAT_TOKEN}


class StubPublisher:
    def __init__(self) -> None:
        self.published: list[Outbound] = []
        self.ready = True
        self.fail: Exception | None = None

    def is_ready(self) -> bool:
        return self.ready

    async def wait_ready(self) -> None:
        return None

    async def publish(self, out: Outbound) -> bool:
        if self.fail is not None:
            raise self.fail
        self.published.append(out)
        return True


def app(
    tmp_path: Path, allow: str = "[]", trusted: str = "[]"
) -> tuple[httpx.AsyncClient, StubPublisher]:
    return app_of(tmp_path, CONFIG.format(allow=allow, trusted=trusted), ENV)


def app_of(
    tmp_path: Path, config: str, env: dict[str, str], stub: StubPublisher | None = None
) -> tuple[httpx.AsyncClient, StubPublisher]:
    """The webhook app of a config, through httpx.ASGITransport, with a stand-in publisher."""
    path = tmp_path / "b.toml"
    path.write_text(config)
    settings = load(path, env)
    stub = stub or StubPublisher()
    hooks = Webhooks(settings, Pipeline(settings.config.amqp, stub))
    transport = httpx.ASGITransport(app=hooks, client=("10.1.2.3", 5555))
    return httpx.AsyncClient(transport=transport, base_url="http://bridge"), stub


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


GREEN_BODY = (
    b'{"typeWebhook":"incomingCall","instanceData":{"idInstance":1101000002},"idMessage":"X"}'
)


async def test_greenapi_samples_are_published_byte_identical(tmp_path: Path) -> None:
    client, stub = app(tmp_path)
    for name, body in greenapi_samples():
        response = await client.post(
            "/webhooks/greenapi/1101000002", content=body, headers=bearer(GREEN_TOKEN)
        )
        assert response.status_code == 200, name
        out = stub.published[-1]
        assert out.body == body
        assert out.routing_key == json.loads(body)["typeWebhook"]
        assert out.headers["x-ingest"] == "webhook" and out.headers["x-instance"] == "1101000002"
        assert "x-receipt-id" not in out.headers


async def test_greenapi_instance_from_body_and_bare_token(tmp_path: Path) -> None:
    client, stub = app(tmp_path)
    response = await client.post(
        "/webhooks/greenapi", content=GREEN_BODY, headers={"Authorization": GREEN_TOKEN}
    )
    assert response.status_code == 200
    assert stub.published[0].headers["x-instance"] == "1101000002"


async def test_evolution_samples(tmp_path: Path) -> None:
    client, stub = app(tmp_path)
    for path in sorted((SAMPLES / "evolution").glob("*.json")):
        original = json.loads(path.read_bytes())
        original["instance"] = "acme-sales"
        body = json.dumps(original).encode()
        response = await client.post(
            "/webhooks/evolution/messages-upsert", content=body, headers=bearer(EVO_TOKEN)
        )
        assert response.status_code == 200, path.name
        out = stub.published[-1]
        assert out.routing_key == original["event"]
        published = json.loads(out.body)
        assert "apikey" not in published
        original.pop("apikey", None)
        assert published == original


async def test_evolution_custom_header_and_query_token(tmp_path: Path) -> None:
    client, stub = app(tmp_path)
    body = b'{"event":"call","instance":"custom-header","data":{}}'
    assert (
        await client.post("/webhooks/evolution", content=body, headers={"X-Hook-Secret": EVO_TOKEN})
    ).status_code == 200
    assert (
        await client.post("/webhooks/evolution", content=body, headers=bearer(EVO_TOKEN))
    ).status_code == 401
    body = b'{"event":"call","instance":"acme-sales","data":{}}'
    assert (
        await client.post(f"/webhooks/evolution?token={EVO_TOKEN}", content=body)
    ).status_code == 200


async def test_chatapi_split_into_items(tmp_path: Path) -> None:
    client, stub = app(tmp_path)
    body = json.dumps(
        {
            "instanceId": "79926",
            "messages": [{"id": "a"}, {"id": "b"}],
            "ack": [{"id": "a", "status": "delivered"}],
        }
    ).encode()
    response = await client.post("/webhooks/chatapi", content=body, headers=bearer(CHAT_TOKEN))
    assert response.status_code == 200
    assert [o.routing_key for o in stub.published] == ["message", "message", "ack"]
    response = await client.post(
        f"/webhooks/chatapi?token={CHAT_TOKEN}",
        content=(SAMPLES / "chatapi" / "ack-delivered.json").read_bytes(),
    )
    assert response.status_code == 200
    assert stub.published[-1].routing_key == "ack"


ROUTES = {
    "greenapi": ("/webhooks/greenapi/1101000002", bearer(GREEN_TOKEN), GREEN_BODY),
    "evolution": (
        "/webhooks/evolution",
        bearer(EVO_TOKEN),
        b'{"event":"call","instance":"acme-sales","data":{}}',
    ),
    "chatapi": (
        "/webhooks/chatapi",
        bearer(CHAT_TOKEN),
        b'{"instanceId":"79926","messages":[{"id":"a"}]}',
    ),
}
# (case, body, headers, status, quarantined)
BAD = [
    ("invalid json", b"{nope", None, 200, True),
    ("json array", b"[1,2]", None, 200, True),
    ("json string", b'"text"', None, 200, True),
    ("empty body", b"", None, 200, True),
    ("wrong token", None, {"Authorization": "Bearer nope"}, 401, False),
    ("missing token", None, {}, 401, False),
    ("oversized", b"{" + b" " * 5000 + b"}", None, 413, False),
    ("wrong content type", None, {"content-type": "text/plain"}, 200, False),
]


@pytest.mark.parametrize("provider", sorted(ROUTES))
@pytest.mark.parametrize(
    ("case", "body", "headers", "status", "quarantined"), BAD, ids=[b[0] for b in BAD]
)
async def test_bad_input_table(
    tmp_path: Path,
    provider: str,
    case: str,
    body: bytes | None,
    headers: dict[str, str] | None,
    status: int,
    quarantined: bool,
) -> None:
    client, stub = app(tmp_path)
    path, auth, good = ROUTES[provider]
    sent_headers = dict(auth)
    if headers is not None:
        if "content-type" in headers:
            sent_headers.update(headers)
        else:
            sent_headers = headers
    response = await client.post(path, content=good if body is None else body, headers=sent_headers)
    assert response.status_code == status, response.text
    if status != 200:
        assert stub.published == []
    elif quarantined:
        assert [o.exchange for o in stub.published] == ["notifications.invalid"]
        assert stub.published[0].headers["x-error"]
    else:
        assert all(o.exchange == "notifications" for o in stub.published) and stub.published


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/webhooks/greenapi/999", GREEN_BODY),
        ("/webhooks/greenapi", b'{"typeWebhook":"x","instanceData":{"idInstance":999}}'),
        ("/webhooks/evolution", b'{"event":"call","instance":"nobody"}'),
        ("/webhooks/chatapi", b'{"instanceId":"nobody","messages":[]}'),
    ],
)
async def test_unknown_instance_is_404(tmp_path: Path, path: str, body: bytes) -> None:
    client, stub = app(tmp_path)
    token = {"greenapi": GREEN_TOKEN, "evolution": EVO_TOKEN, "chatapi": CHAT_TOKEN}[
        path.split("/")[2]
    ]
    response = await client.post(path, content=body, headers=bearer(token))
    assert response.status_code == 404
    assert stub.published == []


async def test_missing_event_type_is_quarantined(tmp_path: Path) -> None:
    client, stub = app(tmp_path)
    for path, body, token in [
        (
            "/webhooks/greenapi/1101000002",
            b'{"instanceData":{"idInstance":1101000002}}',
            GREEN_TOKEN,
        ),
        ("/webhooks/greenapi", b'{"instanceData":{"idInstance":1101000002}}', GREEN_TOKEN),
        ("/webhooks/evolution", b'{"instance":"acme-sales","data":{}}', EVO_TOKEN),
        ("/webhooks/chatapi", b'{"instanceId":"79926"}', CHAT_TOKEN),
    ]:
        response = await client.post(path, content=body, headers=bearer(token))
        assert response.status_code == 200, path
    assert [o.exchange for o in stub.published] == ["notifications.invalid"] * 4


async def test_undecodable_body_without_instance_needs_a_matching_token(tmp_path: Path) -> None:
    client, stub = app(tmp_path)
    assert (
        await client.post("/webhooks/greenapi", content=b"{x", headers=bearer("wrong"))
    ).status_code == 401
    assert (
        await client.post("/webhooks/greenapi", content=b"{x", headers=bearer(GREEN_TOKEN))
    ).status_code == 200
    assert stub.published[0].exchange == "notifications.invalid"


@pytest.mark.parametrize("failure", [None, PublishNacked("n"), PublishTimeout("t")])
async def test_broker_trouble_is_503_with_retry_after(
    tmp_path: Path, failure: Exception | None
) -> None:
    client, stub = app(tmp_path)
    if failure is None:
        stub.ready = False
    else:
        stub.fail = failure
    for path, auth, body in ROUTES.values():
        response = await client.post(path, content=body, headers=auth)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "7"
    # credentials are still checked first: a broker problem never hides a 401
    assert (await client.post(ROUTES["greenapi"][0], content=GREEN_BODY)).status_code == 401
    readyz = await client.get("/readyz")
    assert readyz.status_code == (503 if failure is None else 200)


async def test_partial_batch_failure_is_503(tmp_path: Path) -> None:
    client, stub = app(tmp_path)
    calls = 0
    original = stub.publish

    async def flaky(out: Outbound) -> bool:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise PublishNacked("second item")
        return await original(out)

    stub.publish = flaky  # type: ignore[method-assign]
    response = await client.post(
        "/webhooks/chatapi",
        content=b'{"instanceId":"79926","messages":[{"id":"a"},{"id":"b"},{"id":"c"}]}',
        headers=bearer(CHAT_TOKEN),
    )
    assert response.status_code == 503


async def test_health_metrics_and_routing(tmp_path: Path) -> None:
    client, _ = app(tmp_path)
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200 and "bridge_webhook_responses" in metrics.text
    assert (await client.get("/webhooks/greenapi")).status_code == 405
    assert (await client.post("/webhooks/other")).status_code == 404
    assert (await client.post("/webhooks/greenapi/1/2")).status_code == 404
    assert (await client.get("/nothing")).status_code == 404


async def test_ip_allow_list_and_trusted_proxies(tmp_path: Path) -> None:
    client, stub = app(tmp_path, allow='["203.0.113.0/24"]', trusted='["10.0.0.0/8"]')
    path, auth, body = ROUTES["greenapi"]
    # the peer 10.1.2.3 is a trusted proxy: the client is the rightmost untrusted X-Forwarded-For hop
    ok = await client.post(
        path,
        content=body,
        headers={**auth, "X-Forwarded-For": "198.51.100.9, 203.0.113.5, 10.9.9.9"},
    )
    assert ok.status_code == 200
    spoofed = await client.post(
        path, content=body, headers={**auth, "X-Forwarded-For": "203.0.113.5, 198.51.100.9"}
    )
    assert spoofed.status_code == 403
    assert (
        await client.post(path, content=body, headers=auth)
    ).status_code == 403  # the proxy itself


async def test_forwarded_for_ignored_from_untrusted_peers(tmp_path: Path) -> None:
    client, _ = app(tmp_path, allow='["203.0.113.0/24"]', trusted="[]")
    path, auth, body = ROUTES["greenapi"]
    response = await client.post(
        path, content=body, headers={**auth, "X-Forwarded-For": "203.0.113.5"}
    )
    assert response.status_code == 403


async def test_slow_body_is_408(tmp_path: Path) -> None:
    client, stub = app(tmp_path)

    async def trickle():  # type: ignore[no-untyped-def]
        yield b'{"typeWebhook":'
        await asyncio.sleep(2)
        yield b'"x"}'

    path, auth, _ = ROUTES["greenapi"]
    response = await client.post(path, content=trickle(), headers=auth)
    assert response.status_code == 408
    assert stub.published == []
