"""The arguments of the `bridge` commands (argparse), apart from what implements them.

`bridge.cli` builds its parser from these functions and imports a command's implementation
only inside that command's handler, so `bridge run` and `bridge --help` load no tool, no fake
provider and no benchmark. Each tool module exposes its function as `add_arguments` too, for
callers that parse its arguments alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Final

#: The providers `bridge simulate` can imitate.
SIMULATED: Final = ("greenapi", "evolution", "chatapi", "waha", "meta")

__all__ = [
    "DEAD_LETTER",
    "DELIVERY_LIMIT",
    "audit",
    "broker",
    "common",
    "configure",
    "fake_provider",
    "names",
    "queues_declare",
    "reload",
    "replay",
    "run",
    "simulate",
    "tail",
]

#: `bridge queues declare`: where rejected messages go, and after how many deliveries.
DEAD_LETTER: Final = "notifications.dead"
DELIVERY_LIMIT: Final = 20


def common(parser: argparse.ArgumentParser) -> None:
    """`--config`, `--log-format`, `--log-level`: every command that runs a server."""
    parser.add_argument("--config", help="TOML file (default: ./bridge.toml when present)")
    parser.add_argument("--log-format", choices=["auto", "json", "text"], default=None)
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None)


def run(parser: argparse.ArgumentParser) -> None:
    """`bridge run`: the common options and `--pid-file`."""
    common(parser)
    parser.add_argument(
        "--pid-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="write the process id here while running (for `bridge reload`)",
    )


def reload(parser: argparse.ArgumentParser) -> None:
    """`bridge reload`: signal a running `bridge run` to read its configuration again."""
    parser.add_argument(
        "--pid-file",
        type=Path,
        required=True,
        metavar="PATH",
        help="the file `bridge run --pid-file` writes",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="check this file first and signal only if it is valid (with this environment)",
    )


def fake_provider(parser: argparse.ArgumentParser) -> None:
    common(parser)
    parser.add_argument(
        "--listen", default="127.0.0.1:8091", help="HOST:PORT (default %(default)s)"
    )
    parser.add_argument(
        "--instance",
        action="append",
        default=[],
        metavar="ID:TOKEN",
        help="an instance to serve (repeatable); --config adds every polling source",
    )
    parser.add_argument(
        "--evolution",
        action="append",
        default=[],
        metavar="NAME:TOKEN",
        help="a fake Evolution instance (repeatable)",
    )
    parser.add_argument(
        "--chatapi",
        action="append",
        default=[],
        metavar="ID:TOKEN",
        help="a fake Chat API instance (repeatable)",
    )
    parser.add_argument(
        "--waha",
        action="append",
        default=[],
        metavar="NAME:HMAC_KEY",
        help="a fake WAHA session whose webhooks sign with HMAC_KEY (repeatable);"
        " --config adds every WAHA webhook source",
    )
    parser.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="WABA:APP_SECRET[:VERIFY_TOKEN]",
        help="a WhatsApp Business Account of a fake Meta app signing with APP_SECRET"
        " (repeatable; one app per secret and token); --config adds every Meta source",
    )
    parser.add_argument(
        "--seed-samples", action="store_true", help="enqueue the sample notifications"
    )
    parser.add_argument(
        "--feed",
        type=float,
        default=None,
        metavar="SECONDS",
        help="keep adding one sample per instance every SECONDS",
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every call")


def simulate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="the bridge's base URL, e.g. http://h:8080")
    parser.add_argument("--provider", required=True, choices=SIMULATED)
    parser.add_argument(
        "--count", type=int, default=None, help="requests in all, cycling (default: one each)"
    )
    parser.add_argument(
        "--samples", type=Path, default=None, metavar="DIR", help="*.json bodies to send instead"
    )
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token", default=None, help="webhook token (prefer --token-env)")
    token.add_argument("--token-env", default=None, metavar="VAR", help="env var with the token")
    parser.add_argument("--instance", default=None, help="instance id / name to post as")
    parser.add_argument(
        "--hmac-key-env",
        default=None,
        metavar="VAR",
        help="WAHA: env var with the HMAC key; Meta: with the app secret",
    )
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight (1)")
    parser.add_argument(
        "--auth-header", default="authorization", help="Evolution: the token's header name"
    )
    parser.add_argument(
        "--by-events", action="store_true", help="Evolution: post to /webhooks/evolution/<event>"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (30)")


def names(text: str) -> list[str]:
    """`A, B,` -> `["A", "B"]`: a comma-separated list argument."""
    return [name.strip() for name in text.split(",") if name.strip()]


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="configure_provider", required=True, metavar="PROVIDER")
    green = sub.add_parser("greenapi", help="GREEN-API setSettings (webhookUrl, token, toggles)")
    green.add_argument("--api-url", required=True, help="e.g. https://1101.api.greenapi.com")
    green.add_argument("--instance", required=True, help="idInstance")
    green.add_argument(
        "--token-env", required=True, metavar="VAR", help="env var: apiTokenInstance"
    )
    green.add_argument("--webhook-url", required=True, help='the bridge\'s URL ("" = polling)')
    green.add_argument("--webhook-token-env", metavar="VAR", help="env var: webhookUrlToken")
    green.add_argument(
        "--enable", type=names, default=[], metavar="A,B", help="toggles to set to yes"
    )
    green.add_argument(
        "--disable", type=names, default=[], metavar="A,B", help="toggles to set to no"
    )
    green.add_argument("--timeout", type=float, default=30.0, help="seconds per request (30)")

    meta = sub.add_parser(
        "meta", help="Meta Cloud API: what to enter in the app dashboard (callback, verify token)"
    )
    meta.add_argument(
        "--webhook-url", required=True, help="the bridge's public URL (…/webhooks/meta or its base)"
    )
    meta.add_argument(
        "--verify-token-env",
        required=True,
        metavar="VAR",
        help="env var: the source's verify token",
    )
    meta.add_argument("--timeout", type=float, default=30.0, help=argparse.SUPPRESS)

    evolution = sub.add_parser("evolution", help="Evolution API webhook/set")
    evolution.add_argument("--api-url", required=True, help="e.g. https://evolution.example.com")
    evolution.add_argument("--instance", required=True, help="the instance name")
    evolution.add_argument("--apikey-env", required=True, metavar="VAR", help="env var: apikey")
    evolution.add_argument("--webhook-url", required=True, help="the bridge's webhook URL")
    evolution.add_argument("--webhook-token-env", metavar="VAR", help="env var: webhook token")
    evolution.add_argument("--by-events", action="store_true", help="one URL suffix per event")
    evolution.add_argument(
        "--events", type=names, default=[], metavar="A,B", help="events (default: all)"
    )
    evolution.add_argument("--v1", action="store_true", help="Evolution 1.x flat body")
    evolution.add_argument("--timeout", type=float, default=30.0, help="seconds per request (30)")

    waha = sub.add_parser("waha", help="WAHA session config.webhooks (sessions API)")
    waha.add_argument("--api-url", required=True, help="e.g. http://waha:3000")
    waha.add_argument("--session", required=True, help="the session name")
    waha.add_argument("--api-key-env", metavar="VAR", help="env var: X-Api-Key")
    waha.add_argument("--webhook-url", required=True, help="the bridge's webhook URL")
    waha.add_argument("--hmac-key-env", metavar="VAR", help="env var: the webhook's HMAC key")
    waha.add_argument(
        "--events",
        type=names,
        default=None,
        metavar="A,B",
        help="events (default: message, its reactions, acks, edits, revokes, session.status)",
    )
    waha.add_argument(
        "--retries-policy",
        choices=("constant", "linear", "exponential"),
        default="exponential",
        help="WAHA's retry policy (default %(default)s)",
    )
    waha.add_argument(
        "--retries-delay", type=float, default=2.0, metavar="SECONDS", help="delay (default 2)"
    )
    waha.add_argument(
        "--retries-attempts", type=int, default=15, metavar="N", help="retries (default 15)"
    )
    waha.add_argument("--timeout", type=float, default=30.0, help="seconds per request (30)")


def broker(parser: argparse.ArgumentParser) -> None:
    """`--config F | --amqp-url URL` and `--exchange` (`bridge queues declare`, `bridge tail`)."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", help="bridge TOML file: its [amqp] url and exchange")
    source.add_argument("--amqp-url", help="broker URL (default: amqp.url of the config)")
    parser.add_argument("--exchange", help="the notifications exchange (default: amqp.exchange)")


def queues_declare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the queue (with --shards: name prefix)")
    parser.add_argument(
        "--bind",
        action="append",
        default=[],
        metavar="KEY",
        required=True,
        help="routing key or topic pattern to bind (repeatable)",
    )
    parser.add_argument(
        "--shards",
        type=int,
        default=None,
        metavar="N",
        help="N queues NAME.0 … fed by a consistent-hash exchange",
    )
    parser.add_argument(
        "--by",
        default=None,
        metavar="chat",
        help="what --shards hashes on: chat (the x-chat-id header; messages"
        " without it all go to one shard)",
    )
    parser.add_argument(
        "--delivery-limit",
        type=int,
        default=DELIVERY_LIMIT,
        metavar="N",
        help="dead-letter after N deliveries (default %(default)s)",
    )
    parser.add_argument(
        "--dead-letter-exchange",
        default=DEAD_LETTER,
        metavar="NAME",
        help="fanout exchange + quorum queue for rejected messages (default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="JSON lines even on a terminal")
    broker(parser)


def tail(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bind",
        action="append",
        default=[],
        metavar="KEY",
        required=True,
        help="routing key or topic pattern, e.g. '#' (repeatable)",
    )
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="JSON lines (default off a terminal)")
    form.add_argument("--pretty", action="store_true", help="readable (default on a terminal)")
    parser.add_argument(
        "--count", type=int, default=None, metavar="N", help="exit after N messages"
    )
    broker(parser)


def _archive_source(parser: argparse.ArgumentParser) -> None:
    """`--config F | --amqp-url URL` and `--stream` (`bridge replay`, `bridge audit`)."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", help="bridge TOML file: its [amqp] url and [archive] stream")
    source.add_argument("--amqp-url", help="broker URL (default: amqp.url of the config)")
    parser.add_argument("--stream", help="the archive stream (default: archive.stream)")


def replay(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since", required=True, metavar="WHEN", help="2h, 30m, 1d12h or an ISO time (UTC)"
    )
    parser.add_argument(
        "--until", default=None, metavar="WHEN", help="same forms (default: the archive's end)"
    )
    for flag, what in (("event", "event type"), ("instance", "instance"), ("provider", "provider")):
        parser.add_argument(
            f"--{flag}",
            action="append",
            default=[],
            metavar=flag.upper(),
            help=f"only this {what} (repeatable: any of them)",
        )
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--to-queue", metavar="Q", help="to this queue alone (through the default exchange)"
    )
    target.add_argument("--to-exchange", metavar="X", help="to every queue bound on exchange X")
    parser.add_argument(
        "--routing-key", default=None, help="with --to-exchange: instead of each message's own"
    )
    parser.add_argument("--dry-run", action="store_true", help="count what would be replayed")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="at most N messages")
    parser.add_argument(
        "--in-flight",
        type=int,
        default=256,
        metavar="N",
        help="unconfirmed publishes at most (default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="the summary as one JSON line")
    _archive_source(parser)


def audit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="bridge TOML file: its sources, [amqp] and [archive]")
    parser.add_argument(
        "--minutes",
        type=int,
        default=60,
        metavar="N",
        help="the journals' window, minutes back from now (default %(default)s)",
    )
    parser.add_argument(
        "--instance", action="append", default=[], help="only this instance (repeatable)"
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="journal entries younger than this are not judged (default %(default)s)",
    )
    parser.add_argument(
        "--idle",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="a quiet archive counts as read to its end after this long (default %(default)s)",
    )
    parser.add_argument("--stream", help="the archive stream (default: archive.stream)")
    parser.add_argument("--json", action="store_true", help="one JSON line per instance")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (30)")
