"""Pieces every benchmark shares: child processes, notifications, RSS, progress."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx


async def spawn(
    argv: list[str], log_path: Path, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """Start `python -m bridge ARGV…` with its output in `log_path`."""
    log = log_path.open("wb")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", *argv,
            stdout=log, stderr=log, env={**os.environ, **(env or {})},
        )  # fmt: skip
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
    """User + system CPU seconds a live process has used (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


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
