"""Highly available polling with real processes: three `bridge run` share twelve instances,
each polled by one process at a time (the fake provider's overlap detector never fires), spread
4/4/4; a SIGKILLed process's instances are polled again by the others within 10 s; the
restarted process gets its share back; nothing is lost and first copies keep provider order."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import AMQP_URL
from tests.support.harness import (
    Names,
    bridge_toml,
    collector,
    delete_topology,
    fake_greenapi,
    free_port,
    token_for,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]
REPO = Path(__file__).parents[2]
HELD = re.compile(r'^bridge_lease_held\{instance="(\d+)",provider="greenapi"\} 1\.0$', re.M)
TAKEOVER_LIMIT = 10.0


class Bridge:
    def __init__(self, config: Path, env: dict[str, str], log: Path) -> None:
        self.config, self.env, self.log = config, env, log
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge", "run", "--config", str(self.config),
                "--log-format", "json", cwd=REPO, stdout=out, stderr=out,
                env={**os.environ, **self.env, "BRIDGE_HTTP__LISTEN": f"127.0.0.1:{self.port}"},
            )  # fmt: skip

    async def held(self, client: httpx.AsyncClient) -> set[str]:
        with contextlib.suppress(httpx.HTTPError):
            response = await client.get(f"http://127.0.0.1:{self.port}/metrics")
            return set(HELD.findall(response.text))
        return set()

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> int:
        if self.proc is None or self.proc.returncode is not None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 30)


async def holdings(bridges: list[Bridge], client: httpx.AsyncClient) -> list[set[str]]:
    return list(await asyncio.gather(*(b.held(client) for b in bridges)))


async def test_three_processes_share_the_instances_and_take_over_a_killed_one(
    tmp_path: Path,
) -> None:
    instances = [str(1101000800 + i) for i in range(12)]
    names = Names()
    async with fake_greenapi([(i, token_for(i)) for i in instances], latency=0.002) as fake:
        text, env = bridge_toml(
            amqp_url=AMQP_URL, names=names, api_url=fake.url, instances=instances,
            lease="interval = 0.5\nsettle = 1.5",
        )  # fmt: skip
        config = tmp_path / "bridge.toml"
        config.write_text(text)
        bridges = [Bridge(config, env, tmp_path / f"bridge-{k}.log") for k in range(3)]
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
                for bridge in bridges:
                    await bridge.start()
                stop_feeding = asyncio.Event()
                feeder = asyncio.create_task(feeding(stop_feeding))

                async def spread_is(sizes: list[int]) -> bool:
                    held = await holdings(bridges, client)
                    every = [i for h in held for i in h]
                    return sorted(map(len, held)) == sizes and len(set(every)) == len(every)

                await _until(lambda: spread_is([4, 4, 4]), 30)
                victim = bridges[1]
                orphaned = await victim.held(client)
                assert len(orphaned) == 4
                deleted = {i: fake.state.instance(i).deleted for i in orphaned}
                await victim.kill()
                killed_at = time.monotonic()
                # every orphaned instance is acknowledged again by a survivor
                await wait_until(
                    lambda: all(fake.state.instance(i).deleted > deleted[i] for i in orphaned),
                    TAKEOVER_LIMIT,
                )
                takeover = time.monotonic() - killed_at
                survivors = [bridges[0], bridges[2]]
                await _until(lambda: _covers(survivors, client, orphaned), 5)
                await victim.start()  # back: it gets its share again
                await _until(lambda: spread_is([4, 4, 4]), 30)
                stop_feeding.set()
                await feeder
                await wait_until(lambda: fake.state.stats().totals.outstanding == 0, 30)
                await wait_until(lambda: len({m.body for m in got.messages}) >= sent, 30)
                for bridge in bridges:
                    assert await bridge.stop() == 0
                assert not fake.state.stats().overlapped, "two processes polled one instance"
        finally:
            for bridge in bridges:
                if bridge.proc is not None and bridge.proc.returncode is None:
                    bridge.proc.kill()
            await delete_topology(AMQP_URL, names)
    print(f"takeover of a killed process's instances: {takeover:.1f} s")
    assert takeover < TAKEOVER_LIMIT
    ids: dict[bytes, set[str | None]] = defaultdict(set)
    order: dict[str, list[bytes]] = defaultdict(list)
    for message in got.messages:
        ids[message.body].add(message.message_id)
        ident = str(message.headers["x-instance"])
        if message.body not in order[ident]:
            order[ident].append(message.body)
    assert all(len(v) == 1 for v in ids.values()), "a duplicate with a new message_id"
    assert dict(order) == dict(expected), "lost, or first copies out of provider order"


async def _covers(bridges: list[Bridge], client: httpx.AsyncClient, wanted: set[str]) -> bool:
    held = await holdings(bridges, client)
    return wanted <= set().union(*held)


async def _until(check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.1)
