"""The benchmarks' CPU reading: precise enough for the harness's short smoke runs."""

from __future__ import annotations

import os
import time

from benchmarks.common import cpu_seconds


def test_cpu_seconds_resolves_milliseconds() -> None:
    pid = os.getpid()
    before, started = cpu_seconds(pid), time.process_time()
    while time.process_time() - started < 0.005:  # 5 ms of CPU: half a clock tick
        pass
    used = time.process_time() - started
    measured = cpu_seconds(pid) - before
    assert abs(measured - used) < 0.002, (measured, used)


def test_cpu_seconds_of_a_process_that_is_gone_is_nan() -> None:
    assert cpu_seconds(2**22 + 12345) != cpu_seconds(2**22 + 12345)  # nan
