"""`bridge bench webhook`: webhook throughput and latency against raw confirmed publishes.

Setup: one `bridge run` process with K GREEN-API webhook sources on a throwaway topology (a
random exchange prefix). A load generator keeps C POSTs in flight for D seconds (after a
warm-up that is not counted), each a distinct ~1 KiB `incomingMessageReceived` body (the bridge
does not re-publish a message_id it confirmed recently, and the id is a digest of the body),
spread over the K instances. Every 200 means RabbitMQ confirmed the republished message.

Reference, in the same run and at the same in-flight depth: the same bodies published straight
to the same exchange through aiormq, the way the bridge publishes them (confirm channel,
mandatory, persistent, the bridge's properties and headers), C publishes in flight. The runs go
reference, webhook, reference, and the reference rate is the mean of the two. The ratio of the
webhook rate to it is what the HTTP path and the bridge's own work cost.

Generators: `wrk` when it is on PATH (a generated Lua script builds every body), otherwise a
built-in aiohttp generator. The built-in generator and the reference publisher run as helper
processes, `python -m bridge.bench.webhook load|publish …`, so neither shares an event loop with
the bridge or with this process (they still share the machine's cores). A helper prints
`measure` when its warm-up ends, `stop` when its window ends, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import math
import os
import re
import resource
import secrets
import shutil
import socket
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import httpx

from bridge.bench.common import (
    Progress,
    cpu_seconds,
    peak_rss_mb,
    print_result,
    spawn,
    stop_process,
    wait_http,
)

DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
TOKEN_ENV = "BENCH_HOOK_TOKEN"  # noqa: S105 - the variable's name, not a token
TARGET_RATIO = 0.8
TARGET_P99_MS = 25.0

EVENT = "incomingMessageReceived"
CHAT_ID = "79001234568@c.us"
EVENT_TIME = 1588091580
FIRST_INSTANCE = 7200000000
PREFIX_WIDTH = 4  # run letter + 3 digits (wrk thread / helper process), then a 12-digit counter
_INSTANCE_MARK = "\x00"
_TAG_MARK = "\x01"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--instances", type=int, default=20, help="default %(default)s")
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
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP)
    parser.add_argument("--port", type=int, default=0, help="bridge HTTP port (0: a free one)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    return print_result(asyncio.run(bench(args)), as_json=args.json, report=report)


# -- the bodies ----------------------------------------------------------------------------


def instance_ids(count: int) -> list[str]:
    return [str(FIRST_INSTANCE + i) for i in range(count)]


def body_parts(body_bytes: int) -> tuple[bytes, bytes, bytes]:
    """A GREEN-API `incomingMessageReceived` body as `head + INSTANCE + mid + TAG + tail`, where
    TAG is the idMessage (a 4-character prefix and a 12-digit counter); padded with message text
    to about `body_bytes` for a 10-digit instance id."""

    def render(text: str) -> str:
        return (
            '{"typeWebhook":"' + EVENT + '","instanceData":{"idInstance":' + _INSTANCE_MARK
            + ',"wid":"11001234567@c.us","typeInstance":"whatsapp"},"timestamp":'
            + str(EVENT_TIME) + ',"idMessage":"' + _TAG_MARK + '","senderData":{"chatId":"'
            + CHAT_ID + '","sender":"' + CHAT_ID + '","chatName":"Bench","senderName":"Bench"},'
            '"messageData":{"typeMessage":"textMessage","textMessageData":{"textMessage":'
            + json.dumps(text) + "}}}"
        )  # fmt: skip

    fixed = len(render("")) - 2 + len(str(FIRST_INSTANCE)) + PREFIX_WIDTH + 12
    words = "The quick brown fox jumps over the lazy dog. "
    filler = (words * (body_bytes // len(words) + 1))[: max(0, body_bytes - fixed)]
    head, rest = render(filler).split(_INSTANCE_MARK)
    mid, tail = rest.split(_TAG_MARK)
    return head.encode(), mid.encode(), tail.encode()


def _tag(prefix: str, n: int) -> str:
    return f"{prefix}{n:012d}"


# -- the bench -----------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    _check_args(args)
    generator = _pick_generator(args.generator)
    ids = instance_ids(args.instances)
    token = secrets.token_hex(16)
    prefix = f"bench{secrets.token_hex(4)}"
    port = args.port or _free_port()
    base_url = f"http://127.0.0.1:{port}"
    workdir = Path(tempfile.mkdtemp(prefix="bridge-bench-webhook-"))
    env = {TOKEN_ENV: token}
    exchange = f"{prefix}.notifications"
    broker = _local_broker_pid(args.amqp_url)
    bridge = None
    ok = False
    try:
        path = workdir / "bridge.toml"
        path.write_text(_config(args.amqp_url, prefix, port, ids))
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
            "publish", "--amqp-url", args.amqp_url, "--exchange", exchange,
            *_helper_common(args),
        ]  # fmt: skip
        helper = functools.partial(_helper_run, env=env, workdir=workdir, watch=watch, args=args)
        raw1 = await helper("reference 1/2", [*publish_argv, "--prefix", "A000"])
        check_bridge()
        if generator == "wrk":
            hook = await _wrk_run(
                args, base_url=base_url, ids=ids, token=token, workdir=workdir, watch=watch,
                bridge_pid=bridge.pid,
            )  # fmt: skip
        else:
            load_argv = ["load", "--url", base_url, "--prefix", "W000", *_helper_common(args)]
            hook = await helper("webhook", load_argv, reset_rss=bridge.pid)
        rss = peak_rss_mb(bridge.pid)
        check_bridge()
        raw2 = await helper("reference 2/2", [*publish_argv, "--prefix", "B000"])
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
        args, generator=generator, prefix=prefix, hook=hook, raw=(raw1, raw2), rss=rss,
        bridge_pid=bridge.pid, broker=broker,
    )  # fmt: skip


def _check_args(args: argparse.Namespace) -> None:
    if args.instances < 1 or args.concurrency < 1:
        raise SystemExit("--instances and --concurrency must be at least 1")
    if args.duration <= 0 or args.warmup < 0:
        raise SystemExit("--duration must be positive and --warmup not negative")


def _pick_generator(choice: str) -> str:
    found = shutil.which("wrk") is not None
    if choice == "wrk" and not found:
        raise SystemExit("--generator wrk: wrk is not on PATH (apt-get install wrk)")
    if choice == "auto":
        return "wrk" if found else "builtin"
    return choice


def _helper_common(args: argparse.Namespace) -> list[str]:
    return [
        "--instances", str(args.instances), "--concurrency", str(args.concurrency),
        "--duration", str(args.duration), "--warmup", str(args.warmup),
        "--body-bytes", str(args.body_bytes),
    ]  # fmt: skip


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


class _Window:
    """CPU seconds of some processes between `start()` and `stop()`, as cores used."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self._before: dict[int, float] = {}
        self._started = 0.0
        self.cores: dict[int, float] = {}
        self.seconds = 0.0

    def start(self) -> None:
        self._before = {pid: cpu_seconds(pid) for pid in self.pids}
        self._started = time.perf_counter()

    def stop(self) -> None:
        self.seconds = time.perf_counter() - self._started
        self.cores = {
            pid: (cpu_seconds(pid) - before) / self.seconds for pid, before in self._before.items()
        }


@contextlib.asynccontextmanager
async def _ticking(label: str, total: float) -> AsyncIterator[None]:
    """Show `label: seconds/total` on a terminal while the block runs."""
    progress = Progress(f"webhook bench: {label}")
    started = time.monotonic()

    async def tick() -> None:
        while True:
            progress.update(int(time.monotonic() - started), math.ceil(total))
            await asyncio.sleep(0.25)

    task = asyncio.create_task(tick())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        progress.done()


async def _helper_run(
    label: str,
    argv: list[str],
    *,
    env: dict[str, str],
    workdir: Path,
    watch: Sequence[int],
    args: argparse.Namespace,
    reset_rss: int | None = None,
) -> dict[str, Any]:
    """Run a `load` or `publish` helper; CPU of `watch` over its measured window."""
    log_path = workdir / f"{label.split(maxsplit=1)[0]}-{argv[argv.index('--prefix') + 1]}.log"
    window = _Window(watch)
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge.bench.webhook", *argv,
            stdout=asyncio.subprocess.PIPE, stderr=log, env={**os.environ, **env},
        )  # fmt: skip
    assert proc.stdout is not None
    stdout = proc.stdout

    async def line(expect: str | None, timeout: float) -> str:
        try:
            text = (await asyncio.wait_for(stdout.readline(), timeout)).decode().strip()
        except TimeoutError:
            raise SystemExit(
                f"{label}: helper silent for {timeout:.0f} s, see {log_path}"
            ) from None
        if not text or (expect is not None and text != expect):
            raise SystemExit(f"{label}: helper said {text[:200]!r}, see {log_path}")
        return text

    try:
        async with _ticking(label, args.warmup + args.duration):
            await line("measure", args.warmup + 30)
            window.start()
            if reset_rss is not None:
                _reset_peak_rss(reset_rss)
            await line("stop", args.duration + 30)
            window.stop()
            result: dict[str, Any] = json.loads(await line(None, 30))
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    result["cpu"] = window.cores
    return result


async def _wrk_run(
    args: argparse.Namespace,
    *,
    base_url: str,
    ids: list[str],
    token: str,
    workdir: Path,
    watch: Sequence[int],
    bridge_pid: int,
) -> dict[str, Any]:
    """A warm-up wrk run (uncounted), then the measured one."""
    parts = body_parts(args.body_bytes)
    url = f"{base_url}/webhooks/greenapi/"
    if args.warmup > 0:
        script = workdir / "warmup.lua"
        script.write_text(_wrk_script(parts, ids, token, "V"))
        async with _ticking("webhook warm-up (wrk)", args.warmup):
            await _wrk(script, url, args.concurrency, args.warmup)
    script = workdir / "measure.lua"
    script.write_text(_wrk_script(parts, ids, token, "W"))
    window = _Window(watch)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    async with _ticking("webhook (wrk)", args.duration):
        window.start()
        _reset_peak_rss(bridge_pid)
        output = await _wrk(script, url, args.concurrency, args.duration)
        window.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    (workdir / "wrk.out").write_text(output)
    result = parse_wrk(output)
    result["own_cpu"] = wrk_cpu / window.seconds
    result["cpu"] = window.cores
    return result


async def _wrk(script: Path, url: str, connections: int, seconds: float) -> str:
    # wrk wants at least as many connections as threads, and whole seconds.
    argv = [
        "wrk", "-t", "2", "-c", str(max(connections, 2)), "-d", f"{max(1, round(seconds))}s",
        "--latency", "--timeout", "10s", "-s", str(script), url,
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), seconds + 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"wrk failed ({proc.returncode}): {err.decode()[-500:]}")
    return out.decode()


def _lua_string(value: str | bytes) -> str:
    data = value.encode() if isinstance(value, str) else value
    out = []
    for byte in data:
        char = chr(byte)
        if char in '"\\' or not 32 <= byte < 127:
            out.append(f"\\{byte:03d}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _wrk_script(
    parts: tuple[bytes, bytes, bytes], ids: list[str], token: str, run_letter: str
) -> str:
    """wrk Lua: one distinct body per request (per-thread prefix and counter), instances in
    turn; `response()` counts non-200 answers, `done()` sums them over threads."""
    head, mid, tail = parts
    id_list = ", ".join(_lua_string(i) for i in ids)
    path_list = ", ".join(_lua_string(f"/webhooks/greenapi/{i}") for i in ids)
    return f"""-- generated by bridge bench webhook
local head = {_lua_string(head)}
local mid = {_lua_string(mid)}
local tail = {_lua_string(tail)}
local ids = {{{id_list}}}
local paths = {{{path_list}}}
local threads = {{}}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  prefix = string.format("{run_letter}%03d", tid)
  counter = 0
  non200 = 0
  wrk.method = "POST"
  wrk.headers["Authorization"] = {_lua_string("Bearer " + token)}
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local k = counter % #ids + 1
  local body = head .. ids[k] .. mid .. prefix .. string.format("%012d", counter) .. tail
  return wrk.format("POST", paths[k], nil, body)
end

function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("non200")
  end
  local e = summary.errors
  io.write(string.format(
    "BENCH-RESULT non200=%d requests=%d connect=%d read=%d write=%d timeout=%d\\n",
    bad, summary.requests, e.connect, e.read, e.write, e.timeout))
end
"""


_WRK_TIME = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$")
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/s, the `--latency` distribution, non-2xx counts and errors from wrk's output
    (and the generated script's `BENCH-RESULT` line)."""
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    total = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", output, re.M)
    if rate is None or total is None:
        raise SystemExit(f"could not read wrk's output:\n{output}")
    distribution: dict[str, float] = {}
    after = output.split("Latency Distribution", 1)
    if len(after) == 2:
        for row in after[1].splitlines()[1:]:
            match = _WRK_TIME.match(row)
            if match is None:
                break
            distribution[f"{float(match[1]):g}%"] = round(float(match[2]) * _UNIT_MS[match[3]], 3)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    ours = re.search(r"BENCH-RESULT non200=(\d+)", output)
    errors = sum(int(g) for g in socket_errors.groups()) if socket_errors else 0
    non_2xx = int(non2xx[1]) if non2xx else 0
    statuses = {"non-2xx/3xx": non_2xx} if non_2xx else {}
    return {
        "count": int(total[1]),
        "rate": float(rate[1]),
        "p50_ms": distribution.get("50%", math.nan),
        "p90_ms": distribution.get("90%", math.nan),
        "p99_ms": distribution.get("99%", math.nan),
        "max_ms": _wrk_max_ms(output),
        "non_200": int(ours[1]) if ours else non_2xx,
        "non_2xx": non_2xx,
        "statuses": statuses,
        "errors": errors,
        "distribution": distribution,
    }


def _wrk_max_ms(output: str) -> float:
    row = re.search(r"^\s*Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s|m|h)", output, re.M)
    return round(float(row[1]) * _UNIT_MS[row[2]], 3) if row else math.nan


# -- setup and cleanup ---------------------------------------------------------------------


def _config(amqp_url: str, prefix: str, port: int, ids: list[str]) -> str:
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _reset_peak_rss(pid: int) -> None:
    """Reset the peak RSS (VmHWM) of a process of ours to its current RSS (Linux ≥ 4.0)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def _local_broker_pid(amqp_url: str) -> int | None:
    """The local RabbitMQ's `beam.smp`, when the URL points at this machine and exactly one
    runs (its CPU is reported: on a small machine it shares the cores with everything else)."""
    if urlsplit(amqp_url).hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "beam.smp":
                    found.append(int(entry.name))
    return found[0] if len(found) == 1 else None


def topology_names(prefix: str) -> tuple[list[str], list[str]]:
    """(exchanges, queues) the bench's bridge declares."""
    exchanges = [f"{prefix}.notifications", f"{prefix}.unrouted", f"{prefix}.invalid"]
    return exchanges, [f"{prefix}.unrouted", f"{prefix}.invalid"]


async def delete_topology(amqp_url: str, prefix: str) -> None:
    exchanges, queues = topology_names(prefix)
    try:
        connection = await aio_pika.connect(amqp_url)
    except Exception:
        return
    async with connection:
        channel = await connection.channel()
        for kind, name in [*(("queue", q) for q in queues), *(("exchange", e) for e in exchanges)]:
            try:
                if kind == "queue":
                    await channel.queue_delete(name)
                else:
                    await channel.exchange_delete(name)
            except Exception:
                channel = await connection.channel()  # an error closes the channel


# -- helper processes ------------------------------------------------------------------------


def _percentiles(latencies: array[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    if not ordered:
        return {"p50_ms": math.nan, "p90_ms": math.nan, "p99_ms": math.nan, "max_ms": math.nan}

    def rank(q: float) -> float:
        return 1000 * ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]

    return {
        "p50_ms": rank(50),
        "p90_ms": rank(90),
        "p99_ms": rank(99),
        "max_ms": ordered[-1] * 1000,
    }


async def _closed_loop(
    concurrency: int,
    warmup: float,
    duration: float,
    call: Callable[[int], Awaitable[int]],
) -> dict[str, Any]:
    """C workers, each calling `call(n)` in turn with a fresh n; a call returns a status (200
    is success) or raises for a transport error. Calls that complete inside the window count."""
    counter = itertools.count()
    latencies: array[float] = array("d")
    statuses: Counter[int] = Counter()
    errors = 0
    start = time.perf_counter()
    measure_at = start + warmup
    stop_at = measure_at + duration

    async def worker() -> None:
        nonlocal errors
        while True:
            began = time.perf_counter()
            if began >= stop_at:
                return
            try:
                status = await call(next(counter))
            except Exception:
                status = -1
            ended = time.perf_counter()
            if measure_at <= ended < stop_at:
                if status < 0:
                    errors += 1
                else:
                    statuses[status] += 1
                    latencies.append(ended - began)

    async def clock() -> float:
        await asyncio.sleep(max(0.0, measure_at - time.perf_counter()))
        print("measure", flush=True)
        cpu = time.process_time()
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        print("stop", flush=True)
        return time.process_time() - cpu

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    own_cpu = await clock()
    await asyncio.gather(*workers)
    count = sum(statuses.values())
    return {
        "count": count,
        "rate": count / duration,
        **_percentiles(latencies),
        "non_200": count - statuses[200],
        "statuses": {str(k): v for k, v in sorted(statuses.items()) if k != 200},
        "errors": errors,
        "own_cpu": own_cpu / duration,
    }


async def _load(opts: argparse.Namespace) -> dict[str, Any]:
    # aiohttp rather than httpx (the project's usual client): the generator shares the machine's
    # cores with the bridge and RabbitMQ, and aiohttp costs several times less CPU per request.
    import aiohttp

    head, mid, tail = body_parts(opts.body_bytes)
    ids = instance_ids(opts.instances)
    urls = [f"{opts.url}/webhooks/greenapi/{i}" for i in ids]
    instance_bytes = [i.encode() for i in ids]
    headers = {
        "Authorization": f"Bearer {os.environ[TOKEN_ENV]}",
        "Content-Type": "application/json",
    }
    connector = aiohttp.TCPConnector(limit=opts.concurrency)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def call(n: int) -> int:
            k = n % len(ids)
            body = head + instance_bytes[k] + mid + _tag(opts.prefix, n).encode() + tail
            async with session.post(urls[k], data=body, headers=headers) as response:
                await response.read()
                return response.status

        return await _closed_loop(opts.concurrency, opts.warmup, opts.duration, call)


async def _publish(opts: argparse.Namespace) -> dict[str, Any]:
    """Confirmed publishes as `AmqpPublisher.publish` makes them, without the HTTP in front."""
    import aiormq
    from pamqp.commands import Basic

    from bridge import APP_ID
    from bridge.envelope import message_id

    head, mid, tail = body_parts(opts.body_bytes)
    ids = instance_ids(opts.instances)
    connection = await aio_pika.connect(opts.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        underlay = await channel.get_underlay_channel()
        assert isinstance(underlay, aiormq.Channel)
        stamp = datetime.fromtimestamp(EVENT_TIME, UTC)

        async def call(n: int) -> int:
            instance = ids[n % len(ids)]
            tag = _tag(opts.prefix, n)
            body = head + instance.encode() + mid + tag.encode() + tail
            properties = aiormq.spec.Basic.Properties(
                content_type="application/json",
                delivery_mode=2,
                message_id=message_id("greenapi", instance, body),
                timestamp=stamp,
                message_type=EVENT,
                app_id=APP_ID,
                headers={
                    "x-provider": "greenapi",
                    "x-instance": instance,
                    "x-event": EVENT,
                    "x-ingest": "webhook",
                    "x-received-at": int(time.time() * 1000),
                    "x-chat-id": CHAT_ID,
                    "x-message-key": f"{instance}:{CHAT_ID}:{tag}",
                },
            )
            result = await underlay.basic_publish(
                body,
                exchange=opts.exchange,
                routing_key=EVENT,
                properties=properties,
                mandatory=True,
                timeout=10,
            )
            return 200 if isinstance(result, Basic.Ack) else 500

        return await _closed_loop(opts.concurrency, opts.warmup, opts.duration, call)


def _helper_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridge.bench.webhook")
    sub = parser.add_subparsers(dest="kind", required=True)
    load = sub.add_parser("load", help="POST webhooks to a bridge (token in $BENCH_HOOK_TOKEN)")
    load.add_argument("--url", required=True)
    publish = sub.add_parser("publish", help="confirmed publishes straight to RabbitMQ")
    publish.add_argument("--amqp-url", required=True)
    publish.add_argument("--exchange", required=True)
    for p in (load, publish):
        p.add_argument("--prefix", required=True, help=f"{PREFIX_WIDTH} characters")
        p.add_argument("--instances", type=int, required=True)
        p.add_argument("--concurrency", type=int, required=True)
        p.add_argument("--duration", type=float, required=True)
        p.add_argument("--warmup", type=float, required=True)
        p.add_argument("--body-bytes", type=int, required=True)
    opts = parser.parse_args(argv)
    main = _load if opts.kind == "load" else _publish
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        result = asyncio.run(main(opts))
    else:
        result = uvloop.run(main(opts))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_helper_main())
