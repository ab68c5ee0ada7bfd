"""Golden interop: the messages a running bridge publishes, read by the consumers people use.

A bridge (the real service: webhooks over real sockets, its confirming publisher) publishes
GREEN-API samples into the real broker, into one consumer queue per library, declared as
`bridge queues declare` declares them. kombu with Celery's `accept=["json"]`, a FastStream
subscriber, plain pika and the CloudEvents SDK (`amqp.cloudevents = true`) each get the
provider's JSON and the metadata with nothing but the library's own decoding — through the
consumers in examples/, which docs/behaviour.md shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import aio_pika
import aiormq.exceptions
import httpx
import pytest

from bridge import APP_ID
from bridge.app import Service
from bridge.envelope import message_id
from bridge.tools import queues
from examples import cloudevents_consumer, faststream_consumer, kombu_consumer, pika_consumer
from tests.conftest import AMQP_URL, SAMPLES
from tests.support.harness import Names, delete_topology, settings_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

REPO = Path(__file__).parents[2]
INSTANCE = "1101000002"
TOKEN = "green-interop-token-123456"
SAMPLE_FILES = [
    "incomingMessageReceived-textMessage.json",
    "outgoingMessageStatus-sent.json",
    "stateInstanceChanged-notAuthorized.json",
]
CONSUMERS = ("kombu", "faststream", "pika", "cloudevents")
WAIT = 30.0


class Sent(NamedTuple):
    notification: dict[str, Any]
    message_id: str
    event: str
    chat: str | None
    time: datetime


def sent() -> list[Sent]:
    out = []
    for name in SAMPLE_FILES:
        body = (SAMPLES / "greenapi" / name).read_bytes()
        data = json.loads(body)
        out.append(
            Sent(
                data, message_id("greenapi", INSTANCE, body), data["typeWebhook"],
                data.get("chatId") or data.get("senderData", {}).get("chatId"),
                datetime.fromtimestamp(data["timestamp"], UTC),
            )
        )  # fmt: skip
    return out


def config(names: Names, cloudevents: bool) -> str:
    return f"""
[amqp]
url = "{AMQP_URL}"
exchange = "{names.exchange}"
unrouted_exchange = "{names.unrouted}"
invalid_exchange = "{names.invalid}"
cloudevents = {str(cloudevents).lower()}
[http]
listen = "127.0.0.1:0"
[[sources]]
provider = "greenapi"
mode = "webhook"
instance = "{INSTANCE}"
webhook_token_env = "GREEN"
"""


@contextlib.asynccontextmanager
async def bridge_published(tmp_path: Path, *, cloudevents: bool) -> AsyncIterator[dict[str, str]]:
    """A running bridge that published the samples into one consumer queue per library
    (`{library: queue}`), all bound with `#`; everything is deleted afterwards."""
    names = Names()
    service = Service(settings_for(tmp_path, config(names, cloudevents), {"GREEN": TOKEN}))
    task = asyncio.create_task(service.run())
    per_consumer = {name: f"{names.prefix}.{name}" for name in CONSUMERS}
    dead = f"{names.prefix}.dead"
    try:
        await asyncio.wait_for(service.publisher.wait_ready(), 15)
        await asyncio.wait_for(service.http.listening.wait(), 5)
        for queue in per_consumer.values():
            todo = queues.plan(queue, ["#"], exchange=names.exchange, dead_letter=dead)
            await queues.declare(AMQP_URL, todo)
        base = f"http://127.0.0.1:{service.http_port}"
        async with httpx.AsyncClient(base_url=base) as client:
            for name in SAMPLE_FILES:
                answer = await client.post(
                    f"/webhooks/greenapi/{INSTANCE}",
                    content=(SAMPLES / "greenapi" / name).read_bytes(),
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
                assert answer.status_code == 200  # confirmed: in every queue
        yield per_consumer
    finally:
        await service.shutdown()
        await asyncio.wait_for(task, 30)
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            for queue in (*per_consumer.values(), dead):
                async with connection.channel() as channel:
                    with contextlib.suppress(aiormq.exceptions.AMQPError):
                        await channel.queue_delete(queue)
            async with connection.channel() as channel:
                with contextlib.suppress(aiormq.exceptions.AMQPError):
                    await channel.exchange_delete(dead)
        await delete_topology(AMQP_URL, names)


def assert_bridge_headers(headers: dict[str, Any], want: Sent) -> None:
    assert headers["x-provider"] == "greenapi"
    assert headers["x-instance"] == INSTANCE
    assert headers["x-event"] == want.event
    assert headers["x-ingest"] == "webhook"
    assert isinstance(headers["x-received-at"], int)
    assert headers.get("x-chat-id") == want.chat


async def read_all(per_consumer: dict[str, str], n: int, *, cloudevents: bool) -> dict[str, Any]:
    reads = {
        "kombu": asyncio.to_thread(
            kombu_consumer.main, AMQP_URL, per_consumer["kombu"], limit=n, timeout=WAIT
        ),
        "faststream": faststream_consumer.main(
            AMQP_URL, per_consumer["faststream"], limit=n, timeout=WAIT
        ),
        "pika": asyncio.to_thread(
            pika_consumer.main, AMQP_URL, per_consumer["pika"], limit=n, timeout=WAIT
        ),
    }
    if cloudevents:
        reads["cloudevents"] = asyncio.to_thread(
            cloudevents_consumer.main, AMQP_URL, per_consumer["cloudevents"], limit=n, timeout=WAIT
        )
    return dict(zip(reads, await asyncio.gather(*reads.values()), strict=True))


@pytest.mark.parametrize("cloudevents", [False, True], ids=["plain", "cloudevents"])
async def test_kombu_faststream_pika_and_the_cloudevents_sdk_read_the_bridge_s_messages(
    tmp_path: Path, cloudevents: bool
) -> None:
    expected = sent()
    async with bridge_published(tmp_path, cloudevents=cloudevents) as per_consumer:
        got = await read_all(per_consumer, len(expected), cloudevents=cloudevents)

    # kombu, configured as Celery is: only JSON accepted, decoded by content_type
    for want, (notification, message) in zip(expected, got["kombu"], strict=True):
        assert notification == want.notification
        properties = message.properties
        assert message.content_type == "application/json"
        assert properties["message_id"] == want.message_id
        assert properties["type"] == want.event
        assert properties["app_id"] == APP_ID
        assert properties["delivery_mode"] == 2
        assert properties["timestamp"] == int(want.time.timestamp())
        assert_bridge_headers(message.headers, want)
        assert any(k.startswith("ce-") for k in message.headers) is cloudevents

    # FastStream: the handler's dict argument, the metadata on its RabbitMessage
    for want, (notification, message) in zip(expected, got["faststream"], strict=True):
        assert notification == want.notification
        assert message.message_id == want.message_id
        assert message.content_type == "application/json"
        assert message.raw_message.type == want.event
        assert message.raw_message.timestamp == want.time
        assert_bridge_headers(message.headers, want)

    # plain pika
    for want, (notification, properties) in zip(expected, got["pika"], strict=True):
        assert notification == want.notification
        assert properties.content_type == "application/json"
        assert properties.message_id == want.message_id
        assert properties.type == want.event
        assert properties.app_id == APP_ID
        assert properties.timestamp == int(want.time.timestamp())
        assert_bridge_headers(properties.headers, want)

    if not cloudevents:
        return
    # the CloudEvents SDK's RabbitMQ binding, binary mode
    for want, event in zip(expected, got["cloudevents"], strict=True):
        assert event.get_specversion() == "1.0"
        assert event.get_id() == want.message_id
        assert event.get_source() == f"/greenapi/{INSTANCE}"
        assert event.get_type() == want.event
        assert event.get_time() == want.time
        assert event.get_subject() == want.chat
        assert event.get_datacontenttype() == "application/json"
        assert event.get_data() == want.notification


EXAMPLES = {
    "kombu": REPO / "examples" / "kombu_consumer.py",
    "faststream": REPO / "examples" / "faststream_consumer.py",
    "pika": REPO / "examples" / "pika_consumer.py",
    "cloudevents": REPO / "examples" / "cloudevents_consumer.py",
}


def test_the_docs_show_each_consumer_as_the_tested_example_has_it() -> None:
    """Every ```python block of docs/behaviour.md's consumer section is an excerpt, line for
    line, of the example this test runs, and names it."""
    doc = (REPO / "docs" / "behaviour.md").read_text()
    section = doc.split("## Reading the messages", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == len(EXAMPLES)
    for (library, path), block in zip(EXAMPLES.items(), blocks, strict=True):
        assert f"examples/{path.name}" in section, library
        source = path.read_text()
        lines = [line for line in block.splitlines() if line.strip() and line.strip() != "..."]
        at = 0
        for line in lines:
            found = source.find(line + "\n", at)
            assert found >= 0, f"{library}: {line!r} is not in {path.name} (in this order)"
            at = found + len(line)
