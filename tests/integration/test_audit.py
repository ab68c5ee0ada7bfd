"""`bridge audit` end to end: the fake GREEN-API journals every message but loses some (never
delivers them); the bridge polls the rest into RabbitMQ; the audit's missing list is exactly
what the fake lost, per instance, and it exits 1."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.tools import audit as audit_tool
from tests.conftest import AMQP_URL
from tests.support.harness import (
    Names,
    bridge_toml,
    delete_topology,
    fake_greenapi,
    running,
    settings_for,
    token_for,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
INSTANCES = ("1101000001", "1101000002")


def message(instance: str, n: int, kind: str = "incomingMessageReceived") -> bytes:
    return json.dumps(
        {
            "typeWebhook": kind,
            "instanceData": {"idInstance": int(instance), "wid": "1@c.us"},
            "timestamp": int(time.time()) - 60 + n % 30,
            "idMessage": f"ID{instance}{kind[:3]}{n:05d}",
            "senderData": {"chatId": f"7900{n:07d}@c.us", "senderName": "x"},
            "messageData": {"typeMessage": "textMessage"},
        }
    ).encode()


def status(instance: str, n: int) -> bytes:
    return json.dumps(
        {
            "typeWebhook": "outgoingMessageStatus",
            "instanceData": {"idInstance": int(instance)},
            "timestamp": int(time.time()),
            "idMessage": f"ST{n}",
            "status": "delivered",
        }
    ).encode()


async def test_the_audit_finds_exactly_what_the_provider_lost(tmp_path: Path) -> None:
    names = Names()
    async with fake_greenapi([(i, token_for(i)) for i in INSTANCES]) as fake:
        text, env = bridge_toml(
            amqp_url=AMQP_URL, names=names, api_url=fake.url, instances=INSTANCES
        )
        settings = settings_for(tmp_path, text, env)
        state = fake.state
        first, second = INSTANCES
        try:
            async with running(settings):
                state.enqueue_many(first, [message(first, n) for n in range(10)])
                state.lose(first, 3)  # the next three are journaled, never delivered
                state.enqueue_many(first, [message(first, n) for n in range(10, 15)])
                state.enqueue(first, status(first, 1))  # not a journal entry
                state.enqueue_many(
                    first, [message(first, n, "outgoingAPIMessageReceived") for n in range(4)]
                )
                state.lose(second, 1)
                state.enqueue_many(
                    second, [message(second, n, "outgoingMessageReceived") for n in range(3)]
                )
                state.enqueue_many(second, [message(second, n) for n in range(3, 6)])

                def drained() -> bool:
                    return all(state.instance_stats(i).outstanding == 0 for i in INSTANCES)

                await wait_until(drained)
                await wait_until(
                    lambda: sum(state.instance_stats(i).deleted for i in INSTANCES) == 22
                )
            reports = await audit_tool.audit(settings, minutes=10, grace=0, idle=1)
            path = tmp_path / "bridge.toml"
            path.write_text(text)
            cli = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "bridge", "audit", "--config", str(path), "--grace", "0",
                 "--minutes", "10", "--idle", "1"],
                capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
                env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            )  # fmt: skip
        finally:
            await delete_topology(AMQP_URL, names)
    lost = {i: state.instance(i).journal.lost for i in INSTANCES}
    assert lost[first] == [f"ID{first}inc{n:05d}" for n in (10, 11, 12)]
    assert lost[second] == [f"ID{second}out00000"]
    by_instance = {r.instance: r for r in reports}
    assert sorted(m.idMessage for m in by_instance[first].missing) == lost[first]
    assert [m.idMessage for m in by_instance[second].missing] == lost[second]
    assert (by_instance[first].journal, by_instance[first].in_rabbitmq) == (19, 16)
    assert (by_instance[second].journal, by_instance[second].in_rabbitmq) == (6, 5)
    assert {m.type for m in by_instance[second].missing} == {"outgoing"}
    assert all(r.error is None for r in reports)
    assert cli.returncode == 1, cli.stderr
    for ident in (*lost[first], *lost[second]):
        assert f"missing {ident}" in cli.stdout
    assert "tok-" not in cli.stdout + cli.stderr  # the token sits in the journal URL


async def test_nothing_missing_exits_zero_and_an_unreadable_journal_is_an_error(
    tmp_path: Path,
) -> None:
    names = Names()
    async with fake_greenapi([(INSTANCES[0], "tok-good-xxxxxxxxxxxxxxxxxxxxxxxx")]) as fake:
        text, _ = bridge_toml(amqp_url=AMQP_URL, names=names, api_url=fake.url, instances=INSTANCES)
        env = {
            f"TOKEN_{INSTANCES[0]}": "tok-good-xxxxxxxxxxxxxxxxxxxxxxxx",
            f"TOKEN_{INSTANCES[1]}": "tok-unknown-instance-xxxxxxxxxxxx",
        }
        settings = settings_for(tmp_path, text, env)
        try:
            async with running(settings):
                fake.state.enqueue_many(INSTANCES[0], [message(INSTANCES[0], n) for n in range(4)])
                await wait_until(lambda: fake.state.instance_stats(INSTANCES[0]).deleted == 4)
            reports = await audit_tool.audit(settings, minutes=10, grace=0, idle=1)
        finally:
            await delete_topology(AMQP_URL, names)
    good, bad = reports
    assert (good.journal, good.in_rabbitmq, good.missing, good.error) == (4, 4, [], None)
    assert bad.error is not None and "HTTP 403" in bad.error and "tok-" not in bad.error
