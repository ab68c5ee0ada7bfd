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

from bridge import __version__, arguments, logs
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
    """Every command and its arguments (:mod:`bridge.arguments`); no implementation is
    imported here, only inside the handler of the command that runs."""
    parser = argparse.ArgumentParser(
        prog="bridge",
        description="WhatsApp-gateway notifications into RabbitMQ, acknowledged after confirm.",
    )
    parser.add_argument("--version", action="version", version=f"bridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the service")
    arguments.common(run)
    run.set_defaults(handler=cmd_run)

    check = sub.add_parser("check-config", help="validate the configuration and print it")
    arguments.common(check)
    check.set_defaults(handler=cmd_check_config)

    fake = sub.add_parser(
        "fake-provider",
        help="a local GREEN-API / Evolution / Chat API stand-in for demos and tests",
    )
    arguments.fake_provider(fake)
    fake.set_defaults(handler=cmd_fake_provider)

    sim = sub.add_parser(
        "simulate", help="post sample notifications to a bridge, as a provider would"
    )
    arguments.simulate(sim)
    sim.set_defaults(handler=cmd_simulate)

    conf = sub.add_parser("configure", help="write the webhook settings to the provider")
    arguments.configure(conf)
    conf.set_defaults(handler=cmd_configure)

    queue_cmd = sub.add_parser("queues", help="consumer queues")
    queue_sub = queue_cmd.add_subparsers(dest="queues", required=True, metavar="ACTION")
    declare = queue_sub.add_parser(
        "declare", help="declare a quorum, single-active-consumer queue bound to event types"
    )
    arguments.queues_declare(declare)
    declare.set_defaults(handler=cmd_queues_declare)

    tail_cmd = sub.add_parser("tail", help="print what arrives on a binding, taking nothing")
    arguments.tail(tail_cmd)
    tail_cmd.set_defaults(handler=cmd_tail)

    # The harness lives in benchmarks/ of a checkout and parses its own arguments. No option
    # prefix here, so that every argument, `--help` included, is the harness's (REMAINDER
    # alone would leave options before the first positional to this parser).
    bench = sub.add_parser(
        "bench",
        help="benchmarks (from a checkout: poll, webhook, compare)",
        add_help=False,
        prefix_chars="\0",
    )
    bench.add_argument("argv", nargs=argparse.REMAINDER)
    bench.set_defaults(handler=cmd_bench)
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
        secrets += [s.reveal() for s in settings.hmac_keys.values()]
        for url in settings.config.amqp.nodes:
            password = urlsplit(url).password
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


def _pairs(items: list[str], usage: str, *, digits: bool = False) -> list[tuple[str, str]]:
    """`NAME:TOKEN` arguments as pairs; ValueError naming the first malformed one."""
    pairs = []
    for item in items:
        name, sep, token = item.partition(":")
        if not sep or not name or not token or (digits and not name.isdigit()):
            raise ValueError(f"{usage}, got {item!r}")
        pairs.append((name, token))
    return pairs


def _fake_instances(
    args: argparse.Namespace, settings: Settings | None
) -> dict[str, list[tuple[str, str]]]:
    """{provider: (id, token) pairs}: GREEN-API's from the config's polling sources and
    `--instance`, Evolution's and Chat API's from `--evolution` and `--chatapi`, WAHA's
    (session, HMAC key) from the config's WAHA webhook sources and `--waha`."""
    green: list[tuple[str, str]] = []
    waha: list[tuple[str, str]] = []
    if settings is not None:
        polled = (s for s in settings.config.sources if s.mode == "poll")
        green = [(source.instance, settings.token(source).reveal()) for source in polled]
        hooked = (s for s in settings.config.sources if s.provider == "waha")
        keys = settings.hmac_keys
        waha = [(s.instance, keys[s.name].reveal() if s.name in keys else "") for s in hooked]
    return {
        "greenapi": green + _pairs(args.instance, "--instance wants ID:TOKEN", digits=True),
        "evolution": _pairs(args.evolution, "--evolution wants NAME:TOKEN"),
        "chatapi": _pairs(args.chatapi, "--chatapi wants NAME:TOKEN"),
        "waha": waha + _pairs(args.waha, "--waha wants NAME:HMAC_KEY"),
    }


def _fake_meta(args: argparse.Namespace, settings: Settings | None) -> list[tuple[str, str, str]]:
    """(WABA, app secret, verify token) triples: the config's Meta sources' and `--meta`'s."""
    apps: list[tuple[str, str, str]] = []
    if settings is not None:
        keys, tokens = settings.hmac_keys, settings.verify_tokens
        for s in settings.config.sources:
            if s.provider == "meta" and s.name in keys:
                token = tokens[s.name].reveal() if s.name in tokens else ""
                apps.append((s.instance, keys[s.name].reveal(), token))
    for item in args.meta:
        waba, _, rest = item.partition(":")
        secret, _, token = rest.partition(":")
        if not waba.isdigit() or not secret:
            raise ValueError(f"--meta wants WABA:APP_SECRET[:VERIFY_TOKEN], got {item!r}")
        apps.append((waba, secret, token))
    return apps


def cmd_fake_provider(args: argparse.Namespace) -> int:
    settings: Settings | None = None
    try:
        if args.config is not None:
            settings = load(args.config)
    except ConfigError as exc:
        return _config_error(exc)
    try:
        instances = _fake_instances(args, settings)
        meta = _fake_meta(args, settings)
    except ValueError as exc:
        print(f"bridge: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if not any(instances.values()) and not meta:
        print("bridge: no instances: pass --config or --instance ID:TOKEN", file=sys.stderr)
        return EXIT_CONFIG
    _setup_logging(args, settings)
    from fakeprovider.server import run_fake_provider

    async def main() -> None:
        await run_fake_provider(
            args.listen,
            instances["greenapi"],
            seed_samples=args.seed_samples,
            feed_interval=args.feed,
            latency=args.latency,
            evolution=instances["evolution"],
            chatapi=instances["chatapi"],
            waha=instances["waha"],
            meta=meta,
        )

    async def on_shutdown() -> None:
        return None

    error = run_with_aiorun(main, on_shutdown)
    if error is not None:
        print(f"bridge: fake-provider failed: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from bridge.tools import simulate

    return simulate.run(args)


def cmd_configure(args: argparse.Namespace) -> int:
    from bridge.tools import configure

    return configure.run(args)


def cmd_queues_declare(args: argparse.Namespace) -> int:
    from bridge.tools import queues

    return queues.run(args)


def cmd_tail(args: argparse.Namespace) -> int:
    from bridge.tools import tail

    return tail.run(args)


def cmd_bench(args: argparse.Namespace) -> int:
    """`bridge bench …` is `python -m benchmarks …`: the harness is not part of the package."""
    try:
        from benchmarks.cli import main as bench
    except ModuleNotFoundError as exc:
        if exc.name not in ("benchmarks", "benchmarks.cli"):
            raise
        print(
            "bridge bench runs from a checkout of the repository: make bench / make bench-compare",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    return bench(args.argv, prog="bridge bench")
