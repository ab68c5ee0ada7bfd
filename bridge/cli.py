"""`bridge …` commands; logging setup; the aiorun entry point.

CLI parsing uses the standard library's argparse: subcommands, help and errors are all it
needs to do, and it adds no dependency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bridge import __version__, logs
from bridge.config import Settings, dump, load
from bridge.errors import ConfigError
from bridge.logs import get_logger

EXIT_CONFIG = 2
log = get_logger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bridge",
        description="WhatsApp-gateway notifications into RabbitMQ, acknowledged after confirm.",
    )
    parser.add_argument("--version", action="version", version=f"bridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="TOML file (default: ./bridge.toml when present)")
        p.add_argument("--log-format", choices=["auto", "json", "text"], default=None)
        p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None)

    run = sub.add_parser("run", help="run the service")
    common(run)
    run.set_defaults(handler=cmd_run)

    check = sub.add_parser("check-config", help="validate the configuration and print it")
    common(check)
    check.set_defaults(handler=cmd_check_config)

    fake = sub.add_parser(
        "fake-provider",
        help="a local GREEN-API / Evolution / Chat API stand-in for demos and tests",
    )
    common(fake)
    fake.add_argument("--listen", default="127.0.0.1:8091", help="HOST:PORT (default %(default)s)")
    fake.add_argument(
        "--instance",
        action="append",
        default=[],
        metavar="ID:TOKEN",
        help="an instance to serve (repeatable); --config adds every polling source",
    )
    fake.add_argument(
        "--evolution",
        action="append",
        default=[],
        metavar="NAME:TOKEN",
        help="a fake Evolution instance (repeatable)",
    )
    fake.add_argument(
        "--chatapi",
        action="append",
        default=[],
        metavar="ID:TOKEN",
        help="a fake Chat API instance (repeatable)",
    )
    fake.add_argument(
        "--seed-samples", action="store_true", help="enqueue the sample notifications"
    )
    fake.add_argument(
        "--feed",
        type=float,
        default=None,
        metavar="SECONDS",
        help="keep adding one sample per instance every SECONDS",
    )
    fake.add_argument("--latency", type=float, default=0.0, help="seconds added to every call")
    fake.set_defaults(handler=cmd_fake_provider)

    from bridge.tools import configure, simulate

    sim = sub.add_parser(
        "simulate", help="post sample notifications to a bridge, as a provider would"
    )
    simulate.add_arguments(sim)
    sim.set_defaults(handler=simulate.run)

    conf = sub.add_parser("configure", help="write the webhook settings to the provider")
    configure.add_arguments(conf)
    conf.set_defaults(handler=configure.run)

    from bridge.tools import queues, tail

    queue_cmd = sub.add_parser("queues", help="consumer queues")
    queue_sub = queue_cmd.add_subparsers(dest="queues", required=True, metavar="ACTION")
    declare = queue_sub.add_parser(
        "declare", help="declare a quorum, single-active-consumer queue bound to event types"
    )
    queues.add_arguments(declare)
    declare.set_defaults(handler=queues.run)

    tail_cmd = sub.add_parser("tail", help="print what arrives on a binding, taking nothing")
    tail.add_arguments(tail_cmd)
    tail_cmd.set_defaults(handler=tail.run)

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    from bridge.bench.poll import add_arguments as add_poll_arguments

    poll = bench_sub.add_parser("poll", help="polling throughput against the protocol limit")
    add_poll_arguments(poll)
    poll.set_defaults(handler=cmd_bench_poll)
    from bridge.bench import webhook as bench_webhook

    hook = bench_sub.add_parser("webhook", help="webhook rate against raw confirmed publishes")
    bench_webhook.add_arguments(hook)
    hook.set_defaults(handler=bench_webhook.run)
    from bridge.bench import compare as bench_compare

    against = bench_sub.add_parser(
        "compare", help="ours against the SDK loop, FastAPI+FastStream, the management API, raw"
    )
    bench_compare.add_arguments(against)
    against.set_defaults(handler=bench_compare.run)
    return parser


# -- helpers ---------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings:
    path = args.config
    if path is None and Path("bridge.toml").exists():
        path = "bridge.toml"
    return load(path)


def _setup_logging(args: argparse.Namespace, settings: Settings | None) -> logs.Redactor:
    level = args.log_level or (settings.config.log.level if settings else "info")
    fmt = args.log_format or (settings.config.log.format if settings else "auto")
    secrets: list[str] = []
    if settings is not None:
        secrets += [s.reveal() for s in settings.tokens.values()]
        secrets += [s.reveal() for s in settings.webhook_tokens.values()]
        password = urlsplit(settings.config.amqp.url).password
        if password:
            secrets.append(password)
    return logs.setup(level, fmt, secrets)


def _config_error(exc: ConfigError) -> int:
    print(f"bridge: config error: {exc}", file=sys.stderr)
    return EXIT_CONFIG


def run_with_aiorun(
    main: Callable[[], Any], on_shutdown: Callable[[], Any], *, uvloop: bool = True
) -> BaseException | None:
    """Run `main()` under aiorun. On SIGINT/SIGTERM, `on_shutdown()` runs first (graceful stop),
    then `main()` itself is cancelled and awaited, before aiorun cancels anything else.

    Returns the exception that ended `main()`, if any.
    """
    import aiorun

    stopping = False  # a signal came: on_shutdown() runs, then main() is cancelled
    error: BaseException | None = None  # what ended main()
    root_task: asyncio.Task[Any] | None = None  # the task running main(), once it started

    async def root() -> None:
        nonlocal error, root_task
        root_task = asyncio.current_task()
        try:
            await main()
        except asyncio.CancelledError:
            if not stopping:
                raise
        except Exception as exc:
            error = exc
        finally:
            if not stopping:
                asyncio.get_running_loop().stop()

    async def shutdown(_loop: asyncio.AbstractEventLoop) -> None:
        nonlocal stopping
        stopping = True
        await on_shutdown()
        if root_task is not None and not root_task.done():
            root_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(root_task, 20)

    aiorun.run(root(), use_uvloop=uvloop, shutdown_callback=shutdown, timeout_task_shutdown=20)
    return error


#: Young-generation threshold of the cyclic garbage collector while the service runs (700 by
#: default): with the default, collections of the older generations walk every object the
#: process holds, pausing the event loop for milliseconds; `bridge bench webhook` p99 fell from
#: a median of 31.5 ms to 24.5 ms over five runs each (docs/benchmarks.md).
GC_THRESHOLD = (50_000, 50, 100)


def tune_gc() -> None:
    """Start-up objects (modules, classes, config) live as long as the process: collect once,
    then freeze them out of every later collection, and collect young objects less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


# -- commands --------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
    except ConfigError as exc:
        return _config_error(exc)
    _setup_logging(args, settings)
    from bridge.app import Service

    tune_gc()
    service: Service | None = None

    async def main() -> None:
        nonlocal service
        service = Service(settings)
        await service.run()

    async def on_shutdown() -> None:
        if service is not None:
            await service.shutdown()

    error = run_with_aiorun(main, on_shutdown)
    if isinstance(error, ConfigError):
        log.error("service.config_error", detail=str(error))
        return EXIT_CONFIG
    if error is not None:
        log.error("service.failed", exc_info=error)
        return 1
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
    except ConfigError as exc:
        return _config_error(exc)
    print(json.dumps(dump(settings), indent=2))
    polls = sum(1 for s in settings.config.sources if s.mode == "poll")
    hooks = len(settings.config.sources) - polls
    print(f"config ok: {polls} polling and {hooks} webhook sources", file=sys.stderr)
    return 0


def cmd_fake_provider(args: argparse.Namespace) -> int:
    instances: list[tuple[str, str]] = []
    settings: Settings | None = None
    if args.config is not None:
        try:
            settings = load(args.config)
        except ConfigError as exc:
            return _config_error(exc)
        for source in settings.config.sources:
            if source.mode == "poll":
                instances.append((source.instance, settings.token(source).reveal()))
    for item in args.instance:
        ident, sep, token = item.partition(":")
        if not sep or not ident.isdigit() or not token:
            print(f"bridge: --instance wants ID:TOKEN, got {item!r}", file=sys.stderr)
            return EXIT_CONFIG
        instances.append((ident, token))
    pairs: dict[str, list[tuple[str, str]]] = {"evolution": [], "chatapi": []}
    for kind, found in pairs.items():
        for item in getattr(args, kind):
            name, sep, token = item.partition(":")
            if not sep or not name or not token:
                print(f"bridge: --{kind} wants NAME:TOKEN, got {item!r}", file=sys.stderr)
                return EXIT_CONFIG
            found.append((name, token))
    if not instances and not pairs["evolution"] and not pairs["chatapi"]:
        print("bridge: no instances: pass --config or --instance ID:TOKEN", file=sys.stderr)
        return EXIT_CONFIG
    _setup_logging(args, settings)
    from bridge.fake.server import run_fake_provider

    async def main() -> None:
        await run_fake_provider(
            args.listen,
            instances,
            seed_samples=args.seed_samples,
            feed_interval=args.feed,
            latency=args.latency,
            evolution=pairs["evolution"],
            chatapi=pairs["chatapi"],
        )

    async def on_shutdown() -> None:
        return None

    error = run_with_aiorun(main, on_shutdown)
    if error is not None:
        print(f"bridge: fake-provider failed: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_bench_poll(args: argparse.Namespace) -> int:
    from bridge.bench.poll import run as run_bench

    return run_bench(args)
