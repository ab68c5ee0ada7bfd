"""The monitor's probe step and its bookkeeping, against scripted answers
(`httpx.MockTransport`, no sockets)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from bridge.config import Settings, load
from bridge.ingest.http import HttpxProviderHttp
from bridge.logs import FIELDS_ATTR
from bridge.metrics import REGISTRY
from bridge.monitor import MAX_STATES, Monitor, Watch
from tests.support.harness import wait_until

Handler = Callable[[httpx.Request], httpx.Response]


def settings(tmp_path: Path, session: str) -> Settings:
    path = tmp_path / "bridge.toml"
    path.write_text(
        f"""
[[sources]]
provider = "waha"
mode = "webhook"
instance = "{session}"
webhook_token_env = "HOOK"
api_url = "http://waha:3000"
api_key_env = "KEY"
"""
    )
    return load(path, {"HOOK": "hook-token", "KEY": "waha-key"})


def monitor_for(tmp_path: Path, handler: Handler) -> tuple[Monitor, Watch, str]:
    session = f"s{uuid.uuid4().hex[:8]}"
    client = HttpxProviderHttp(httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    monitor = Monitor(settings(tmp_path, session), client)
    (watch,) = monitor.watches
    return monitor, watch, session


def errors(session: str, error_class: str) -> float:
    labels = {"provider": "waha", "instance": session, "error_class": error_class}
    return REGISTRY.get_sample_value("bridge_instance_state_probe_errors_total", labels) or 0.0


def state(session: str, word: str) -> float | None:
    labels = {"provider": "waha", "instance": session, "state": word}
    return REGISTRY.get_sample_value("bridge_instance_state", labels)


def raising(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


@pytest.mark.parametrize(
    ("handler", "error_class"),
    [
        (raising(httpx.ReadTimeout("slow")), "timeout"),
        (raising(httpx.ConnectError("refused")), "network"),
        (lambda r: httpx.Response(200, content=b"<html>"), "bad_answer"),
        (lambda r: httpx.Response(401, content=b"{}"), "unauthorized"),
        (lambda r: httpx.Response(502, content=b"{}"), "http_502"),
    ],
)
async def test_failures_by_class(tmp_path: Path, handler: Handler, error_class: str) -> None:
    monitor, watch, session = monitor_for(tmp_path, handler)
    await monitor.probe(watch)
    assert errors(session, error_class) == 1
    assert watch.state is None


async def test_the_request_carries_the_key(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"name": "x", "status": "WORKING"})

    monitor, watch, session = monitor_for(tmp_path, handler)
    await monitor.probe(watch)
    (request,) = seen
    assert request.headers["x-api-key"] == "waha-key"
    assert str(request.url) == f"http://waha:3000/api/sessions/{session}"
    assert state(session, "WORKING") == 1


async def test_a_failure_streak_logs_once_and_recovery_logs_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    answers = [503, 503, 503, 200]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(answers.pop(0), json={"status": "WORKING"})

    caplog.set_level(logging.INFO, logger="bridge")
    monitor, watch, session = monitor_for(tmp_path, handler)
    for _ in range(4):
        await monitor.probe(watch)
    assert errors(session, "http_503") == 3
    events = [
        r.msg for r in caplog.records if getattr(r, FIELDS_ATTR, {}).get("instance") == session
    ]
    assert events == [
        "instance.state_probe_failed",
        "instance.state_probe_recovered",
        "instance.state",
    ]


async def test_state_labels_are_bounded(tmp_path: Path) -> None:
    words = [f"STATE_{n}" for n in range(MAX_STATES + 3)]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": words.pop(0)})

    monitor, watch, session = monitor_for(tmp_path, handler)
    for _ in range(MAX_STATES + 3):
        await monitor.probe(watch)
    assert state(session, "other") == 1
    assert state(session, f"STATE_{MAX_STATES - 2}") == 0
    assert state(session, f"STATE_{MAX_STATES + 1}") is None
    labels = {"provider": "waha", "instance": session}
    assert REGISTRY.get_sample_value("bridge_instance_authorized", labels) == 0


async def test_an_unexpected_error_does_not_end_the_watch(tmp_path: Path) -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise RuntimeError("a bug")

    monitor, _watch, session = monitor_for(tmp_path, handler)
    async with monitor:
        await wait_until(lambda: errors(session, "unexpected") >= 1)
    assert len(calls) == 1
