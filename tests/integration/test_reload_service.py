"""`Service.reload()` in the test's loop against the real broker: the first polling source a
reload adds starts the leases; the monitor restarts on the new sources and keeps the others'
silence clock; a source stopped on a permanent error runs again after a reload; a removed
source's gauges go with it."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from bridge.app import Service
from bridge.metrics import LAST_NOTIFICATION, REGISTRY
from fakeprovider.wire import Fault
from tests.conftest import AMQP_URL
from tests.support.harness import (
    Names,
    bridge_toml,
    delete_topology,
    fake_greenapi,
    settings_for,
    token_for,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

INSTANCE = "1104000123"
HOOK = '[[sources]]\nprovider = "evolution"\nmode = "webhook"\ninstance = "bot"\n'


def gauges(name: str) -> dict[str, str]:
    text = generate_latest(REGISTRY).decode()
    pattern = rf'^{name}\{{instance="{INSTANCE}",provider="greenapi"\}} (\S+)$'
    return dict(enumerate(re.findall(pattern, text, re.M)))


async def test_reload_adds_the_first_poller_resumes_a_stopped_one_and_removes_it(
    tmp_path: Path,
) -> None:
    names = Names()
    async with fake_greenapi([(INSTANCE, token_for(INSTANCE))]) as fake:
        webhooks_only, env = bridge_toml(
            amqp_url=AMQP_URL, names=names, api_url=fake.url, instances=(), extra=HOOK
        )
        polling, env = bridge_toml(
            amqp_url=AMQP_URL, names=names, api_url=fake.url, instances=[INSTANCE], extra=HOOK
        )
        service = Service(settings_for(tmp_path, webhooks_only, env))
        run = asyncio.create_task(service.run())
        try:
            await asyncio.wait_for(service.publisher.wait_ready(), 15)
            assert service.leases is None and service.pollers == []
            await wait_until(lambda: ("evolution", "bot") in LAST_NOTIFICATION.times)
            watched_since = LAST_NOTIFICATION.times["evolution", "bot"]
            fake.state.enqueue(INSTANCE, b'{"typeWebhook":"incomingCall","idMessage":"1"}')
            change = await service.reload(settings_for(tmp_path, polling, env))
            assert change is not None and change.added == (f"greenapi:{INSTANCE}",)
            assert service.leases is not None  # started by the reload
            assert change.monitor and gauges("bridge_instance_silent_after_seconds") == {
                0: "3600.0"
            }
            # the monitor's restart keeps what the other sources' silence is measured from
            assert LAST_NOTIFICATION.times["evolution", "bot"] == watched_since
            await wait_until(lambda: fake.state.instance_stats(INSTANCE).deleted == 1)
            assert gauges("bridge_source_running") == {0: "1.0"}

            fake.state.set_fault(INSTANCE, Fault(kind="status", status=401, count=1))
            await wait_until(lambda: service.pollers[0].stopped_reason == "unauthorized")
            assert gauges("bridge_source_running") == {0: "0.0"}
            fake.state.enqueue(INSTANCE, b'{"typeWebhook":"incomingCall","idMessage":"2"}')
            change = await service.reload(settings_for(tmp_path, polling, env))  # the same file
            assert change is not None and (change.added, change.changed) == ((), ())
            await wait_until(lambda: fake.state.instance_stats(INSTANCE).deleted == 2)
            assert gauges("bridge_source_running") == {0: "1.0"}

            change = await service.reload(settings_for(tmp_path, webhooks_only, env))
            assert change is not None and change.removed == (f"greenapi:{INSTANCE}",)
            assert service.pollers == []
            assert gauges("bridge_source_running") == {}
            assert gauges("bridge_instance_silent_after_seconds") == {}  # no silence alert
            assert ("greenapi", INSTANCE) not in LAST_NOTIFICATION.times
            await wait_until(lambda: gauges("bridge_lease_held") == {}, 10)
        finally:
            await service.shutdown()
            await asyncio.wait_for(run, 30)
            await delete_topology(AMQP_URL, names)
