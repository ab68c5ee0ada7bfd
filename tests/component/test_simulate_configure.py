"""`bridge configure` against the fake providers and `bridge simulate` against a recorder.

Both tools are synchronous (`run(args) -> int`), so they run in a worker thread while the fake
and the recorder serve on the test's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from bridge.tools import configure, simulate
from fakeprovider.chatapi import FakeChatApi
from fakeprovider.evolution import FakeEvolution
from fakeprovider.greenapi import FakeGreenApi
from fakeprovider.samples import sample_notifications
from fakeprovider.server import serve_socket
from tests.support.harness import http_receiver

ID = "1101000001"
TOKEN = "f1e2d3c4b5a6978812345678abcdef0123456789abcdef0123"
HOOK_TOKEN = "hook-secret-0123456789"
EVO = "sales-bot"
EVO_TOKEN = "B6D711FCDE4D-4F69-9E6C"
SAMPLES = Path(__file__).parents[2] / "bridge" / "data" / "samples"


@dataclass
class Recorder:
    url: str = ""
    status: int = 200
    hits: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.hits.append((request.path, request.query_string, headers, await request.read()))
        return web.Response(status=self.status, text="ok")


@pytest.fixture(scope="module")
async def recorder_server() -> AsyncIterator[Recorder]:
    recorder = Recorder()
    async with http_receiver(recorder.handle) as url:
        recorder.url = url
        yield recorder


@pytest.fixture
def recorder(recorder_server: Recorder) -> Recorder:
    recorder_server.hits.clear()
    recorder_server.status = 200
    return recorder_server


@dataclass
class Fakes:
    green: FakeGreenApi
    evolution: FakeEvolution
    url: str = ""


@pytest.fixture(scope="module")
async def fakes_server() -> AsyncIterator[Fakes]:
    fakes = Fakes(FakeGreenApi(settings_api=True), FakeEvolution(api_key="global-key"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    fakes.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    ready = asyncio.Event()
    task = asyncio.create_task(
        serve_socket(
            fakes.green, sock, ready=ready, evolution=fakes.evolution, chatapi=FakeChatApi()
        )
    )
    await asyncio.wait_for(ready.wait(), 5)
    yield fakes
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
def fakes(fakes_server: Fakes, monkeypatch: pytest.MonkeyPatch) -> Fakes:
    fakes_server.green.reset()
    fakes_server.green.add_instance(ID, TOKEN)
    fakes_server.evolution.reset()
    fakes_server.evolution.add_instance(EVO, EVO_TOKEN)
    fakes_server.evolution.add_instance("old", "old-token", v1=True)
    monkeypatch.setenv("GREEN_TOKEN", TOKEN)
    monkeypatch.setenv("HOOK_TOKEN", HOOK_TOKEN)
    monkeypatch.setenv("EVO_KEY", EVO_TOKEN)
    return fakes_server


def _args(add: Callable[[argparse.ArgumentParser], None], argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add(parser)
    return parser.parse_args(argv)


async def _configure(argv: list[str]) -> int:
    return await asyncio.to_thread(configure.run, _args(configure.add_arguments, argv))


async def _simulate(argv: list[str]) -> int:
    return await asyncio.to_thread(simulate.run, _args(simulate.add_arguments, argv))


# --- configure greenapi --------------------------------------------------------------------------


def _green(fakes: Fakes, *extra: str) -> list[str]:
    return ["greenapi", "--api-url", fakes.url, "--instance", ID, "--token-env", "GREEN_TOKEN",
            "--webhook-url", "https://bridge.example/webhooks/greenapi", *extra]  # fmt: skip


async def test_configure_greenapi_writes_settings(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _green(fakes, "--webhook-token-env", "HOOK_TOKEN", "--enable", "pollMessageWebhook",
                  "--disable", "stateWebhook")  # fmt: skip
    assert await _configure(argv) == 0
    settings = fakes.green.settings(ID)
    assert settings.webhookUrl == "https://bridge.example/webhooks/greenapi"
    assert settings.webhookUrlToken == HOOK_TOKEN and settings.pushing
    for toggle in ("incomingWebhook", "outgoingWebhook", "outgoingMessageWebhook",
                   "outgoingAPIMessageWebhook", "incomingCallWebhook", "pollMessageWebhook"):  # fmt: skip
        assert getattr(settings, toggle) == "yes"
    assert settings.stateWebhook == "no" and settings.keepOnlineStatus == "no"
    out, err = capsys.readouterr()
    assert "https://bridge.example/webhooks/greenapi" in out and "webhookUrlToken" in out
    assert HOOK_TOKEN not in out + err and TOKEN not in out + err
    assert "5 minutes" in err and "reboots" in err


@pytest.mark.parametrize(
    ("extra", "env", "code", "message"),
    [
        ((), {"GREEN_TOKEN": "wrong"}, 1, "401"),
        (("--enable", "noSuchWebhook"), {}, 2, "unknown toggle"),
        (("--enable", "stateWebhook", "--disable", "stateWebhook"), {}, 2, "both"),
        (("--webhook-token-env", "UNSET_VAR"), {}, 2, "UNSET_VAR"),
    ],
)
async def test_configure_greenapi_errors(
    fakes: Fakes,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    extra: tuple[str, ...],
    env: dict[str, str],
    code: int,
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert await _configure(_green(fakes, *extra)) == code
    err = capsys.readouterr().err
    assert message in err and TOKEN not in err and "wrong" not in err
    assert fakes.green.settings(ID).webhookUrl == ""


async def test_configure_greenapi_unknown_instance(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _green(fakes)
    argv[argv.index(ID)] = "9999999999"
    assert await _configure(argv) == 1
    assert "403" in capsys.readouterr().err


# --- configure evolution -------------------------------------------------------------------------


def _evolution(fakes: Fakes, instance: str, *extra: str) -> list[str]:
    return ["evolution", "--api-url", fakes.url, "--instance", instance, "--apikey-env", "EVO_KEY",
            "--webhook-url", "https://bridge.example/webhooks/evolution", *extra]  # fmt: skip


async def test_configure_evolution_v2(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    argv = _evolution(fakes, EVO, "--webhook-token-env", "HOOK_TOKEN", "--by-events",
                      "--events", "MESSAGES_UPSERT,connection.update")  # fmt: skip
    assert await _configure(argv) == 0
    stored = fakes.evolution.instances[EVO].webhook
    assert stored is not None and stored.enabled
    assert stored.url == "https://bridge.example/webhooks/evolution"
    assert stored.headers == {"authorization": f"Bearer {HOOK_TOKEN}"}
    assert stored.webhookByEvents and not stored.webhookBase64
    assert stored.events == ["MESSAGES_UPSERT", "CONNECTION_UPDATE"]
    out, err = capsys.readouterr()
    shown = json.loads(out[out.index("{") :])
    assert shown["headers"] == {"authorization": "***"} and shown["id"] == stored.id
    assert HOOK_TOKEN not in out + err and EVO_TOKEN not in out + err


async def test_configure_evolution_v1_and_all_events(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVO_KEY", "global-key")
    assert (
        await _configure(_evolution(fakes, "old", "--v1", "--webhook-token-env", "HOOK_TOKEN")) == 0
    )
    stored = fakes.evolution.instances["old"].webhook_v1
    assert stored is not None and stored.url == "https://bridge.example/webhooks/evolution"
    assert (stored.enabled, stored.events, stored.webhook_by_events) == (True, [], False)
    out, err = capsys.readouterr()
    assert '"instanceName": "old"' in out and "sends no custom headers" in err
    assert HOOK_TOKEN not in out + err


@pytest.mark.parametrize(
    ("instance", "extra", "key", "message"),
    [
        (
            EVO,
            ("--v1",),
            None,
            'requires property "webhook" (this looks like Evolution 2.x: drop --v1)',
        ),
        (
            "old",
            (),
            "global-key",
            'requires property "url" (this looks like Evolution 1.x: add --v1)',
        ),
        (EVO, (), "wrong-key", "401 Unauthorized: Unauthorized"),
        ("nobody", (), None, 'The "nobody" instance does not exist'),
        (EVO, ("--events", "NOT_AN_EVENT"), None, "enum values"),
    ],
)
async def test_configure_evolution_errors(
    fakes: Fakes,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    instance: str,
    extra: tuple[str, ...],
    key: str | None,
    message: str,
) -> None:
    if key is not None:
        monkeypatch.setenv("EVO_KEY", key)
    assert await _configure(_evolution(fakes, instance, *extra)) == 1
    err = capsys.readouterr().err
    assert message in err and "wrong-key" not in err
    assert fakes.evolution.instances[EVO].webhook is None


# --- simulate ------------------------------------------------------------------------------------


async def test_simulate_greenapi_sends_samples_byte_for_byte(
    recorder: Recorder, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK", HOOK_TOKEN)
    argv = ["--url", recorder.url + "/", "--provider", "greenapi", "--token-env", "HOOK",
            "--instance", ID, "--concurrency", "4"]  # fmt: skip
    assert await _simulate(argv) == 0
    samples = sample_notifications()
    assert sorted(h[3] for h in recorder.hits) == sorted(samples)
    for path, _query, headers, _body in recorder.hits:
        assert path == f"/webhooks/greenapi/{ID}"
        assert headers["authorization"] == f"Bearer {HOOK_TOKEN}"
        assert headers["content-type"] == "application/json"
    out, err = capsys.readouterr()
    assert out.splitlines()[1].split()[:2] == ["200", str(len(samples))]
    assert "p50 ms" in out and "p99 ms" in out and HOOK_TOKEN not in out + err


async def test_simulate_count_renumbers_copies(recorder: Recorder) -> None:
    assert await _simulate(["--url", recorder.url, "--provider", "greenapi", "--count", "40"]) == 0
    bodies = [h[3] for h in recorder.hits]
    samples = sample_notifications()
    assert len(bodies) == 40 and bodies[: len(samples)] == samples
    with_id = [b for b in bodies if b'"idMessage"' in b]
    assert len(set(with_id)) == len(with_id)  # every copy is a new notification
    assert all(path == "/webhooks/greenapi" for path, *_ in recorder.hits)
    assert all("authorization" not in h[2] for h in recorder.hits)


async def test_simulate_evolution_sets_instance_and_header(recorder: Recorder) -> None:
    argv = ["--url", recorder.url, "--provider", "evolution", "--token", "evo-t", "--instance",
            EVO, "--by-events"]  # fmt: skip
    assert await _simulate(argv) == 0
    files = sorted((SAMPLES / "evolution").glob("*.json"))
    assert len(recorder.hits) == len(files)
    for (path, _query, headers, body), file in zip(recorder.hits, files, strict=True):
        original = json.loads(file.read_bytes())
        sent = json.loads(body)
        assert sent == {**original, "instance": EVO}
        suffix = original["event"].replace(".", "-").lower()
        assert path == f"/webhooks/evolution/{suffix}"
        assert headers["authorization"] == "Bearer evo-t"


async def test_simulate_chatapi_and_custom_samples(recorder: Recorder, tmp_path: Path) -> None:
    assert await _simulate(["--url", recorder.url, "--provider", "chatapi", "--token", "c-t"]) == 0
    files = sorted((SAMPLES / "chatapi").glob("*.json"))
    assert [h[3] for h in recorder.hits] == [f.read_bytes().strip() for f in files]
    assert all(
        h[0] == "/webhooks/chatapi" and h[2]["authorization"] == "Bearer c-t" for h in recorder.hits
    )
    recorder.hits.clear()
    (tmp_path / "a.json").write_bytes(b'{"instanceId": "1", "ack": [{"id": "x"}]}')
    (tmp_path / "b.json").write_bytes(b'{"not": "a chatapi body"}')
    argv = ["--url", recorder.url, "--provider", "chatapi", "--instance", "777", "--samples",
            str(tmp_path), "--count", "3"]  # fmt: skip
    assert await _simulate(argv) == 0
    assert [json.loads(h[3]) for h in recorder.hits] == [
        {"instanceId": "777", "ack": [{"id": "x"}]}
    ] * 3


async def test_simulate_exit_1_when_not_all_200(
    recorder: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    recorder.status = 503
    assert await _simulate(["--url", recorder.url, "--provider", "greenapi", "--count", "5"]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[1].split()[:2] == ["503", "5"]
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
    assert await _simulate(["--url", dead, "--provider", "evolution", "--count", "2"]) == 1
    assert "error" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["--provider", "greenapi", "--token-env", "NOT_SET_ANYWHERE"],
        ["--provider", "greenapi", "--count", "0"],
        ["--provider", "greenapi", "--samples", "/nonexistent"],
        ["--provider", "evolution", "--samples", str(SAMPLES / "chatapi")],
    ],
)
async def test_simulate_usage_errors(recorder: Recorder, argv: list[str]) -> None:
    assert await _simulate(["--url", recorder.url, *argv]) == 2
    assert recorder.hits == []


def test_summary_and_percentiles() -> None:
    results = [simulate.Result("200", s / 1000) for s in range(1, 101)]
    results += [simulate.Result("503", 0.5), simulate.Result("error", 0.01)]
    lines = simulate.summarize(results).splitlines()
    assert lines[1].split() == ["200", "100", "50.0", "99.0"]
    assert lines[2].split() == ["503", "1", "500.0", "500.0"]
    assert lines[3].split()[:2] == ["error", "1"] and lines[4].split() == ["total", "102"]
    assert simulate.percentile([1.0], 0.99) == 1.0
