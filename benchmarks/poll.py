"""`bridge bench poll`: polling throughput against the GREEN-API protocol limit.

Setup: N instances on fake-provider processes (each call delayed by the injected latency),
M unique notifications each, one `bridge run` process polling them into RabbitMQ. The clock
starts when the notifications are enqueued (the bridge is already long-polling empty queues)
and stops when every provider queue is empty.

Protocol limit: every notification needs a receive and then a delete, strictly in sequence per
instance, so one instance moves at most 1 / (2 * latency) notifications/s and N instances
N / (2 * latency). The figure to look at is the ratio of the measured rate to that limit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import (
    Progress,
    cpu_seconds,
    delete_topology,
    peak_rss_mb,
    print_result,
    spawn,
    stop_process,
    wait_http,
)
from fakeprovider.samples import numbered_notifications

DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_setup_arguments(parser)
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP)
    parser.add_argument("--port", type=int, default=18100, help="first fake provider port")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def add_setup_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Instances, notifications, provider latency, fake provider processes."""
    parser.add_argument("--instances", type=int, default=200, help="default %(default)s")
    parser.add_argument("--per-instance", type=int, default=50, help="default %(default)s")
    parser.add_argument(
        "--latency", type=float, default=0.02, help="seconds per provider call (%(default)s)"
    )
    parser.add_argument(
        "--fake-processes", type=int, default=2, help="fake provider processes (%(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    return print_result(asyncio.run(bench(args)), as_json=args.json, report=report)


def report(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            "bridge bench poll",
            f"  instances            {r['instances']}",
            f"  notifications        {r['notifications']} ({r['per_instance']} per instance)",
            f"  provider latency     {r['latency'] * 1000:.0f} ms per call",
            f"  elapsed              {r['elapsed']:.2f} s",
            f"  throughput           {r['rate']:.0f} notifications/s",
            f"  protocol limit       {r['limit']:.0f} notifications/s",
            f"  ratio                {r['ratio']:.2f}",
            f"  bridge peak RSS      {r['rss_mb']:.0f} MB",
            f"  bridge CPU           {r['bridge_cpu']:.2f} cores, "
            f"{r['cpu_us_per_notification']:.0f} µs per notification",
        ]
    )


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    n, m = args.instances, args.per_instance
    ids = [str(7100000000 + i) for i in range(n)]
    tokens = {i: secrets.token_hex(16) for i in ids}
    groups = [ids[k :: args.fake_processes] for k in range(args.fake_processes)]
    ports = [args.port + k for k in range(args.fake_processes)]
    prefix = f"bench{secrets.token_hex(4)}"
    workdir = Path(tempfile.mkdtemp(prefix="bridge-bench-"))
    fakes: list[asyncio.subprocess.Process] = []
    bridge = None
    progress = Progress("poll bench")
    try:
        await start_fakes(groups, ports, tokens, args.latency, workdir, into=fakes)
        async with httpx.AsyncClient(timeout=30) as client:
            for port in ports:
                await wait_http(client, f"http://127.0.0.1:{port}/_control/stats")
            config, env = poll_config(args.amqp_url, prefix, groups, ports, tokens)
            path = workdir / "bridge.toml"
            path.write_text(config)
            baseline = await receives(client, ports)
            bridge = await spawn(
                ["run", "--config", str(path), "--log-level", "warning"],
                workdir / "bridge.log",
                env=env,
            )

            def check() -> None:
                if bridge is not None and bridge.returncode is not None:
                    raise SystemExit(f"bridge exited, see {workdir / 'bridge.log'}")

            await wait_polling(client, ports, baseline, check, "poll bench")
            bodies = numbered_notifications(n * m, prefix="BENCH")
            cpu_before = cpu_seconds(bridge.pid)
            started = time.perf_counter()
            for port, group in zip(ports, groups, strict=True):
                for ident in group:
                    await enqueue(client, port, ident, [bodies.pop() for _ in range(m)])
            total = n * m
            await wait_deleted(client, ports, total, progress, check)
            elapsed = time.perf_counter() - started
            cpu = cpu_seconds(bridge.pid) - cpu_before
            progress.done()
            rss = peak_rss_mb(bridge.pid)
    finally:
        if bridge is not None:
            await stop_process(bridge)
        for proc in fakes:
            await stop_process(proc)
        await delete_topology(args.amqp_url, prefix)
    limit = n / (2 * args.latency)
    rate = total / elapsed
    return {
        "instances": n,
        "per_instance": m,
        "notifications": total,
        "latency": args.latency,
        "elapsed": elapsed,
        "rate": rate,
        "limit": limit,
        "ratio": rate / limit,
        "rss_mb": rss,
        "bridge_cpu": cpu / elapsed,
        "cpu_us_per_notification": 1e6 * cpu / total,
        "cpus": os.cpu_count(),
        "prefix": prefix,
        "python": sys.version.split()[0],
    }


async def receives(client: httpx.AsyncClient, ports: list[int]) -> dict[str, int]:
    """`receiveNotification` calls begun so far, per instance, on every fake provider."""
    found = {}
    for port in ports:
        stats = (await client.get(f"http://127.0.0.1:{port}/_control/stats")).json()
        found.update({ident: c["receives"] for ident, c in stats["instances"].items()})
    return found


async def wait_polling(
    client: httpx.AsyncClient,
    ports: list[int],
    baseline: dict[str, int],
    alive: Callable[[], None],
    label: str,
) -> None:
    """Until a receive began on every instance since `baseline` (the bridge's pollers wait
    out their lease's settle delay first): from then on each instance has a long poll pending."""
    deadline = time.monotonic() + 120
    while True:
        now = await receives(client, ports)
        if all(now[i] > count for i, count in baseline.items()):
            return
        alive()
        if time.monotonic() > deadline:
            raise SystemExit(f"{label}: not polling every instance")
        await asyncio.sleep(0.1)


async def start_fakes(
    groups: list[list[str]],
    ports: list[int],
    tokens: dict[str, str],
    latency: float,
    workdir: Path,
    *,
    into: list[asyncio.subprocess.Process],
) -> None:
    """One `bridge fake-provider` process per port, serving its group of instances, appended to
    `into` as each starts."""
    for port, group in zip(ports, groups, strict=True):
        argv = ["fake-provider", "--listen", f"127.0.0.1:{port}", "--latency", str(latency)]
        for ident in group:
            argv += ["--instance", f"{ident}:{tokens[ident]}"]
        into.append(await spawn(argv, workdir / f"fake-{port}.log"))


async def enqueue(client: httpx.AsyncClient, port: int, ident: str, bodies: list[bytes]) -> None:
    """Add notifications to an instance's queue on a fake provider (one control request)."""
    response = await client.post(
        f"http://127.0.0.1:{port}/_control/instances/{ident}/notifications",
        content=b"[" + b",".join(bodies) + b"]",
    )
    response.raise_for_status()


async def deleted(client: httpx.AsyncClient, ports: list[int]) -> int:
    """Notifications deleted so far on the fake providers, all instances."""
    total = 0
    for port in ports:
        stats = (await client.get(f"http://127.0.0.1:{port}/_control/stats")).json()
        total += stats["totals"]["deleted"]
    return total


async def wait_deleted(
    client: httpx.AsyncClient,
    ports: list[int],
    total: int,
    progress: Progress,
    check: Callable[[], None],
    *,
    before: int = 0,
) -> None:
    """Until `total` more than `before` notifications are deleted; `check()` raises to stop."""
    while True:
        done = await deleted(client, ports) - before
        progress.update(done, total)
        if done >= total:
            return
        check()
        await asyncio.sleep(0.05)


def poll_config(
    amqp_url: str,
    prefix: str,
    groups: list[list[str]],
    ports: list[int],
    tokens: dict[str, str],
    *,
    http_port: int | None = None,
) -> tuple[str, dict[str, str]]:
    """A bridge config polling every instance, on the `prefix` topology; with `http_port`, its
    HTTP server (for /readyz) on that local port."""
    lines = [
        "[amqp]",
        f'url = "{amqp_url}"',
        f'exchange = "{prefix}.notifications"',
        f'unrouted_exchange = "{prefix}.unrouted"',
        f'invalid_exchange = "{prefix}.invalid"',
    ]
    if http_port is not None:
        lines += ["[http]", f'listen = "127.0.0.1:{http_port}"']
    lines += ["[lease]", f'exchange = "{prefix}.members"']  # its own, beside other bridges
    env: dict[str, str] = {}
    for port, group in zip(ports, groups, strict=True):
        for ident in group:
            lines += [
                "[[sources]]",
                'provider = "greenapi"',
                'mode = "poll"',
                f'instance = "{ident}"',
                f'api_url = "http://127.0.0.1:{port}"',
                f'token_env = "BENCH_TOKEN_{ident}"',
                "receive_timeout = 5",
            ]
            env[f"BENCH_TOKEN_{ident}"] = tokens[ident]
    return "\n".join(lines) + "\n", env
