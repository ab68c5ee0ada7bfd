"""Webhooks over real sockets into the real RabbitMQ: uvicorn, the confirm, the 200."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bridge.app import Service
from bridge.envelope import Outbound
from tests.conftest import AMQP_URL, SAMPLES, greenapi_samples
from tests.support.harness import (
    Collected,
    Names,
    collector,
    delete_topology,
    settings_for,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOKENS = {
    "GREEN": "green-live-token-123456",
    "EVO": "evo-live-token-123456",
    "CHAT": "chat-live-token-123456",
}


def config(names: Names, amqp_url: str = AMQP_URL, http_extra: str = "") -> str:
    return f"""
[amqp]
url = "{amqp_url}"
exchange = "{names.exchange}"
unrouted_exchange = "{names.unrouted}"
invalid_exchange = "{names.invalid}"
confirm_timeout = 3
[http]
listen = "127.0.0.1:0"
header_timeout = 1
retry_after = 2
{http_extra}
[[sources]]
provider = "greenapi"
mode = "webhook"
instance = "1101000002"
webhook_token_env = "GREEN"
[[sources]]
provider = "evolution"
mode = "webhook"
instance = "acme-sales"
webhook_token_env = "EVO"
[[sources]]
provider = "chatapi"
mode = "webhook"
instance = "79926"
webhook_token_env = "CHAT"
"""


@contextlib.asynccontextmanager
async def live(
    tmp_path: Path, http_extra: str = ""
) -> AsyncIterator[tuple[str, Collected, Service, Names]]:
    names = Names()
    service = Service(settings_for(tmp_path, config(names, http_extra=http_extra), TOKENS))
    task = asyncio.create_task(service.run())
    try:
        async with collector(AMQP_URL, names.exchange) as got:
            await asyncio.wait_for(service.publisher.wait_ready(), 15)
            await asyncio.wait_for(service.http.listening.wait(), 5)
            yield f"http://127.0.0.1:{service.http_port}", got, service, names
    finally:
        await service.shutdown()
        await asyncio.wait_for(task, 30)
        await delete_topology(AMQP_URL, names)


async def test_every_sample_through_its_route(tmp_path: Path) -> None:
    async with (
        live(tmp_path) as (base, got, _service, _names),
        httpx.AsyncClient(base_url=base) as client,
    ):
        green = greenapi_samples()
        for _, body in green:
            r = await client.post(
                "/webhooks/greenapi/1101000002",
                content=body,
                headers={"Authorization": f"Bearer {TOKENS['GREEN']}"},
            )
            assert r.status_code == 200
        evo = sorted((SAMPLES / "evolution").glob("*.json"))
        for path in evo:
            data = json.loads(path.read_bytes())
            data["instance"] = "acme-sales"
            r = await client.post(
                "/webhooks/evolution", json=data, headers={"Authorization": TOKENS["EVO"]}
            )
            assert r.status_code == 200
        chat = sorted((SAMPLES / "chatapi").glob("*.json"))
        items = 0
        for path in chat:
            data = json.loads(path.read_bytes())
            data["instanceId"] = "79926"
            items += sum(len(v) for k, v in data.items() if isinstance(v, list))
            r = await client.post(f"/webhooks/chatapi?token={TOKENS['CHAT']}", json=data)
            assert r.status_code == 200
        total = len(green) + len(evo) + items
        await wait_until(lambda: len(got.messages) >= total)
    by_provider: dict[str, list] = {}
    for m in got.messages:
        by_provider.setdefault(str(m.headers["x-provider"]), []).append(m)
    assert [m.body for m in by_provider["greenapi"]] == [b for _, b in green]
    assert [m.routing_key for m in by_provider["greenapi"]] == [
        json.loads(b)["typeWebhook"] for _, b in green
    ]
    assert [m.routing_key for m in by_provider["evolution"]] == [
        json.loads(p.read_bytes())["event"] for p in evo
    ]
    assert all(b"apikey" not in m.body for m in by_provider["evolution"])
    assert sorted(m.routing_key for m in by_provider["chatapi"]) == ["ack", "message"]
    assert all(m.delivery_mode == 2 and m.headers["x-ingest"] == "webhook" for m in got.messages)


async def test_slow_headers_are_cut_off(tmp_path: Path) -> None:
    async with live(tmp_path) as (base, _got, _service, _names):
        port = int(base.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /webhooks/greenapi HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        started = time.monotonic()
        answer = await asyncio.wait_for(reader.read(), 5)  # read until the server closes
        assert answer.startswith(b"HTTP/1.1 408")
        assert 0.5 < time.monotonic() - started < 4.5  # header_timeout = 1
        writer.close()
        # an idle connection that never sends a byte is closed too
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 408")
        writer.close()


async def test_graceful_stop_drains_in_flight_requests(tmp_path: Path) -> None:
    names = Names()
    service = Service(settings_for(tmp_path, config(names), TOKENS))
    task = asyncio.create_task(service.run())
    await asyncio.wait_for(service.publisher.wait_ready(), 15)
    await service.http.listening.wait()
    base = f"http://127.0.0.1:{service.http_port}"
    # hold every publish for a moment, so requests are surely in flight when the stop begins
    entered = 0
    publish = service.publisher.publish

    async def slow_publish(out: Outbound) -> bool:
        nonlocal entered
        entered += 1
        await asyncio.sleep(0.3)
        return await publish(out)

    service.publisher.publish = slow_publish  # type: ignore[method-assign]
    try:
        async with httpx.AsyncClient(base_url=base, timeout=20) as client:
            body = b'{"typeWebhook":"incomingCall","idMessage":"%d"}'
            requests = [
                asyncio.create_task(client.post("/webhooks/greenapi/1101000002", content=body % n,
                                                headers={"Authorization": TOKENS["GREEN"]}))
                for n in range(20)
            ]  # fmt: skip
            await wait_until(lambda: entered == 20, 10, 0.005)
            await service.shutdown()
            responses = await asyncio.gather(*requests, return_exceptions=True)
        # every request in flight at the stop was confirmed and answered 200
        assert [getattr(r, "status_code", r) for r in responses] == [200] * 20
    finally:
        await asyncio.wait_for(task, 30)
        await delete_topology(AMQP_URL, names)


LIVE_ROUTES = {
    "greenapi": ("/webhooks/greenapi/1101000002", {"Authorization": f"Bearer {TOKENS['GREEN']}"},
                 b'{"typeWebhook":"incomingCall","idMessage":"L1"}'),
    "evolution": ("/webhooks/evolution", {"Authorization": f"Bearer {TOKENS['EVO']}"},
                  b'{"event":"call","instance":"acme-sales","data":{}}'),
    "chatapi": ("/webhooks/chatapi", {"Authorization": f"Bearer {TOKENS['CHAT']}"},
                b'{"instanceId":"79926","messages":[{"id":"L1"}]}'),
}  # fmt: skip
# (case, body or None for the good one, headers or None for the good ones, status, quarantined)
LIVE_BAD = [
    ("invalid json", b"{nope", None, 200, True),
    ("json array", b"[1,2]", None, 200, True),
    ("json string", b'"text"', None, 200, True),
    ("missing event type", b"MISSING-EVENT", None, 200, True),
    ("empty body", b"", None, 200, True),
    ("wrong token", None, {"Authorization": "Bearer wrong"}, 401, False),
    ("missing token", None, {}, 401, False),
    ("oversized", b"x" * 5000, None, 413, False),
    ("wrong content type", None, "text/plain", 200, False),
]


MISSING_EVENT = {
    "greenapi": b'{"instanceData":{"idInstance":1101000002}}',
    "evolution": b'{"instance":"acme-sales","data":{}}',
    "chatapi": b'{"instanceId":"79926"}',
}


async def test_bad_inputs_over_real_http(tmp_path: Path) -> None:
    async with (
        live(tmp_path, http_extra="max_body_bytes = 4096\nbody_timeout = 1") as (
            base,
            got,
            _service,
            names,
        ),
        collector(AMQP_URL, names.invalid, declare_exchange=False) as invalid,
        httpx.AsyncClient(base_url=base) as client,
    ):
        expect_main = expect_invalid = 0
        for provider, (path, auth, good) in LIVE_ROUTES.items():
            for case, body, headers, status, quarantined in LIVE_BAD:
                if headers == "text/plain":
                    sent = {**auth, "Content-Type": "text/plain"}
                else:
                    sent = auth if headers is None else headers
                # MISSING-EVENT: valid JSON naming the instance, without an event type
                content = MISSING_EVENT[provider] if body == b"MISSING-EVENT" else body
                r = await client.post(
                    path, content=good if content is None else content, headers=sent
                )
                assert r.status_code == status, (provider, case, r.text)
                expect_invalid += status == 200 and quarantined
                expect_main += status == 200 and not quarantined
            # a body sent slowly: headers arrive, the body never completes
            port = int(base.rsplit(":", 1)[1])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nAuthorization: {auth['Authorization']}\r\n\r\n"
            writer.write(head.encode() + b'{"typeWebhook":')
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(200), 5)
            assert answer.startswith(b"HTTP/1.1 408"), answer
            writer.close()
        await wait_until(
            lambda: len(got.messages) >= expect_main and len(invalid.messages) >= expect_invalid
        )
        await asyncio.sleep(0.3)
    assert len(got.messages) == expect_main, (
        [m.body for m in got.messages],
        [m.body for m in invalid.messages],
    )  # only the good bodies with another content type
    assert len(invalid.messages) == expect_invalid, [
        (m.headers["x-provider"], m.body) for m in invalid.messages
    ]
    assert all(m.headers["x-error"] for m in invalid.messages)


async def test_forwarded_for_is_not_believed_from_an_untrusted_peer(tmp_path: Path) -> None:
    # uvicorn by default rewrites the client address from X-Forwarded-For for peers on
    # 127.0.0.1; the bridge turns that off and believes only http.trusted_proxies
    extra = 'allow_ips = ["203.0.113.0/24"]'
    async with (
        live(tmp_path, http_extra=extra) as (base, got, _service, _names),
        httpx.AsyncClient(base_url=base) as client,
    ):
        path, auth, body = LIVE_ROUTES["greenapi"]
        spoofed = await client.post(
            path, content=body, headers={**auth, "X-Forwarded-For": "203.0.113.5"}
        )
        assert spoofed.status_code == 403
    assert got.messages == []
