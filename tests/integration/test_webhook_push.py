"""Providers pushing webhooks (the fake provider's pushers) into a live bridge and RabbitMQ."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.app import Service
from tests.conftest import AMQP_URL
from tests.support.harness import (
    Names,
    collector,
    declare_sink,
    delete_topology,
    drain_sink,
    fake_greenapi,
    settings_for,
    wait_until,
)
from tests.support.rabbitnode import RabbitNode

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
HOOK_TOKEN = "push-hook-token-0123456789"


def webhook_config(names: Names, instances: list[str], amqp_url: str) -> str:
    lines = [
        "[amqp]", f'url = "{amqp_url}"', f'exchange = "{names.exchange}"',
        f'unrouted_exchange = "{names.unrouted}"', f'invalid_exchange = "{names.invalid}"',
        "confirm_timeout = 3", "[http]", 'listen = "127.0.0.1:0"', "retry_after = 1",
    ]  # fmt: skip
    for ident in instances:
        lines += [
            "[[sources]]",
            'provider = "greenapi"',
            'mode = "webhook"',
            f'instance = "{ident}"',
            'webhook_token_env = "HOOK"',
        ]
    return "\n".join(lines) + "\n"


@contextlib.asynccontextmanager
async def bridge(
    tmp_path: Path, names: Names, instances: list[str], amqp_url: str
) -> AsyncIterator[Service]:
    service = Service(
        settings_for(tmp_path, webhook_config(names, instances, amqp_url), {"HOOK": HOOK_TOKEN})
    )
    task = asyncio.create_task(service.run())
    try:
        await asyncio.wait_for(service.http.listening.wait(), 10)
        yield service
    finally:
        await service.shutdown()
        await asyncio.wait_for(task, 30)


def notes(ident: str, count: int) -> list[bytes]:
    return [
        json.dumps({"typeWebhook": "incomingMessageReceived", "instanceData": {"idInstance": int(ident)},
                    "idMessage": f"{ident}-{n:04d}", "senderData": {"chatId": "5@c.us"}}).encode()
        for n in range(count)
    ]  # fmt: skip


async def test_two_thousand_webhooks_from_twenty_instances_in_order(tmp_path: Path) -> None:
    instances = [str(1101001000 + i) for i in range(20)]
    names = Names()
    expected = {ident: notes(ident, 100) for ident in instances}
    try:
        async with (
            collector(AMQP_URL, names.exchange) as got,
            bridge(tmp_path, names, instances, AMQP_URL) as service,
            fake_greenapi([(i, "poll-token-unused") for i in instances], push_pause=0.05) as fake,
        ):
            url = f"http://127.0.0.1:{service.http_port}/webhooks/greenapi"
            for ident in instances:
                fake.state.enqueue_many(ident, expected[ident])
            for ident in instances:
                fake.state.set_webhook(ident, url, HOOK_TOKEN)
            await wait_until(lambda: fake.state.stats().totals.outstanding == 0, 90)
            await wait_until(lambda: len(got.messages) >= 2000)
            stats = [fake.state.push_stats(i) for i in instances]
    finally:
        await delete_topology(AMQP_URL, names)
    assert not any(s.overlapped for s in stats)
    assert sum(s.successes for s in stats) == 2000
    seen: dict[str, list[bytes]] = defaultdict(list)
    for message in got.messages:
        seen[str(message.headers["x-instance"])].append(message.body)
    assert dict(seen) == expected


async def test_broker_down_503_then_provider_retries_land(
    tmp_path: Path, own_rabbit: RabbitNode
) -> None:
    node = own_rabbit
    instances = [str(1101002000 + i) for i in range(3)]
    names = Names()
    sink = await declare_sink(node.amqp_url, names)
    expected = {ident: notes(ident, 30) for ident in instances}
    async with (
        bridge(tmp_path, names, instances, node.amqp_url) as service,
        fake_greenapi([(i, "unused-token") for i in instances], push_pause=0.2) as fake,
    ):
        await asyncio.wait_for(service.publisher.wait_ready(), 15)
        url = f"http://127.0.0.1:{service.http_port}/webhooks/greenapi"
        await asyncio.to_thread(node.stop_app)
        await wait_until(lambda: not service.publisher.is_ready(), 10)
        for ident in instances:
            fake.state.enqueue_many(ident, expected[ident])
            fake.state.set_webhook(ident, url, HOOK_TOKEN)

        def refusals() -> list[int]:
            return [fake.state.push_stats(i).statuses.get("503", 0) for i in instances]

        await wait_until(lambda: all(r >= 3 for r in refusals()), 30)
        assert fake.state.stats().totals.deleted == 0, (
            "a webhook was acknowledged while the broker was down"
        )
        refused = refusals()
        assert all(r >= 3 for r in refused), (
            refused
        )  # the provider kept retrying, and got 503 each time
        await asyncio.to_thread(node.start_app)
        await wait_until(lambda: fake.state.stats().totals.outstanding == 0, 60)
        stats = [fake.state.push_stats(i) for i in instances]
    bodies: dict[str, list[bytes]] = defaultdict(list)
    for message in await drain_sink(node.amqp_url, sink):
        ident = str(message.headers["x-instance"])
        if message.body not in bodies[ident]:
            bodies[ident].append(message.body)
    assert dict(bodies) == expected
    assert not any(s.overlapped for s in stats)
    assert all(set(s.statuses) <= {"200", "503"} for s in stats), [s.statuses for s in stats]


async def test_evolution_and_chatapi_pushes_land(tmp_path: Path) -> None:
    import socket

    from fakeprovider.chatapi import ChatApiConfig, FakeChatApi
    from fakeprovider.evolution import FakeEvolution
    from fakeprovider.evolution_push import RetryPolicy
    from fakeprovider.greenapi import FakeGreenApi
    from fakeprovider.server import serve_socket

    names = Names()
    text = webhook_config(names, [], AMQP_URL) + (
        '[[sources]]\nprovider = "evolution"\nmode = "webhook"\ninstance = "sales-bot"\nwebhook_token_env = "HOOK"\n'
        '[[sources]]\nprovider = "chatapi"\nmode = "webhook"\ninstance = "4242"\nwebhook_token_env = "HOOK"\n'
    )
    service = Service(settings_for(tmp_path, text, {"HOOK": HOOK_TOKEN}))
    task = asyncio.create_task(service.run())
    evolution = FakeEvolution(retry=RetryPolicy(initial_delay=0.05, max_delay=0.2, timeout=5))
    chat = FakeChatApi()
    sock = socket.create_server(("127.0.0.1", 0))
    ready = asyncio.Event()
    server = asyncio.create_task(
        serve_socket(FakeGreenApi(), sock, ready=ready, evolution=evolution, chatapi=chat)
    )
    try:
        async with collector(AMQP_URL, names.exchange) as got:
            await asyncio.wait_for(service.http.listening.wait(), 10)
            await asyncio.wait_for(service.publisher.wait_ready(), 10)
            await ready.wait()
            base = f"http://127.0.0.1:{service.http_port}/webhooks"
            evolution.add_instance("sales-bot", "evo-instance-token")
            body = json.dumps(
                {
                    "webhook": {
                        "enabled": True,
                        "url": f"{base}/evolution",
                        "byEvents": True,
                        "headers": {"authorization": f"Bearer {HOOK_TOKEN}"},
                        "events": [],
                    }
                }
            ).encode()
            status, _ = evolution.handle_api(
                "POST", "/webhook/set/sales-bot", "evo-instance-token", body
            )
            assert status == 201
            for n in range(50):
                evolution.enqueue(
                    "sales-bot",
                    "messages.upsert",
                    {
                        "key": {"id": f"E{n}", "remoteJid": "1@s.whatsapp.net"},
                        "messageTimestamp": 1700000000 + n,
                    },
                )
            chat.add_instance(
                "4242",
                "chat-token",
                ChatApiConfig(
                    webhook_url=f"{base}/chatapi?token={HOOK_TOKEN}",
                    batch_size=7,
                    batch_interval=0.01,
                    retry_pause=0.05,
                ),
            )
            for n in range(30):
                chat.enqueue(
                    "4242", "messages", {"id": f"C{n}", "chatId": "2@c.us", "time": 1700000000 + n}
                )
                chat.enqueue("4242", "ack", {"id": f"C{n}", "status": "delivered"})
            await wait_until(lambda: len(got.messages) >= 110, 30)
            await asyncio.sleep(0.2)  # a duplicate would arrive now
            evo_stats, chat_stats = evolution.stats("sales-bot"), chat.stats("4242")
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
        await service.shutdown()
        await asyncio.wait_for(task, 30)
        await delete_topology(AMQP_URL, names)
    evo = [m for m in got.messages if m.headers["x-provider"] == "evolution"]
    chats = [m for m in got.messages if m.headers["x-provider"] == "chatapi"]
    assert len(evo) == 50 and evo_stats.successes == 50
    assert {json.loads(m.body)["data"]["key"]["id"] for m in evo} == {f"E{n}" for n in range(50)}
    assert all("apikey" not in json.loads(m.body) for m in evo)
    assert {m.routing_key for m in evo} == {"messages.upsert"}
    assert sorted(m.routing_key for m in chats) == ["ack"] * 30 + ["message"] * 30
    assert chat_stats.items_delivered == 60
    assert [json.loads(m.body)["message"]["id"] for m in chats if m.routing_key == "message"] == [
        f"C{n}" for n in range(30)
    ]
