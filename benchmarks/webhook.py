"""`bridge bench webhook`: webhook throughput and latency against raw confirmed publishes.

Setup: one `bridge run` process with K GREEN-API webhook sources on a throwaway topology (a
random exchange prefix). A load generator keeps C POSTs in flight for D seconds (after a
warm-up that is not counted), each a distinct ~1 KiB `incomingMessageReceived` body (the bridge
does not re-publish a message_id it confirmed recently, and the id is a digest of the body),
spread over the K instances. Every 200 means RabbitMQ confirmed the republished message.

Reference, in the same run and at the same in-flight depth: the same bodies published straight
to the exchange the bridge publishes to (its archive's ingest fanout when the archive is on),
through aiormq, the way the bridge publishes them (confirm channel, mandatory, persistent, the
bridge's properties and headers), C publishes in flight. The runs go reference, webhook,
reference, and the reference rate is the mean of the two. The ratio of the webhook rate to it is
what the HTTP path and the bridge's own work cost.

Generators: `wrk` when it is on PATH (a generated Lua script builds every body,
`benchmarks.wrk`), otherwise a built-in aiohttp generator. The built-in generator and the
reference publisher run as helper processes (`benchmarks.load`).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import (
    delete_topology,
    free_port,
    local_broker_pid,
    peak_rss_mb,
    print_result,
    spawn,
    stop_process,
    topology_names,
    wait_http,
)
from benchmarks.load import (
    PREFIX_WIDTH,
    TOKEN_ENV,
    body_parts,
    greenapi_target,
    helper_argv,
    helper_run,
    instance_ids,
)
from benchmarks.wrk import parse_wrk, pick_generator, wrk_run
from bridge.amqp.topology import topology
from bridge.config import load

__all__ = [
    "add_arguments",
    "bench",
    "body_parts",
    "delete_topology",
    "parse_wrk",
    "report",
    "topology_names",
]

DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
TARGET_RATIO = 0.8
TARGET_P99_MS = 25.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--instances", type=int, default=20, help="default %(default)s")
    add_load_arguments(parser)
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP)
    parser.add_argument("--port", type=int, default=0, help="bridge HTTP port (0: a free one)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def add_load_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """In-flight depth, measured and warm-up seconds, body size, generator."""
    parser.add_argument(
        "--concurrency", type=int, default=64, help="requests in flight (%(default)s)"
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="measured seconds per run (%(default)s)"
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="uncounted seconds before each (%(default)s)"
    )
    parser.add_argument("--body-bytes", type=int, default=1024, help="default %(default)s")
    parser.add_argument(
        "--generator",
        choices=["auto", "wrk", "builtin"],
        default="auto",
        help="auto: wrk when on PATH, else the built-in aiohttp generator",
    )


def run(args: argparse.Namespace) -> int:
    return print_result(asyncio.run(bench(args)), as_json=args.json, report=report)


# -- the bench -----------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    _check_args(args)
    generator = pick_generator(args.generator)
    ids = instance_ids(args.instances)
    token = secrets.token_hex(16)
    prefix = f"bench{secrets.token_hex(4)}"
    port = args.port or free_port()
    base_url = f"http://127.0.0.1:{port}"
    workdir = Path(tempfile.mkdtemp(prefix="bridge-bench-webhook-"))
    env = {TOKEN_ENV: token}
    broker = local_broker_pid(args.amqp_url)
    bridge = None
    ok = False
    try:
        path = workdir / "bridge.toml"
        path.write_text(webhook_config(args.amqp_url, prefix, port, ids))
        exchange = publish_exchange(path, env)
        bridge = await spawn(
            ["run", "--config", str(path), "--log-level", "warning"],
            workdir / "bridge.log",
            env=env,
        )
        async with httpx.AsyncClient(timeout=5) as client:
            await wait_http(client, f"{base_url}/readyz", timeout=30)
        watch = [bridge.pid] + ([broker] if broker else [])

        def check_bridge() -> None:
            if bridge is not None and bridge.returncode is not None:
                raise SystemExit(f"bridge exited, see {workdir / 'bridge.log'}")

        publish_argv = [
            "publish",
            "--amqp-url",
            args.amqp_url,
            "--exchange",
            exchange,
            *helper_argv(args),
        ]
        helper = functools.partial(helper_run, env=env, workdir=workdir, watch=watch, args=args)
        raw1 = await helper("webhook bench: reference 1/2", [*publish_argv, "--prefix", "A000"])
        check_bridge()
        if generator == "wrk":
            target = greenapi_target(args.body_bytes, ids, token)
            hook = await wrk_run(
                args,
                base_url=base_url,
                target=target,
                workdir=workdir,
                watch=watch,
                reset_rss=bridge.pid,
            )
        else:
            load_argv = ["load", "--url", base_url, "--prefix", "W000", *helper_argv(args)]
            hook = await helper("webhook bench: webhook", load_argv, reset_rss=bridge.pid)
        rss = peak_rss_mb(bridge.pid)
        check_bridge()
        raw2 = await helper("webhook bench: reference 2/2", [*publish_argv, "--prefix", "B000"])
        check_bridge()
        ok = True
    finally:
        if bridge is not None:
            await stop_process(bridge)
        await delete_topology(args.amqp_url, prefix)
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            sys.stderr.write(f"webhook bench: logs kept in {workdir}\n")
    return _result(
        args,
        generator=generator,
        prefix=prefix,
        hook=hook,
        raw=(raw1, raw2),
        rss=rss,
        bridge_pid=bridge.pid,
        broker=broker,
    )


def _check_args(args: argparse.Namespace) -> None:
    if args.instances < 1 or args.concurrency < 1:
        raise SystemExit("--instances and --concurrency must be at least 1")
    if args.duration <= 0 or args.warmup < 0:
        raise SystemExit("--duration must be positive and --warmup not negative")


def _result(
    args: argparse.Namespace,
    *,
    generator: str,
    prefix: str,
    hook: dict[str, Any],
    raw: tuple[dict[str, Any], dict[str, Any]],
    rss: float,
    bridge_pid: int,
    broker: int | None,
) -> dict[str, Any]:
    raw1, raw2 = raw
    raw_rate = (raw1["rate"] + raw2["rate"]) / 2
    ratio = hook["rate"] / raw_rate if raw_rate else 0.0
    bridge_cpu = hook["cpu"].get(bridge_pid, math.nan)
    result: dict[str, Any] = {
        "instances": args.instances,
        "concurrency": args.concurrency,
        "duration": args.duration,
        "warmup": args.warmup,
        "body_bytes": len(b"".join(body_parts(args.body_bytes))) + 10 + PREFIX_WIDTH + 12,
        "generator": generator,
        "prefix": prefix,
        "requests": hook["count"],
        "rate": hook["rate"],
        "p50_ms": hook["p50_ms"],
        "p90_ms": hook["p90_ms"],
        "p99_ms": hook["p99_ms"],
        "max_ms": hook["max_ms"],
        "non_200": hook["non_200"],
        "statuses": hook["statuses"],
        "errors": hook["errors"],
        "latency_distribution": hook.get("distribution", {}),
        "generator_cpu": hook["own_cpu"],
        "raw_rate": raw_rate,
        "raw_rates": [raw1["rate"], raw2["rate"]],
        "raw_p50_ms": (raw1["p50_ms"] + raw2["p50_ms"]) / 2,
        "raw_p99_ms": (raw1["p99_ms"] + raw2["p99_ms"]) / 2,
        "raw_p99s_ms": [raw1["p99_ms"], raw2["p99_ms"]],
        "raw_failures": raw1["non_200"] + raw2["non_200"] + raw1["errors"] + raw2["errors"],
        "raw_publisher_cpu": (raw1["own_cpu"] + raw2["own_cpu"]) / 2,
        "ratio": ratio,
        "bridge_cpu": bridge_cpu,
        "cpu_us_per_request": 1e6 * bridge_cpu / hook["rate"] if hook["rate"] else math.nan,
        "rss_mb": rss,
        "broker_cpu": hook["cpu"].get(broker, math.nan) if broker else None,
        "raw_broker_cpu": (
            (raw1["cpu"].get(broker, math.nan) + raw2["cpu"].get(broker, math.nan)) / 2
            if broker
            else None
        ),
        "targets": {
            "ratio": {"min": TARGET_RATIO, "pass": ratio >= TARGET_RATIO},
            "p99_ms": {"max": TARGET_P99_MS, "pass": hook["p99_ms"] <= TARGET_P99_MS},
        },
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    return result


def report(r: dict[str, Any]) -> str:
    def mark(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    t = r["targets"]
    lines = [
        "bridge bench webhook",
        f"  setup                {r['instances']} instances, {r['concurrency']} in flight, "
        f"{r['duration']:g} s measured after {r['warmup']:g} s warm-up, "
        f"{r['body_bytes']}-byte bodies",
        f"  generator            {r['generator']}"
        + (" (2 threads)" if r["generator"] == "wrk" else " (aiohttp, own process)"),
        f"  webhook              {r['rate']:.0f} requests/s ({r['requests']} in "
        f"{r['duration']:g} s)",
        f"  latency              p50 {r['p50_ms']:.2f} ms, p90 {r['p90_ms']:.2f} ms, "
        f"p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.2f} ms",
    ]
    if r["latency_distribution"]:
        dist = "  ".join(f"{q} {v:.2f} ms" for q, v in r["latency_distribution"].items())
        lines.append(f"  wrk distribution     {dist}")
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items())) or "none"
    lines += [
        f"  non-200              {r['non_200']} (statuses {statuses}), "
        f"transport errors {r['errors']}",
        f"  raw publish          {r['raw_rate']:.0f} publishes/s (runs "
        f"{r['raw_rates'][0]:.0f}, {r['raw_rates'][1]:.0f}), p50 {r['raw_p50_ms']:.2f} ms, "
        f"p99 {r['raw_p99_ms']:.2f} ms, failures {r['raw_failures']}",
        f"  ratio                {r['ratio']:.2f}   target >= {t['ratio']['min']:g}   "
        f"{mark(t['ratio']['pass'])}",
        f"  p99                  {r['p99_ms']:.2f} ms   target <= {t['p99_ms']['max']:g} ms   "
        f"{mark(t['p99_ms']['pass'])}",
        f"  bridge CPU           {r['bridge_cpu']:.2f} cores, "
        f"{r['cpu_us_per_request']:.0f} µs per request",
        f"  bridge peak RSS      {r['rss_mb']:.0f} MB",
        f"  generator CPU        {r['generator_cpu']:.2f} cores; raw publisher "
        f"{r['raw_publisher_cpu']:.2f} cores",
    ]
    if r["broker_cpu"] is not None:
        lines.append(
            f"  broker CPU           {r['broker_cpu']:.2f} cores during webhooks, "
            f"{r['raw_broker_cpu']:.2f} during raw publishes (local beam.smp)"
        )
    lines.append(f"  machine              {r['cpus']} CPUs, Python {r['python']}")
    return "\n".join(lines)


# -- phases ----------------------------------------------------------------------------------
# -- setup and cleanup ---------------------------------------------------------------------


def publish_exchange(path: Path, env: dict[str, str]) -> str:
    """The exchange the bridge publishes to with this config and environment (its archive's
    ingest fanout when `archive.enabled`): the reference publishes there too, so both pay for
    the same queues."""
    cfg = load(path, {**os.environ, **env}, secrets=False).config
    topo = topology(cfg.amqp, (), cfg.archive)
    return topo.publish_exchange(cfg.amqp.exchange)


def webhook_config(amqp_url: str, prefix: str, port: int, ids: list[str]) -> str:
    """A bridge config with a GREEN-API webhook source per instance, on the `prefix` topology."""
    lines = [
        "[amqp]",
        f'url = "{amqp_url}"',
        f'exchange = "{prefix}.notifications"',
        f'unrouted_exchange = "{prefix}.unrouted"',
        f'invalid_exchange = "{prefix}.invalid"',
        "[http]",
        f'listen = "127.0.0.1:{port}"',
    ]
    for ident in ids:
        lines += [
            "[[sources]]",
            'provider = "greenapi"',
            'mode = "webhook"',
            f'instance = "{ident}"',
            f'webhook_token_env = "{TOKEN_ENV}"',
        ]
    return "\n".join(lines) + "\n"
