"""The network between the bridge and RabbitMQ is cut mid-run (a TCP proxy drops every
connection and refuses new ones for a while): nothing is deleted that was not confirmed, the
bridge reconnects by itself, and every notification arrives."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bridge.app import Service
from tests.conftest import AMQP_URL
from tests.support.harness import (
    Names,
    bridge_toml,
    collector,
    delete_topology,
    fake_greenapi,
    first_copies,
    settings_for,
    token_for,
    wait_until,
)
from tests.support.tcpproxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_cut_network_to_the_broker(tmp_path: Path) -> None:
    instances = [str(1101003000 + i) for i in range(4)]
    per_instance = 150
    names = Names()
    expected = {
        ident: [
            json.dumps({"typeWebhook": "incomingCall", "idMessage": f"{ident}-{n}"}).encode()
            for n in range(per_instance)
        ]
        for ident in instances
    }
    async with (
        TcpProxy(target=("127.0.0.1", 5672)) as proxy,
        fake_greenapi([(i, token_for(i)) for i in instances], latency=0.003) as fake,
        collector(AMQP_URL, names.exchange) as got,
    ):
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        text, env = bridge_toml(amqp_url=url, names=names, api_url=fake.url, instances=instances)
        service = Service(settings_for(tmp_path, text, env))
        task = asyncio.create_task(service.run())
        try:
            for ident, bodies in expected.items():
                fake.state.enqueue_many(ident, bodies)
            total = per_instance * len(instances)
            await wait_until(lambda: fake.state.stats().totals.deleted >= total // 4, 60)
            proxy.cut(hold_new=True)
            await wait_until(lambda: not service.publisher.is_ready(), 10)
            await asyncio.sleep(0.3)  # deletes of publishes confirmed before the cut may land
            during = fake.state.stats().totals.deleted
            await asyncio.sleep(1.5)
            assert fake.state.stats().totals.deleted == during, (
                "deleted while the broker was unreachable"
            )
            proxy.restore()
            await wait_until(lambda: fake.state.stats().totals.outstanding == 0, 60)
            await wait_until(lambda: len({m.body for m in got.messages}) >= total, 30)
            deleted = {r for i in instances for r in fake.state.instance_stats(i).deleted_receipts}
            assert not fake.state.stats().overlapped
        finally:
            await service.shutdown()
            await asyncio.wait_for(task, 30)
            await delete_topology(AMQP_URL, names)
    assert deleted <= {m.headers["x-receipt-id"] for m in got.messages}
    assert first_copies(got.messages) == expected
