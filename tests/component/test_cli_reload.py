"""`bridge reload` and `bridge run --pid-file`: the pid file, the refusals that signal nothing,
the key a refused reload names, and the systemd unit's reload."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
from pathlib import Path

import pytest

from bridge import cli
from tests.support.harness import wait_until

REPO = Path(__file__).parents[2]


@pytest.mark.parametrize(
    ("message", "key"),
    [
        ("sources[0].receive_timeout: Expected `int` <= 60", "sources[0].receive_timeout"),
        ("sources[2].token_env: environment variable X is not set", "sources[2].token_env"),
        ("amqp.confirm_timeout: Expected `float` > 0", "amqp.confirm_timeout"),
        ("sources[1]: duplicate source greenapi:1", "sources[1]"),
        ("config file not found: /etc/bridge/bridge.toml", None),
        ("/etc/b.toml: invalid TOML: Cannot overwrite a value", None),
    ],
)
def test_a_refused_reload_names_the_key(message: str, key: str | None) -> None:
    assert cli._config_key(message) == key


def test_the_pid_file_names_this_process_and_is_removed_only_by_it(tmp_path: Path) -> None:
    path = tmp_path / "bridge.pid"
    cli._write_pid(path)
    assert path.read_text() == f"{os.getpid()}\n"
    assert list(tmp_path.iterdir()) == [path]  # written whole, no partial file left
    cli._remove_pid(path)
    assert not path.exists()
    path.write_text("1\n")  # another process's file
    cli._remove_pid(path)
    assert path.exists()


def test_run_takes_a_pid_file() -> None:
    args = cli._parser().parse_args(["run", "--pid-file", "/run/bridge/bridge.pid"])
    assert args.pid_file == Path("/run/bridge/bridge.pid")


def test_reload_without_a_readable_pid_file_signals_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["reload", "--pid-file", str(tmp_path / "missing.pid")]) == 1
    (tmp_path / "bad.pid").write_text("not a pid\n")
    assert cli.main(["reload", "--pid-file", str(tmp_path / "bad.pid")]) == 1
    assert "cannot read a process id" in capsys.readouterr().err


def test_reload_refuses_a_pid_that_is_gone_or_no_bridge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bridge.pid"
    gone = subprocess.Popen(["true"])
    gone.wait()
    path.write_text(f"{gone.pid}\n")
    assert cli.main(["reload", "--pid-file", str(path)]) == 1
    other = subprocess.Popen(["sleep", "30"])  # SIGHUP would end it
    try:
        path.write_text(f"{other.pid}\n")
        assert cli.main(["reload", "--pid-file", str(path)]) == 1
        assert "is no bridge" in capsys.readouterr().err
        assert other.poll() is None, "a process that is no bridge got the signal"
    finally:
        other.kill()
        other.wait()


def test_reload_checks_the_config_first(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "bridge.pid").write_text(f"{other.pid}\n")
        (tmp_path / "bridge.toml").write_text("[http]\nlisten = 'nowhere'\n")
        argv = ["reload", "--pid-file", str(tmp_path / "bridge.pid")]
        assert cli.main([*argv, "--config", str(tmp_path / "bridge.toml")]) == cli.EXIT_CONFIG
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_the_systemd_unit_reloads_with_sighup() -> None:
    unit = (REPO / "deploy" / "systemd" / "bridge.service").read_text()
    assert "\nExecReload=/bin/kill -HUP $MAINPID\n" in unit


class StubService:
    def __init__(self) -> None:
        self.loaded: list[object] = []

    async def reload(self, loaded: object) -> None:
        self.loaded.append(loaded)


async def test_a_sighup_before_the_service_is_there_reloads_once_it_is(tmp_path: Path) -> None:
    """`bridge run` takes SIGHUP from its first line: one that comes while it starts is kept
    and applied once the service runs (the default action would end the process)."""
    path = tmp_path / "bridge.toml"
    path.write_text("[http]\nretry_after = 9\n")
    hangup = cli._Hangup(argparse.Namespace(log_level="info"), str(path))
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        service = StubService()
        hangup.install(service, cli.logs.Redactor())  # type: ignore[arg-type]
        await wait_until(lambda: len(service.loaded) == 1)
        os.kill(os.getpid(), signal.SIGHUP)  # from now on each one reloads
        await wait_until(lambda: len(service.loaded) == 2)
    finally:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
