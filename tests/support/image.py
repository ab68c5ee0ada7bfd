"""The bridge's container image, built by scripts/build-image.sh and run without a container
engine's runtime: the image's filesystem is exported into a directory, and each command is run
there with chroot as the image's user, with the image's environment, working directory and
entry point, in the host's network namespace (so 127.0.0.1:5672 is the local RabbitMQ).

Containers cannot be started on every machine that builds images (a sandbox may refuse the
runtime's setrlimit or namespaces); chroot needs only root. Nothing stays behind: the exported
container is removed at once, the directory when the session ends, and every process started
here is stopped (SIGTERM, then SIGKILL) by `Image.stop_all`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "scripts" / "build-image.sh"
NO_ENGINE = 3  # build-image.sh's exit status when neither docker nor podman is there
BUILD_TIMEOUT = 840
SERIAL = itertools.count()
CHROOT = shutil.which("chroot", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or "chroot"


class Unavailable(Exception):
    """No engine can build here, or chroot cannot be used: the reason, for a skip."""


def build(log: Path) -> tuple[str, str]:
    """(engine, image reference) of the image of the current sources, built when missing."""
    if os.geteuid() != 0:
        raise Unavailable("the image's commands run with chroot, which needs root")
    if not Path(CHROOT).is_absolute():
        raise Unavailable("chroot (coreutils) is not installed")
    engine = os.environ.get("BRIDGE_IMAGE_ENGINE") or pick_engine()
    if engine is None:
        raise Unavailable("neither a docker engine nor podman is available to build the image")
    with log.open("wb") as out:
        done = subprocess.run(
            [str(BUILD), "--reuse", "--engine", engine],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=out,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    if done.returncode == NO_ENGINE:
        raise Unavailable(f"{engine} cannot build: see {log}")
    if done.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise RuntimeError(
            f"scripts/build-image.sh failed ({done.returncode}):\n" + "\n".join(tail)
        )
    return engine, done.stdout.decode().split()[-1]


def pick_engine() -> str | None:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "info"], capture_output=True, check=False).returncode == 0
    ):
        return "docker"
    return "podman" if shutil.which("podman") else None


def inspect(engine: str, ref: str) -> dict[str, Any]:
    out = subprocess.run(
        [engine, "image", "inspect", ref], capture_output=True, check=True, timeout=60
    ).stdout
    (found,) = json.loads(out)
    result: dict[str, Any] = found
    return result


@contextlib.contextmanager
def exported(engine: str, ref: str) -> Iterator[Path]:
    """The image's filesystem as a directory (a stopped container's export), removed after."""
    root = Path(tempfile.mkdtemp(prefix="bridge-image.", dir="/var/tmp"))
    try:
        container = subprocess.run(
            [engine, "create", "--no-healthcheck", ref],
            capture_output=True,
            check=True,
            text=True,
            timeout=60,
        ).stdout.strip()
        try:
            export = subprocess.Popen([engine, "export", container], stdout=subprocess.PIPE)
            assert export.stdout is not None
            subprocess.run(
                ["tar", "-x", "-C", str(root)], stdin=export.stdout, check=True, timeout=300
            )
            export.stdout.close()
            assert export.wait(timeout=60) == 0, f"{engine} export failed"
        finally:
            subprocess.run(
                [engine, "rm", "--force", container], capture_output=True, check=False, timeout=60
            )
        root.chmod(0o755)  # mkdtemp's 0700 would be the image's "/"
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Running:
    argv: list[str]
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as a container engine stops a container; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
            raise


@dataclass
class Image:
    """An exported image: its root directory and its configuration (`image inspect`)."""

    engine: str
    ref: str
    root: Path
    meta: dict[str, Any]
    logs: Path
    started: list[Running] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = self.meta["Config"]
        return config

    @property
    def healthcheck(self) -> list[str]:
        """HEALTHCHECK's test (docker keeps it in Config, podman beside it)."""
        check = self.config.get("Healthcheck") or self.meta.get("Healthcheck") or {}
        return [str(word) for word in check.get("Test") or []]

    @property
    def user(self) -> str:
        return str(self.config.get("User") or "0:0")

    def env(self, extra: Mapping[str, str] = {}) -> dict[str, str]:
        """The image's ENV with `extra` over it, and nothing from the host."""
        env = dict(item.split("=", 1) for item in self.config.get("Env") or [])
        env.update(extra)
        return env

    def argv(
        self, command: Sequence[str] | None = None, entrypoint: Sequence[str] | None = None
    ) -> list[str]:
        """What a container runs: ENTRYPOINT + CMD; a new entrypoint clears CMD (as compose)."""
        if entrypoint is not None:
            return [*entrypoint, *(command or [])]
        cmd = self.config.get("Cmd") or [] if command is None else command
        return [*(self.config.get("Entrypoint") or []), *cmd]

    def chroot(self, argv: Sequence[str], workdir: str | None = None) -> list[str]:
        """`argv` as the image's user in its working directory (the image's own `env -C`)."""
        uid, _, gid = self.user.partition(":")
        workdir = workdir or self.config.get("WorkingDir") or "/"
        spec = f"--userspec={uid}:{gid or uid}"
        return [CHROOT, spec, f"--groups={gid or uid}", str(self.root), "env", "-C", workdir, *argv]

    def run(
        self, argv: Sequence[str], env: Mapping[str, str] = {}, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion; stdout and stderr captured."""
        return subprocess.run(
            self.chroot(argv),
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(
        self, argv: Sequence[str], env: Mapping[str, str] = {}, name: str = "proc"
    ) -> Running:
        """Start in the background, output to a log file; stopped by `stop_all` at the latest."""
        log = self.logs / f"{name}-{next(SERIAL)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                self.chroot(argv),
                env=self.env(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        running = Running(list(argv), process, log)
        self.started.append(running)
        return running

    def stop_all(self) -> None:
        for running in self.started:
            if running.process.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired, ProcessLookupError):
                    running.stop(timeout=15)
        self.started.clear()

    def put(self, path: str, source: Path) -> None:
        """A file where a bind mount would put it (read-only for the image's user)."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        target.chmod(0o644)

    def files(self, under: str = "/") -> Iterator[Path]:
        """Every path below `under`, as it is in the image (absolute, from its "/")."""
        base = self.root / under.lstrip("/")
        for path in base.rglob("*"):
            yield Path("/") / path.relative_to(self.root)


def wait_for(predicate: Any, timeout: float, what: str, running: Running | None = None) -> None:
    """Poll `predicate()` until true; fail with the process's output when it exits or times out."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if predicate():
                return
        if running is not None and running.process.poll() is not None:
            raise AssertionError(
                f"{running.argv} exited ({running.process.returncode}) before {what}:\n"
                + running.output()[-4000:]
            )
        if time.monotonic() > deadline:
            tail = running.output()[-4000:] if running else ""
            raise AssertionError(f"no {what} within {timeout} s\n{tail}")
        time.sleep(0.2)
