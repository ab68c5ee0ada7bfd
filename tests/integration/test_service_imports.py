"""What the service loads: `bridge run` and `bridge --help` import no tool, no fake provider and
no benchmark (STYLE.md 18: they live beside the service and may import it, never the reverse).

The service runs as a real process under `python -X importtime`, which lists every module it
imports, whenever it does: at start, and later while it polls, takes a webhook and stops.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import AMQP_URL, greenapi_samples
from tests.support.harness import Names, delete_topology, free_port, token_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

REPO = Path(__file__).parents[2]
#: Beside the service: never imported by `bridge run`.
OUTSIDE = ("fakeprovider", "benchmarks", "bridge.tools")
POLLED, HOOKED = "1101000001", "1101000002"
HOOK_TOKEN = "hook-token-xxxxxxxxxxxxxxxx"


def imported(importtime: str) -> set[str]:
    """The modules named by `-X importtime` lines (`import time: self | cumulative | name`)."""
    names = set()
    for line in importtime.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip())
    names.discard("imported package")  # the header line
    return names


def outside(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == o or m.startswith(f"{o}.") for o in OUTSIDE))


def config(names: Names, port: int, dead_port: int) -> str:
    """One polling source whose provider port nobody listens on, one webhook source."""
    return f"""\
[amqp]
url = "{AMQP_URL}"
exchange = "{names.exchange}"
unrouted_exchange = "{names.unrouted}"
invalid_exchange = "{names.invalid}"
[http]
listen = "127.0.0.1:{port}"
[poll]
backoff_initial = 0.05
backoff_max = 0.2
[lease]
exchange = "{names.members}"
[[sources]]
provider = "greenapi"
mode = "poll"
instance = "{POLLED}"
api_url = "http://127.0.0.1:{dead_port}"
token_env = "POLL_TOKEN"
receive_timeout = 5
[[sources]]
provider = "greenapi"
mode = "webhook"
instance = "{HOOKED}"
webhook_token_env = "HOOK_TOKEN"
"""


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Call `check()` until it returns true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.1)


def poll_errors(base: str) -> float:
    """bridge_poll_errors_total summed over its series."""
    text = httpx.get(f"{base}/metrics", timeout=5).text
    rows = [line for line in text.splitlines() if line.startswith("bridge_poll_errors_total")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in rows)


def test_help_imports_no_command_implementation() -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "bridge", "--help"],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    modules = imported(result.stderr)
    assert {"bridge.cli", "bridge.arguments"} <= modules  # the listing is the real one
    assert outside(modules) == []


def test_the_running_service_imports_no_tool_fake_or_benchmark(tmp_path: Path) -> None:
    names = Names()
    port = free_port()
    path = tmp_path / "bridge.toml"
    path.write_text(config(names, port, dead_port=free_port()))
    env = {**os.environ, "POLL_TOKEN": token_for(POLLED), "HOOK_TOKEN": HOOK_TOKEN}
    log = tmp_path / "stderr.txt"  # a file: importtime writes more than a pipe holds
    base = f"http://127.0.0.1:{port}"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "bridge", "run", "--config", str(path),
             "--log-format", "json"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    try:

        def answers(route: str) -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            return httpx.get(f"{base}{route}", timeout=5).status_code == 200

        wait_for(lambda: answers("/healthz"), "/healthz answers")
        wait_for(lambda: answers("/readyz"), "the broker is ready")
        _, body = greenapi_samples()[0]
        hook = httpx.post(
            f"{base}/webhooks/greenapi/{HOOKED}",
            content=body,
            headers={"Authorization": f"Bearer {HOOK_TOKEN}"},
            timeout=10,
        )
        assert hook.status_code == 200, hook.text
        wait_for(lambda: poll_errors(base) > 0, "a poll of the unused port failed")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            asyncio.run(delete_topology(AMQP_URL, names))
    assert code == 0, log.read_text()[-3000:]
    modules = imported(log.read_text())
    # the listing covers the service's start, its poller, its webhook path and its stop
    assert {"bridge.app", "bridge.ingest.poller", "bridge.ingest.webhooks"} <= modules
    assert outside(modules) == []
