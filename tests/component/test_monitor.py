"""The state probes against the fake provider over real HTTP (the service's aiohttp client):
states and their changes, probe errors, the interval, and a prompt stop."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bridge.config import Settings, load
from bridge.ingest.http import AiohttpProviderHttp
from bridge.logs import FIELDS_ATTR
from bridge.metrics import REGISTRY
from bridge.monitor import Monitor
from tests.support.harness import FakeServer, fake_greenapi, wait_until

pytestmark = pytest.mark.timeout(60)

EVOLUTION_TOKEN = "evo-instance-token-1234"
WAHA_KEY = "waha-api-key-5678"


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def state(provider: str, instance: str, word: str) -> float | None:
    return gauge("bridge_instance_state", provider=provider, instance=instance, state=word)


def checked(provider: str, instance: str) -> float | None:
    return gauge(
        "bridge_instance_state_checked_timestamp_seconds", provider=provider, instance=instance
    )


def errors(provider: str, instance: str, error_class: str) -> float:
    value = REGISTRY.get_sample_value(
        "bridge_instance_state_probe_errors_total",
        {"provider": provider, "instance": instance, "error_class": error_class},
    )
    return value or 0.0


class Instances:
    """Unique instance names per test: the metrics registry is the process's."""

    def __init__(self) -> None:
        n = uuid.uuid4().int % 10**8
        self.green = f"77{n:08d}"
        self.evolution = f"evo-{n}"
        self.waha = f"waha_{n}"


def sources(api_url: str, ids: Instances, *, green_token: str) -> str:
    return f"""
[[sources]]
provider = "greenapi"
mode = "webhook"
instance = "{ids.green}"
webhook_token_env = "HOOK"
api_url = "{api_url}"
token_env = "GREEN_TOKEN"

[[sources]]
provider = "evolution"
mode = "webhook"
instance = "{ids.evolution}"
webhook_token_env = "HOOK"
api_url = "{api_url}"
api_key_env = "EVO_KEY"

[[sources]]
provider = "waha"
mode = "webhook"
instance = "{ids.waha}"
webhook_token_env = "HOOK"
api_url = "{api_url}"
api_key_env = "WAHA_KEY"
"""


def settings_of(tmp_path: Path, text: str, green_token: str) -> Settings:
    path = tmp_path / f"bridge-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(text)
    env = {"HOOK": "hook-token", "GREEN_TOKEN": green_token, "EVO_KEY": EVOLUTION_TOKEN}
    return load(path, {**env, "WAHA_KEY": WAHA_KEY})


@contextlib.asynccontextmanager
async def fake_with(ids: Instances) -> AsyncIterator[tuple[FakeServer, httpx.AsyncClient]]:
    async with (
        fake_greenapi([(ids.green, "green-token-abcdef")]) as fake,
        httpx.AsyncClient(base_url=fake.url) as control,
    ):
        created = await control.post(
            "/_control/evolution/instances", json={"name": ids.evolution, "token": EVOLUTION_TOKEN}
        )
        assert created.status_code == 200, created.text
        created = await control.post("/_control/waha/sessions", json={"name": ids.waha})
        assert created.status_code == 200, created.text
        yield fake, control


@contextlib.asynccontextmanager
async def monitoring(settings: Settings) -> AsyncIterator[Monitor]:
    client = AiohttpProviderHttp(max_connections=10, connect_timeout=5)
    try:
        async with Monitor(settings, client) as monitor:
            yield monitor
    finally:
        await client.aclose()


async def test_states_and_their_changes_move_the_gauges(tmp_path: Path) -> None:
    ids = Instances()
    async with fake_with(ids) as (fake, control):
        text = "[monitor]\nstate_interval = 1\n" + sources(fake.url, ids, green_token="")
        settings = settings_of(tmp_path, text, "green-token-abcdef")
        async with monitoring(settings) as monitor:
            assert len(monitor.watches) == 3
            await wait_until(
                lambda: (
                    state("greenapi", ids.green, "authorized") == 1
                    and state("evolution", ids.evolution, "open") == 1
                    and state("waha", ids.waha, "WORKING") == 1
                )
            )
            for provider, instance in [
                ("greenapi", ids.green),
                ("evolution", ids.evolution),
                ("waha", ids.waha),
            ]:
                assert (
                    gauge("bridge_instance_authorized", provider=provider, instance=instance) == 1
                )
                when = checked(provider, instance)
                assert when is not None and abs(when - time.time()) < 30
            for provider, instance, word in [
                ("greenapi", ids.green, "notAuthorized"),
                ("evolution", ids.evolution, "close"),
                ("waha", ids.waha, "SCAN_QR_CODE"),
            ]:
                changed = await control.put(
                    f"/_control/states/{provider}/{instance}", json={"state": word}
                )
                assert changed.status_code == 200, changed.text
            await wait_until(
                lambda: (
                    state("greenapi", ids.green, "notAuthorized") == 1
                    and state("evolution", ids.evolution, "close") == 1
                    and state("waha", ids.waha, "SCAN_QR_CODE") == 1
                )
            )
            assert state("greenapi", ids.green, "authorized") == 0
            assert state("evolution", ids.evolution, "open") == 0
            assert state("waha", ids.waha, "WORKING") == 0
            for provider, instance in [
                ("greenapi", ids.green),
                ("evolution", ids.evolution),
                ("waha", ids.waha),
            ]:
                assert (
                    gauge("bridge_instance_authorized", provider=provider, instance=instance) == 0
                )
            # the probes never ran into GREEN-API's limit of one state call a second
            assert errors("greenapi", ids.green, "rate_limited") == 0


async def test_probe_errors_are_counted_and_the_last_state_stays(tmp_path: Path) -> None:
    ids = Instances()
    async with fake_with(ids) as (fake, control):
        text = "[monitor]\nstate_interval = 1\n" + sources(fake.url, ids, green_token="")
        settings = settings_of(tmp_path, text, "green-token-abcdef")
        async with monitoring(settings):
            await wait_until(lambda: state("evolution", ids.evolution, "open") == 1)
            await control.put(f"/_control/states/evolution/{ids.evolution}", json={"fail": 503})
            await control.put(f"/_control/states/greenapi/{ids.green}", json={"fail": 500})
            await wait_until(
                lambda: (
                    errors("evolution", ids.evolution, "http_503") >= 2
                    and errors("greenapi", ids.green, "http_500") >= 2
                )
            )
            assert state("evolution", ids.evolution, "open") == 1  # unknown is not "changed"
            cleared = time.time()
            await control.put(f"/_control/states/evolution/{ids.evolution}", json={})
            await control.put(f"/_control/states/greenapi/{ids.green}", json={})
            await wait_until(
                lambda: (
                    (checked("evolution", ids.evolution) or 0) > cleared
                    and (checked("greenapi", ids.green) or 0) > cleared
                )
            )
            assert state("greenapi", ids.green, "authorized") == 1


async def test_wrong_credentials_count_as_errors_and_no_token_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ids = Instances()
    caplog.set_level(logging.INFO, logger="bridge")
    async with fake_with(ids) as (fake, _control):
        text = "[monitor]\nstate_interval = 1\n" + sources(fake.url, ids, green_token="")
        settings = settings_of(tmp_path, text, "wrong-green-token")
        async with monitoring(settings):
            await wait_until(lambda: errors("greenapi", ids.green, "unauthorized") >= 1)
        assert state("greenapi", ids.green, "authorized") is None
    failures = [
        getattr(r, FIELDS_ATTR) for r in caplog.records if r.msg == "instance.state_probe_failed"
    ]
    assert {"provider": "greenapi", "instance": ids.green} in [
        {k: f[k] for k in ("provider", "instance")} for f in failures
    ]
    for record in caplog.records:
        assert (
            "wrong-green-token" not in f"{record.getMessage()} {getattr(record, FIELDS_ATTR, '')}"
        )


async def test_probes_keep_the_interval(tmp_path: Path) -> None:
    ids = Instances()
    async with fake_with(ids) as (fake, control):
        text = "[monitor]\nstate_interval = 1\n" + sources(fake.url, ids, green_token="")
        settings = settings_of(tmp_path, text, "green-token-abcdef")
        path = f"/_control/states/greenapi/{ids.green}"
        calls: list[float] = []

        async def three() -> bool:
            calls[:] = (await control.get(path)).json()["calls"]
            return len(calls) >= 3

        async with monitoring(settings):
            deadline = time.monotonic() + 30
            while not await three():
                assert time.monotonic() < deadline, calls
                await asyncio.sleep(0.1)
        gaps = [b - a for a, b in itertools.pairwise(calls)]
        assert min(gaps) >= 0.99, gaps  # never sooner than state_interval
        assert errors("greenapi", ids.green, "rate_limited") == 0


async def test_leaving_abandons_a_state_call_in_flight(tmp_path: Path) -> None:
    """A provider that accepts and never answers does not hold up the stop, even with a
    long state_timeout."""
    silent = socket.create_server(("127.0.0.1", 0))
    silent.setblocking(False)
    port = silent.getsockname()[1]
    accepted: list[socket.socket] = []

    async def accept() -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(silent)
            accepted.append(conn)

    acceptor = asyncio.create_task(accept())
    text = f"""
[monitor]
state_timeout = 60
[[sources]]
provider = "waha"
mode = "webhook"
instance = "default"
webhook_token_env = "HOOK"
api_url = "http://127.0.0.1:{port}"
"""
    try:
        settings = settings_of(tmp_path, text, "unused")
        async with monitoring(settings):
            await wait_until(lambda: bool(accepted))
            started = time.monotonic()
        took = time.monotonic() - started
        assert took < 2.0, took
    finally:
        acceptor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await acceptor
        for conn in accepted:
            conn.close()
        silent.close()


async def test_disabled_monitor_probes_nothing(tmp_path: Path) -> None:
    ids = Instances()
    async with fake_with(ids) as (fake, control):
        text = "[monitor]\nenabled = false\n" + sources(fake.url, ids, green_token="")
        settings = settings_of(tmp_path, text, "green-token-abcdef")
        async with monitoring(settings) as monitor:
            assert monitor.watches == []
        assert (await control.get(f"/_control/states/greenapi/{ids.green}")).json()["calls"] == []
        assert (
            gauge("bridge_instance_silent_after_seconds", provider="greenapi", instance=ids.green)
            is None
        )
