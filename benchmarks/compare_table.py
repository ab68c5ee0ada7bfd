"""The readable report of `bridge bench compare`: one table, ours first in each group."""

from __future__ import annotations

import math
from typing import Any

COLUMNS = (
    ("variant", "<", 30),
    ("notif/s", ">", 8),
    ("p50 ms", ">", 8),
    ("p99 ms", ">", 8),
    ("CPU", ">", 6),
    ("µs/notif", ">", 8),
    ("peak RSS", ">", 8),
    ("broker", ">", 6),
    ("moved", ">", 5),
    ("ours ÷ it", ">", 9),
    ("target", "<", 12),
)
GROUPS = (
    ("polling", ("ours_poll", "sdk")),
    ("webhooks", ("ours_webhook", "faststream", "management", "raw")),
)


def _number(value: float, digits: int = 0, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.{digits}f}{suffix}"


def _row(cells: list[str]) -> str:
    return "  ".join(
        f"{cell:{align}{width}}" for cell, (_, align, width) in zip(cells, COLUMNS, strict=True)
    ).rstrip()


def _cells(name: str, v: dict[str, Any]) -> list[str]:
    target = v.get("target")
    goal = ""
    if target is not None:
        goal = f"≥ {target['min']:g} " + ("PASS" if target["pass"] else "MISS")
    over = "—" if name.startswith("ours") else _number(v["ours_over"], 2)
    return [
        v["label"],
        _number(v["rate"]),
        _number(v["p50_ms"], 1),
        _number(v["p99_ms"], 1),
        _number(v["cpu_cores"], 2),
        _number(v["cpu_us"]),
        _number(v["rss_mb"], 0, " MB"),
        _number(v["broker_cpu"], 2),
        "yes" if v["moved"] else "NO",
        over,
        goal,
    ]


def report(r: dict[str, Any]) -> str:
    s = r["setup"]
    header = [
        "bridge bench compare",
        f"  polling   {s['instances']} instances on {s['fake_processes']} fake providers, "
        f"{s['latency'] * 1000:g} ms per provider call, {s['per_instance']} notifications each "
        "enqueued at once; latency = enqueue to arrival at a consumer",
        f"  webhooks  {s['webhook_instances']} instances, {s['concurrency']} in flight, "
        f"{s['duration']:g} s measured after {s['warmup']:g} s warm-up, {s['generator']} "
        "generator; latency = request latency ((d): publish to confirm)",
        "  CPU and peak RSS: the process under test ((c): the broker itself); broker: RabbitMQ's "
        "CPU in cores",
        "",
        _row([name for name, _, _ in COLUMNS]),
    ]
    lines = header
    for group, names in GROUPS:
        lines.append(group)
        lines += [_row(_cells(n, r["variants"][n])) for n in names if n in r["variants"]]
    moved = "yes" if r["all_moved"] else "NO"
    lines.append("")
    for name, what in (("ours_poll", "(a)"), ("ours_webhook", "(b), (c), (d)")):
        runs = r["variants"].get(name, {}).get("runs")
        if runs:
            before, after = (_number(run["rate"]) for run in runs)
            lines.append(
                f"  {r['variants'][name]['label']}: the mean of {before} and {after} "
                f"notifications/s, measured before and after {what}"
            )
    lines += [
        f"  every variant moved every acknowledged notification to the consumer: {moved}",
        f"  machine: {r['cpus']} CPUs, Python {r['python']}",
    ]
    return "\n".join(lines)
