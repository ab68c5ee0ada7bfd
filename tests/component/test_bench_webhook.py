"""`bridge bench webhook` with tiny settings: a real bridge process, the real RabbitMQ."""

from __future__ import annotations

import argparse
import json
import shutil

import aio_pika
import aiormq.exceptions
import pytest

from benchmarks import webhook
from tests.conftest import AMQP_URL

WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:18200/webhooks/greenapi/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    12.31ms    4.02ms   1.02s    90.10%
    Req/Sec     2.61k   210.00     3.01k    71.00%
  Latency Distribution
     50%  850.00us
     75%   13.10ms
     90%   16.20ms
     99%   24.50ms
  52000 requests in 10.00s, 5.60MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:   5199.50
Transfer/sec:    573.00KB
BENCH-RESULT non200=9 requests=52000 connect=0 read=1 write=0 timeout=2
"""


def test_parse_wrk_reads_rate_distribution_and_failures() -> None:
    got = webhook.parse_wrk(WRK_OUTPUT)
    assert got["rate"] == 5199.5
    assert got["count"] == 52000
    assert got["p50_ms"] == 0.85
    assert got["p99_ms"] == 24.5
    assert got["max_ms"] == 1020.0
    assert got["distribution"] == {"50%": 0.85, "75%": 13.1, "90%": 16.2, "99%": 24.5}
    assert got["non_2xx"] == 7
    assert got["non_200"] == 9  # the script's own count: any status other than 200
    assert got["errors"] == 3


def test_bodies_are_distinct_greenapi_notifications_of_the_asked_size() -> None:
    head, mid, tail = webhook.body_parts(1024)
    bodies = [head + b"7200000001" + mid + f"W000{n:012d}".encode() + tail for n in range(3)]
    assert {len(b) for b in bodies} == {1024}
    decoded = [json.loads(b) for b in bodies]
    assert len({d["idMessage"] for d in decoded}) == 3
    assert decoded[0]["typeWebhook"] == "incomingMessageReceived"
    assert decoded[0]["instanceData"]["idInstance"] == 7200000001


async def _exists(connection: aio_pika.abc.AbstractConnection, kind: str, name: str) -> bool:
    channel = await connection.channel()
    try:
        if kind == "queue":
            await channel.declare_queue(name, passive=True)
        else:
            await channel.declare_exchange(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    await channel.close()
    return True


@pytest.mark.integration
@pytest.mark.timeout(30)
@pytest.mark.parametrize("generator", ["builtin", "wrk"])
async def test_bench_runs_and_leaves_nothing_behind(generator: str) -> None:
    if generator == "wrk" and shutil.which("wrk") is None:
        pytest.skip("wrk is not installed")
    parser = argparse.ArgumentParser()
    webhook.add_arguments(parser)
    args = parser.parse_args(
        [
            "--instances", "2", "--concurrency", "4", "--duration", "1", "--warmup", "0.5",
            "--generator", generator, "--amqp-url", AMQP_URL,
        ]
    )  # fmt: skip

    result = await webhook.bench(args)

    assert result["generator"] == generator
    assert result["requests"] > 0
    assert result["rate"] > 0
    assert result["raw_rate"] > 0
    assert all(rate > 0 for rate in result["raw_rates"])
    assert result["non_200"] == 0
    assert result["errors"] == 0
    assert result["raw_failures"] == 0
    assert result["ratio"] > 0
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    assert result["bridge_cpu"] > 0
    assert result["rss_mb"] > 0
    assert "ratio" in webhook.report(result)
    json.dumps(result)
    exchanges, queues = webhook.topology_names(result["prefix"])
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        assert await _exists(connection, "exchange", "amq.topic")  # the probe can say yes
        for name in queues:
            assert not await _exists(connection, "queue", name), name
        for name in exchanges:
            assert not await _exists(connection, "exchange", name), name
