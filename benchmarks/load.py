"""Load for the webhook benches: the bodies, what they are posted to, and the helper processes
that post or publish them.

Helpers run as `python -m benchmarks.load load|publish …`, so no generator shares an event loop
with the process under test or with the bench (they still share the machine's cores). A helper
prints `measure` when its warm-up ends, `stop` when its window ends, then one JSON line.

`load` POSTs one distinct ~1 KiB GREEN-API `incomingMessageReceived` body per request (the
bridge does not re-publish a message_id it confirmed recently, and the id is a digest of the
body) to a `Target`: a GREEN-API webhook route, or RabbitMQ's management-API publish endpoint
with the same body as its payload. `publish` makes the same confirmed publishes the bridge
makes, straight to RabbitMQ.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import math
import os
import resource
import sys
import time
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import aio_pika

from benchmarks.common import Window, reset_peak_rss, ticking

TOKEN_ENV = "BENCH_HOOK_TOKEN"  # noqa: S105 - the variable's name, not a token

EVENT = "incomingMessageReceived"
CHAT_ID = "79001234568@c.us"
EVENT_TIME = 1588091580
FIRST_INSTANCE = 7200000000
PREFIX_WIDTH = 4  # run letter + 3 digits (wrk thread / helper process), then a 12-digit counter
_INSTANCE_MARK = "\x00"
_TAG_MARK = "\x01"


# -- the bodies ----------------------------------------------------------------------------


def instance_ids(count: int) -> list[str]:
    return [str(FIRST_INSTANCE + i) for i in range(count)]


def body_parts(body_bytes: int) -> tuple[bytes, bytes, bytes]:
    """A GREEN-API `incomingMessageReceived` body as `head + INSTANCE + mid + TAG + tail`, where
    TAG is the idMessage (a 4-character prefix and a 12-digit counter); padded with message text
    to about `body_bytes` for a 10-digit instance id."""

    def render(text: str) -> str:
        return (
            '{"typeWebhook":"'
            + EVENT
            + '","instanceData":{"idInstance":'
            + _INSTANCE_MARK
            + ',"wid":"11001234567@c.us","typeInstance":"whatsapp"},"timestamp":'
            + str(EVENT_TIME)
            + ',"idMessage":"'
            + _TAG_MARK
            + '","senderData":{"chatId":"'
            + CHAT_ID
            + '","sender":"'
            + CHAT_ID
            + '","chatName":"Bench","senderName":"Bench"},'
            '"messageData":{"typeMessage":"textMessage","textMessageData":{"textMessage":'
            + json.dumps(text)
            + "}}}"
        )

    fixed = len(render("")) - 2 + len(str(FIRST_INSTANCE)) + PREFIX_WIDTH + 12
    words = "The quick brown fox jumps over the lazy dog. "
    filler = (words * (body_bytes // len(words) + 1))[: max(0, body_bytes - fixed)]
    head, rest = render(filler).split(_INSTANCE_MARK)
    mid, tail = rest.split(_TAG_MARK)
    return head.encode(), mid.encode(), tail.encode()


def _tag(prefix: str, n: int) -> str:
    return f"{prefix}{n:012d}"


# -- what the load is posted to --------------------------------------------------------------


class Target(NamedTuple):
    """Request k carries `head + ids[i] + mid + TAG + tail` to `paths[i]` (i = k mod the number
    of instances) with this `Authorization` header; 200 means confirmed."""

    parts: tuple[bytes, bytes, bytes]
    ids: list[str]
    paths: list[str]
    authorization: str


def greenapi_target(body_bytes: int, ids: list[str], token: str) -> Target:
    """The bodies as GREEN-API pushes them, to `/webhooks/greenapi/{instance}`."""
    paths = [f"/webhooks/greenapi/{i}" for i in ids]
    return Target(body_parts(body_bytes), ids, paths, f"Bearer {token}")


def management_target(
    body_bytes: int, ids: list[str], *, exchange: str, vhost: str, credentials: str
) -> Target:
    """The same bodies as the payload of RabbitMQ's management-API publish
    (`POST /api/exchanges/{vhost}/{exchange}/publish`, persistent, routed by event type); it
    publishes mandatory on a confirm channel and answers 200 after the broker's ack."""

    def escaped(part: bytes) -> bytes:
        return json.dumps(part.decode())[1:-1].encode()  # the JSON string's content

    head, mid, tail = body_parts(body_bytes)
    envelope = (
        '{"properties":{"delivery_mode":2,"content_type":"application/json"},'
        f'"routing_key":"{EVENT}","payload_encoding":"string","payload":"'
    ).encode()
    parts = (envelope + escaped(head), escaped(mid), escaped(tail) + b'"}')
    path = f"/api/exchanges/{quote(vhost, safe='')}/{quote(exchange, safe='')}/publish"
    basic = base64.b64encode(credentials.encode()).decode()
    return Target(parts, ids, [path] * len(ids), f"Basic {basic}")


def _target(opts: argparse.Namespace) -> Target:
    secret = os.environ[TOKEN_ENV]
    ids = instance_ids(opts.instances)
    if opts.target == "management":
        return management_target(
            opts.body_bytes, ids, exchange=opts.exchange, vhost=opts.vhost, credentials=secret
        )
    return greenapi_target(opts.body_bytes, ids, secret)


# -- running a helper ------------------------------------------------------------------------


def helper_argv(args: argparse.Namespace) -> list[str]:
    """The options every helper takes, from a bench's arguments."""
    return [
        "--instances",
        str(args.instances),
        "--concurrency",
        str(args.concurrency),
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
        "--body-bytes",
        str(args.body_bytes),
    ]


async def helper_run(
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
    log_path = workdir / f"{argv[0]}-{argv[argv.index('--prefix') + 1]}.log"
    window = Window(watch)
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.load",
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            env={**os.environ, **env},
        )
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
        async with ticking(label, args.warmup + args.duration):
            await line("measure", args.warmup + 30)
            window.start()
            if reset_rss is not None:
                reset_peak_rss(reset_rss)
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


# -- helper processes ------------------------------------------------------------------------


def percentiles(latencies: array[float]) -> dict[str, float]:
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
        **percentiles(latencies),
        "non_200": count - statuses[200],
        "statuses": {str(k): v for k, v in sorted(statuses.items()) if k != 200},
        "errors": errors,
        "own_cpu": own_cpu / duration,
    }


async def _load(opts: argparse.Namespace) -> dict[str, Any]:
    # aiohttp rather than httpx (the project's usual client): the generator shares the machine's
    # cores with the bridge and RabbitMQ, and aiohttp costs several times less CPU per request.
    import aiohttp

    target = _target(opts)
    head, mid, tail = target.parts
    urls = [f"{opts.url}{path}" for path in target.paths]
    instance_bytes = [i.encode() for i in target.ids]
    headers = {"Authorization": target.authorization, "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=opts.concurrency)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def call(n: int) -> int:
            k = n % len(urls)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load")
    sub = parser.add_subparsers(dest="kind", required=True)
    load = sub.add_parser(
        "load",
        help=f"POST to a Target (${TOKEN_ENV}: the webhook token, or user:password for "
        "the management API)",
    )
    load.add_argument("--url", required=True, help="scheme://host:port")
    load.add_argument("--target", choices=["greenapi", "management"], default="greenapi")
    load.add_argument("--exchange", default="", help="management: the exchange to publish to")
    load.add_argument("--vhost", default="/", help="management: its vhost (%(default)s)")
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
    run = _load if opts.kind == "load" else _publish
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        result = asyncio.run(run(opts))
    else:
        result = uvloop.run(run(opts))
    result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak, KiB
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
