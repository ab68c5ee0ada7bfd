"""The container image, built from the Dockerfile and run: what users start with `docker run`
or `docker compose up` must start.

The image is built once per session by scripts/build-image.sh (docker when an engine answers,
else podman from a Debian base; cached under a tag that hashes the build's inputs, so an
unchanged tree is not rebuilt) and exported into a directory. Its commands then run there with
chroot as the image's own user, with the image's environment and entry point, on the host's
network: see tests/support/image.py. Skipped, with the reason, only where no engine can build
or chroot is not allowed (not root).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import httpx
import pytest

from tests.conftest import AMQP_URL, greenapi_samples
from tests.support import composestack
from tests.support.harness import Names, collector, delete_topology, free_port, wait_until
from tests.support.image import Image, Unavailable, build, exported, inspect, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Measured 238 MB (podman, Debian bookworm base); docs/development.md records both numbers.
SIZE_BUDGET = 285_000_000
# Must never reach the image: the dev group, whatever pyproject.toml says it holds today.
DEV_ONLY = {
    "pytest",
    "pytest-asyncio",
    "pytest-timeout",
    "hypothesis",
    "ruff",
    "mypy",
    "pika",
    "fastapi",
    "faststream",
    "whatsapp-api-client-python",
    "pyyaml",
    "kombu",
    "cloudevents",
}
SECRET_NAMES = re.compile(
    r"(\.pem|\.key|\.p12|\.pfx|\.crt|^\.env(\..*)?|token.*|^id_(rsa|ed25519).*)$"
)
TOKEN = "image-webhook-token-0123456789"
INSTANCE = "1101000077"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    logs = tmp_path_factory.mktemp("image")
    started = time.monotonic()
    try:
        engine, ref = build(logs / "build.log")
    except Unavailable as exc:
        pytest.skip(f"image not built: {exc}")
    print(f"\nimage: {ref} ({engine}) ready in {time.monotonic() - started:.0f} s")
    with exported(engine, ref) as root:
        built = Image(engine, ref, root, inspect(engine, ref), logs)
        try:
            yield built
        finally:
            built.stop_all()


@pytest.fixture
def img(image: Image) -> Iterator[Image]:
    """The session's image; whatever a test started from it is stopped after the test."""
    try:
        yield image
    finally:
        image.stop_all()


# -- what the image is -------------------------------------------------------------------


def test_version_and_commands(img: Image) -> None:
    done = img.run(["bridge", "--version"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["bridge", PYPROJECT["project"]["version"]]
    for command in ("run", "check-config", "fake-provider", "simulate", "queues", "tail"):
        done = img.run(["bridge", command, "--help"])
        assert done.returncode == 0, f"bridge {command} --help: {done.stderr}"


def test_default_user_is_not_root(img: Image) -> None:
    assert img.config["User"] == "10001:10001"
    done = img.run(["id", "-u"])
    assert done.stdout.strip() == "10001"
    assert img.argv()[:2] == ["/app/.venv/bin/bridge", "run"]


def test_the_entry_point_is_ours_whatever_bridge_comes_first_on_path(img: Image) -> None:
    """`bridge` is also iproute2's: with one earlier on PATH (as a derived image that installs
    iproute2 would have), the entry point still runs ours; `whatsapp-bridge` is ours too."""
    version = f"bridge {PYPROJECT['project']['version']}\n"
    impostor = img.root / "usr" / "local" / "sbin" / "bridge"
    impostor.parent.mkdir(parents=True, exist_ok=True)
    impostor.write_text('#!/bin/sh\necho "bridge utility, iproute2"\n')
    impostor.chmod(0o755)
    try:
        path = {"PATH": "/usr/local/sbin:" + img.env()["PATH"]}
        assert img.run(["bridge", "--version"], env=path).stdout.startswith("bridge utility")
        done = img.run(img.argv(["--version"]), env=path)
        assert (done.returncode, done.stdout) == (0, version), done.stderr
        done = img.run(["whatsapp-bridge", "--version"], env=path)
        assert (done.returncode, done.stdout) == (0, version), done.stderr
    finally:
        impostor.unlink()


def test_no_dev_dependencies_tests_or_history(img: Image) -> None:
    installed = {
        normalize(p.name.split("-")[0]) for p in img.files("/app/.venv") if p.suffix == ".dist-info"
    }
    assert "bridge" in installed
    runtime = {
        normalize(re.split(r"[<>=!~;\[ ]", d)[0]) for d in PYPROJECT["project"]["dependencies"]
    }
    dev = {normalize(re.split(r"[<>=!~;\[ ]", d)[0]) for d in PYPROJECT["dependency-groups"]["dev"]}
    assert not installed & ({normalize(n) for n in DEV_ONLY} | (dev - runtime))
    everything = list(img.files())
    assert not [p for p in everything if p.name == ".git"]
    app = [p for p in everything if p.parts[1] == "app"]
    assert not [p for p in app if "tests" in p.parts[:3] or "benchmarks" in p.parts[:3]]
    site = [p for p in app if "site-packages" in p.parts]
    assert not [
        p for p in site if p.parent.name == "site-packages" and p.name in ("tests", "benchmarks")
    ]


def test_no_secrets(img: Image) -> None:
    found = []
    for path in img.files("/app"):
        if SECRET_NAMES.search(path.name) and not (img.root / str(path)[1:]).is_dir():
            found.append(str(path))
    # certifi's CA bundle is public; Python modules about tokens are not secrets either.
    allowed = re.compile(r"/certifi/cacert\.pem$|\.py[ci]?$")
    assert [p for p in found if not allowed.search(p)] == []
    shipped = (img.root / "app" / "bridge.toml").read_text()
    assert not re.search(r"^\s*(token|webhook_token)\s*=", shipped, re.M), "secrets in bridge.toml"


def test_size_within_budget(img: Image) -> None:
    size = int(img.meta["Size"])
    print(f"\nimage size: {size / 1e6:.0f} MB (budget {SIZE_BUDGET / 1e6:.0f} MB)")
    assert size < SIZE_BUDGET


def test_check_config_of_the_shipped_configuration(img: Image) -> None:
    shipped = tomllib.loads((img.root / "app" / "bridge.toml").read_text())
    secrets = {  # every secret a source names, by its variable
        variable: f"secret-{i}-{'x' * 20}"
        for i, s in enumerate(shipped["sources"])
        for key, variable in s.items()
        if key.endswith("_env")
    }
    done = img.run(["bridge", "check-config", "--config", "/app/bridge.toml"], secrets)
    assert done.returncode == 0, done.stderr
    assert "config ok: 2 polling and 5 webhook sources" in done.stderr
    assert not [v for v in secrets.values() if v in done.stdout + done.stderr]
    missing = img.run(["bridge", "check-config", "--config", "/app/bridge.toml"])
    assert missing.returncode != 0


# -- the service, from the image ---------------------------------------------------------


def webhook_config(names: Names) -> str:
    return f"""
[amqp]
url = "{AMQP_URL}"
exchange = "{names.exchange}"
unrouted_exchange = "{names.unrouted}"
invalid_exchange = "{names.invalid}"
[lease]
exchange = "{names.members}"
[[sources]]
provider = "greenapi"
mode = "webhook"
instance = "{INSTANCE}"
webhook_token_env = "GREENAPI_WEBHOOK_TOKEN"
"""


async def test_run_webhook_to_rabbitmq_then_drain(img: Image, tmp_path: Path) -> None:
    names = Names()
    config = tmp_path / "bridge.toml"
    config.write_text(webhook_config(names))
    img.put("/etc/bridge/bridge.toml", config)
    port = free_port()
    # As `docker run -e …`: the token, and a free loopback port instead of the image's 0.0.0.0:8080.
    env = {"GREENAPI_WEBHOOK_TOKEN": TOKEN, "BRIDGE_HTTP__LISTEN": f"127.0.0.1:{port}"}
    argv = img.argv(["run", "--config", "/etc/bridge/bridge.toml", "--log-format", "json"])
    service = img.start(argv, env, "run")
    base = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(
            wait_for,
            lambda: httpx.get(f"{base}/readyz").status_code == 200,
            30,
            "/readyz 200",
            service,
        )
        test = img.healthcheck
        assert test[0] == "CMD"
        probe = [w.replace("127.0.0.1:8080", f"127.0.0.1:{port}") for w in test[1:]]
        assert img.run(probe).returncode == 0, "the image's HEALTHCHECK fails"
        name, body = greenapi_samples()[0]
        async with collector(AMQP_URL, names.exchange) as got:
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                url = f"/webhooks/greenapi/{INSTANCE}"
                wrong = await client.post(url, content=body, headers={"Authorization": "Bearer no"})
                assert wrong.status_code == 401
                ok = await client.post(
                    url, content=body, headers={"Authorization": f"Bearer {TOKEN}"}
                )
                assert ok.status_code == 200, ok.text
            await wait_until(lambda: len(got.messages) >= 1, 15)
            (message,) = got.messages
            assert message.body == body, name
            assert message.headers["x-instance"] == INSTANCE
        code = await asyncio.to_thread(service.stop, 30)
        assert code == 0, service.output()[-4000:]
        events = [
            json.loads(line).get("event")
            for line in service.output().splitlines()
            if line.startswith("{")
        ]
        assert "service.stopping" in events and "service.stopped" in events
        assert TOKEN not in service.output()
    finally:
        await delete_topology(AMQP_URL, names)


# -- compose.yaml, against the image it names -------------------------------------------


def test_compose_names_every_file_and_variable(img: Image) -> None:
    stack = composestack.Stack(img, Names())
    for name in composestack.bridge_services():
        spec = stack.specs[name]
        for target, source in composestack.mounts(spec).items():
            assert source.is_file(), f"{name}: {source} (mounted at {target}) is missing"
            img.put(target, source)
        argv = stack.argv(name)
        assert argv[0] in ("/app/.venv/bin/bridge", "python"), f"{name}: {argv}"
        for word in argv:
            if word.startswith("/"):
                assert (img.root / word[1:]).exists(), f"{name}: {word} is not in the image"
        if composestack.named(argv)[:2] in (["bridge", "run"], ["bridge", "fake-provider"]):
            config = argv[argv.index("--config") + 1]
            check = img.run(["bridge", "check-config", "--config", config], stack.env(name))
            assert check.returncode == 0, f"{name}: {check.stderr}"


@pytest.mark.parametrize("service", composestack.bridge_services())
async def test_compose_service_starts_from_the_image(img: Image, service: str) -> None:
    """Each service is started as compose starts it (dependencies first, each waited for as
    depends_on says), far enough to see it serve: its healthcheck passes, its one-shot job
    exits 0, or the consumer consumes; then compose's stop (SIGTERM) must end it with 0. Host
    names and ports are mapped onto 127.0.0.1 (tests/support/composestack.py says how)."""
    names = Names()
    stack = composestack.Stack(img, names)
    connection = await aio_pika.connect(AMQP_URL)
    try:
        async with collector(AMQP_URL, names.exchange) as got:
            await asyncio.to_thread(stack.start, service)
            spec = stack.specs[service]
            queue = composestack.env_of(spec).get("QUEUE")
            if queue is not None:  # the example consumer: connected and consuming
                await wait_until_consumed(connection, stack.rewrite(service, queue))
            if service in ("bridge", "bridge-2"):  # the demo: the fake's samples, polled
                await wait_until(lambda: len(got.messages) >= 1, 30)
            if service == "simulate":  # 20 notifications, each answered 200 by the replica
                simulated = stack.running[service]
                assert simulated is not None
                assert re.search(r"^200\s+20\s", simulated.output(), re.M), simulated.output()
                await wait_until(lambda: len(got.messages) >= 1, 30)
            for name, started in reversed(stack.running.items()):
                if started is not None and started.process.poll() is None:
                    code = await asyncio.to_thread(started.stop, 40)
                    assert code == 0, f"{name} on SIGTERM: {code}\n{started.output()[-4000:]}"
    finally:
        img.stop_all()
        for queue_name in (f"{names.prefix}.{composestack.EXAMPLE_QUEUE}", f"{names.prefix}.dead"):
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await (await connection.channel()).queue_delete(queue_name)
        with contextlib.suppress(aio_pika.exceptions.AMQPError):
            await (await connection.channel()).exchange_delete(f"{names.prefix}.dead")
        await connection.close()
        await delete_topology(AMQP_URL, names)


async def wait_until_consumed(connection: aio_pika.abc.AbstractConnection, queue: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        count = declared.declaration_result.consumer_count
        await channel.close()
        if count >= 1:
            return
        assert time.monotonic() < deadline, f"nobody consumes {queue}"
        await asyncio.sleep(0.3)
