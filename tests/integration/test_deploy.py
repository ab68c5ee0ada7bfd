"""The deployment kit: compose, Dockerfile, Kubernetes, nginx, Prometheus, Grafana, RabbitMQ.

Static checks parse every file and hold it to the contract (DESIGN.md, bridge/metrics.py,
bridge/amqp/topology.py); the bridge configurations shipped in deploy/ load with
`bridge.config.load`; nginx is checked with `nginx -t` and then run in front of two stub
replicas; the alert rules are unit-tested with promtool when it is installed; the RabbitMQ
definitions are imported into a real node of the tests' own, after which the bridge's own
topology declaration must still succeed (no PRECONDITION_FAILED).

Needs PyYAML (a dev dependency) and nginx (apt) for the nginx tests.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import http.client
import importlib.metadata
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import uuid
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import yaml

from bridge.amqp.topology import QUORUM, declare, topology
from bridge.config import AmqpConfig, HttpConfig, load
from bridge.metrics import REGISTRY
from bridge.tools import queues as queues_tool
from tests.support.rabbitnode import RabbitNode, own_rabbit, rabbitmq_available

__all__ = ["own_rabbit"]  # the session fixture, registered here as in conftest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DEFINITIONS = DEPLOY / "rabbitmq" / "definitions.json"
SYSTEM_PATH = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
DEAD = queues_tool.DEAD_LETTER
# Keys that would make RabbitMQ nack the bridge's publishes or drop acknowledged notifications.
UNSAFE_POLICY_KEYS = {"max-length", "max-length-bytes", "overflow", "message-ttl", "expires"}


def yaml_files() -> list[Path]:
    found = [ROOT / "compose.yaml"]
    found += sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))
    return found


def load_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    (doc,) = load_yaml(ROOT / "compose.yaml")
    return doc


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """{container path: host path} of a service's short-syntax volumes."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        out[target] = source
    return out


# ---------------------------------------------------------------------------------------------
# every file parses
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path: Path) -> None:
    assert load_yaml(path), f"{path} holds no document"


@pytest.mark.parametrize(
    "path", sorted(DEPLOY.rglob("*.json")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_json_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text()), dict)


# ---------------------------------------------------------------------------------------------
# compose and the image
# ---------------------------------------------------------------------------------------------


def test_compose_rabbitmq_loads_plugins_config_and_definitions(compose: dict[str, Any]) -> None:
    rabbit = compose["services"]["rabbitmq"]
    assert rabbit["image"] == "rabbitmq:3-management"
    assert "profiles" not in rabbit
    assert rabbit["healthcheck"]["test"][:2] == ["CMD", "rabbitmq-diagnostics"]
    assert "rabbitmq-data" in compose["volumes"]
    assert mounts(rabbit)["/var/lib/rabbitmq"] == "rabbitmq-data"
    by_source = {source: target for target, source in mounts(rabbit).items()}
    assert by_source["./deploy/rabbitmq/enabled_plugins"] == "/etc/rabbitmq/enabled_plugins"
    assert by_source["./deploy/rabbitmq/rabbitmq.conf"].startswith("/etc/rabbitmq/conf.d/")
    plugins = (DEPLOY / "rabbitmq" / "enabled_plugins").read_text().strip()
    assert re.fullmatch(r"\[[a-z_,]+\]\.", plugins), "an Erlang list term ending in a dot"
    assert {"rabbitmq_management", "rabbitmq_prometheus", "rabbitmq_consistent_hash_exchange"} <= (
        set(plugins[1:-2].split(","))
    )
    # load_definitions names the directory the definitions files are mounted into
    conf = (DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text()
    (definitions_dir,) = re.findall(r"^load_definitions\s*=\s*(\S+)$", conf, re.M)
    loaded = {t: s for t, s in mounts(rabbit).items() if t.endswith(".json")}
    assert {Path(t).parent.as_posix() for t in loaded} == {definitions_dir}
    assert set(loaded.values()) == {
        "./deploy/rabbitmq/definitions.json",
        "./deploy/rabbitmq/users.demo.json",  # a node loading definitions creates no user
    }


def test_compose_demo_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("fake-provider", "bridge", "billing-queue", "billing-consumer"):
        assert services[name]["profiles"] == ["demo"], name
    fake = services["fake-provider"]
    assert fake["command"] == [
        "fake-provider", "--config", "/app/bridge.toml", "--listen", "0.0.0.0:8091",
        "--seed-samples", "--feed", "5",
    ]  # fmt: skip
    bridge = services["bridge"]
    env = bridge["environment"]
    assert env["BRIDGE_SOURCES__0__API_URL"] == env["BRIDGE_SOURCES__1__API_URL"]
    assert env["BRIDGE_SOURCES__0__API_URL"] == "http://fake-provider:8091"
    assert "@rabbitmq:5672/" in env["BRIDGE_AMQP__URL"]
    assert bridge["depends_on"]["rabbitmq"] == {"condition": "service_healthy"}
    # bridge.toml (the image's configuration) loads with the environment each one gets
    settings = load(ROOT / "bridge.toml", env)
    assert [s.api_url for s in settings.config.sources[:2]] == ["http://fake-provider:8091"] * 2
    assert settings.config.http.listen == "0.0.0.0:8080"
    load(ROOT / "bridge.toml", fake["environment"])

    queue = services["billing-queue"]
    assert queue["command"][:3] == ["queues", "declare", "billing.incoming"]
    binds = [queue["command"][i + 1] for i, a in enumerate(queue["command"]) if a == "--bind"]
    assert binds == ["incomingMessageReceived", "outgoingMessageStatus"]
    assert "--amqp-url" in queue["command"]
    assert queue["restart"] == "no"
    consumer = services["billing-consumer"]
    assert consumer["entrypoint"] == ["python", "/app/examples/billing_consumer.py"]
    assert consumer["environment"]["QUEUE"] == "billing.incoming"
    assert consumer["environment"]["AMQP_URL"].startswith("amqp://")
    assert consumer["depends_on"] == {
        "billing-queue": {"condition": "service_completed_successfully"}
    }
    assert (ROOT / "examples" / "billing_consumer.py").is_file()


def test_compose_ha_profile_adds_a_second_poller_of_the_same_sources(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    first, second = services["bridge"], services["bridge-2"]
    assert second["profiles"] == ["ha"]
    assert second["environment"] == first["environment"]
    assert second["depends_on"] == first["depends_on"]
    assert second.get("command") == first.get("command")
    assert second["ports"] != first["ports"]
    # both load the same sources, and leases are on: each instance has one poller at a time
    settings = load(ROOT / "bridge.toml", second["environment"])
    assert settings.config.lease.enabled
    assert [s.mode for s in settings.config.sources[:2]] == ["poll", "poll"]


def test_compose_bridge_services_check_healthz(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("bridge", "bridge-webhook-1", "bridge-webhook-2"):
        test = services[name]["healthcheck"]["test"]
        assert test[:2] == ["CMD", "python"], name
        assert "http://127.0.0.1:8080/healthz" in test[-1], name
    for name in ("billing-queue", "billing-consumer", "simulate"):
        assert services[name]["healthcheck"] == {"disable": True}, name


def test_compose_scale_profile_puts_nginx_in_front_of_two_replicas(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    replicas = [n for n in services if n.startswith("bridge-webhook-")]
    assert len(replicas) >= 2
    nginx = services["nginx"]
    assert nginx["profiles"] == ["scale"]
    assert mounts(nginx)["/etc/nginx/conf.d/default.conf"] == "./deploy/nginx/bridge.conf"
    upstreams = re.findall(r"^\s*server\s+([\w.-]+):8080\b", nginx_conf(), re.M)
    assert sorted(upstreams) == sorted(replicas)
    nginx_ip = nginx["networks"]["edge"]["ipv4_address"]
    for name in replicas:
        replica = services[name]
        assert replica["profiles"] == ["scale"]
        assert "ports" not in replica, "replicas are reached through nginx only"
        assert "edge" in replica["networks"]
        (config_file,) = [s for t, s in mounts(replica).items() if t.endswith(".toml")]
        settings = load(ROOT / config_file, replica["environment"])
        assert nginx_ip in settings.config.http.trusted_proxies
        assert all(s.mode == "webhook" for s in settings.config.sources)


def test_compose_mounts_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for source in mounts(service).values():
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source}"


def test_dockerfile_and_dockerignore() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    stages = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    assert len(stages) >= 2 and lines[stages[0]].endswith(" AS build")
    build, runtime = lines[stages[0] : stages[-1]], lines[stages[-1] :]
    assert any(re.match(r"RUN pip install .*\buv\b", line) for line in build)
    assert "RUN uv sync --frozen --no-dev --no-editable" in build
    for package in wheel_packages():  # the demo's `bridge fake-provider` runs from the image
        assert f"COPY {package} ./{package}" in build, package
    user = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert "COPY bridge.toml /app/bridge.toml" in runtime
    assert any(re.fullmatch(r"COPY examples /app/examples/?", line) for line in runtime)
    assert "EXPOSE 8080" in runtime
    assert any(line.startswith("HEALTHCHECK") and "/healthz" in line for line in runtime)
    assert "STOPSIGNAL SIGTERM" in runtime
    assert f'ENTRYPOINT ["{IMAGE_BRIDGE}"]' in runtime  # not a bare `bridge`: /sbin/bridge
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache"} <= ignored


#: The bridge's executable in the image: where the build's UV_PROJECT_ENVIRONMENT puts it.
IMAGE_BRIDGE = "/app/.venv/bin/bridge"


def test_every_installed_and_documented_way_to_run_names_our_bridge_not_iproute2s() -> None:
    """`bridge` is also iproute2's /sbin/bridge: the image, the systemd unit and the Kubernetes
    manifests name ours by absolute path, and the package ships a second, distinctive name."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "UV_PROJECT_ENVIRONMENT=/app/.venv" in dockerfile
    assert f'ENTRYPOINT ["{IMAGE_BRIDGE}"]' in dockerfile
    unit = (DEPLOY / "systemd" / "bridge.service").read_text()
    (exec_start,) = re.findall(r"^ExecStart=(\S+)", unit, flags=re.M)
    assert exec_start == "/opt/bridge/.venv/bin/bridge"  # the checkout's environment (docs)
    for name in ("deployment-webhook.yaml", "deployment-poller.yaml"):
        (doc,) = load_yaml(DEPLOY / "kubernetes" / name)
        for container in doc["spec"]["template"]["spec"]["containers"]:
            assert container["command"] == [IMAGE_BRIDGE], name
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"bridge": "bridge.cli:main", "whatsapp-bridge": "bridge.cli:main"}
    # installed: both names are the same command (the image's wheel: test_image.py)
    venv_bin = Path(sys.executable).parent
    versions = {
        subprocess.run(
            [str(venv_bin / name), "--version"], capture_output=True, text=True, check=True
        ).stdout
        for name in scripts
    }
    assert versions == {f"bridge {importlib.metadata.version('bridge')}\n"}
    for doc in (ROOT / "README.md", ROOT / "docs" / "operations.md"):
        assert "whatsapp-bridge" in doc.read_text(), doc.name


def runtime_distributions() -> set[str]:
    """What `uv sync --frozen --no-dev` installs: the project's locked dependency closure."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    packages = {p["name"]: p for p in lock["package"]}
    todo = [d["name"] for d in packages["bridge"].get("dependencies", [])]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += [d["name"] for d in packages[name].get("dependencies", [])]
    return seen


def wheel_packages() -> list[str]:
    """The packages the wheel (and so the image) holds: bridge, and the fake provider that the
    compose demo runs from the image."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages: list[str] = project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    return packages


def guarded_imports(tree: ast.AST) -> set[ast.AST]:
    """Imports in the body of a `try` that catches ModuleNotFoundError or ImportError: optional
    by construction (`bridge bench` imports the checkout's benchmarks/ this way)."""
    guarded: set[ast.AST] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        caught = {
            name.id
            for handler in node.handlers
            if handler.type is not None
            for name in ast.walk(handler.type)
            if isinstance(name, ast.Name)
        }
        if caught & {"ModuleNotFoundError", "ImportError"}:
            for statement in node.body:
                guarded |= {
                    n for n in ast.walk(statement) if isinstance(n, ast.Import | ast.ImportFrom)
                }
    return guarded


def imported_distributions() -> dict[str, str]:
    """{distribution: a module of the wheel's packages importing it} for every third-party
    import."""
    owners = importlib.metadata.packages_distributions()
    packages = wheel_packages()
    found = {}
    paths = sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))
    for path in paths:
        tree = ast.parse(path.read_text())
        optional = guarded_imports(tree)
        for node in ast.walk(tree):
            if node in optional:
                continue
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in (*packages, "__future__"):
                    continue
                for dist in owners.get(top, [top]):
                    found.setdefault(
                        re.sub(r"[-_.]+", "-", dist).lower(), str(path.relative_to(ROOT))
                    )
    return found


def test_image_dependencies_cover_every_import_of_the_bridge() -> None:
    assert wheel_packages() == ["bridge", "fakeprovider"]
    installed = runtime_distributions()
    missing = {d: m for d, m in imported_distributions().items() if d not in installed}
    assert not missing, f"imported but not runtime dependencies: {missing}"


# ---------------------------------------------------------------------------------------------
# Kubernetes
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kube() -> dict[tuple[str, str], dict[str, Any]]:
    """{(kind, name): manifest} of every resource kustomization.yaml lists."""
    directory = DEPLOY / "kubernetes"
    (kustomization,) = load_yaml(directory / "kustomization.yaml")
    listed = kustomization["resources"]
    on_disk = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == on_disk, "kustomization.yaml lists every manifest, and only those"
    out = {}
    for name in listed:
        for doc in load_yaml(directory / name):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def test_kubernetes_deployments(kube: dict[tuple[str, str], dict[str, Any]]) -> None:
    webhook = kube[("Deployment", "bridge-webhook")]
    poller = kube[("Deployment", "bridge-poller")]
    assert webhook["spec"]["replicas"] >= 2
    # pollers share the instances through leases: a rollout never runs without a poller
    assert poller["spec"]["replicas"] >= 2
    assert poller["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    (secret,) = [name for kind, name in kube if kind == "Secret"]
    (config_map,) = [name for kind, name in kube if kind == "ConfigMap"]
    secret_env = kube[("Secret", secret)]["stringData"]
    for deployment in (webhook, poller):
        spec = deployment["spec"]
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        assert pod["terminationGracePeriodSeconds"] >= 30
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        (container,) = pod["containers"]
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert "memory" in container["resources"]["limits"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = container[probe]["httpGet"]
            assert get["path"] == path, probe
            assert ports.get(get["port"], get["port"]) == 8080, probe
        assert container["envFrom"] == [{"secretRef": {"name": secret}}]
        # the mounted configuration: its key exists, it loads with the Secret's variables,
        # and it listens on the probed port
        volumes = {v["name"]: v for v in pod["volumes"] if "configMap" in v}
        (mount,) = [m for m in container["volumeMounts"] if m["name"] in volumes]
        source = volumes[mount["name"]]["configMap"]
        assert source["name"] == config_map
        (item,) = source["items"]
        config_path = f"{mount['mountPath']}/{item['path']}"
        assert config_path in container["args"]
        text = kube[("ConfigMap", config_map)]["data"][item["key"]]
        with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
            f.write(text)
            f.flush()
            settings = load(f.name, secret_env)
        assert settings.config.http.listen.endswith(":8080")
        modes = {s.mode for s in settings.config.sources}
        assert modes == ({"poll"} if deployment is poller else {"webhook"})


def test_kubernetes_service_and_disruption_budget(
    kube: dict[tuple[str, str], dict[str, Any]],
) -> None:
    webhook_labels = kube[("Deployment", "bridge-webhook")]["spec"]["template"]["metadata"][
        "labels"
    ]
    poller_labels = kube[("Deployment", "bridge-poller")]["spec"]["template"]["metadata"]["labels"]
    service = kube[("Service", "bridge-webhook")]["spec"]
    assert service["selector"].items() <= webhook_labels.items()
    assert not service["selector"].items() <= poller_labels.items(), "no webhooks to the poller"
    assert [p["targetPort"] for p in service["ports"]] == ["http"]
    (pdb,) = [doc for (kind, _), doc in kube.items() if kind == "PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= webhook_labels.items()


# ---------------------------------------------------------------------------------------------
# nginx
# ---------------------------------------------------------------------------------------------


def nginx_conf() -> str:
    return (DEPLOY / "nginx" / "bridge.conf").read_text()


def nginx_binary() -> str:
    found = shutil.which("nginx", path=SYSTEM_PATH)
    if found is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    return found


def nginx_prefix(directory: Path, upstreams: list[int], listen: int) -> Path:
    """deploy/nginx copied into a prefix directory, the replicas' names replaced by local ports."""
    ports = iter(upstreams)
    conf = re.sub(
        r"^(\s*server\s+)[\w.-]+:8080\b",
        lambda m: f"{m.group(1)}127.0.0.1:{next(ports)}",
        nginx_conf(),
        flags=re.M,
    )
    conf = re.sub(r"^(\s*listen\s+)80;", rf"\g<1>127.0.0.1:{listen};", conf, flags=re.M)
    (directory / "bridge.conf").write_text(conf)
    shutil.copy(DEPLOY / "nginx" / "nginx.conf", directory / "nginx.conf")
    (directory / "tmp").mkdir()
    return directory / "nginx.conf"


def test_nginx_config_content() -> None:
    assert "trusted_proxies" in nginx_conf(), "tells the operator to trust nginx's address"
    conf = re.sub(r"#.*", "", nginx_conf())
    upstream = re.search(r"upstream\s+\w+\s*\{(.*?)\}", conf, re.S)
    assert upstream is not None
    assert len(re.findall(r"^\s*server\s", upstream.group(1), re.M)) >= 2
    assert re.search(r"^\s*keepalive\s+\d+;", upstream.group(1), re.M)
    for directive in (
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Real-IP $remote_addr;",
    ):
        assert directive in conf
    (size,) = re.findall(r"client_max_body_size\s+(\d+)m;", conf)
    assert int(size) * 1024 * 1024 == HttpConfig().max_body_bytes
    (next_upstream,) = re.findall(r"^\s*proxy_next_upstream\s+([^;]+);", conf, re.M)
    assert {"error", "timeout", "http_502", "http_503"} <= set(next_upstream.split())
    for path in ("/healthz", "/readyz", "/metrics"):
        assert re.search(rf"location\s+=\s+{path}\s*\{{[^}}]*proxy_pass", conf), path


def test_nginx_t_accepts_the_configuration(tmp_path: Path) -> None:
    binary = nginx_binary()
    conf = nginx_prefix(tmp_path, [18081, 18082], 18080)
    proc = subprocess.run(
        [binary, "-t", "-p", f"{tmp_path}/", "-e", "stderr", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "test is successful" in proc.stderr


class StubReplica:
    """A bridge replica stand-in: answers `status` to everything and records what it saw."""

    def __init__(self) -> None:
        self.status = 200
        self.seen: list[dict[str, str]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.answer(b"")

            def do_POST(self) -> None:
                self.answer(self.rfile.read(int(self.headers.get("Content-Length", 0))))

            def answer(self, body: bytes) -> None:
                stub.seen.append({**self.headers, "path": self.path, "body": body.decode()})
                payload = b'{"status":"stub"}'
                self.send_response(stub.status)
                if stub.status == 503:
                    self.send_header("Retry-After", "7")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_nginx(upstreams: list[int]) -> Iterator[int]:
    """nginx (foreground, own prefix) in front of the given ports; yields its port."""
    binary = nginx_binary()
    with tempfile.TemporaryDirectory(prefix="bridgetest-nginx-") as tmp:
        directory = Path(tmp)
        directory.chmod(0o755)  # workers may run as another user
        port = free_port()
        conf = nginx_prefix(directory, upstreams, port)
        with (directory / "stderr.log").open("wb") as log:
            proc = subprocess.Popen(
                [binary, "-p", f"{directory}/", "-e", "stderr", "-c", str(conf),
                 "-g", "daemon off;"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((directory / "stderr.log").read_text())
                time.sleep(0.05)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def request(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_nginx_forwards_retries_503_and_answers_503_when_no_replica_is_left() -> None:
    first, second = StubReplica(), StubReplica()
    try:
        with running_nginx([first.port, second.port]) as port:
            body = b'{"typeWebhook":"incomingMessageReceived"}'
            status, _, _ = request(
                port, "POST", "/webhooks/greenapi/1101000001", body,
                {"Content-Type": "application/json", "X-Forwarded-For": "203.0.113.7"},
            )  # fmt: skip
            assert status == 200
            (seen,) = first.seen + second.seen
            assert seen["path"] == "/webhooks/greenapi/1101000001"
            assert seen["body"] == body.decode()
            assert seen["X-Forwarded-For"] == "203.0.113.7, 127.0.0.1"
            assert seen["X-Real-IP"] == "127.0.0.1"
            assert seen.get("Connection", "").lower() != "close", "keep-alive to replicas"

            for path in ("/healthz", "/readyz", "/metrics"):
                assert request(port, "GET", path)[0] == 200, path
            assert request(port, "GET", "/nope")[0] == 404

            # over the limit: refused from Content-Length alone, no replica sees it
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.putrequest("POST", "/webhooks/evolution")
            conn.putheader("Content-Length", str(HttpConfig().max_body_bytes + 1))
            conn.endheaders()
            assert conn.getresponse().status == 413
            conn.close()

            # a replica answering 503 (broker trouble): the POST is retried on the other one
            first.status = 503
            first.seen.clear()
            second.seen.clear()
            statuses = [request(port, "POST", "/webhooks/chatapi", b"{}")[0] for _ in range(4)]
            assert statuses == [200] * 4
            assert len(second.seen) == 4
            assert first.seen, "the 503 replica was tried and its request retried"

            # both 503: the provider gets 503 with a Retry-After
            second.status = 503
            status, headers, _ = request(port, "POST", "/webhooks/chatapi", b"{}")
            assert status == 503
            assert headers["Retry-After"] in ("5", "7")

            # no replica reachable: nginx answers like the bridge, 503 + Retry-After
            first.stop()
            second.stop()
            status, headers, payload = request(port, "POST", "/webhooks/chatapi", b"{}")
            assert status == 503
            assert headers["Retry-After"] == "5"
            assert json.loads(payload) == {"error": "no bridge replica available"}
    finally:
        for stub in (first, second):
            with contextlib.suppress(Exception):
                stub.stop()


# ---------------------------------------------------------------------------------------------
# Prometheus and Grafana
# ---------------------------------------------------------------------------------------------

_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_KEYWORDS |= {"and", "or", "unless", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (grafana variables allowed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = _GROUPING.sub(" ", expr)
    expr = re.sub(r"\$\w+", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", expr):
        word = match.group(0)
        if word.lower() in _KEYWORDS or expr[match.end() :].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def exposed_names() -> set[str]:
    """What Prometheus stores for bridge.metrics.REGISTRY: counters get `_total`, histograms
    `_bucket`, `_sum`, `_count`."""
    names = set()
    for family in REGISTRY.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
        else:
            names.add(family.name)
    return names


def alert_rules() -> dict[str, dict[str, Any]]:
    (doc,) = load_yaml(DEPLOY / "prometheus" / "alerts.yml")
    return {rule["alert"]: rule for group in doc["groups"] for rule in group["rules"]}


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (job, le) (rate(x_bucket{a="b{c}"}[5m]))) > 1 '
        "and on (job) y == 0 unless z"
    )
    assert metric_names(expr) == {"x_bucket", "y", "z"}
    assert metric_names('sum(rate(a_total{job=~"$job"}[$__rate_interval]))') == {"a_total"}
    assert "bridge_confirm_latency_seconds_bucket" in exposed_names()
    assert "bridge_received_total" in exposed_names()


def test_alert_rules_use_only_bridge_metrics_and_explain_themselves() -> None:
    known = exposed_names()
    rules = alert_rules()
    for name, rule in rules.items():
        used = metric_names(rule["expr"])
        assert used, name
        # `up` is Prometheus's own series for the scrape itself (BridgeDown)
        assert used <= known | {"up"}, f"{name}: {used - known}"
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["description"].strip(), name

    def find(*fragments: str) -> dict[str, Any]:
        (rule,) = [
            r for r in rules.values() if all(f in " ".join(r["expr"].split()) for f in fragments)
        ]
        return rule

    assert find("bridge_broker_ready == 0")["for"] == "1m"
    latency = find("histogram_quantile(0.99", "bridge_confirm_latency_seconds_bucket", "> 1")
    assert latency["for"] == "5m"
    find("increase(bridge_quarantined_total[10m])", "> 0")
    find("bridge_source_running == 0")
    find('bridge_webhook_responses_total{status="503"}')
    find("bridge_poll_errors_total")
    silent = find("time() -", "bridge_last_notification_timestamp_seconds")
    assert "bridge_instance_silent_after_seconds" in silent["expr"]
    assert "bridge_instance_authorized) == 0" in " ".join(silent["expr"].split())
    assert find("bridge_instance_state == 1", "bridge_instance_authorized")["for"] == "10m"


def test_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool", path=SYSTEM_PATH)
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    directory = DEPLOY / "prometheus"
    for args in (["check", "config", "prometheus.yml"], ["test", "rules", "alerts_test.yml"]):
        proc = subprocess.run(
            [promtool, *args], cwd=directory, capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_scrapes_the_bridge_and_rabbitmq() -> None:
    (config,) = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {t for job in jobs.values() for c in job["static_configs"] for t in c["targets"]}
    assert "rabbitmq:15692" in targets
    assert jobs["bridge"]["metrics_path"] == "/metrics"
    compose_services = load_yaml(ROOT / "compose.yaml")[0]["services"]
    for target in targets:
        assert target.split(":")[0] in compose_services, target


def test_grafana_dashboard_panels_use_bridge_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "bridge-dashboard.json").read_text())
    assert 36 <= dashboard["schemaVersion"] <= 41
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    used: set[str] = set()
    for panel in panels:
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names and names <= exposed_names(), f"{panel['title']}: {names}"
            used |= names
    expected = {
        "bridge_received_total", "bridge_published_total", "bridge_confirm_latency_seconds_bucket",
        "bridge_publish_in_flight", "bridge_broker_ready", "bridge_quarantined_total",
        "bridge_webhook_responses_total", "bridge_poll_errors_total", "bridge_source_running",
        "bridge_last_notification_timestamp_seconds", "bridge_instance_silent_after_seconds",
        "bridge_instance_authorized", "bridge_instance_state",
        "bridge_instance_state_probe_errors_total",
    }  # fmt: skip
    assert expected <= used
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs


# ---------------------------------------------------------------------------------------------
# RabbitMQ definitions
# ---------------------------------------------------------------------------------------------


def definitions() -> dict[str, Any]:
    return json.loads(DEFINITIONS.read_text())


def expected_topology() -> tuple[
    dict[str, tuple[str, dict[str, Any]]], dict[str, dict[str, Any]], set[tuple[str, str, str]]
]:
    """({exchange: (type, arguments)}, {queue: arguments}, {(source, queue, key)}) that the
    definitions must hold: what `bridge run` declares (bridge/amqp/topology.py, bound with
    "#"), plus the dead-letter exchange and queue `bridge queues declare` declares."""
    amqp = AmqpConfig()
    topo = topology(amqp)
    exchanges = {ex.name: (ex.kind, dict(ex.arguments)) for ex in topo.exchanges}
    queues = {q.name: dict(QUORUM) for q in topo.queues}
    bindings = {(q.bind_to, q.name, "#") for q in topo.queues}
    assert topo.archive is not None  # on by default: the stream behind its ingest fanout
    queues[topo.archive.stream] = dict(topo.archive.arguments)
    for topic, fanout in topo.archive.ingest.items():
        bindings |= {(fanout, topo.archive.stream, ""), (fanout, topic, "")}
    consumer = queues_tool.plan(
        "billing.incoming", ["incomingMessageReceived"], exchange=amqp.exchange
    )
    dead = queues_tool.DEAD_LETTER
    exchanges |= {ex.name: (ex.kind, ex.arguments) for ex in consumer.exchanges if ex.name == dead}
    queues |= {q.name: q.arguments for q in consumer.queues if q.name == dead}
    bindings |= {
        (b.source, b.destination, b.routing_key) for b in consumer.bindings if b.source == dead
    }
    assert dead in exchanges and dead in queues
    return exchanges, queues, bindings


def test_definitions_hold_the_bridge_topology_and_safe_policies() -> None:
    defs = definitions()
    assert "users" not in defs and "permissions" not in defs, "never overwrite credentials"
    assert {v["name"] for v in defs["vhosts"]} == {"/"}
    exchanges, queues, bindings = expected_topology()
    assert {e["name"]: (e["type"], e["arguments"]) for e in defs["exchanges"]} == exchanges
    for e in defs["exchanges"]:
        flags = (e["vhost"], e["durable"], e["auto_delete"], e["internal"])
        assert flags == ("/", True, False, False), e["name"]
    assert {q["name"]: q["arguments"] for q in defs["queues"]} == queues, "what the bridge declares"
    for q in defs["queues"]:
        assert (q["vhost"], q["durable"], q["auto_delete"]) == ("/", True, False)
    assert {(b["source"], b["destination"], b["routing_key"]) for b in defs["bindings"]} == bindings
    kinds = {(b["destination"], b["destination_type"]) for b in defs["bindings"]}
    # queues, and the topic exchange behind the archive's ingest fanout
    assert {name for name, kind in kinds if kind != "queue"} == {"notifications"}
    assert {kind for _, kind in kinds} == {"queue", "exchange"}

    policies = {p["name"]: p for p in defs["policies"]}
    for policy in policies.values():
        assert not UNSAFE_POLICY_KEYS & set(policy["definition"]), policy["name"]
        assert policy["apply-to"] == "queues"
    # every queue is governed by exactly one of them (RabbitMQ applies one policy per queue)
    names = [*queues, "billing.incoming", "crm.statuses", "bridge.lease.greenapi.1101000001",
             "amq.gen-abc", "notifications.unrouted.extra"]  # fmt: skip
    for name in names:
        matching = [p for p in policies.values() if re.search(p["pattern"], name)]
        if name.startswith(("bridge.lease.", "amq.")):
            assert not matching, name
        else:
            assert len(matching) == 1, name
    consumer = [p for p in policies.values() if re.search(p["pattern"], "billing.incoming")]
    assert consumer[0]["definition"]["dead-letter-exchange"] == DEAD
    assert consumer[0]["definition"]["delivery-limit"] > 0


def test_demo_users_file_holds_only_users() -> None:
    users = json.loads((DEPLOY / "rabbitmq" / "users.demo.json").read_text())
    assert set(users) == {"vhosts", "users", "permissions"}
    assert [u["name"] for u in users["users"]] == ["guest"]
    assert all("password" not in u for u in users["users"]), "a hash, never a password"


async def exported(node: RabbitNode) -> dict[str, Any]:
    """The node's definitions as RabbitMQ itself reports them (`export_definitions`)."""
    out = await asyncio.to_thread(node.rabbitmqctl, "-q", "export_definitions", "-")
    return json.loads(out)


async def queue_policies(node: RabbitNode) -> dict[str, str]:
    """{queue: the policy RabbitMQ applies to it} on vhost `/`."""
    out = await asyncio.to_thread(
        node.rabbitmqctl, "-q", "list_queues", "name", "policy", "--formatter", "json"
    )
    return {row["name"]: row["policy"] for row in json.loads(out)} if out.strip() else {}


def named(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in rows if row.get("vhost", "/") == "/"}


def assert_holds_the_definitions(state: dict[str, Any]) -> None:
    """Every exchange, queue and binding of definitions.json is on the node, identical."""
    defs = definitions()
    exchanges, queues = named(state["exchanges"]), named(state["queues"])
    for want in defs["exchanges"]:
        have = exchanges.get(want["name"])
        assert have is not None, f"exchange {want['name']} missing"
        keys = ("type", "durable", "auto_delete", "arguments")
        assert {k: have[k] for k in keys} == {k: want[k] for k in keys}, want["name"]
        assert have.get("internal", False) is want["internal"], want["name"]
    for want in defs["queues"]:
        have = queues.get(want["name"])
        assert have is not None, f"queue {want['name']} missing"
        keys = ("durable", "auto_delete", "arguments")
        assert {k: have[k] for k in keys} == {k: want[k] for k in keys}, want["name"]
    bindings = {
        (b["source"], b["destination"], b["destination_type"], b["routing_key"])
        for b in state["bindings"]
    }
    for b in defs["bindings"]:
        assert (b["source"], b["destination"], b["destination_type"], b["routing_key"]) in bindings


async def poll(check: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    """Await `check()` until it stops raising AssertionError; its result."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_definitions_import_into_rabbitmq_and_the_bridge_still_declares(
    own_rabbit: RabbitNode,
) -> None:
    node = own_rabbit
    before = await exported(node)
    consumer_queue = f"deploytest.{uuid.uuid4().hex[:8]}"
    policies = {p["name"]: p for p in definitions()["policies"]}
    connection = await aio_pika.connect(node.amqp_url)
    try:
        await asyncio.to_thread(node.rabbitmqctl, "import_definitions", str(DEFINITIONS))

        async def imported() -> None:  # the import runs asynchronously in the broker
            state, applied = await asyncio.gather(exported(node), queue_policies(node))
            assert_holds_the_definitions(state)
            for name, policy in policies.items():
                have = named(state["policies"]).get(name)
                assert have is not None, f"policy {name} missing"
                assert have["definition"] == policy["definition"]
                assert have["pattern"] == policy["pattern"]
            for name in expected_topology()[1]:
                assert applied[name] == "bridge-system-queues", name

        await poll(imported)

        # The bridge's declaration at start, over the loaded definitions: no
        # PRECONDITION_FAILED (which would make `bridge run` exit 2) ...
        channel = await connection.channel()
        await declare(channel, topology(AmqpConfig()), timeout=10)
        # ... nor for `bridge queues declare` (the dead-letter exchange and queue, a consumer
        # queue bound to `notifications`), which then gets the consumer policy.
        todo = queues_tool.plan(consumer_queue, ["deploytest.none"], exchange="notifications")
        rows = await queues_tool.declare(node.amqp_url, todo)
        assert {(r.kind, r.name) for r in rows} >= {("exchange", DEAD), ("queue", consumer_queue)}

        async def consumer_policy() -> None:
            assert (await queue_policies(node))[consumer_queue] == "bridge-consumer-queues"

        await poll(consumer_policy)
    finally:
        # Leave the node as it was: delete what the import created, and the policies.
        channel = await connection.channel()
        with contextlib.suppress(Exception):
            await channel.queue_delete(consumer_queue)
        exchanges, queues, _ = expected_topology()
        for name in set(queues) - set(named(before["queues"])):
            with contextlib.suppress(Exception):
                await channel.queue_delete(name)
        for name in set(exchanges) - set(named(before["exchanges"])):
            with contextlib.suppress(Exception):
                await channel.exchange_delete(name)
        await connection.close()
        await asyncio.gather(
            *(
                asyncio.to_thread(node.rabbitmqctl, "clear_policy", name, check=False)
                for name in set(policies) - set(named(before["policies"]))
            )
        )


class BootImportNode(RabbitNode):
    """A private node configured like the compose broker: deploy/rabbitmq/rabbitmq.conf with
    the definitions directory holding definitions.json and users.demo.json. (Extends the test
    node's private directory set-up; no guest user is created unless the users file is there.)"""

    def _prepare_dir(self) -> None:
        super()._prepare_dir()
        directory = self._dir / "definitions.d"
        directory.mkdir()
        shutil.copy(DEPLOY / "rabbitmq" / "users.demo.json", directory / "10-users.json")
        shutil.copy(DEFINITIONS, directory / "20-topology.json")
        conf = (DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text()
        conf = re.sub(r"^(load_definitions\s*=\s*).*$", rf"\g<1>{directory}", conf, flags=re.M)
        with (self._dir / "rabbitmq.conf").open("a") as f:
            f.write("\n" + conf)
        if self._run_as is not None:
            for path in (directory, *directory.iterdir()):
                os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)


@pytest.mark.slow
async def test_compose_broker_layout_loads_definitions_at_boot_and_guest_can_log_in() -> None:
    if not rabbitmq_available():
        pytest.skip("rabbitmq-server / rabbitmqctl are not installed")
    node = BootImportNode()
    try:
        # start() returns once guest/guest opens an AMQP connection: the users file worked
        await asyncio.to_thread(node.start)

        async def loaded() -> None:
            assert_holds_the_definitions(await exported(node))

        await poll(loaded)
        connection = await aio_pika.connect(node.amqp_url)
        async with connection:
            await declare(await connection.channel(), topology(AmqpConfig()), timeout=10)
    finally:
        await asyncio.to_thread(node.stop)
