"""The fault suite's results: one row per phase, printed as a table at the end of the session
(``pytest_terminal_summary`` in ``tests/chaos/conftest.py``) and, when ``BRIDGE_CHAOS_REPORT``
names a file, written there as Markdown."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ROWS", "Row", "markdown", "table"]


@dataclass
class Row:
    fault: str
    injected: int
    sent: int
    acked: int
    found: int
    lost: int
    duplicates: int
    order_violations: int
    peak_rss: int
    seconds: float
    processes: int
    drained: bool = True
    foreign: int = 0
    id_changes: int = 0
    overlapped: bool = False
    push_overlapped: bool = False
    settled_rss: dict[int, int] = field(default_factory=dict)
    settled_pids: dict[int, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


#: rows of this session, in the order the phases ran
ROWS: list[Row] = []

_HEAD = (
    "fault", "injected", "sent", "acked", "in RabbitMQ", "lost", "duplicates",
    "order violations", "peak RSS", "procs", "seconds",
)  # fmt: skip


def _cells(row: Row) -> tuple[str, ...]:
    return (
        row.fault,
        str(row.injected),
        f"{row.sent:,}",
        f"{row.acked:,}",
        f"{row.found:,}",
        str(row.lost),
        str(row.duplicates),
        str(row.order_violations),
        f"{row.peak_rss / 2**20:.0f} MB",
        str(row.processes),
        f"{row.seconds:.0f}",
    )


def table(rows: list[Row]) -> list[str]:
    """Fixed-width text lines."""
    cells = [_HEAD, *(_cells(r) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(_HEAD))]
    lines = []
    for n, line in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        for note in row.notes:
            lines.append(f"{row.fault}: {note}")
    return lines


def markdown(rows: list[Row]) -> str:
    out = ["| " + " | ".join(_HEAD) + " |", "|" + "---|" * len(_HEAD)]
    out += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(out) + "\n"


def write_markdown(rows: list[Row]) -> Path | None:
    target = os.environ.get("BRIDGE_CHAOS_REPORT")
    if not target or not rows:
        return None
    path = Path(target)
    path.write_text(markdown(rows))
    return path
