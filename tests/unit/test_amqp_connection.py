"""Which nodes a connection tries, in which order, and the name it carries (pure parts of
bridge/amqp/connection.py; the moving itself: tests/chaos/test_cluster_faults.py)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections import Counter

import pytest

from bridge.amqp import connection
from bridge.config import AmqpConfig
from bridge.errors import ConfigError
from bridge.logs import get_logger
from bridge.retry import Backoff

URLS = ("amqp://u:p@rabbit-1/", "amqp://u:p@rabbit-2/", "amqp://u:p@rabbit-3/")


def test_a_target_names_its_nodes() -> None:
    assert connection.nodes_of(AmqpConfig(urls=URLS)) == URLS
    assert connection.nodes_of(AmqpConfig(url=URLS[1])) == (URLS[1],)
    assert connection.nodes_of(" , ".join(URLS)) == URLS
    assert connection.nodes_of(list(URLS)) == URLS
    with pytest.raises(ConfigError, match="no broker URL given"):
        connection.nodes_of(" , ")


def test_the_order_is_shuffled_once_per_process_and_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    firsts: Counter[str] = Counter()
    for _ in range(300):
        monkeypatch.setattr(connection, "_orders", {})  # as in a new process
        order = connection.node_order(URLS)
        assert sorted(order) == sorted(URLS)
        assert connection.node_order(list(URLS)) == order  # the same within the process
        firsts[order[0]] += 1
    assert set(firsts) == set(URLS)  # every node is some process's first
    assert min(firsts.values()) > 50  # ~100 each


def test_masked_urls_hide_every_password() -> None:
    assert connection.mask_urls(",".join(URLS)) == ",".join(
        u.replace("u:p@", "u:***@") for u in URLS
    )


def test_the_connection_name_is_host_pid_role() -> None:
    assert connection.connection_name("tail") == f"bridge {socket.gethostname()}/{os.getpid()} tail"


class FakeConnection:
    async def close(self) -> None:
        pass


async def keep(
    monkeypatch: pytest.MonkeyPatch, urls: tuple[str, ...], dead: set[str], *, tries: int
) -> tuple[list[str], list[float], int]:
    """Run `keep_connection` over `urls` (in this order) until `tries` connects were tried;
    (URLs tried, the pauses it took between them, sessions run)."""
    tried: list[str] = []
    pauses: list[float] = []
    sessions = 0
    stop = asyncio.Event()

    async def open_connection(url: str, **_: object) -> FakeConnection:
        tried.append(url)
        if len(tried) >= tries:
            stop.set()
        if url in dead:
            raise ConnectionRefusedError(url)
        return FakeConnection()

    async def sleep_unless(_: asyncio.Event, seconds: float) -> bool:
        pauses.append(seconds)
        return stop.is_set()

    async def session(_: object) -> None:
        nonlocal sessions
        sessions += 1

    async def after() -> None:
        pass

    monkeypatch.setattr(connection, "open_connection", open_connection)
    monkeypatch.setattr(connection, "sleep_unless", sleep_unless)
    monkeypatch.setattr(connection, "_orders", {urls: urls})
    await connection.keep_connection(
        urls, session, stop=stop, backoff=Backoff(initial=1.0, floor=0.5), timeout=1,
        heartbeat=1, role="test", after=after, events="test", log=get_logger("test"),
    )  # fmt: skip
    return tried, pauses, sessions


async def test_a_lost_or_dead_node_makes_the_next_one_tried_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tried, pauses, sessions = await keep(monkeypatch, URLS, {URLS[0], URLS[1]}, tries=6)
    assert tried == [*URLS, *URLS]
    assert pauses == [0.0] * 5  # two refusals, a session lost; two refusals (then stop)
    assert sessions == 2


async def test_a_round_of_dead_nodes_backs_off(monkeypatch: pytest.MonkeyPatch) -> None:
    tried, pauses, _ = await keep(monkeypatch, URLS, set(URLS), tries=6)
    assert tried == [*URLS, *URLS]
    assert [p > 0 for p in pauses] == [False, False, True, False, False, True]


async def test_one_node_backs_off_after_every_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    _, pauses, sessions = await keep(monkeypatch, URLS[:1], set(), tries=3)
    assert sessions == 3
    assert all(p > 0 for p in pauses)


async def test_connect_takes_the_first_node_that_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    tried: list[tuple[str, object]] = []

    async def open_connection(url: str, **options: object) -> FakeConnection:
        tried.append((url, options["client_properties"]))
        if url != URLS[2]:
            raise ConnectionRefusedError(url)
        return FakeConnection()

    monkeypatch.setattr(connection, "open_connection", open_connection)
    monkeypatch.setattr(connection, "_orders", {URLS: URLS})
    await connection.connect(list(URLS), "queues")
    assert [url for url, _ in tried] == list(URLS)
    assert tried[0][1] == {"connection_name": connection.connection_name("queues")}
    tried.clear()
    with pytest.raises(ConnectionRefusedError):
        await connection.connect(",".join(URLS[:2]), "tail")
    assert len(tried) == 2  # each once, then the last error


async def test_connect_takes_the_configs_timeout_and_heartbeat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, object] = {}

    async def open_connection(url: str, **options: object) -> FakeConnection:
        seen.update(options, url=url)
        return FakeConnection()

    monkeypatch.setattr(connection, "open_connection", open_connection)
    await connection.connect(AmqpConfig(url=URLS[0], connect_timeout=3, heartbeat=7), "replay")
    assert (seen["url"], seen["timeout"], seen["heartbeat"]) == (URLS[0], 3, 7)
