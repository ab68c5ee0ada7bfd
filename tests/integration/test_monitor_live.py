"""Silent-instance detection in the running service: fake GREEN-API over real HTTP → bridge →
real RabbitMQ, `/metrics` scraped over HTTP. The last-notification time moves while the
provider delivers and stands still once it stops, the state probe reports authorized then
notAuthorized, and a provider whose state call never answers does not hold up the stop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.app import Service
from tests.conftest import AMQP_URL
from tests.support.harness import (
    Names,
    bridge_toml,
    collector,
    delete_topology,
    fake_greenapi,
    settings_for,
    token_for,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

INSTANCE = "1101000077"
SILENT_AFTER = 2.0


def note(n: int) -> bytes:
    return json.dumps(
        {
            "typeWebhook": "incomingMessageReceived",
            "instanceData": {"idInstance": int(INSTANCE), "wid": "1@c.us"},
            "timestamp": 1700000000 + n,
            "idMessage": f"M{n:04d}",
            "senderData": {"chatId": "1@c.us"},
        }
    ).encode()


async def scrape(http: httpx.AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = (await http.get("/metrics")).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[tuple[int, list[socket.socket]]]:
    """A TCP port that accepts connections and never answers."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    accepted: list[socket.socket] = []

    async def accept() -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(sock)
            accepted.append(conn)

    task = asyncio.create_task(accept())
    try:
        yield sock.getsockname()[1], accepted
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for conn in accepted:
            conn.close()
        sock.close()


async def test_silence_and_state_of_a_polled_instance(tmp_path: Path) -> None:
    names = Names()
    labels = {"provider": "greenapi", "instance": INSTANCE}
    async with (
        fake_greenapi([(INSTANCE, token_for(INSTANCE))]) as fake,
        silent_server() as (silent_port, accepted),
        httpx.AsyncClient(base_url=fake.url) as control,
    ):
        text, env = bridge_toml(
            amqp_url=AMQP_URL,
            names=names,
            api_url=fake.url,
            instances=[INSTANCE],
            extra=f"[monitor]\nstate_interval = 1\nstate_timeout = 60\nsilent_after = {SILENT_AFTER}",
        )
        # a WAHA whose state call never answers: the stop must not wait for it
        text += f"""
[[sources]]
provider = "waha"
mode = "webhook"
instance = "quiet"
webhook_token_env = "HOOK"
api_url = "http://127.0.0.1:{silent_port}"
"""
        settings = settings_for(tmp_path, text, {**env, "HOOK": "hook-token-abcdef"})
        service = Service(settings)
        started = time.time()
        run = asyncio.create_task(service.run())
        try:
            async with collector(AMQP_URL, names.exchange) as got:
                await asyncio.wait_for(service.publisher.wait_ready(), 15)
                await wait_until(lambda: service.http_port is not None)
                metrics = httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}")
                async with metrics:
                    # watched from the start: the threshold, and the start as "last"
                    samples = await scrape(metrics)
                    threshold = value(samples, "bridge_instance_silent_after_seconds", **labels)
                    assert threshold == SILENT_AFTER
                    seeded = value(samples, "bridge_last_notification_timestamp_seconds", **labels)
                    assert seeded is not None and seeded >= started - 1

                    # the provider delivers: the last notification time follows
                    before = time.time()
                    fake.state.enqueue_many(INSTANCE, [note(n) for n in range(3)])
                    await wait_until(lambda: len(got.messages) >= 3)
                    samples = await scrape(metrics)
                    last = value(samples, "bridge_last_notification_timestamp_seconds", **labels)
                    assert last is not None and before - 0.01 <= last <= time.time() + 0.01

                    # ... and the probe says authorized
                    async def authorized(expected: float) -> bool:
                        got_value = value(
                            await scrape(metrics), "bridge_instance_authorized", **labels
                        )
                        return got_value == expected

                    await wait_for_async(lambda: authorized(1.0))
                    samples = await scrape(metrics)
                    assert (
                        value(samples, "bridge_instance_state", **labels, state="authorized") == 1
                    )

                    # the provider stops delivering: the value stands still while time passes,
                    # past silent_after — BridgeInstanceSilent's condition
                    await wait_until(lambda: time.time() - last > SILENT_AFTER + 0.5)
                    samples = await scrape(metrics)
                    assert (
                        value(samples, "bridge_last_notification_timestamp_seconds", **labels)
                        == last
                    )
                    assert value(samples, "bridge_instance_authorized", **labels) == 1

                    # it delivers again: the silence is over
                    fake.state.enqueue(INSTANCE, note(99))
                    await wait_until(lambda: len(got.messages) >= 4)
                    samples = await scrape(metrics)
                    again = value(samples, "bridge_last_notification_timestamp_seconds", **labels)
                    assert again is not None and again > last + SILENT_AFTER

                    # the instance is logged out: the probe reports it
                    await control.put(
                        f"/_control/states/greenapi/{INSTANCE}", json={"state": "notAuthorized"}
                    )
                    await wait_for_async(lambda: authorized(0.0))
                    samples = await scrape(metrics)
                    assert (
                        value(samples, "bridge_instance_state", **labels, state="notAuthorized")
                        == 1
                    )
                    assert (
                        value(samples, "bridge_instance_state", **labels, state="authorized") == 0
                    )
                    assert accepted, "the WAHA state call was made"
        finally:
            stopping = time.monotonic()
            await service.shutdown()
            await asyncio.wait_for(run, 30)
            took = time.monotonic() - stopping
            await delete_topology(AMQP_URL, names)
        # a state call in flight (state_timeout = 60) is abandoned, not waited for
        assert took < 20, took


async def wait_for_async(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.1)
