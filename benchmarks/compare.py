"""`bridge bench compare`: the bridge against the alternatives, each measured in the same run on
the same broker and topology (a throwaway `bench…` prefix, deleted at the end).

Polling — N instances on fake-provider processes (each call delayed by the injected latency),
M distinct notifications each, enqueued at once; the clock runs from the enqueue until every
notification is deleted at the provider and has arrived at the sink queue:

- ours: one `bridge run` process polling every instance;
- (a) the official GREEN-API SDK's receiving loop, one thread per instance, publishing each
  notification with pika on a confirm channel before the SDK deletes it
  (`benchmarks/alternatives/greenapi_sdk_pika.py`).

Ours is measured before and after the alternatives of its group, and its figures are the mean
of both runs. Latency: each `idMessage` carries its enqueue time; latency is enqueue to arrival
at the sink consumer, for both alike (with a queue of M per instance, mostly time spent waiting
in it).

Webhooks — the same load generator (`wrk`, or the built-in one) keeps C distinct GREEN-API
bodies in flight for D seconds after a warm-up; latency is the generator's request latency:

- ours: one `bridge run` process with K GREEN-API webhook sources;
- (b) a minimal FastAPI + FastStream bridge under uvicorn (uvloop, httptools)
  (`benchmarks/alternatives/fastapi_faststream.py`);
- (c) RabbitMQ's management-API publish endpoint, the same bodies as its payload (it publishes
  mandatory on a confirm channel and answers after the ack): the process under test is the
  broker itself;
- (d) confirmed publishes straight to RabbitMQ through aio-pika's channel, C in flight, the
  bridge's properties and headers: the ceiling of "publish and wait for the confirm".

The alternatives are scripts beside this module (`benchmarks/alternatives/`), run as child
processes, so their packages (pika, whatsapp-api-client-python, fastapi, faststream) stay out of
the bridge's runtime dependencies; they are dev dependencies.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import math
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from benchmarks.common import (
    delete_topology,
    local_broker_pid,
    print_result,
)
from benchmarks.compare_runs import RunSetup, poll_variants, webhook_variants
from benchmarks.compare_table import report
from benchmarks.poll import add_setup_arguments
from benchmarks.sink import Sink
from benchmarks.webhook import add_load_arguments
from benchmarks.wrk import pick_generator

DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
ALTERNATIVES = Path(__file__).resolve().parent / "alternatives"
# (module, distribution to install) per alternative
NEEDS: dict[str, list[tuple[str, str]]] = {
    "(a)": [("whatsapp_api_client_python", "whatsapp-api-client-python"), ("pika", "pika")],
    "(b)": [("fastapi", "fastapi"), ("faststream", "faststream[rabbit]")],
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    poll = parser.add_argument_group("polling: ours and (a)")
    add_setup_arguments(poll)
    poll.add_argument(
        "--settle",
        type=float,
        default=1.0,
        help="seconds to wait, once a variant polls every instance, before the enqueue "
        "(%(default)s)",
    )
    hook = parser.add_argument_group("webhooks: ours, (b), (c) and (d)")
    hook.add_argument("--webhook-instances", type=int, default=20, help="default %(default)s")
    add_load_arguments(hook)
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP)
    parser.add_argument(
        "--management-url",
        default="http://127.0.0.1:15672",
        help="RabbitMQ's management API, for (c) (%(default)s; the AMQP URL's credentials)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    return print_result(asyncio.run(bench(args)), as_json=args.json, report=report)


def check_alternatives(
    find_spec: Callable[[str], object | None] = importlib.util.find_spec,
) -> None:
    """Exit naming what to install when an alternative's package is missing."""
    missing = [
        f"{variant} needs {dist}"
        for variant, needs in NEEDS.items()
        for module, dist in needs
        if find_spec(module) is None
    ]
    if missing:
        names = " ".join(sorted({m.rsplit(" ", 1)[1] for m in missing}))
        raise SystemExit(
            f"bridge bench compare: {'; '.join(missing)}. Install the dev dependencies "
            f"(uv sync), or: pip install {names}"
        )


def _check_args(args: argparse.Namespace) -> None:
    if min(args.instances, args.per_instance, args.fake_processes) < 1:
        raise SystemExit("--instances, --per-instance and --fake-processes must be at least 1")
    if args.webhook_instances < 1 or args.concurrency < 1:
        raise SystemExit("--webhook-instances and --concurrency must be at least 1")
    if args.duration <= 0 or args.warmup < 0 or args.settle < 0:
        raise SystemExit("--duration must be positive, --warmup and --settle not negative")


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    _check_args(args)
    check_alternatives()
    generator = pick_generator(args.generator)
    prefix = f"bench{secrets.token_hex(4)}"
    workdir = Path(tempfile.mkdtemp(prefix="bridge-bench-compare-"))
    broker = local_broker_pid(args.amqp_url)
    sink = Sink(args.amqp_url, prefix, timed="PSQ")
    ok = False
    try:
        await sink.start()
        setup = RunSetup(args, prefix, workdir, broker, sink)
        polled = await poll_variants(setup, ALTERNATIVES)
        hooked = await webhook_variants(
            setup, ALTERNATIVES, generator=generator, management=_management(args)
        )
        ok = True
    finally:
        await sink.close()
        await delete_topology(args.amqp_url, prefix)
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            sys.stderr.write(f"compare bench: logs kept in {workdir}\n")
    return _result(args, generator, prefix, polled, hooked, unreadable=sink.unreadable)


def _management(args: argparse.Namespace) -> tuple[str, str, str]:
    """(management URL, vhost, user:password) from the AMQP URL."""
    amqp = urlsplit(args.amqp_url)
    vhost = unquote(amqp.path[1:]) if len(amqp.path) > 1 else "/"
    credentials = f"{unquote(amqp.username or 'guest')}:{unquote(amqp.password or 'guest')}"
    return args.management_url.rstrip("/"), vhost, credentials


TARGETS = {"sdk": 3.0, "faststream": 2.0, "raw": 0.8}  # ours ÷ it, at least


def _result(
    args: argparse.Namespace,
    generator: str,
    prefix: str,
    polled: dict[str, dict[str, Any]],
    hooked: dict[str, dict[str, Any]],
    *,
    unreadable: int,
) -> dict[str, Any]:
    variants = {**polled, **hooked}
    for name, row in variants.items():
        ours = polled["ours_poll"] if row["kind"] == "poll" else hooked["ours_webhook"]
        row["ours_over"] = ours["rate"] / row["rate"] if row["rate"] else math.nan
        if name in TARGETS:
            row["target"] = {"min": TARGETS[name], "pass": row["ours_over"] >= TARGETS[name]}
    return {
        "setup": {
            "instances": args.instances,
            "per_instance": args.per_instance,
            "latency": args.latency,
            "fake_processes": args.fake_processes,
            "webhook_instances": args.webhook_instances,
            "concurrency": args.concurrency,
            "duration": args.duration,
            "warmup": args.warmup,
            "body_bytes": args.body_bytes,
            "generator": generator,
        },
        "variants": variants,
        "all_moved": all(row["moved"] for row in variants.values()) and unreadable == 0,
        "unreadable": unreadable,
        "prefix": prefix,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
