"""The benchmarks' CPU reading: precise enough for the harness's short smoke runs.

Precision is checked on a process that is stopped (SIGSTOP), so that nothing else running on
the machine can move what is measured: a stopped process uses no CPU, its reading is fixed.
"""

from __future__ import annotations

import os
import signal
import sys

from benchmarks.common import cpu_seconds

#: Burns 5 ms of CPU (half a clock tick), prints the CPU time it counted itself, stops itself.
CHILD = """
import os, signal, sys, time
started = time.process_time()
while time.process_time() - started < 0.005:
    pass
sys.stdout.write(f"{time.process_time_ns()}\\n")
sys.stdout.flush()
os.kill(os.getpid(), signal.SIGSTOP)
"""


def test_cpu_seconds_reads_a_stopped_process_below_a_clock_tick() -> None:
    read, write = os.pipe()
    pid = os.posix_spawn(
        sys.executable,
        [sys.executable, "-I", "-c", CHILD],
        os.environ,
        file_actions=[(os.POSIX_SPAWN_DUP2, write, 1)],
    )
    os.close(write)
    try:
        with os.fdopen(read) as out:
            counted = int(out.readline()) / 1e9  # before it stopped: it can only have used more
        _, status = os.waitpid(pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        first, second = cpu_seconds(pid), cpu_seconds(pid)
    finally:
        os.kill(pid, signal.SIGKILL)
        _, _, usage = os.wait4(pid, 0)
    # once gone: all it ever used (microseconds, each of the two truncated), its exit included
    total = usage.ru_utime + usage.ru_stime + 2e-6
    assert first == second, "a stopped process reads the same every time"
    assert counted <= first <= total, (counted, first, total)
    ticks = os.sysconf("SC_CLK_TCK")
    assert first * ticks % 1 != 0, f"{first} s is a whole number of clock ticks"


def test_cpu_seconds_of_a_process_that_is_gone_is_nan() -> None:
    assert cpu_seconds(2**22 + 12345) != cpu_seconds(2**22 + 12345)  # nan
