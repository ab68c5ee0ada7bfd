"""Every command the docs show in a ```console block is run here, in order, against the demo.

The demo (`make run`: the fake provider feeding the bridge) is started once, on exchange names
of this test's own, and every documented command then runs in a shell with the same
environment. A command whose documented output follows it must print that output; a command
that is documented as long-running (`make run`, `bridge run`, `bridge fake-provider`, `bridge
tail` without `--count`) is started, checked alive after a few seconds, and stopped with
SIGTERM, which must exit 0. `rabbitmqctl` commands run as documented, through the machine's
own `rabbitmqctl` (Debian's wrapper: it runs from /var/lib/rabbitmq as the rabbitmq user),
against the tests' own RabbitMQ node; what they import is deleted afterwards. Commands that
cannot run here are listed in EXEMPT with the reason.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pika
import pytest

from tests.conftest import DEMO_ENV
from tests.support.rabbitnode import RabbitNode

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).parents[2]
DOCS = [
    REPO / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
    REPO / "examples" / "README.md",
    REPO / "deploy" / "README.md",
]
EXEMPT = {
    "make test": "it is what CI runs; running it from inside itself would recurse",
    "make unit": "the unit tier, which the same `make test` runs itself",
    "docker ": "no Docker engine here; Dockerfile and compose.yaml are checked by test_deploy.py, and the image is built and exercised by tests/integration/test_image.py",
    "kubectl": "no Kubernetes here; the manifests are checked by test_deploy.py",
    "sudo ": "changes the machine",
    "systemctl": "changes the machine",
    "make bench": "a benchmark (minutes); its harness has its own smoke tests",
    "bridge bench": "a benchmark (minutes); its harness has its own smoke tests",
    "pipx install": "installs into the user's ~/.local; the image installs the same wheel, and test_image.py runs both of its commands",
    "make run": "started once for the whole test (the demo every other command runs against)",
}
#: run against the tests' own RabbitMQ node, never the shared broker (they add policies)
ON_OWN_NODE = ("rabbitmqctl ",)
LONG_RUNNING = ("bridge run", "bridge fake-provider")
#: consumer services: run until stopped
SERVICES = re.compile(r"^(\w+=\S+ )*python examples/")


@dataclass
class Command:
    doc: str
    line: int
    text: str
    output: list[str] = field(default_factory=list)


def documented_commands() -> list[Command]:
    commands: list[Command] = []
    for path in DOCS:
        if not path.exists():
            continue
        in_console = False
        current: Command | None = None
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip().startswith("```"):
                in_console = line.strip() == "```console"
                current = None
                continue
            if not in_console:
                continue
            if line.startswith("$ "):
                current = Command(path.relative_to(REPO).as_posix(), number, line[2:].strip())
                commands.append(current)
            elif current is not None and current.text.endswith("\\"):
                current.text = current.text[:-1] + " " + line.strip()
            elif current is not None and line.strip():
                current.output.append(line.strip())
    return commands


def exempt(command: Command) -> str | None:
    for prefix, reason in EXEMPT.items():
        if command.text.startswith(prefix):
            return reason
    return None


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    prefix = f"docs{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        **DEMO_ENV,
        "BRIDGE_AMQP__EXCHANGE": f"{prefix}.notifications",
        "BRIDGE_AMQP__UNROUTED_EXCHANGE": f"{prefix}.notifications.unrouted",
        "BRIDGE_AMQP__INVALID_EXCHANGE": f"{prefix}.notifications.invalid",
        "BRIDGE_LEASE__EXCHANGE": f"{prefix}.members",  # the demo polls: its leases' beats
        "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}",
    }
    dead_letter_existed = _queue_exists("notifications.dead")
    log = tmp_path_factory.mktemp("demo") / "make-run.log"
    with log.open("wb") as out:  # a file, not a pipe: a full pipe would stall the demo
        demo = subprocess.Popen(
            ["make", "run"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            assert demo.poll() is None, log.read_text()
            try:
                if httpx.get("http://127.0.0.1:8080/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "make run did not get ready"
            time.sleep(0.5)
        yield env
    finally:
        os.killpg(demo.pid, signal.SIGINT)
        try:
            demo.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
        cleanup(prefix, dead_letter=not dead_letter_existed)


def _queue_exists(name: str) -> bool:
    script = f"""
import asyncio, aio_pika, sys
async def main():
    c = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
    async with c:
        ch = await c.channel()
        try:
            await ch.declare_queue("{name}", passive=True)
        except Exception:
            sys.exit(1)
asyncio.run(main())
"""
    python = str(REPO / ".venv" / "bin" / "python")
    return subprocess.run([python, "-c", script], check=False, timeout=30).returncode == 0


def cleanup(prefix: str, *, dead_letter: bool) -> None:
    script = f"""
import asyncio, aio_pika
async def main():
    c = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
    async with c:
        for q in ("{prefix}.notifications.unrouted", "{prefix}.notifications.invalid", "billing.incoming",
                  "{prefix}.notifications.archive",
                  *(("notifications.dead",) if {dead_letter!r} else ())):
            ch = await c.channel()
            try: await ch.queue_delete(q)
            except Exception: pass
        for e in ("{prefix}.notifications", "{prefix}.notifications.unrouted", "{prefix}.notifications.invalid",
                  "{prefix}.notifications.ingest", "{prefix}.members",
                  *(("notifications.dead",) if {dead_letter!r} else ())):
            ch = await c.channel()
            try: await ch.exchange_delete(e)
            except Exception: pass
asyncio.run(main())
"""
    subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-c", script], check=False, timeout=30)


COMMANDS = documented_commands()


def test_the_docs_show_commands() -> None:
    assert any(c.text.startswith("bridge ") for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.doc}:{c.line}" for c in COMMANDS])
def test_documented_command(command: Command, request: pytest.FixtureRequest) -> None:
    reason = exempt(command)
    if reason is not None:
        pytest.skip(reason)
    text = command.text
    if text.startswith(ON_OWN_NODE):
        on_own_node(command, request.getfixturevalue("own_rabbit"))
        return
    demo_env: dict[str, str] = request.getfixturevalue("demo_env")
    env = dict(demo_env)
    if m := re.fullmatch(r"export (\w+)=(\S+)", text):
        demo_env[m[1]] = m[2]  # later commands of the docs see it, as in a shell
        return
    if text in ("source .venv/bin/activate", ". .venv/bin/activate"):
        return  # PATH already starts with .venv/bin
    long_running = text.startswith(LONG_RUNNING) or SERVICES.match(text) is not None
    if long_running or (text.startswith("bridge tail") and "--count" not in text):
        proc = subprocess.Popen(
            ["bash", "-c", text],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        time.sleep(4)
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out.decode()
        return
    result = subprocess.run(
        ["bash", "-c", text],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    printed = result.stdout + result.stderr
    if any("error" in line for line in command.output):
        assert result.returncode != 0, printed
    else:
        assert result.returncode == 0, printed
    for line in command.output:
        if line in ("…", "..."):
            continue
        assert line in printed, f"documented output {line!r} not in:\n{printed}"


def _definitions(node: RabbitNode) -> dict[str, Any]:
    return json.loads(node.rabbitmqctl("-q", "export_definitions", "-"))


def _names(defs: dict[str, Any], kind: str) -> set[str]:
    return {item["name"] for item in defs.get(kind, []) if item.get("vhost", "/") == "/"}


def on_own_node(command: Command, node: RabbitNode) -> None:
    """Run a documented `rabbitmqctl` command verbatim, in the repository's root, with the
    machine's `rabbitmqctl`, on `node`; an import must then hold all of definitions.json.
    Everything it added is deleted again, so the node is left as it was."""
    cookie = (node.data_dir or Path()) / ".erlang.cookie"
    env = {
        **os.environ,
        "RABBITMQ_NODENAME": node.name,
        # the wrapper resets HOME (and so the cookie file) to the rabbitmq user's
        "RABBITMQ_ERLANG_COOKIE": cookie.read_text(),
    }
    before = _definitions(node)
    imported: dict[str, Any] | None = None  # the node's definitions once the import is done
    try:
        result = subprocess.run(
            ["bash", "-c", command.text], cwd=REPO, env=env, capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        if "import_definitions" not in command.text:
            return
        wanted = json.loads((REPO / "deploy" / "rabbitmq" / "definitions.json").read_text())
        deadline = time.monotonic() + 30  # the import runs asynchronously in the broker
        while True:
            have = _definitions(node)
            missing = {
                kind: _names(wanted, kind) - _names(have, kind)
                for kind in ("exchanges", "queues", "policies")
            }
            if not any(missing.values()):
                imported = have
                break
            assert time.monotonic() < deadline, f"not imported: {missing}"
            time.sleep(0.2)
    finally:
        _restore(node, before, imported)


def _restore(node: RabbitNode, before: dict[str, Any], now: dict[str, Any] | None) -> None:
    """Delete the exchanges, queues and policies of vhost / that `before` did not have
    (`now`: the node's definitions, if they were just read)."""
    now = now or _definitions(node)
    for name in _names(now, "policies") - _names(before, "policies"):
        node.rabbitmqctl("clear_policy", name)
    queues = _names(now, "queues") - _names(before, "queues")
    exchanges = _names(now, "exchanges") - _names(before, "exchanges")
    if queues or exchanges:
        with pika.BlockingConnection(pika.URLParameters(node.amqp_url)) as connection:
            channel = connection.channel()
            for name in queues:
                channel.queue_delete(name)
            for name in exchanges:
                channel.exchange_delete(name)
