"""The fault suite (``make chaos``): sizes, the private RabbitMQ node and cluster, the results
table."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from tests.chaos.report import ROWS, table, write_markdown
from tests.support.rabbitnode import own_cluster, own_rabbit

__all__ = ["SIZE", "Size", "own_cluster", "own_rabbit"]


@dataclass(frozen=True)
class Size:
    name: str
    baseline: int
    broker_soft: int  # stop_app / start_app
    broker_hard: int  # SIGKILL of the node, then a restart
    broker_notes: int
    net_reset: int
    net_blackhole: tuple[float, ...]  # seconds of each blackhole
    net_notes: int
    fault_rounds: int
    fault_notes: int
    kills: int
    kill_notes: int
    cluster_notes: int  # besides the trickle fed while each node of the cluster is down


SIZES = {
    "full": Size(
        "full", baseline=2_000, broker_soft=2, broker_hard=2, broker_notes=6_000,
        net_reset=2, net_blackhole=(4.0, 12.0), net_notes=6_000,
        fault_rounds=3, fault_notes=6_000, kills=10, kill_notes=20_000,
        cluster_notes=1_500,
    ),
    "quick": Size(
        "quick", baseline=1_000, broker_soft=1, broker_hard=1, broker_notes=2_000,
        net_reset=1, net_blackhole=(12.0,), net_notes=2_000,
        fault_rounds=1, fault_notes=2_000, kills=3, kill_notes=5_000,
        cluster_notes=600,
    ),
}  # fmt: skip
SIZE = SIZES[os.environ.get("BRIDGE_CHAOS_SIZE", "full")]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not ROWS:
        return
    terminalreporter.section(f"fault suite ({SIZE.name})")
    for line in table(ROWS):
        terminalreporter.write_line(line)
    path = write_markdown(ROWS)
    if path is not None:
        terminalreporter.write_line(f"(table written to {path})")
