"""The variants of `bridge bench compare`, run one after another: each starts its process, is
measured, and is stopped before the next starts, so none shares the machine with another. Ours
runs first and again last in each group, and its row is the mean of the two (`bracket`): on a
shared machine the speed drifts during a run, and an alternative measured in between is then
compared with ours at about the same moment."""

from __future__ import annotations

import argparse
import asyncio
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import (
    Progress,
    cpu_seconds,
    free_port,
    peak_rss_mb,
    spawn,
    stop_process,
    wait_http,
)
from benchmarks.load import (
    TOKEN_ENV,
    greenapi_target,
    helper_argv,
    helper_run,
    instance_ids,
    management_target,
    percentiles,
)
from benchmarks.poll import (
    deleted,
    enqueue,
    poll_config,
    receives,
    start_fakes,
    wait_deleted,
    wait_polling,
)
from benchmarks.sink import Sink, poll_tag
from benchmarks.webhook import webhook_config
from benchmarks.wrk import wrk_run
from fakeprovider.samples import numbered_notifications

FIRST_POLL_INSTANCE = 7300000000
STALL_SECONDS = 60.0  # no notification deleted for this long: the variant is stuck

LABELS = {
    "ours_poll": "ours: bridge run (polling)",
    "sdk": "(a) GREEN-API SDK loop + pika",
    "ours_webhook": "ours: bridge run (webhooks)",
    "faststream": "(b) FastAPI + FastStream",
    "management": "(c) management-API publish",
    "raw": "(d) raw aio-pika publishes",
}


@dataclass(frozen=True)
class RunSetup:
    """What every variant of one run shares."""

    args: argparse.Namespace
    prefix: str
    workdir: Path
    broker: int | None
    sink: Sink


def _alive(proc: asyncio.subprocess.Process, log: Path) -> Callable[[], None]:
    def check() -> None:
        if proc.returncode is not None:
            raise SystemExit(f"compare bench: a variant exited ({proc.returncode}), see {log}")

    return check


# -- polling ---------------------------------------------------------------------------------


async def poll_variants(run: RunSetup, scripts: Path) -> dict[str, dict[str, Any]]:
    """Ours, then (a), polling the same fake provider instances."""
    args = run.args
    ids = [str(FIRST_POLL_INSTANCE + i) for i in range(args.instances)]
    tokens = {i: secrets.token_hex(16) for i in ids}
    groups = [ids[k :: args.fake_processes] for k in range(args.fake_processes)]
    ports = [free_port() for _ in groups]
    fakes: list[asyncio.subprocess.Process] = []
    try:
        await start_fakes(groups, ports, tokens, args.latency, run.workdir, into=fakes)
        async with httpx.AsyncClient(timeout=30) as client:
            for port in ports:
                await wait_http(client, f"http://127.0.0.1:{port}/_control/stats")

            async def ours(log: Path) -> asyncio.subprocess.Process:
                http_port = free_port()
                config, env = poll_config(
                    args.amqp_url, run.prefix, groups, ports, tokens, http_port=http_port
                )
                path = log.with_suffix(".toml")
                path.write_text(config)
                proc = await spawn(
                    ["run", "--config", str(path), "--log-level", "warning"], log, env=env
                )
                await wait_http(client, f"http://127.0.0.1:{http_port}/readyz", timeout=30)
                return proc

            async def sdk(log: Path) -> asyncio.subprocess.Process:
                ready = log.with_suffix(".ready")
                argv = [
                    "--amqp-url",
                    args.amqp_url,
                    "--exchange",
                    run.sink.exchange,
                    "--ready-file",
                    str(ready),
                    *(
                        f"{i}:{tokens[i]}@http://127.0.0.1:{port}"
                        for port, group in zip(ports, groups, strict=True)
                        for i in group
                    ),
                ]
                script = str(scripts / "greenapi_sdk_pika.py")
                proc = await spawn(argv, log, program=(script,))
                deadline = time.monotonic() + 120
                while not ready.exists():
                    _alive(proc, log)()
                    if time.monotonic() > deadline:
                        raise SystemExit(f"compare bench: (a) not ready after 120 s, see {log}")
                    await asyncio.sleep(0.1)
                return proc

            # ours before and after (a): drift on a shared machine shows, and averages out
            runs = []
            order = (("ours_poll", "P", ours), ("sdk", "S", sdk), ("ours_poll", "Q", ours))
            for name, letter, start in order:
                one = await _poll_one(
                    run, client, ports=ports, groups=groups, name=name, letter=letter, start=start
                )
                runs.append(one)
            rows = {"ours_poll": bracket(runs[0], runs[2]), "sdk": runs[1]}
    finally:
        for proc in fakes:
            await stop_process(proc)
    return rows


async def _poll_one(
    run: RunSetup,
    client: httpx.AsyncClient,
    *,
    ports: list[int],
    groups: list[list[str]],
    name: str,
    letter: str,
    start: Callable[[Path], Awaitable[asyncio.subprocess.Process]],
) -> dict[str, Any]:
    args = run.args
    total = args.instances * args.per_instance
    baseline = await receives(client, ports)
    log = run.workdir / f"{name}-{letter}.log"
    proc = await start(log)
    alive = _alive(proc, log)
    try:
        await wait_polling(client, ports, baseline, alive, LABELS[name])
        await asyncio.sleep(args.settle)
        alive()
        before = await deleted(client, ports)
        cpu_before, broker_before = cpu_seconds(proc.pid), _cpu(run.broker)
        started = time.perf_counter()
        for port, group in zip(ports, groups, strict=True):
            for ident in group:
                bodies = numbered_notifications(args.per_instance, prefix=poll_tag(letter))
                await enqueue(client, port, ident, bodies)
        stall = _Stall(lambda: run.sink.count(letter))

        def check() -> None:
            alive()
            stall.check(LABELS[name], log)

        await wait_deleted(client, ports, total, Progress(LABELS[name]), check, before=before)
        arrived_all = await run.sink.wait_for(letter, total, timeout=30)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(proc.pid) - cpu_before
        broker_cpu = _cpu(run.broker) - broker_before
        rss = peak_rss_mb(proc.pid)
    finally:
        await stop_process(proc)
    return {
        "kind": "poll",
        "label": LABELS[name],
        "count": total,
        "elapsed": elapsed,
        "rate": total / elapsed,
        **percentiles(run.sink.latencies(letter)),
        "cpu_cores": cpu / elapsed,
        "cpu_us": 1e6 * cpu / total,
        "rss_mb": rss,
        "broker_cpu": broker_cpu / elapsed,
        "arrived": run.sink.count(letter),
        "failures": 0,
        "moved": arrived_all,
    }


class _Stall:
    """Raises from `check()` when `progress()` has not moved for STALL_SECONDS."""

    def __init__(self, progress: Callable[[], int]) -> None:
        self.progress = progress
        self.last = progress()
        self.since = time.monotonic()

    def check(self, label: str, log: Path) -> None:
        now, value = time.monotonic(), self.progress()
        if value != self.last:
            self.last, self.since = value, now
        elif now - self.since > STALL_SECONDS:
            raise SystemExit(f"compare bench: {label} stalled at {value}, see {log}")


def _cpu(pid: int | None) -> float:
    return cpu_seconds(pid) if pid is not None else math.nan


# -- webhooks --------------------------------------------------------------------------------


async def webhook_variants(
    run: RunSetup, scripts: Path, *, generator: str, management: tuple[str, str, str]
) -> dict[str, dict[str, Any]]:
    """Ours, (b), (c) and (d), under the same load generator (the same in-flight depth)."""
    args = argparse.Namespace(**{**vars(run.args), "instances": run.args.webhook_instances})
    ids = instance_ids(args.instances)
    token = secrets.token_hex(16)
    env = {TOKEN_ENV: token}
    broker = [run.broker] if run.broker is not None else []
    greenapi = greenapi_target(args.body_bytes, ids, token)
    rows: dict[str, dict[str, Any]] = {}

    async def drive(
        name: str, letters: str, base_url: str, pid: int | None, *, target: str = "greenapi"
    ) -> dict[str, Any]:
        watch = ([pid] if pid is not None and pid != run.broker else []) + broker
        reset_rss = pid if pid != run.broker else None  # never touch the broker's counters
        label = LABELS[name]
        if generator == "wrk":
            chosen = greenapi
            if target == "management":
                _url, vhost, credentials = management
                chosen = management_target(
                    args.body_bytes,
                    ids,
                    exchange=run.sink.exchange,
                    vhost=vhost,
                    credentials=credentials,
                )
            result = await wrk_run(
                args,
                base_url=base_url,
                target=chosen,
                workdir=run.workdir,
                watch=watch,
                reset_rss=reset_rss,
                label=label,
                letters=letters,
            )
        else:
            argv = ["load", "--url", base_url, "--prefix", f"{letters[1]}000"]
            helper_env = env
            if target == "management":
                argv += ["--target", "management", "--exchange", run.sink.exchange]
                argv += ["--vhost", management[1]]
                helper_env = {TOKEN_ENV: management[2]}
            result = await helper_run(
                label,
                [*argv, *helper_argv(args)],
                env=helper_env,
                workdir=run.workdir,
                watch=watch,
                args=args,
                reset_rss=reset_rss,
            )
        return await _hook_row(run, name, letters[1], result, pid)

    async def served(
        name: str,
        letters: str,
        port: int,
        argv: list[str],
        *,
        health: str,
        program: Sequence[str],
    ) -> dict[str, Any]:
        """Start a webhook server, load it once it answers `health`, stop it."""
        log = run.workdir / f"{name}-{letters}.log"
        proc = await spawn(argv, log, env=env, program=program)
        base_url = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                await wait_http(client, base_url + health, timeout=60)
            row = await drive(name, letters, base_url, proc.pid)
            _alive(proc, log)()
            return row
        finally:
            await stop_process(proc)

    async def ours(letters: str) -> dict[str, Any]:
        port = free_port()
        path = run.workdir / f"bridge-webhook-{letters}.toml"
        path.write_text(webhook_config(args.amqp_url, run.prefix, port, ids))
        argv = ["run", "--config", str(path), "--log-level", "warning"]
        return await served(
            "ours_webhook", letters, port, argv, health="/readyz", program=("-m", "bridge")
        )

    first = await ours("VW")
    port = free_port()
    argv = ["--amqp-url", args.amqp_url, "--exchange", run.sink.exchange, "--port", str(port)]
    program = (str(scripts / "fastapi_faststream.py"),)
    rows["faststream"] = await served(
        "faststream", "EF", port, argv, health="/healthz", program=program
    )
    rows["management"] = await drive(
        "management", "LM", management[0], run.broker, target="management"
    )
    publish = ["publish", "--amqp-url", args.amqp_url, "--exchange", run.sink.exchange]
    result = await helper_run(
        LABELS["raw"],
        [*publish, *helper_argv(args), "--prefix", "R000"],
        env=env,
        workdir=run.workdir,
        watch=broker,
        args=args,
    )
    rows["raw"] = await _hook_row(run, "raw", "R", result, None)
    return {"ours_webhook": bracket(first, await ours("TU")), **rows}


_MEAN = ("rate", "p50_ms", "p90_ms", "p99_ms", "max_ms", "cpu_cores", "cpu_us", "broker_cpu")


def bracket(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Ours measured before and after the alternatives as one row: the mean of the rates,
    latencies and CPU figures, the sum of the counts, the larger RSS; both runs kept."""
    row = {**before, **{key: (before[key] + after[key]) / 2 for key in _MEAN}}
    for key in ("count", "arrived", "failures"):
        row[key] = before[key] + after[key]
    row.pop("elapsed", None)
    row["rss_mb"] = max(before["rss_mb"], after["rss_mb"])
    row["moved"] = before["moved"] and after["moved"]
    row["runs"] = [before, after]
    return row


async def _hook_row(
    run: RunSetup, name: str, letter: str, result: dict[str, Any], pid: int | None
) -> dict[str, Any]:
    """A webhook variant's row; `pid` is the process under test (None: the load process)."""
    ok = result["count"] - result["non_200"]
    arrived_all = await run.sink.wait_for(letter, ok, timeout=30)
    failures = result["non_200"] + result["errors"]
    cores: dict[int, float] = result["cpu"]
    if name == "raw":
        cpu = result["own_cpu"]
        rss = result.get("rss_mb", math.nan)
    else:
        cpu = cores.get(pid, math.nan) if pid is not None else math.nan
        rss = peak_rss_mb(pid) if pid is not None and pid != run.broker else math.nan
    rate = result["rate"]
    return {
        "kind": "webhook",
        "label": LABELS[name],
        "count": result["count"],
        "rate": rate,
        "p50_ms": result["p50_ms"],
        "p90_ms": result["p90_ms"],
        "p99_ms": result["p99_ms"],
        "max_ms": result["max_ms"],
        "cpu_cores": cpu,
        "cpu_us": 1e6 * cpu / rate if rate else math.nan,
        "rss_mb": rss,
        "broker_cpu": cores.get(run.broker, math.nan) if run.broker is not None else math.nan,
        "generator_cpu": result["own_cpu"] if name != "raw" else math.nan,
        "arrived": run.sink.count(letter),
        "failures": failures,
        "moved": failures == 0 and ok > 0 and arrived_all,
    }
