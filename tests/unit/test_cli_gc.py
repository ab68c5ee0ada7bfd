"""`bridge run` tunes the garbage collector before the service starts."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bridge import cli


def test_run_tunes_gc_before_the_service_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[str] = []
    monkeypatch.chdir(tmp_path)  # no bridge.toml: the defaults
    monkeypatch.setattr(cli, "_setup_logging", lambda *_: None)
    monkeypatch.setattr(cli, "tune_gc", lambda: calls.append("tune_gc"))

    def run(main: Callable[[], Awaitable[None]], on_shutdown: Any) -> None:
        calls.append("service")

    monkeypatch.setattr(cli, "run_with_aiorun", run)
    assert cli.main(["run"]) == 0
    assert calls == ["tune_gc", "service"]


def test_tune_gc_freezes_start_up_objects_and_collects_young_ones_less_often() -> None:
    code = (
        "import gc\n"
        "from bridge.cli import GC_THRESHOLD, tune_gc\n"
        "before = gc.get_freeze_count()\n"
        "tune_gc()\n"
        "assert gc.get_threshold() == GC_THRESHOLD, gc.get_threshold()\n"
        "assert gc.get_threshold()[0] > 700\n"
        "assert gc.get_freeze_count() > before + 10_000, gc.get_freeze_count()\n"
    )
    # its own interpreter: a frozen heap in the test process would outlive the test
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
