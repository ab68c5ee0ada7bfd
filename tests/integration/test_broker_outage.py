"""A broker outage mid-run, on a RabbitMQ node the test owns: no `deleteNotification` while it
is down, `/readyz`-level readiness drops, the bridge reconnects by itself and loses nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bridge.app import Service
from tests.support.harness import (
    Names,
    bridge_toml,
    declare_sink,
    drain_sink,
    fake_greenapi,
    first_copies,
    one_id_per_body,
    settings_for,
    token_for,
    wait_until,
)
from tests.support.rabbitnode import RabbitNode

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]


async def test_broker_outage_pauses_deletes_and_recovers(
    tmp_path: Path, own_rabbit: RabbitNode
) -> None:
    node = own_rabbit
    instances = [str(1101000800 + i) for i in range(3)]
    per_instance = 200
    names = Names()
    sink = await declare_sink(node.amqp_url, names)

    async with fake_greenapi([(i, token_for(i)) for i in instances], latency=0.004) as fake:
        text, env = bridge_toml(
            amqp_url=node.amqp_url, names=names, api_url=fake.url, instances=instances,
            extra="",
        )  # fmt: skip
        expected = {
            ident: [
                json.dumps(
                    {"typeWebhook": "incomingMessageReceived", "idMessage": f"{ident}-{n}"}
                ).encode()
                for n in range(per_instance)
            ]
            for ident in instances
        }
        for ident, bodies in expected.items():
            fake.state.enqueue_many(ident, bodies)
        service = Service(settings_for(tmp_path, text, env))
        task = asyncio.create_task(service.run())
        try:
            total = per_instance * len(instances)
            await wait_until(lambda: fake.state.stats().totals.deleted >= total // 5, 60)
            await asyncio.to_thread(node.stop_app)
            await wait_until(lambda: not service.publisher.is_ready(), 10)
            await asyncio.sleep(0.5)  # deletes for publishes confirmed before the stop may land
            deleted_during = fake.state.stats().totals.deleted
            assert deleted_during < total
            await asyncio.sleep(3)
            assert fake.state.stats().totals.deleted == deleted_during, (
                "deleted while the broker was down"
            )
            assert not service.publisher.is_ready()
            await asyncio.to_thread(node.start_app)
            await wait_until(lambda: fake.state.stats().totals.outstanding == 0, 90)
            assert service.publisher.is_ready()
            assert not fake.state.stats().overlapped
        finally:
            await service.shutdown()
            await asyncio.wait_for(task, 30)
    messages = await drain_sink(node.amqp_url, sink)
    assert first_copies(messages) == expected
    assert one_id_per_body(messages)
