"""The GREEN-API polling path end to end: fake provider over real HTTP → bridge → real RabbitMQ."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from bridge import APP_ID
from bridge.app import Service
from bridge.logs import JsonFormatter, Redactor
from bridge.metrics import REGISTRY
from fakeprovider.greenapi import Fault
from tests.conftest import AMQP_URL, greenapi_samples
from tests.support.harness import (
    Collected,
    FakeServer,
    Names,
    bridge_toml,
    collector,
    delete_topology,
    fake_greenapi,
    running,
    settings_for,
    token_for,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@contextlib.asynccontextmanager
async def scenario(
    tmp_path: Path, instances: list[str], **toml: str | int
) -> AsyncIterator[tuple[FakeServer, Collected, Service, Names]]:
    names = Names()
    async with fake_greenapi([(i, token_for(i)) for i in instances]) as fake:
        text, env = bridge_toml(
            amqp_url=AMQP_URL,
            names=names,
            api_url=fake.url,
            instances=instances,
            **toml,  # type: ignore[arg-type]
        )
        settings = settings_for(tmp_path, text, env)
        try:
            async with collector(AMQP_URL, names.exchange) as got, running(settings) as service:
                yield fake, got, service, names
        finally:
            await delete_topology(AMQP_URL, names)


def body_of(raw: bytes) -> bytes:
    return raw


async def test_every_sample_arrives_byte_identical_under_its_type(tmp_path: Path) -> None:
    samples = greenapi_samples()
    async with scenario(tmp_path, ["1101000001"]) as (fake, got, _service, names):
        fake.state.enqueue_many("1101000001", [body for _, body in samples])
        await wait_until(lambda: len(got.messages) >= len(samples))
        await wait_until(lambda: fake.state.instance_stats("1101000001").outstanding == 0)
    assert len(got.messages) == len(samples)
    for (name, body), message in zip(samples, got.messages, strict=True):
        event = json.loads(body)["typeWebhook"]
        assert message.body == body, name
        assert message.routing_key == event
        assert message.exchange == names.ingest  # published to the archive's fanout
        assert message.delivery_mode == 2
        assert message.content_type == "application/json"
        assert message.type == event
        assert message.app_id == APP_ID
        assert message.message_id and len(message.message_id) == 32
        headers = message.headers
        assert headers["x-provider"] == "greenapi"
        assert headers["x-instance"] == "1101000001"
        assert headers["x-event"] == event
        assert headers["x-ingest"] == "poll"
        assert isinstance(headers["x-received-at"], int)
        assert isinstance(headers["x-receipt-id"], int)
        if "timestamp" in json.loads(body):
            assert message.timestamp is not None
            assert int(message.timestamp.timestamp()) == json.loads(body)["timestamp"]
        if json.loads(body).get("idMessage"):
            assert str(headers["x-message-key"]).startswith("1101000001:")


async def test_thousand_notifications_ten_instances_exactly_once_in_order(tmp_path: Path) -> None:
    instances = [str(1101000100 + i) for i in range(10)]
    expected: dict[str, list[bytes]] = {}
    async with scenario(tmp_path, instances) as (fake, got, _service, _names):
        for ident in instances:
            bodies = [
                json.dumps(
                    {"typeWebhook": "incomingMessageReceived", "timestamp": 1700000000 + n,
                     "idMessage": f"{ident}-{n:04d}", "senderData": {"chatId": "1@c.us"}}
                ).encode()
                for n in range(100)
            ]  # fmt: skip
            expected[ident] = bodies
            fake.state.enqueue_many(ident, bodies)
        await wait_until(lambda: len(got.messages) >= 1000, timeout=60)
        await wait_until(
            lambda: all(fake.state.instance_stats(i).outstanding == 0 for i in instances)
        )
        await asyncio.sleep(0.3)  # anything extra would show up now
        stats = fake.state.stats()
    assert len(got.messages) == 1000
    seen: dict[str, list[bytes]] = defaultdict(list)
    for message in got.messages:
        seen[str(message.headers["x-instance"])].append(message.body)
    assert seen == expected
    assert len({m.message_id for m in got.messages}) == 1000
    assert not stats.overlapped
    assert stats.totals.outstanding == 0 and stats.totals.deleted == 1000


async def test_provider_faults_lose_nothing_and_delete_only_confirmed(tmp_path: Path) -> None:
    instances = [str(1101000200 + i) for i in range(4)]
    per_instance = 40
    async with scenario(tmp_path, instances) as (fake, got, _service, _names):
        faults = [
            [Fault(kind="status", status=500, count=5), Fault(kind="status", status=502, count=3, methods=["delete"])],
            [Fault(kind="status", status=429, count=6), Fault(kind="empty", count=4)],
            [Fault(kind="slow", delay=0.3, count=3), Fault(kind="drop", count=3)],
            [Fault(kind="empty", count=3, methods=["delete"]), Fault(kind="drop", count=2, methods=["delete"]),
             Fault(kind="status", status=503, count=4, methods=["receive"])],
        ]  # fmt: skip
        for ident, fault_list in zip(instances, faults, strict=True):
            for fault in fault_list:
                fake.state.set_fault(ident, fault)
            fake.state.enqueue_many(
                ident,
                [
                    json.dumps({"typeWebhook": "outgoingMessageStatus", "idMessage": f"{ident}-{n}",
                                "status": "sent", "chatId": "2@c.us"}).encode()
                    for n in range(per_instance)
                ],
            )  # fmt: skip
        total = per_instance * len(instances)
        await wait_until(
            lambda: all(fake.state.instance_stats(i).outstanding == 0 for i in instances), 60
        )
        await wait_until(lambda: len({m.message_id for m in got.messages}) >= total)
        deleted = {r for i in instances for r in fake.state.instance_stats(i).deleted_receipts}
        stats = fake.state.stats()
    published_receipts = {m.headers["x-receipt-id"] for m in got.messages}
    assert deleted <= published_receipts, "a notification was deleted that RabbitMQ never confirmed"
    assert len({m.message_id for m in got.messages}) == total
    by_instance: dict[str, list[str]] = defaultdict(list)
    for message in got.messages:
        ident = str(message.headers["x-instance"])
        key = json.loads(message.body)["idMessage"]
        if key not in by_instance[ident]:
            by_instance[ident].append(key)
    for ident in instances:
        assert by_instance[ident] == [f"{ident}-{n}" for n in range(per_instance)]
    assert not stats.overlapped


async def test_confirmed_but_undeleted_is_not_published_twice(tmp_path: Path) -> None:
    ident = "1101000300"
    async with scenario(tmp_path, [ident], extra="") as (fake, got, service, _names):
        # every delete fails for a while: the head comes back, but is published only once
        fake.state.set_fault(ident, Fault(kind="status", status=500, count=25, methods=["delete"]))
        fake.state.enqueue(ident, b'{"typeWebhook":"incomingCall","idMessage":"c1"}')
        await wait_until(lambda: fake.state.instance_stats(ident).outstanding == 0)
        assert fake.state.instance_stats(ident).delivered >= 2
        await asyncio.sleep(0.2)
    assert len(got.messages) == 1


async def test_bad_payloads_are_quarantined_and_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ident = "1101000400"
    caplog.set_level(logging.DEBUG, logger="bridge")
    async with (
        scenario(tmp_path, [ident]) as (fake, got, _service, names),
        collector(AMQP_URL, names.invalid, declare_exchange=False) as invalid,
    ):
        fake.state.enqueue(ident, b"{not json")
        fake.state.enqueue(ident, b'{"no": "type"}')
        fake.state.enqueue(ident, b'["an", "array"]')
        fake.state.enqueue(ident, b'{"typeWebhook": "brandNewEvent", "x": 1}')
        fake.state.enqueue(ident, b'{"typeWebhook": "brandNewEvent", "x": 2}')
        await wait_until(lambda: fake.state.instance_stats(ident).outstanding == 0)
        await wait_until(lambda: len(invalid.messages) >= 3 and len(got.messages) >= 2)
    assert [m.routing_key for m in got.messages] == ["brandNewEvent", "brandNewEvent"]
    errors = [str(m.headers["x-error"]) for m in invalid.messages]
    assert len(errors) == 3 and all(errors)
    assert any("typeWebhook missing" in e for e in errors)
    assert invalid.messages[0].headers["x-instance"] == ident
    assert b"{not json" in invalid.messages[0].body  # the raw answer is kept
    warnings = [r for r in caplog.records if r.getMessage() == "notification.unknown_event"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    quarantined = [r for r in caplog.records if r.getMessage() == "notification.quarantined"]
    assert len(quarantined) == 3 and all(r.levelno == logging.ERROR for r in quarantined)


async def test_stale_receipt_counts_as_acknowledged(tmp_path: Path) -> None:
    ident = "1101000500"
    async with scenario(tmp_path, [ident]) as (fake, got, _service, _names):
        # the first delete is answered as if the notification were already gone
        fake.state.set_fault(ident, Fault(kind="status", status=200, count=1, methods=["delete"]))
        fake.state.enqueue(
            ident, b'{"typeWebhook":"stateInstanceChanged","stateInstance":"authorized"}'
        )
        fake.state.enqueue(
            ident, b'{"typeWebhook":"stateInstanceChanged","stateInstance":"blocked"}'
        )
        await wait_until(lambda: len(got.messages) >= 2)
    assert [json.loads(m.body)["stateInstance"] for m in got.messages[:2]] == [
        "authorized",
        "blocked",
    ]


async def test_token_never_leaks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    good, bad, dead = "1101000600", "1101000601", "1101000602"
    names = Names()
    async with fake_greenapi([(good, token_for(good)), (bad, "another-token-entirely")]) as fake:
        text, env = bridge_toml(
            amqp_url=AMQP_URL, names=names, api_url=fake.url, instances=[good, bad]
        )
        # a third source whose provider does not exist: network errors
        text += (
            f'[[sources]]\nprovider = "greenapi"\nmode = "poll"\ninstance = "{dead}"\n'
            f'api_url = "http://127.0.0.1:9"\ntoken_env = "TOKEN_{dead}"\nreceive_timeout = 5\n'
        )
        env[f"TOKEN_{dead}"] = token_for(dead)
        settings = settings_for(tmp_path, text, env)
        try:
            async with running(settings) as service:
                await wait_until(lambda: any(p.stopped_reason for p in service.pollers))
                await asyncio.sleep(0.5)  # a few network-error retries of the dead source
                stopped = {p.source.instance: p.stopped_reason for p in service.pollers}
                errors = [repr(p.last_error) + str(p.last_error) for p in service.pollers]
        finally:
            await delete_topology(AMQP_URL, names)
    assert stopped[bad] == "unauthorized"
    assert stopped[good] is None
    records = [r for r in caplog.records if r.name.startswith("bridge")]
    assert any(r.getMessage() == "source.stopped" and r.levelno == logging.ERROR for r in records)
    assert any(r.getMessage() == "receive.failed" for r in records)
    # the bridge's own records carry no token even before redaction
    texts = [JsonFormatter().format(r) for r in records]
    texts += [logging.Formatter().formatException(r.exc_info) for r in records if r.exc_info]
    # and every record of every library, through the bridge's handler, comes out redacted
    redactor = Redactor([token_for(good), token_for(bad), token_for(dead)])
    for record in caplog.records:
        redactor.filter(record)
        texts.append(JsonFormatter().format(record))
    assert all(e != "NoneNone" for e in errors[1:])
    metrics = generate_latest(REGISTRY).decode()
    for token in (token_for(good), token_for(bad), token_for(dead)):
        assert not any(token in t for t in texts), "token in a log record"
        assert not any(token in e for e in errors), "token in an exception"
        assert token not in metrics, "token in a metric"
