"""The `bridge` command line: exit codes and messages users see."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aio_pika
import pytest

from tests.conftest import AMQP_URL, DEMO_ENV
from tests.support.harness import Names

REPO = Path(__file__).parents[2]


def bridge(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        check=False, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_check_config_prints_effective_config_masked() -> None:
    result = bridge(
        "check-config", "--config", "bridge.toml",
        env={**DEMO_ENV, "GREENAPI_TOKEN_1101000001": "secret-one-xyz", "GREENAPI_TOKEN_1101000002": "secret-two-xyz",
             "BRIDGE_AMQP__URL": "amqp://user:hunter2@rabbit:5672/"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["amqp"]["url"] == "amqp://user:***@rabbit:5672/"
    assert len(data["sources"]) == 7
    assert "config ok: 2 polling and 5 webhook sources" in result.stderr
    assert "secret-one" not in result.stdout + result.stderr
    assert "hunter2" not in result.stdout + result.stderr


def test_missing_secret_names_the_variable() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENAPI_TOKEN")}
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "check-config", "--config", "bridge.toml"],
        check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "GREENAPI_TOKEN_1101000001 is not set" in result.stderr


def test_bad_file_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[amqp]\nconfirm_timeout = 'soon'\n")
    for command in ("check-config", "run"):
        result = bridge(command, "--config", str(path))
        assert result.returncode == 2
        assert "amqp.confirm_timeout" in result.stderr


def test_unknown_command_is_a_usage_error() -> None:
    result = bridge("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_fake_provider_rejects_bad_instances() -> None:
    result = bridge("fake-provider", "--instance", "notdigits")
    assert result.returncode == 2
    assert "ID:TOKEN" in result.stderr


@pytest.mark.integration
def test_topology_conflict_is_a_config_error(tmp_path: Path) -> None:
    names = Names()

    async def declare_conflicting() -> None:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            await channel.declare_exchange(names.exchange, "fanout", durable=True)

    async def cleanup() -> None:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            for q in (names.unrouted, names.invalid):
                await channel.queue_delete(q)
            for e in (names.exchange, names.unrouted, names.invalid):
                await channel.exchange_delete(e)

    asyncio.run(declare_conflicting())
    try:
        path = tmp_path / "b.toml"
        path.write_text(
            f'[amqp]\nurl = "{AMQP_URL}"\nexchange = "{names.exchange}"\n'
            f'unrouted_exchange = "{names.unrouted}"\ninvalid_exchange = "{names.invalid}"\n'
            '[http]\nlisten = "127.0.0.1:0"\n'
        )
        result = bridge("run", "--config", str(path), "--log-format", "json")
        assert result.returncode == 2
        assert "PRECONDITION_FAILED" in result.stderr or "conflicting" in result.stderr
    finally:
        asyncio.run(cleanup())


def test_fake_provider_serves_every_provider(tmp_path: Path) -> None:
    import httpx

    from tests.support.harness import free_port, token_for

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "fake-provider", "--listen", f"127.0.0.1:{port}",
         "--instance", f"1101000001:{token_for('1')}", "--evolution", "sales-bot:evo-token",
         "--chatapi", "4242:chat-token", "--seed-samples", "--log-format", "json"],
        cwd=REPO, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                stats = httpx.get(f"http://127.0.0.1:{port}/_control/stats").json()
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert stats["instances"]["1101000001"]["outstanding"] == 18
        evolution = httpx.get(f"http://127.0.0.1:{port}/_control/evolution/stats").json()
        chat = httpx.get(f"http://127.0.0.1:{port}/_control/chatapi/stats").json()
        assert "sales-bot" in json.dumps(evolution) and "4242" in json.dumps(chat)
        answer = httpx.get(
            f"http://127.0.0.1:{port}/waInstance1101000001/receiveNotification/{token_for('1')}"
        )
        assert answer.status_code == 200 and answer.json()["body"]["typeWebhook"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert token_for("1") not in stderr
    # the fake logs like the service: JSON lines, its fields as keys
    [started] = [json.loads(line) for line in stderr.splitlines() if '"fake.started"' in line]
    assert (started["level"], started["logger"]) == ("info", "fakeprovider.server")
    assert started["listen"] == f"127.0.0.1:{port}"
    assert (started["instances"], started["evolution"], started["chatapi"]) == (
        "1101000001",
        "sales-bot",
        "4242",
    )
    assert started["seeded"] == 18


def test_bench_hands_its_arguments_to_the_harness() -> None:
    result = bridge("bench", "poll", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: bridge bench poll ")
    assert "--per-instance" in result.stdout
    listing = bridge("bench", "--help")
    assert listing.returncode == 0, listing.stderr
    assert all(name in listing.stdout for name in ("poll", "webhook", "compare"))


def test_bench_outside_a_checkout_says_where_it_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bridge import cli

    for name in ("benchmarks", "benchmarks.cli"):  # as in the wheel: not importable
        monkeypatch.setitem(sys.modules, name, None)
    assert cli.main(["bench", "poll"]) == 2
    assert "bridge bench runs from a checkout of the repository" in capsys.readouterr().err
