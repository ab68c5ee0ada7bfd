"""Several real `bridge run` processes with one config, each on its own HTTP port, that tests
kill and restart; plus RSS sampling of those processes from ``/proc``.

::

    fleet = BridgeFleet(config_path, env, size=3, log_dir=tmp_path)
    await fleet.start()                 # every process up, /readyz answered 200
    await fleet.kill(1)                 # SIGKILL slot 1 (by its pid, nothing else)
    await fleet.restart(1)              # the same slot again, on the same HTTP port
    await fleet.stop()                  # SIGTERM, then SIGKILL what is left

Each process logs (JSON lines) to ``<log_dir>/bridge-<slot>.log``; a restarted slot appends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.harness import free_port

__all__ = ["BridgeFleet", "BridgeProcess", "RssSampler", "rss_bytes"]

REPO = Path(__file__).parents[2]


def rss_bytes(pid: int) -> int | None:
    """Resident set size of a live process (``VmRSS``), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class BridgeProcess:
    slot: int
    port: int
    log_path: Path
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0
    kills: int = 0

    @property
    def pid(self) -> int | None:
        if self.proc is None or self.proc.returncode is not None:
            return None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class BridgeFleet:
    config: Path
    env: dict[str, str]
    size: int
    log_dir: Path
    ready_timeout: float = 60.0
    processes: list[BridgeProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.processes = [
            BridgeProcess(slot, free_port(), self.log_dir / f"bridge-{slot}.log")
            for slot in range(self.size)
        ]

    @property
    def ports(self) -> list[int]:
        return [p.port for p in self.processes]

    def pids(self) -> list[int]:
        return [pid for p in self.processes if (pid := p.pid) is not None]

    async def start(self) -> None:
        await asyncio.gather(*(self._spawn(p) for p in self.processes))
        await self.wait_ready()

    async def _spawn(self, process: BridgeProcess) -> None:
        if process.pid is not None:
            raise RuntimeError(f"bridge slot {process.slot} is already running")
        env = {
            **os.environ,
            **self.env,
            "BRIDGE_HTTP__LISTEN": f"127.0.0.1:{process.port}",
        }
        with process.log_path.open("ab") as log:
            process.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge", "run", "--config", str(self.config),
                "--log-format", "json",
                cwd=REPO, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=log,
            )  # fmt: skip
        process.starts += 1

    async def wait_ready(self, slots: Iterable[int] | None = None) -> None:
        """Until every (given) process answers ``/readyz`` with 200; raises if one died."""
        chosen = [self.processes[s] for s in (range(self.size) if slots is None else slots)]
        deadline = time.monotonic() + self.ready_timeout
        async with httpx.AsyncClient(timeout=2, trust_env=False) as client:
            for process in chosen:
                while True:
                    if process.pid is None:
                        raise RuntimeError(
                            f"bridge slot {process.slot} exited: see {process.log_path}"
                        )
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"{process.url}/readyz")).status_code == 200:
                            break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"bridge slot {process.slot} not ready")
                    await asyncio.sleep(0.1)

    async def kill(self, slot: int) -> None:
        """``SIGKILL`` one process (its own pid only) and reap it."""
        process = self.processes[slot]
        if process.proc is None or process.pid is None:
            raise RuntimeError(f"bridge slot {slot} is not running")
        process.proc.send_signal(signal.SIGKILL)
        code = await process.proc.wait()
        if code != -signal.SIGKILL:
            raise RuntimeError(f"bridge slot {slot} ended with {code} before the kill")
        process.kills += 1

    async def restart(self, slot: int, *, wait_ready: bool = False) -> None:
        await self._spawn(self.processes[slot])
        if wait_ready:
            await self.wait_ready([slot])

    def exited(self) -> list[tuple[int, int]]:
        """(slot, exit code) of processes that ended without being killed by the fleet."""
        return [
            (p.slot, p.proc.returncode)
            for p in self.processes
            if p.proc is not None and p.proc.returncode not in (None, -signal.SIGKILL)
        ]

    async def stop(self, timeout: float = 30.0) -> list[int | None]:
        """SIGTERM every live process, SIGKILL those still there after ``timeout``."""
        live = [p for p in self.processes if p.proc is not None and p.pid is not None]
        for process in live:
            assert process.proc is not None
            process.proc.send_signal(signal.SIGTERM)
        codes: list[int | None] = []
        for process in live:
            assert process.proc is not None
            try:
                codes.append(await asyncio.wait_for(process.proc.wait(), timeout))
            except TimeoutError:
                process.proc.send_signal(signal.SIGKILL)
                await process.proc.wait()
                codes.append(None)
        return codes


@dataclass
class RssSampler:
    """Samples the RSS of the fleet's live processes every ``interval`` seconds.

    ``peak`` is the highest single-process RSS since the last :meth:`reset`; ``last`` the most
    recent sample per slot (with its pid, so that a restarted process is told apart).
    """

    fleet: BridgeFleet
    interval: float = 0.25
    peak: int = 0
    samples: int = 0
    last: dict[int, tuple[int, int]] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        for process in self.fleet.processes:
            pid = process.pid
            if pid is None:
                continue
            rss = rss_bytes(pid)
            if rss is None:
                continue
            self.samples += 1
            self.peak = max(self.peak, rss)
            self.last[process.slot] = (pid, rss)

    def reset(self) -> None:
        self.peak = 0
        self.samples = 0

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rss-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
