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
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from bridge import __version__, arguments, logs
from bridge.config import Settings, dump, load
from bridge.errors import ConfigError
from bridge.logs import get_logger

if TYPE_CHECKING:
    from bridge.app import Service

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

    run = sub.add_parser("run", help="run the service (SIGHUP: read the configuration again)")
    arguments.run(run)
    run.set_defaults(handler=cmd_run)

    reload = sub.add_parser(
        "reload", help="make a running `bridge run` read its configuration again (SIGHUP)"
    )
    arguments.reload(reload)
    reload.set_defaults(handler=cmd_reload)

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
    replay_cmd = sub.add_parser(
        "replay", help="republish notifications from the archive, by time, event, instance"
    )
    arguments.replay(replay_cmd)
    replay_cmd.set_defaults(handler=cmd_replay)
    audit_cmd = sub.add_parser(
        "audit", help="compare the providers' journals with the archive: what never arrived"
    )
    arguments.audit(audit_cmd)
    audit_cmd.set_defaults(handler=cmd_audit)

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
    return logs.setup(level, fmt, _secrets(settings) if settings is not None else [])


def _secrets(settings: Settings) -> list[str]:
    """Every secret of `settings`, for the log redactor."""
    secrets = [s.reveal() for s in settings.tokens.values()]
    secrets += [s.reveal() for s in settings.webhook_tokens.values()]
    secrets += [s.reveal() for s in settings.hmac_keys.values()]
    secrets += [s.reveal() for s in settings.verify_tokens.values()]
    secrets += [s.reveal() for s in settings.api_keys.values()]
    password = urlsplit(settings.config.amqp.url).password
    if password:
        secrets.append(password)
    return secrets


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
    hangup = _Hangup(args, _config_path(args))  # from here a SIGHUP is kept for later
    try:
        settings = _settings(args)
    except ConfigError as exc:
        return _config_error(exc)
    redactor = _setup_logging(args, settings)
    from bridge.app import Service

    tune_gc()
    service: Service | None = None

    async def main() -> None:
        nonlocal service
        service = Service(settings)
        hangup.install(service, redactor)
        if args.pid_file is not None:
            _write_pid(args.pid_file)  # once SIGHUP reloads: `bridge reload` may signal
        try:
            await service.run()
        finally:
            hangup.uninstall()

    async def on_shutdown() -> None:
        if service is not None:
            await service.shutdown()

    try:
        error = run_with_aiorun(main, on_shutdown)
    finally:
        if args.pid_file is not None:
            _remove_pid(args.pid_file)
    if isinstance(error, ConfigError):
        log.error("service.config_error", detail=str(error))
        return EXIT_CONFIG
    if error is not None:
        log.error("service.failed", exc_info=error)
        return 1
    return 0


def _config_path(args: argparse.Namespace) -> str | None:
    path: str | None = args.config
    if path is None and Path("bridge.toml").exists():
        path = str(Path("bridge.toml").resolve())
    return path


_KEY = re.compile(r"[a-z_]+(\[\d+\])?(\.[a-z_]+(\[\d+\])?)*")


def _config_key(message: str) -> str | None:
    """The key path a config error names first (`sources[2].token_env`), if it names one."""
    key = message.partition(": ")[0]
    return key if _KEY.fullmatch(key) else None


class _Hangup:
    """`SIGHUP` while `bridge run` runs: read the configuration file again (its secrets too)
    and give it to the service; a file that does not load is refused, naming the key."""

    def __init__(self, args: argparse.Namespace, path: str | None) -> None:
        self._path = path
        self._level_fixed = args.log_level is not None  # --log-level wins over the file
        self._redactor = logs.Redactor()
        self._tasks: set[asyncio.Task[None]] = set()
        self._service: Service | None = None
        self._missed = False  # a SIGHUP came before the service was there
        signal.signal(signal.SIGHUP, self._early)

    def _early(self, *_: object) -> None:
        self._missed = True

    def install(self, service: Service, redactor: logs.Redactor) -> None:
        """From now on a SIGHUP reloads `service` (one missed meanwhile, at once)."""
        self._service, self._redactor = service, redactor
        loop = asyncio.get_running_loop()
        signal.signal(signal.SIGHUP, lambda *_: loop.call_soon_threadsafe(self._hangup))
        if self._missed:
            self._hangup()

    def uninstall(self) -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def _hangup(self) -> None:
        task = asyncio.create_task(self.reload(), name="reload")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("config.reload_failed", exc_info=task.exception())

    async def reload(self) -> None:
        assert self._service is not None
        try:
            loaded = load(self._path)
        except ConfigError as exc:
            key = _config_key(str(exc))
            named = {"key": key} if key is not None else {}
            log.error(
                "config.reload_refused",
                **named,
                detail=str(exc),
                hint="the running configuration stays",
            )
            return
        self._redactor.add(_secrets(loaded))  # before anything could log them
        change = await self._service.reload(loaded)
        if change is not None and not self._level_fixed:
            logging.getLogger("bridge").setLevel(change.settings.config.log.level.upper())


def _write_pid(path: Path) -> None:
    """The process id in `path`, written whole (a reader never sees half of it)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(f"{os.getpid()}\n")
    partial.replace(path)


def _remove_pid(path: Path) -> None:
    """Remove `path` if it still names this process."""
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()


def cmd_reload(args: argparse.Namespace) -> int:
    """SIGHUP to the process in the pid file, after checking `--config` if given."""
    if args.config is not None:
        try:
            load(args.config)
        except ConfigError as exc:
            return _config_error(exc)
    try:
        pid = int(args.pid_file.read_text().strip())
    except (OSError, ValueError) as exc:
        print(f"bridge: cannot read a process id from {args.pid_file}: {exc}", file=sys.stderr)
        return 1
    with contextlib.suppress(OSError):  # Linux: a recycled pid may name another program
        if b"bridge" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            print(f"bridge: process {pid} is no bridge (stale {args.pid_file})", file=sys.stderr)
            return 1
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"bridge: no process {pid} (stale {args.pid_file})", file=sys.stderr)
        return 1
    except PermissionError:
        print(f"bridge: not allowed to signal process {pid}", file=sys.stderr)
        return 1
    print(f"bridge: process {pid} reads its configuration again", file=sys.stderr)
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


def cmd_replay(args: argparse.Namespace) -> int:
    from bridge.tools import replay

    return replay.run(args)


def cmd_audit(args: argparse.Namespace) -> int:
    from bridge.tools import audit

    return audit.run(args)


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
