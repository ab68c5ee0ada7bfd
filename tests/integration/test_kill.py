"""`SIGKILL` of a real bridge process mid-run, then a restart: nothing lost, duplicates share ids."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.conftest import AMQP_URL
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
REPO = Path(__file__).parents[2]


async def start_bridge(config: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "run", "--config", str(config), "--log-format", "json",
        cwd=REPO, env={**os.environ, **env}, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_sigkill_mid_run_loses_nothing(tmp_path: Path) -> None:
    instances = [str(1101000700 + i) for i in range(5)]
    per_instance = 300
    names = Names()
    async with fake_greenapi([(i, token_for(i)) for i in instances], latency=0.002) as fake:
        text, env = bridge_toml(
            amqp_url=AMQP_URL, names=names, api_url=fake.url, instances=instances
        )
        config = tmp_path / "bridge.toml"
        config.write_text(text)
        expected: dict[str, list[bytes]] = {}
        for ident in instances:
            expected[ident] = [
                json.dumps({"typeWebhook": "incomingMessageReceived", "idMessage": f"{ident}-{n}",
                            "senderData": {"chatId": "3@c.us"}}).encode()
                for n in range(per_instance)
            ]  # fmt: skip
            fake.state.enqueue_many(ident, expected[ident])
        total = per_instance * len(instances)
        try:
            async with collector(AMQP_URL, names.exchange) as got:
                kills = 0
                for threshold in (total // 5, total // 2, (4 * total) // 5):
                    proc = await start_bridge(config, env)
                    await wait_until(lambda t=threshold: fake.state.stats().totals.deleted >= t, 60)
                    proc.send_signal(signal.SIGKILL)
                    assert await proc.wait() == -signal.SIGKILL
                    kills += 1
                proc = await start_bridge(config, env)
                await wait_until(lambda: fake.state.stats().totals.outstanding == 0, 90)
                await wait_until(lambda: len({m.body for m in got.messages}) >= total, 30)
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(proc.wait(), 30) == 0
                assert not fake.state.stats().overlapped
        finally:
            await delete_topology(AMQP_URL, names)
    assert kills == 3
    assert one_id_per_body(got.messages), "a duplicate with a new message_id"
    assert first_copies(got.messages) == expected  # everything arrived, in provider order
    duplicates = len(got.messages) - total
    assert duplicates <= 3 * len(
        instances
    )  # at most one in-flight notification per instance per kill
