"""Pieces every benchmark shares: child processes, CPU and RSS, ports, progress."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import httpx


async def spawn(
    argv: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    *,
    program: Sequence[str] = ("-m", "bridge"),
) -> asyncio.subprocess.Process:
    """Start `python -m bridge ARGV…` (or `python PROGRAM… ARGV…`) with its output in
    `log_path`."""
    log = log_path.open("wb")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            *program,
            *argv,
            stdout=log,
            stderr=log,
            env={**os.environ, **(env or {})},
        )
    finally:
        log.close()


async def stop_process(proc: asyncio.subprocess.Process, timeout: float = 20) -> None:
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def wait_http(client: httpx.AsyncClient, url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get(url)).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise SystemExit(f"nothing answered on {url}")
        await asyncio.sleep(0.1)


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size of a live process (Linux), in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """CPU seconds a live process's threads have used (Linux), to the nanosecond.

    The sum of each live thread's time on a CPU (``/proc/<pid>/task/*/schedstat``): the
    process-wide user + system time counts in clock ticks (10 ms), too coarse for short
    windows. A thread that exits takes its time with it; the processes measured here keep
    theirs for the whole run (event loops, one thread per polled instance, the broker's
    schedulers). Falls back to the ticks where schedstat is missing.
    """
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that exited meanwhile
                total += int((task / "schedstat").read_text().split()[0])
    except OSError:
        return _cpu_ticks(pid)
    return total / 1e9 if total else _cpu_ticks(pid)


def _cpu_ticks(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class Window:
    """CPU seconds of some processes between `start()` and `stop()`, as cores used."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self._before: dict[int, float] = {}
        self._started = 0.0
        self.cores: dict[int, float] = {}
        self.seconds = 0.0

    def start(self) -> None:
        self._before = {pid: cpu_seconds(pid) for pid in self.pids}
        self._started = time.perf_counter()

    def stop(self) -> None:
        self.seconds = time.perf_counter() - self._started
        self.cores = {
            pid: (cpu_seconds(pid) - before) / self.seconds for pid, before in self._before.items()
        }


@contextlib.asynccontextmanager
async def ticking(label: str, total: float) -> AsyncIterator[None]:
    """Show `label: seconds/total` on a terminal while the block runs."""
    progress = Progress(label)
    started = time.monotonic()

    async def tick() -> None:
        while True:
            progress.update(int(time.monotonic() - started), math.ceil(total))
            await asyncio.sleep(0.25)

    task = asyncio.create_task(tick())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        progress.done()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def reset_peak_rss(pid: int) -> None:
    """Reset the peak RSS (VmHWM) of a process of ours to its current RSS (Linux ≥ 4.0)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def local_broker_pid(amqp_url: str) -> int | None:
    """The local RabbitMQ's `beam.smp`, when the URL points at this machine: the one listening
    on the URL's port when that shows (Linux, enough rights), else the only one running (its CPU
    is reported: on a small machine it shares the cores with everything else)."""
    url = urlsplit(amqp_url)
    if url.hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "beam.smp":
                    found.append(int(entry.name))
    listening = _listening_inodes(url.port or 5672)
    for pid in found:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if fd.readlink().name in listening:
                        return pid
    return found[0] if len(found) == 1 else None


def _listening_inodes(port: int) -> set[str]:
    """`socket:[inode]` names of the TCP sockets listening on `port` (Linux)."""
    names = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    names.add(f"socket:[{fields[9]}]")
    return names


def topology_names(prefix: str) -> tuple[list[str], list[str]]:
    """(exchanges, queues) a bench's bridge declares on the `prefix` topology."""
    exchanges = [f"{prefix}.notifications", f"{prefix}.unrouted", f"{prefix}.invalid"]
    exchanges.append(f"{prefix}.members")  # the polling leases' beats
    exchanges.append(f"{prefix}.notifications.ingest")  # the archive's fanout (archive.enabled)
    queues = [f"{prefix}.unrouted", f"{prefix}.invalid", f"{prefix}.notifications.archive"]
    return exchanges, queues


async def delete_topology(amqp_url: str, prefix: str) -> None:
    exchanges, queues = topology_names(prefix)
    try:
        connection = await aio_pika.connect(amqp_url)
    except Exception:
        return
    async with connection:
        channel = await connection.channel()
        for kind, name in [*(("queue", q) for q in queues), *(("exchange", e) for e in exchanges)]:
            try:
                if kind == "queue":
                    await channel.queue_delete(name)
                else:
                    await channel.exchange_delete(name)
            except Exception:
                channel = await connection.channel()  # an error closes the channel


class Progress:
    """A one-line progress display on a terminal; silent otherwise."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.tty or now - self._last < 0.2:
            return
        self._last = now
        pct = 100 * done / total if total else 100
        sys.stderr.write(f"\r{self.label}: {done}/{total} ({pct:.0f}%)")
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\r" + " " * 60 + "\r")
            sys.stderr.flush()


def print_result(
    result: dict[str, Any], *, as_json: bool, report: Callable[[dict[str, Any]], str]
) -> int:
    """A benchmark's result as one JSON line or as its readable report; exit status 0."""
    print(json.dumps(result) if as_json else report(result))
    return 0
