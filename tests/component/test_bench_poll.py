"""Smoke test of `bridge bench poll` with tiny settings: it measures, reports, and cleans up."""

from __future__ import annotations

import argparse
import asyncio

import aio_pika
import pytest

from benchmarks import poll
from tests.conftest import AMQP_URL
from tests.support.harness import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_poll_bench_smoke() -> None:
    parser = argparse.ArgumentParser()
    poll.add_arguments(parser)
    args = parser.parse_args(
        ["--instances", "6", "--per-instance", "5", "--latency", "0.01", "--fake-processes", "1",
         "--port", str(free_port()), "--amqp-url", AMQP_URL]
    )  # fmt: skip
    result = asyncio.run(poll.bench(args))
    assert result["notifications"] == 30
    assert result["rate"] > 0 and 0 < result["ratio"] <= 1.05
    assert result["limit"] == pytest.approx(6 / 0.02)
    assert result["rss_mb"] > 0
    text = poll.report(result)
    assert "protocol limit" in text and "ratio" in text

    async def leftovers() -> list[str]:
        connection = await aio_pika.connect(AMQP_URL)
        found = []
        async with connection:
            for name in ("unrouted", "invalid"):
                channel = await connection.channel()
                try:
                    await channel.declare_queue(f"{result['prefix']}.{name}", passive=True)
                    found.append(name)
                except aio_pika.exceptions.ChannelNotFoundEntity:
                    pass
        return found

    assert asyncio.run(leftovers()) == []
