"""Highly available polling with real processes: three `bridge run` share twelve instances,
each polled by one process at a time (the fake provider's overlap detector never fires), spread
4/4/4; a SIGKILLed process's instances are polled again by the others within 10 s; the
restarted process gets its share back; nothing is lost and first copies keep provider order."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import AMQP_URL
from tests.support.fleet import BridgeFleet, BridgeProcess
from tests.support.harness import (
    Names,
    bridge_toml,
    collector,
    delete_topology,
    fake_greenapi,
    first_copies,
    one_id_per_body,
    token_for,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]
HELD = re.compile(r'^bridge_lease_held\{instance="(\d+)",provider="greenapi"\} 1\.0$', re.M)
TAKEOVER_LIMIT = 10.0


async def held(process: BridgeProcess, client: httpx.AsyncClient) -> set[str]:
    """The instances whose lease `process` holds, from its /metrics."""
    with contextlib.suppress(httpx.HTTPError):
        return set(HELD.findall((await client.get(f"{process.url}/metrics")).text))
    return set()


async def holdings(fleet: BridgeFleet, client: httpx.AsyncClient) -> list[set[str]]:
    return list(await asyncio.gather(*(held(p, client) for p in fleet.processes)))


async def test_three_processes_share_the_instances_and_take_over_a_killed_one(
    tmp_path: Path,
) -> None:
    instances = [str(1101000800 + i) for i in range(12)]
    names = Names()
    async with fake_greenapi([(i, token_for(i)) for i in instances], latency=0.002) as fake:
        text, env = bridge_toml(
            amqp_url=AMQP_URL, names=names, api_url=fake.url, instances=instances,
            lease="",  # the defaults: interval 1 s, settle 3 s
        )  # fmt: skip
        config = tmp_path / "bridge.toml"
        config.write_text(text)
        fleet = BridgeFleet(config, env, size=3, log_dir=tmp_path)
        expected: dict[str, list[bytes]] = defaultdict(list)
        sent = 0

        def feed(count: int) -> None:
            nonlocal sent
            for _ in range(count):
                ident = instances[sent % len(instances)]
                body = json.dumps({"typeWebhook": "incomingMessageReceived",
                                   "idMessage": f"{ident}-{sent}"}).encode()  # fmt: skip
                expected[ident].append(body)
                fake.state.enqueue(ident, body)
                sent += 1

        async def feeding(stop: asyncio.Event) -> None:
            while not stop.is_set():
                feed(12)
                await asyncio.sleep(0.02)

        try:
            async with collector(AMQP_URL, names.exchange) as got, httpx.AsyncClient() as client:
                await fleet.start()
                stop_feeding = asyncio.Event()
                feeder = asyncio.create_task(feeding(stop_feeding))

                async def spread_is(sizes: list[int]) -> bool:
                    now = await holdings(fleet, client)
                    every = [i for h in now for i in h]
                    return sorted(map(len, now)) == sizes and len(set(every)) == len(every)

                await _until(lambda: spread_is([4, 4, 4]), 30)
                orphaned = await held(fleet.processes[1], client)
                assert len(orphaned) == 4
                deleted = {i: fake.state.instance(i).deleted for i in orphaned}
                await fleet.kill(1)
                killed_at = time.monotonic()
                # every orphaned instance is acknowledged again by a survivor
                await wait_until(
                    lambda: all(fake.state.instance(i).deleted > deleted[i] for i in orphaned),
                    TAKEOVER_LIMIT,
                )
                takeover = time.monotonic() - killed_at
                await _until(lambda: _covers(fleet, client, orphaned), 5)
                await fleet.restart(1)  # back: it gets its share again
                await _until(lambda: spread_is([4, 4, 4]), 30)
                stop_feeding.set()
                await feeder
                await wait_until(lambda: fake.state.stats().totals.outstanding == 0, 30)
                await wait_until(lambda: len({m.body for m in got.messages}) >= sent, 30)
                assert await fleet.stop() == [0, 0, 0]
                assert not fake.state.stats().overlapped, "two processes polled one instance"
        finally:
            await fleet.stop(timeout=5)
            await delete_topology(AMQP_URL, names)
    print(f"takeover of a killed process's instances: {takeover:.1f} s")
    assert takeover < TAKEOVER_LIMIT
    assert one_id_per_body(got.messages), "a duplicate with a new message_id"
    assert first_copies(got.messages) == dict(expected), "lost, or first copies out of order"


async def _covers(fleet: BridgeFleet, client: httpx.AsyncClient, wanted: set[str]) -> bool:
    return wanted <= set().union(*await holdings(fleet, client))


async def _until(check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.1)
