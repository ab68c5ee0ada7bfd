"""`bridge simulate --provider waha` against a recorder, `bridge configure waha` against the fake.

Both tools are synchronous (`run(args) -> int`), so they run in a worker thread while the fake
and the recorder serve on the test's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from bridge import cli
from bridge.config import Config, Secret, Settings, Source
from bridge.tools import configure, simulate, waha
from fakeprovider.greenapi import FakeGreenApi
from fakeprovider.server import serve_socket
from fakeprovider.waha import FakeWaha
from tests.support.harness import http_receiver

SAMPLES = Path(__file__).parents[2] / "bridge" / "data" / "samples" / "waha"
API_KEY = "waha-api-key-0123456789"
HMAC_KEY = "bridge-hmac-key-0123456789"
OTHER_KEY = "crm-hmac-key-9876543210"
SESSION = "default"
BRIDGE_URL = "https://bridge.example/webhooks/waha"


@dataclass
class Recorder:
    url: str = ""
    hits: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.hits.append((request.path, headers, await request.read()))
        return web.Response(text="ok")


@pytest.fixture(scope="module")
async def recorder_server() -> AsyncIterator[Recorder]:
    recorder = Recorder()
    async with http_receiver(recorder.handle) as url:
        recorder.url = url
        yield recorder


@pytest.fixture
def recorder(recorder_server: Recorder, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder_server.hits.clear()
    monkeypatch.setenv("WAHA_HMAC", HMAC_KEY)
    monkeypatch.setenv("WAHA_KEY", API_KEY)
    return recorder_server


@dataclass
class Fake:
    waha: FakeWaha
    url: str = ""


@pytest.fixture(scope="module")
async def fake_server() -> AsyncIterator[Fake]:
    fake = Fake(FakeWaha(api_key=API_KEY))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    fake.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    ready = asyncio.Event()
    task = asyncio.create_task(serve_socket(FakeGreenApi(), sock, ready=ready, waha=fake.waha))
    await asyncio.wait_for(ready.wait(), 5)
    yield fake
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
def fake(fake_server: Fake, recorder: Recorder) -> Fake:
    fake_server.waha.reset()
    fake_server.waha.jitter = 0.0
    fake_server.waha.add_session(SESSION)
    crm = {
        "url": "https://crm.example/hook",
        "events": ["message"],
        "hmac": {"key": OTHER_KEY},
        "customHeaders": [{"name": "X-Crm", "value": "crm-secret-header"}],
    }
    body = json.dumps({"config": {"metadata": {"tenant": "t1"}, "webhooks": [crm]}}).encode()
    status, _ = fake_server.waha.handle_api("PUT", f"/api/sessions/{SESSION}", API_KEY, body)
    assert status == 200
    return fake_server


def _args(add: Callable[[argparse.ArgumentParser], None], argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add(parser)
    return parser.parse_args(argv)


async def _configure(argv: list[str]) -> int:
    return await asyncio.to_thread(configure.run, _args(configure.add_arguments, argv))


async def _simulate(argv: list[str]) -> int:
    return await asyncio.to_thread(simulate.run, _args(simulate.add_arguments, argv))


def _files() -> list[Path]:
    return sorted(SAMPLES.glob("*.json"))


# --- simulate ------------------------------------------------------------------------------------


async def test_simulate_posts_the_samples_compact_and_signed(
    recorder: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--url", recorder.url + "/", "--provider", "waha", "--hmac-key-env", "WAHA_HMAC"]
    assert await _simulate(argv) == 0
    files = _files()
    assert [h[2] for h in recorder.hits] == [waha.compact(f.read_bytes()) for f in files]
    for (path, headers, body), file in zip(recorder.hits, files, strict=True):
        assert path == "/webhooks/waha"
        assert json.loads(body) == json.loads(file.read_bytes())  # only whitespace went
        assert b"\n" not in body and b'": ' not in body
        expected = hmac.new(HMAC_KEY.encode(), body, hashlib.sha512).hexdigest()
        assert headers["x-webhook-hmac"] == expected
        assert headers["x-webhook-hmac-algorithm"] == "sha512"
        assert headers["user-agent"] == "WAHA/2026.9.1"
        assert headers["content-type"] == "application/json"
        stamp = json.loads(body).get("timestamp")
        if stamp is not None:
            assert headers["x-webhook-timestamp"] == str(stamp)
        else:
            assert abs(int(headers["x-webhook-timestamp"]) - time.time() * 1000) < 60_000
    assert len({h[1]["x-webhook-request-id"] for h in recorder.hits}) == len(files)
    out, err = capsys.readouterr()
    assert out.splitlines()[1].split()[:2] == ["200", str(len(files))]
    assert "signed" in err and HMAC_KEY not in out + err


def test_compact_samples_are_what_json_stringify_writes() -> None:
    """The files hold raw UTF-8, so dropping their whitespace gives WAHA's bytes exactly."""
    for file in _files():
        raw = file.read_bytes()
        assert waha.compact(raw) == waha.stringify(json.loads(raw)), file.name
    capture = waha.compact((SAMPLES / "message.text.gows-2026.1.2.capture.json").read_bytes())
    assert "João".encode() in capture and b"\\u" not in capture


async def test_simulate_sets_the_session_and_cycles(recorder: Recorder) -> None:
    argv = [
        "--url",
        recorder.url,
        "--provider",
        "waha",
        "--instance",
        "sales-2",
        "--count",
        "15",
        "--token",
        "hook-t",
        "--auth-header",
        "x-bridge-token",
    ]
    assert await _simulate(argv) == 0
    files = _files()
    assert len(recorder.hits) == 15
    for n, (_path, headers, body) in enumerate(recorder.hits):
        original = json.loads(files[n % len(files)].read_bytes())
        assert json.loads(body) == {**original, "session": "sales-2"}
        assert list(json.loads(body)) == list(original)  # key order kept
        assert (
            body == json.dumps(json.loads(body), ensure_ascii=False, separators=(",", ":")).encode()
        )
        assert headers["x-bridge-token"] == "Bearer hook-t"
        assert "x-webhook-hmac" not in headers
    captured = [b for _p, _h, b in recorder.hits if b'"engine":"GOWS"' in b or b"Jo" in b]
    assert any("João".encode() in b for b in captured)  # non-ASCII unescaped
    assert len({h[1]["x-webhook-request-id"] for h in recorder.hits}) == 15


async def test_simulate_without_the_key_variable_is_a_usage_error(recorder: Recorder) -> None:
    argv = ["--url", recorder.url, "--provider", "waha", "--hmac-key-env", "NOT_SET_ANYWHERE"]
    assert await _simulate(argv) == 2
    assert recorder.hits == []


# --- configure -----------------------------------------------------------------------------------


def _waha(fake: Fake, *extra: str) -> list[str]:
    return [
        "waha",
        "--api-url",
        fake.url,
        "--session",
        SESSION,
        "--api-key-env",
        "WAHA_KEY",
        "--webhook-url",
        BRIDGE_URL,
        "--hmac-key-env",
        "WAHA_HMAC",
        *extra,
    ]


async def test_configure_adds_the_webhook_and_keeps_the_others(
    fake: Fake, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await _configure(_waha(fake)) == 0
    session = fake.waha.sessions[SESSION]
    crm, ours = session.config["webhooks"]
    assert crm["url"] == "https://crm.example/hook" and crm["hmac"] == {"key": OTHER_KEY}
    assert ours == {
        "url": BRIDGE_URL,
        "events": list(waha.DEFAULT_EVENTS),
        "hmac": {"key": HMAC_KEY},
        "retries": {"policy": "exponential", "delaySeconds": 2, "attempts": 15},
    }
    assert session.config["metadata"] == {"tenant": "t1"}  # the rest of the config is kept
    assert [h.url for h in session.webhooks] == ["https://crm.example/hook", BRIDGE_URL]
    assert fake.waha.stats(SESSION).restarts == 2  # the set-up's PUT, then ours
    out, err = capsys.readouterr()
    assert "added (1 other webhook(s) kept)" in out and BRIDGE_URL in out
    for secret in (HMAC_KEY, OTHER_KEY, API_KEY, "crm-secret-header"):
        assert secret not in out + err
    assert "restarts the session" in err


async def test_configure_again_replaces_in_place(
    fake: Fake, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await _configure(_waha(fake)) == 0
    session = fake.waha.sessions[SESSION]
    session.config["webhooks"][1]["customHeaders"] = [{"name": "X-Proxy", "value": "p"}]
    argv = _waha(
        fake,
        "--events",
        "message.any, session.status",
        "--retries-policy",
        "linear",
        "--retries-delay",
        "0.5",
        "--retries-attempts",
        "3",
    )
    assert await _configure(argv) == 0
    crm, ours = session.config["webhooks"]
    assert crm["url"] == "https://crm.example/hook"
    assert ours["events"] == ["message.any", "session.status"]
    assert ours["retries"] == {"policy": "linear", "delaySeconds": 0.5, "attempts": 3}
    assert ours["customHeaders"] == [{"name": "X-Proxy", "value": "p"}]
    assert "replaced (1 other webhook(s) kept)" in capsys.readouterr().out


async def test_configured_webhook_is_pushed_signed(
    fake: Fake, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = _waha(fake)
    argv[argv.index(BRIDGE_URL)] = f"{recorder.url}/webhooks/waha"
    assert await _configure(argv) == 0
    assert fake.waha.enqueue(SESSION, "message.ack", {"id": "m1", "ack": 3}) == 1
    deadline = time.monotonic() + 5
    while not recorder.hits:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    _path, headers, body = recorder.hits[0]
    assert headers["x-webhook-hmac"] == waha.sign(body, HMAC_KEY)
    assert json.loads(body)["event"] == "message.ack"


async def test_configure_without_hmac_key_warns(
    fake: Fake, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _waha(fake)
    del argv[argv.index("--hmac-key-env") : argv.index("--hmac-key-env") + 2]
    assert await _configure(argv) == 0
    assert "hmac" not in fake.waha.sessions[SESSION].config["webhooks"][1]
    assert "unsigned" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        ({"--session": "nobody"}, 1, "404 Not Found: Session 'nobody' does not exist (no session"),
        ({"env:WAHA_KEY": "wrong-api-key"}, 1, "401 Unauthorized: Unauthorized (WAHA rejected"),
        ({"--api-url": "dead"}, 1, "failed: ConnectError"),
        ({"--events": "message,not.an.event"}, 1, "400 Bad Request: config.webhooks.1.each value"),
        ({"--webhook-url": "bridge.example/no-scheme"}, 1, "must be a URL address"),
        ({"--hmac-key-env": "NOT_SET_ANYWHERE"}, 2, "NOT_SET_ANYWHERE"),
        ({"--retries-attempts": "-1"}, 2, "must be >= 0"),
    ],
)
async def test_configure_errors(
    fake: Fake,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    change: dict[str, str],
    code: int,
    message: str,
) -> None:
    argv = _waha(fake)
    for name, value in change.items():
        if name.startswith("env:"):
            monkeypatch.setenv(name[4:], value)
        elif name in argv:
            argv[argv.index(name) + 1] = _dead_url() if value == "dead" else value
        else:
            argv += [name, value]
    before = [h.url for h in fake.waha.sessions[SESSION].webhooks]
    assert await _configure(argv) == code
    err = capsys.readouterr().err
    assert message in err
    for secret in (HMAC_KEY, OTHER_KEY, API_KEY, "wrong-api-key"):
        assert secret not in err
    assert [h.url for h in fake.waha.sessions[SESSION].webhooks] == before


def _dead_url() -> str:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{closed.getsockname()[1]}"


# --- bridge fake-provider ------------------------------------------------------------------------


def test_fake_provider_takes_waha_sources_and_options() -> None:
    sources = (
        Source(provider="waha", mode="webhook", instance="s1", hmac_key_env="K1"),
        Source(provider="waha", mode="webhook", instance="s2"),
        Source(provider="evolution", mode="webhook", instance="evo"),
    )
    settings = Settings(
        config=Config(sources=sources),
        tokens={},
        webhook_tokens={},
        hmac_keys={"waha:s1": Secret("key-one")},
    )
    parser = argparse.ArgumentParser()
    cli.arguments.fake_provider(parser)
    args = parser.parse_args(["--waha", "s3:k:with:colons"])
    instances = cli._fake_instances(args, settings)
    assert instances["waha"] == [("s1", "key-one"), ("s2", ""), ("s3", "k:with:colons")]
    with pytest.raises(ValueError, match="--waha wants NAME:HMAC_KEY"):
        cli._fake_instances(parser.parse_args(["--waha", "nokey"]), None)
