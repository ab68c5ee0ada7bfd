"""compose.yaml's services that run the bridge image, started from the exported image (see
tests/support/image.py) the way compose would start them, on the host's network.

What differs from compose, and why:
* the services' host names (rabbitmq, fake-provider, the replicas) are written into the image's
  /etc/hosts as 127.0.0.1, as compose's DNS would resolve them: rabbitmq is the local broker;
* every port a service listens on (`0.0.0.0:P` in its command, environment or mounted files)
  becomes a free port on 127.0.0.1, and every `<service>:P` or `127.0.0.1:P` that names it
  (other services' settings, the healthcheck) follows; the services share one network here;
* nginx is not built from this image: `http://nginx` becomes the first webhook replica, the one
  nginx forwards to;
* the shared broker's real names stay untouched: the bridge's exchanges (BRIDGE_AMQP__*,
  BRIDGE_LEASE__EXCHANGE) and the polled instances (BRIDGE_SOURCES__<n>__INSTANCE, so the lease
  queues are the test's own) come from the environment, and the example queue and its exchanges
  get the test's prefix (`queues declare … --exchange … --dead-letter-exchange …`).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from tests.support.harness import Names, free_port
from tests.support.image import Image, Running, wait_for

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
IMAGE_NAME = "bridge:local"
# Run in place of a service that is not the bridge image: the one it forwards to.
STAND_INS = {"nginx": "bridge-webhook-1"}
EXTERNAL = {"rabbitmq"}  # the local RabbitMQ on 127.0.0.1:5672
EXAMPLE_QUEUE = "billing.incoming"
LISTEN = re.compile(r"0\.0\.0\.0:(\d+)")


def services() -> dict[str, dict[str, Any]]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    found: dict[str, dict[str, Any]] = doc["services"]
    return found


def bridge_services() -> list[str]:
    """The services that run the bridge's image (compose builds it from the Dockerfile)."""
    return sorted(
        name
        for name, spec in services().items()
        if spec.get("image") == IMAGE_NAME or spec.get("build") is not None
    )


def mounts(spec: Mapping[str, Any]) -> dict[str, Path]:
    """{container path: host file} of a service's bind mounts."""
    out: dict[str, Path] = {}
    for volume in spec.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            out[target] = (ROOT / source).resolve()
    return out


def env_of(spec: Mapping[str, Any]) -> dict[str, str]:
    env = spec.get("environment") or {}
    assert isinstance(env, dict), "environment: use the mapping form"
    return {str(k): str(v) for k, v in env.items()}


def healthcheck(spec: Mapping[str, Any]) -> list[str] | None:
    check = spec.get("healthcheck") or {}
    if check.get("disable"):
        return None
    test = check.get("test")
    if test is None:
        return None
    assert test[0] == "CMD", f"healthcheck {test}: exec form expected"
    return [str(word) for word in test[1:]]


def one_shot(spec: Mapping[str, Any]) -> bool:
    return str(spec.get("restart", "no")).split(":")[0] in ("no", "on-failure")


def named(argv: list[str]) -> list[str]:
    """`argv` with its program by name: the image's entry point is `/app/.venv/bin/bridge`."""
    return [PurePosixPath(argv[0]).name, *argv[1:]] if argv else []


class Stack:
    """Starts compose services (and what they depend on) from the image; `image.stop_all`
    stops them."""

    def __init__(self, image: Image, names: Names) -> None:
        self.image = image
        self.names = names
        self.specs = services()
        self.ports: dict[str, dict[str, str]] = {}  # service: {container port: host port}
        self.running: dict[str, Running | None] = {}
        hosts = "127.0.0.1 localhost " + " ".join(self.specs) + "\n"
        (image.root / "etc" / "hosts").write_text(hosts)
        self.polled = polled_sources(image.root / "app" / "bridge.toml")

    # -- what compose would run ----------------------------------------------------------

    def argv(self, name: str) -> list[str]:
        spec = self.specs[name]
        return self.image.argv(spec.get("command"), spec.get("entrypoint"))

    def env(self, name: str) -> dict[str, str]:
        """The service's environment as compose gives it (over the image's ENV)."""
        return self.image.env(env_of(self.specs[name]))

    def listens(self, name: str) -> set[str]:
        spec = self.specs[name]
        text = " ".join(self.argv(name)) + " " + " ".join(self.env(name).values())
        text += " ".join(path.read_text() for path in mounts(spec).values())
        return set(LISTEN.findall(text))

    # -- as run here -----------------------------------------------------------------------

    def rewrite(self, name: str, text: str) -> str:
        own = self.ports.get(name, {})
        for port, host in own.items():
            text = text.replace(f"0.0.0.0:{port}", f"127.0.0.1:{host}")
            text = text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{host}")
            text = text.replace(f"'127.0.0.1', {port})", f"'127.0.0.1', {host})")
        for other, ports in self.ports.items():
            for port, host in ports.items():
                text = text.replace(f"//{other}:{port}", f"//{other}:{host}")
        for alias, stand_in in STAND_INS.items():
            port = self.ports.get(stand_in, {}).get("8080")
            if port:
                text = re.sub(rf"http://{alias}(?=[/\s]|$)", f"http://{stand_in}:{port}", text)
        return text.replace(EXAMPLE_QUEUE, f"{self.names.prefix}.{EXAMPLE_QUEUE}")

    def isolated_env(self, name: str) -> dict[str, str]:
        env = {k: self.rewrite(name, v) for k, v in self.env(name).items()}
        argv = self.argv(name)
        if named(argv)[:2] in (["bridge", "run"], ["bridge", "fake-provider"]):
            env.update(
                BRIDGE_AMQP__EXCHANGE=self.names.exchange,
                BRIDGE_AMQP__UNROUTED_EXCHANGE=self.names.unrouted,
                BRIDGE_AMQP__INVALID_EXCHANGE=self.names.invalid,
                BRIDGE_LEASE__EXCHANGE=self.names.members,
            )
            if "/app/bridge.toml" in argv:
                digits = str(int(self.names.prefix[1:], 16))[-8:]  # GREEN-API ids are digits
                for index in self.polled:
                    env[f"BRIDGE_SOURCES__{index}__INSTANCE"] = f"7{digits}{index}"
        return env

    def isolated_argv(self, name: str) -> list[str]:
        argv = [self.rewrite(name, word) for word in self.argv(name)]
        if named(argv)[:3] == ["bridge", "queues", "declare"]:
            argv += ["--exchange", self.names.exchange]
            argv += ["--dead-letter-exchange", f"{self.names.prefix}.dead"]
        return argv

    def start(self, name: str, timeout: float = 40) -> Running | None:
        """Start `name` after its dependencies; return once it is up (healthy, done, or
        consuming), as `depends_on` would wait for it."""
        name = STAND_INS.get(name, name)
        if name in EXTERNAL or name in self.running:
            return self.running.get(name)
        spec = self.specs[name]
        for dependency in spec.get("depends_on") or {}:
            self.start(dependency)
        self.ports[name] = {port: str(free_port()) for port in sorted(self.listens(name))}
        for target, source in mounts(spec).items():
            self.image.put(target, source)
        running = self.image.start(self.isolated_argv(name), self.isolated_env(name), name)
        self.running[name] = running
        check = healthcheck(spec)
        if check is not None:
            argv = [self.rewrite(name, word) for word in check]
            wait_for(
                lambda: self.image.run(argv, timeout=10).returncode == 0,
                timeout,
                f"{name} healthy",
                running,
            )
        elif one_shot(spec):
            code = running.process.wait(timeout=timeout)
            assert code == 0, f"{name} exited {code}:\n{running.output()[-4000:]}"
        return running


def polled_sources(path: Path) -> dict[int, str]:
    """{index: instance} of the polling sources of a bridge configuration."""
    sources = tomllib.loads(path.read_text()).get("sources", [])
    return {i: s["instance"] for i, s in enumerate(sources) if s.get("mode") == "poll"}
