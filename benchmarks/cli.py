"""`python -m benchmarks poll|webhook|compare …` (also `bridge bench …` from a checkout).

The harness is not part of the `bridge` package: it runs from a checkout of the repository,
imports the service and the fake provider, and spawns them as `python -m bridge` processes.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from benchmarks import compare, poll, webhook

__all__ = ["main"]


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog)
    sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    benches = (
        ("poll", "polling throughput against the protocol limit", poll),
        ("webhook", "webhook rate against raw confirmed publishes", webhook),
        (
            "compare",
            "ours against the SDK loop, FastAPI+FastStream, the management API, raw",
            compare,
        ),
    )
    for name, summary, module in benches:
        bench = sub.add_parser(name, help=summary)
        module.add_arguments(bench)
        bench.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m benchmarks") -> int:
    args = _parser(prog).parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)
