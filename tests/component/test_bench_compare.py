"""`bridge bench compare` at tiny sizes: every variant runs for real against the real RabbitMQ,
moves every notification it acknowledged, and the run leaves no topology behind."""

from __future__ import annotations

import argparse
import json
import math

import aio_pika
import pytest

from benchmarks import compare
from benchmarks.common import topology_names
from tests.component.test_bench_webhook import _exists  # the same passive probe
from tests.conftest import AMQP_URL

VARIANTS = {"ours_poll", "sdk", "ours_webhook", "faststream", "management", "raw"}


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_compare_runs_every_variant_and_leaves_nothing_behind() -> None:
    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)
    args = parser.parse_args(
        [
            "--instances", "3", "--per-instance", "4", "--latency", "0.005",
            "--fake-processes", "1", "--settle", "0.1",
            "--webhook-instances", "2", "--concurrency", "4", "--duration", "1",
            "--warmup", "0", "--amqp-url", AMQP_URL,
        ]
    )  # fmt: skip

    result = await compare.bench(args)

    variants = result["variants"]
    assert set(variants) == VARIANTS
    assert result["all_moved"] is True
    assert result["unreadable"] == 0
    for name, row in variants.items():
        assert row["moved"] is True, name
        assert row["failures"] == 0, name
        assert row["rate"] > 0 and row["count"] > 0, name
        assert 0 < row["p50_ms"] <= row["p99_ms"], name
        assert row["arrived"] >= row["count"] - row["failures"], name
        assert row["ours_over"] > 0, name
    assert variants["sdk"]["count"] == variants["sdk"]["arrived"] == 12
    for name in ("ours_poll", "ours_webhook"):  # measured before and after the alternatives
        assert len(variants[name]["runs"]) == 2, name
    assert [run["arrived"] for run in variants["ours_poll"]["runs"]] == [12, 12]
    for name in ("ours_poll", "sdk", "ours_webhook", "faststream", "raw"):
        assert variants[name]["cpu_cores"] > 0, name
        assert variants[name]["rss_mb"] > 0, name
    assert math.isnan(variants["management"]["rss_mb"])  # the broker is not ours to measure
    assert {n for n, row in variants.items() if "target" in row} == {"sdk", "faststream", "raw"}
    text = compare.report(result)
    for row in variants.values():
        assert row["label"] in text
    json.dumps(result)

    exchanges, queues = topology_names(result["prefix"])
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        assert await _exists(connection, "exchange", "amq.topic")  # the probe can say yes
        for name in [*queues, f"{result['prefix']}.sink"]:
            assert not await _exists(connection, "queue", name), name
        for name in exchanges:
            assert not await _exists(connection, "exchange", name), name


def test_a_missing_alternative_names_the_package_to_install() -> None:
    def find_spec(name: str) -> object | None:
        return None if name == "pika" else object()

    with pytest.raises(SystemExit, match=r"\(a\) needs pika.*pip install pika"):
        compare.check_alternatives(find_spec)
