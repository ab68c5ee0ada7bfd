"""Live reconfiguration of a real `bridge run` process: ten reloads (SIGHUP, and `bridge
reload` through the pid file) add, remove and change polling and webhook sources under mixed
polling (the fake GREEN-API) and webhook load against the real broker. Nothing acknowledged is
lost, copies carry one `message_id`, a removed source is not polled and its lease is free for
another process, webhook credentials take effect at once, an invalid file is refused naming
the key while the running configuration stays, a restart-only key is reported and kept."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiormq.exceptions
import httpx
import pytest

from tests.conftest import AMQP_URL
from tests.support.fleet import REPO
from tests.support.harness import (
    FakeServer,
    Names,
    bridge_toml,
    declare_sink,
    delete_topology,
    drain_sink,
    fake_greenapi,
    free_port,
    one_id_per_body,
    token_for,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

BASE = 1103000000 + random.randrange(0, 900_000, 10)
P = [str(BASE + i) for i in range(1, 6)]  # polling instances P[0] … P[4]
W = [str(BASE + i) for i in range(6, 9)]  # webhook instances: W[0] stable, W[1] rotated, W[2]
HOOK = {"A": "hook-token-A-0123456789", "B": "hook-token-B-0123456789", "S": "stable-0123456789"}
RUNNING = re.compile(r'^bridge_source_running\{instance="(\d+)",provider="greenapi"\} (\S+)$', re.M)


@dataclass
class State:
    """One version of the config file."""

    polled: dict[str, int]  # instance -> receive_timeout
    hooks: dict[str, str]  # instance -> the HOOK key of its token
    poll_extra: str = ""
    amqp_extra: str = ""
    broken: bool = False


def config(names: Names, api_url: str, state: State) -> str:
    text, _ = bridge_toml(
        amqp_url=AMQP_URL, names=names, api_url=api_url, instances=(),
        extra=state.poll_extra, amqp_extra=state.amqp_extra,
    )  # fmt: skip
    for ident, timeout in state.polled.items():
        text += (
            f'[[sources]]\nprovider = "greenapi"\nmode = "poll"\ninstance = "{ident}"\n'
            f'api_url = "{api_url}"\ntoken_env = "TOKEN_{ident}"\n'
            f"receive_timeout = {90 if state.broken else timeout}\n"
        )
    for ident, key in state.hooks.items():
        text += (
            f'[[sources]]\nprovider = "greenapi"\nmode = "webhook"\ninstance = "{ident}"\n'
            f'webhook_token_env = "HOOK_{key}"\n'
        )
    return text


def env() -> dict[str, str]:
    out = {f"TOKEN_{i}": token_for(i) for i in P}
    out.update({f"HOOK_{k}": v for k, v in HOOK.items()})
    return out


@dataclass
class Bridge:
    log: Path
    port: int
    pid_file: Path
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("event") == name:
                    out.append(record)
        return out


@dataclass
class Load:
    """Webhook posts to the stable source W[0]; what was answered 200 is acknowledged."""

    bridge: Bridge
    acknowledged: list[bytes] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    sent: int = 0

    async def run(self, stop: asyncio.Event, client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            self.sent += 1
            body = json.dumps(
                {
                    "typeWebhook": "incomingMessageReceived",
                    "instanceData": {"idInstance": int(W[0])},
                    "idMessage": f"hook-{self.sent}-{os.getpid()}",
                }
            ).encode()
            with contextlib.suppress(httpx.HTTPError):
                answer = await client.post(
                    f"{self.bridge.url}/webhooks/greenapi/{W[0]}",
                    content=body,
                    headers={"Authorization": f"Bearer {HOOK['S']}"},
                )
                self.statuses[answer.status_code] = self.statuses.get(answer.status_code, 0) + 1
                if answer.status_code == 200:
                    self.acknowledged.append(body)
            await asyncio.sleep(0.01)


def schedule() -> Iterator[tuple[str, State]]:
    """Ten reloads, each (what it does, the file's next version)."""
    hooks = {W[0]: "S", W[1]: "A"}
    yield "remove P3, P4", State({P[0]: 5, P[1]: 5, P[2]: 5}, hooks)
    yield "add P5", State({P[0]: 5, P[1]: 5, P[2]: 5, P[4]: 5}, hooks)
    yield "change P1", State({P[0]: 6, P[1]: 5, P[2]: 5, P[4]: 5}, hooks)
    rotated = {W[0]: "S", W[1]: "B", W[2]: "B"}
    yield "rotate W2, add W3", State({P[0]: 6, P[1]: 5, P[2]: 5, P[4]: 5}, rotated)
    yield "invalid file", State({P[0]: 6, P[1]: 5, P[2]: 5, P[4]: 5}, {W[0]: "S"}, broken=True)
    yield "remove P2, P3", State({P[0]: 6, P[4]: 5}, rotated)
    yield "add P2, P3, P4 back", State({P[0]: 6, P[1]: 5, P[2]: 5, P[3]: 5, P[4]: 5}, rotated)
    every = {P[0]: 6, P[1]: 5, P[2]: 5, P[3]: 5, P[4]: 5}
    yield "poll key, restart key", State(every, rotated, "delete_attempts = 9", "heartbeat = 20")
    yield "remove W3, change P5", State({**every, P[4]: 7}, {W[0]: "S", W[1]: "B"})
    yield "all", State({i: 5 for i in P}, {W[0]: "S", W[1]: "B"})


async def lease_free(ident: str) -> bool:
    """Whether another process could take the instance's lease now (it takes and frees it)."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        try:
            queue = await channel.declare_queue(f"bridge.lease.greenapi.{ident}", exclusive=True)
        except aiormq.exceptions.ChannelLockedResource:
            return False
        await queue.delete()
        return True


async def status(client: httpx.AsyncClient, bridge: Bridge, ident: str, key: str) -> int:
    body = json.dumps(
        {
            "typeWebhook": "incomingCall",
            "instanceData": {"idInstance": int(ident)},
            "idMessage": "probe",
        }
    ).encode()
    answer = await client.post(
        f"{bridge.url}/webhooks/greenapi/{ident}",
        content=body,
        headers={"Authorization": f"Bearer {HOOK[key]}"},
    )
    return answer.status_code


async def running(client: httpx.AsyncClient, bridge: Bridge) -> dict[str, str]:
    return dict(RUNNING.findall((await client.get(f"{bridge.url}/metrics")).text))


async def test_reloads_under_load_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    names = Names()
    path = tmp_path / "bridge.toml"
    async with fake_greenapi([(i, token_for(i)) for i in P], latency=0.002) as fake:
        initial = State({i: 5 for i in P[:4]}, {W[0]: "S", W[1]: "A"})
        path.write_text(config(names, fake.url, initial))
        sink = await declare_sink(AMQP_URL, names)
        bridge = Bridge(tmp_path / "bridge.log", free_port(), tmp_path / "bridge.pid")
        expected: list[bytes] = []
        counter = 0

        async def feeding(stop: asyncio.Event) -> None:
            nonlocal counter
            while not stop.is_set():
                for ident in P:
                    counter += 1
                    body = json.dumps(
                        {
                            "typeWebhook": "incomingMessageReceived",
                            "idMessage": f"{ident}-{counter}",
                        }
                    ).encode()
                    expected.append(body)
                    fake.state.enqueue(ident, body)
                await asyncio.sleep(0.08)

        run_env = {**os.environ, **env(), "BRIDGE_HTTP__LISTEN": f"127.0.0.1:{bridge.port}"}
        with bridge.log.open("ab") as log:
            bridge.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge", "run", "--config", str(path),
                "--log-format", "json", "--pid-file", str(bridge.pid_file),
                cwd=REPO, env=run_env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        stop = asyncio.Event()
        load = Load(bridge)
        started = time.monotonic()
        try:
            async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
                await wait_until(
                    lambda: bridge.pid_file.exists() and bool(bridge.events("http.listening")), 30
                )
                await wait_until(lambda: len(bridge.events("lease.acquired")) > 0, 30)
                tasks = [asyncio.create_task(feeding(stop))]
                tasks += [asyncio.create_task(load.run(stop, client)) for _ in range(3)]
                try:
                    await asyncio.sleep(0.5)
                    await reloads(path, names, bridge, client, fake, run_env)
                finally:
                    stop.set()
                    await asyncio.gather(*tasks)
                await wait_until(lambda: fake.state.stats().totals.outstanding == 0, 30)
                assert bridge.proc.returncode is None, "the bridge exited during the reloads"
                bridge.proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(bridge.proc.wait(), 30) == 0
                assert not bridge.pid_file.exists(), "the pid file outlived the process"
        finally:
            if bridge.proc is not None and bridge.proc.returncode is None:
                bridge.proc.kill()
                await bridge.proc.wait()
            messages = await drain_sink(AMQP_URL, sink)
            await delete_topology(AMQP_URL, names)
    elapsed = time.monotonic() - started
    bodies = [m.body for m in messages]
    arrived = set(bodies)
    print(
        f"10 reloads in {elapsed:.1f} s: {len(expected)} polled, {len(load.acknowledged)} webhooks"
        f" acknowledged of {load.sent} ({load.statuses}), {len(bodies) - len(arrived)} duplicates"
    )
    assert not fake.state.stats().overlapped, "two receives of one instance at once"
    missing = [b for b in expected if b not in arrived]
    assert not missing, f"{len(missing)} polled notifications lost, e.g. {missing[:3]}"
    lost = [b for b in load.acknowledged if b not in arrived]
    assert not lost, f"{len(lost)} acknowledged webhooks lost"
    assert one_id_per_body(messages), "a duplicate with a new message_id"
    assert load.statuses.get(200, 0) == len(load.acknowledged) > 100
    assert set(load.statuses) == {200}, "the stable webhook source answered otherwise"


def rewrite(path: Path, text: str) -> None:
    path.write_text(text)


def answered(bridge: Bridge) -> int:
    """Reloads the bridge has answered so far, applied or refused."""
    return len(bridge.events("config.reloaded")) + len(bridge.events("config.reload_refused"))


async def reloads(
    path: Path,
    names: Names,
    bridge: Bridge,
    client: httpx.AsyncClient,
    fake: FakeServer,
    run_env: dict[str, str],
) -> None:
    """The schedule, each step checked once the bridge logged it: `bridge reload` through the
    pid file first, `kill -HUP` then (a CLI start costs seconds on a busy machine)."""
    for n, (what, state) in enumerate(schedule()):
        before = fake.state.stats().instances
        rewrite(path, config(names, fake.url, state))
        done = answered(bridge)
        if n == 0:
            reload = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge", "reload", "--pid-file", str(bridge.pid_file),
                cwd=REPO, env=run_env,
            )  # fmt: skip
            assert await reload.wait() == 0
        else:
            assert bridge.proc is not None
            os.kill(bridge.proc.pid, signal.SIGHUP)
        await wait_until(lambda d=done: answered(bridge) > d)  # type: ignore[misc]
        await check(what, state, before, bridge, client, fake.state)
        await asyncio.sleep(0.3)  # load flows on the new configuration


async def check(
    what: str,
    state: State,
    before: dict[str, Any],
    bridge: Bridge,
    client: httpx.AsyncClient,
    fake: Any,
) -> None:
    """What reload `n` must have done, checked right after it is logged."""
    reloaded = bridge.events("config.reloaded")
    last = reloaded[-1] if reloaded else {}
    if what == "remove P3, P4":
        assert (last["added"], last["removed"], last["changed"]) == (0, 1, 0)
        assert P[3] not in await running(client, bridge)
        assert await lease_free(P[3]), "the removed source's lease is still held"
        polled = fake.instance_stats(P[3]).receives
        await asyncio.sleep(0.5)
        assert fake.instance_stats(P[3]).receives == polled, "a removed source is still polled"
    elif what == "add P5":
        assert (last["added"], last["removed"], last["changed"]) == (1, 0, 0)
        await wait_until(lambda: fake.instance_stats(P[4]).deleted > 0)
        assert (await running(client, bridge)).get(P[4]) == "1.0"
    elif what == "change P1":
        assert (last["added"], last["removed"], last["changed"]) == (0, 0, 1)
        deleted = fake.instance_stats(P[0]).deleted
        await wait_until(lambda: fake.instance_stats(P[0]).deleted > deleted)
    elif what == "rotate W2, add W3":
        assert (last["added"], last["removed"], last["changed"]) == (1, 0, 1)
        assert await status(client, bridge, W[1], "A") == 401  # the old token: gone at once
        assert await status(client, bridge, W[1], "B") == 200
        assert await status(client, bridge, W[2], "B") == 200
    elif what == "invalid file":
        refused = bridge.events("config.reload_refused")
        assert refused and refused[-1]["level"] == "error"
        assert refused[-1]["key"] == "sources[0].receive_timeout", refused[-1]
        assert await status(client, bridge, W[2], "B") == 200  # the running config stays
        assert await status(client, bridge, W[1], "B") == 200
    elif what == "remove P2, P3":
        assert (last["added"], last["removed"], last["changed"]) == (0, 2, 0)
        assert set(await running(client, bridge)) == {P[0], P[4]}
    elif what == "add P2, P3, P4 back":
        assert (last["added"], last["removed"], last["changed"]) == (3, 0, 0)
        for ident in P[1:4]:  # what waited at the provider is taken now
            await wait_until(lambda i=ident: fake.instance_stats(i).deleted > before[i].deleted)  # type: ignore[misc]
    elif what == "poll key, restart key":
        warned = [e["key"] for e in bridge.events("config.needs_restart")]
        assert warned == ["amqp.heartbeat"], warned
        assert (last["added"], last["removed"], last["changed"]) == (0, 0, 0)
    elif what == "remove W3, change P5":
        assert (last["added"], last["removed"], last["changed"]) == (0, 1, 1)
        assert await status(client, bridge, W[2], "B") == 404
        assert await status(client, bridge, W[1], "B") == 200
    else:
        assert last["pollers"] == len(state.polled) == 5
