"""The `[monitor]` table and the sources' state-probe keys (`api_url`, `api_key_*`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import MIN_STATE_INTERVAL, Secret, load
from bridge.errors import ConfigError

EVOLUTION = """
[[sources]]
provider = "evolution"
mode = "webhook"
instance = "bot"
webhook_token_env = "HOOK"
api_url = "http://evo:8080"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    monitor = load(None, {}).config.monitor
    assert monitor.enabled is True
    assert monitor.state_interval == 300.0
    assert monitor.state_timeout == 10.0
    assert monitor.silent_after == 3600.0
    assert MIN_STATE_INTERVAL == 1.0


def test_monitor_keys_from_file_and_env(tmp_path: Path) -> None:
    path = write(tmp_path, "[monitor]\nstate_interval = 60\nsilent_after = 900\n")
    settings = load(
        path, {"BRIDGE_MONITOR__ENABLED": "false", "BRIDGE_MONITOR__STATE_TIMEOUT": "3"}
    )
    monitor = settings.config.monitor
    assert (monitor.enabled, monitor.state_interval, monitor.state_timeout) == (False, 60, 3)
    assert monitor.silent_after == 900


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[monitor]\nstate_interval = 0.5", "monitor.state_interval: Expected `float` >= 1.0"),
        ("[monitor]\nsilent_after = 0", "monitor.silent_after: Expected `float` > 0"),
        ("[monitor]\nstate_timeout = -1", "monitor.state_timeout: Expected `float` > 0"),
        ("[monitor]\nintervall = 5", "monitor.intervall: unknown key"),
    ],
)
def test_bad_monitor_keys_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text), {})
    assert str(info.value).startswith(message)


def test_api_key_from_env_or_file(tmp_path: Path) -> None:
    key_file = tmp_path / "evo.key"
    key_file.write_text("from-a-file\n")
    env = {"HOOK": "hook-token", "EVO_KEY": "from-the-env"}
    settings = load(write(tmp_path, EVOLUTION + 'api_key_env = "EVO_KEY"\n'), env)
    assert settings.api_keys == {"evolution:bot": Secret("from-the-env")}
    assert "from-the-env" not in repr(settings)
    settings = load(write(tmp_path, EVOLUTION + f'api_key_file = "{key_file}"\n'), env)
    assert settings.api_keys == {"evolution:bot": Secret("from-a-file")}
    assert load(write(tmp_path, EVOLUTION), env).api_keys == {}


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [
        ('api_key_env = "EVO_KEY"\n', {}, "sources[0].api_key_env: environment variable EVO_KEY"),
        (
            'api_key_env = "EVO_KEY"\napi_key_file = "/x"\n',
            {"EVO_KEY": "k"},
            "sources[0]: set one of api_key_env or api_key_file",
        ),
        ('api_key_file = "/nonexistent/key"\n', {}, "sources[0].api_key_file: cannot read"),
    ],
)
def test_bad_api_keys_are_named(
    tmp_path: Path, extra: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, EVOLUTION + extra), {"HOOK": "hook-token", **env})
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("provider", ["greenapi", "chatapi"])
def test_only_providers_with_a_keyed_state_api_take_an_api_key(
    tmp_path: Path, provider: str
) -> None:
    instance = "1101000001" if provider == "greenapi" else "123"
    text = f"""
[[sources]]
provider = "{provider}"
mode = "webhook"
instance = "{instance}"
webhook_token_env = "HOOK"
api_key_env = "KEY"
"""
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text), {"HOOK": "h", "KEY": "k"})
    assert str(info.value) == "sources[0].api_key_env: only evolution and waha take an API key"


def test_a_webhook_source_api_url_must_be_http(tmp_path: Path) -> None:
    text = EVOLUTION.replace("http://evo:8080", "ftp://evo")
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text), {"HOOK": "hook-token"})
    assert str(info.value) == "sources[0].api_url: must be an http(s) URL"
