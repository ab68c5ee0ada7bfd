"""Secrets: resolved from the environment or a file, refused by key, never shown; what
`check-config` and the logs may show."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import Secret, dump, load, mask_url
from bridge.errors import ConfigError
from tests.unit.test_config import ENV, HOOK_ENV, POLL, WEBHOOK, write


def _poll_with(token_line: str) -> str:
    return POLL.replace('token_env = "TOKEN_1"', token_line)


@pytest.mark.parametrize(
    ("text", "env", "files", "message"),
    [
        (
            POLL,
            {"TOKEN_1": ""},
            {},
            r"^sources\[0\]\.token_env: environment variable TOKEN_1 is not set$",
        ),
        (
            _poll_with('token_file = "{dir}/absent"'),
            {},
            {},
            r"^sources\[0\]\.token_file: cannot read .*/absent: No such file or directory$",
        ),
        (
            _poll_with('token_file = "{dir}"'),
            {},
            {},
            r"^sources\[0\]\.token_file: cannot read .*: Is a directory$",
        ),
        (
            _poll_with('token_file = "{dir}/token"'),
            {},
            {"token": " \n"},
            r"^sources\[0\]\.token_file: .*/token is empty$",
        ),
        (
            POLL,
            {"TOKEN_1": "to/ken"},
            {},
            r"^sources\[0\]\.token: the token has characters a URL path cannot carry$",
        ),
        (
            WEBHOOK,
            {},
            {},
            r"^sources\[0\]\.webhook_token_env: environment variable HOOK is not set$",
        ),
        (
            WEBHOOK.replace('webhook_token_env = "HOOK"', 'webhook_token_file = "{dir}/hook"'),
            {},
            {"hook": ""},
            r"^sources\[0\]\.webhook_token_file: .*/hook is empty$",
        ),
    ],
)
def test_a_secret_that_cannot_be_had_is_refused_by_key(
    tmp_path: Path, text: str, env: dict[str, str], files: dict[str, str], message: str
) -> None:
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    with pytest.raises(ConfigError, match=message):
        load(write(tmp_path, text.replace("{dir}", str(tmp_path))), env)


def test_secrets_are_resolved_per_source_by_kind(tmp_path: Path) -> None:
    (tmp_path / "hook").write_text("hook/token with spaces\n")
    text = (
        POLL
        + WEBHOOK
        + WEBHOOK.replace('"demo-bot"', '"other-bot"').replace(
            'webhook_token_env = "HOOK"', f'webhook_token_file = "{tmp_path}/hook"'
        )
        + WEBHOOK.replace('"demo-bot"', '"open-bot"').replace('webhook_token_env = "HOOK"\n', "")
    )
    settings = load(write(tmp_path, text), {**ENV, **HOOK_ENV})
    assert settings.tokens == {"greenapi:1101000001": Secret("s3cr3t-token-value")}
    # a webhook token is compared, never put in a URL: any characters do
    assert settings.webhook_tokens == {
        "evolution:demo-bot": Secret("hook-token"),
        "evolution:other-bot": Secret("hook/token with spaces"),
    }


def test_a_secret_shows_only_to_reveal() -> None:
    secret = Secret("hunter2")
    assert secret.reveal() == "hunter2"
    assert repr(secret) == str(secret) == f"{secret}" == "Secret('***')"
    assert secret != "hunter2" and secret != Secret("hunter3")
    assert {Secret("a"), Secret("a"), Secret("b")} == {Secret("a"), Secret("b")}


def test_dump_masks_password() -> None:
    settings = load(None, {"BRIDGE_AMQP__URL": "amqp://user:hunter2@host:5672/"})
    assert "hunter2" not in str(dump(settings))
    assert mask_url("amqp://user:pw@h/") == "amqp://user:***@h/"
    assert mask_url("amqp://h/") == "amqp://h/"


def test_secret_equality_and_hash() -> None:
    assert Secret("a") == Secret("a")
    assert hash(Secret("a")) == hash(Secret("a"))


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://user:pw@h/", "amqp://user:***@h/"),
        ("amqp://user:pw@broker:5672/vh", "amqp://user:***@broker:5672/vh"),
        (
            "amqps://user:p%40ss@broker.example:5671/%2F?heartbeat=5",
            "amqps://user:***@broker.example:5671/%2F?heartbeat=5",
        ),
        ("amqp://:pw@h/", "amqp://:***@h/"),
        ("amqp://user@h:5672/", "amqp://user@h:5672/"),
        ("amqp://h/", "amqp://h/"),
    ],
)
def test_mask_url_hides_only_the_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_dump_is_the_effective_config_as_data_password_masked(tmp_path: Path) -> None:
    env = {**ENV, "BRIDGE_AMQP__URL": "amqp://u:hunter2@broker:5672/", "BRIDGE_LOG__LEVEL": "debug"}
    settings = load(write(tmp_path, POLL), env)
    data = dump(settings)
    assert data["amqp"]["url"] == "amqp://u:***@broker:5672/"
    assert data["log"] == {"level": "debug", "format": "auto"}
    assert data["sources"][0]["token_env"] == "TOKEN_1"
    assert data["sources"][0]["instance"] == "1101000001"
    assert "s3cr3t" not in str(data) and "hunter2" not in str(data)
    assert settings.config.amqp.url == "amqp://u:hunter2@broker:5672/"  # dump copies


def test_settings_token_is_the_sources_api_token(tmp_path: Path) -> None:
    settings = load(write(tmp_path, POLL + POLL.replace("1101000001", "1101000002")), ENV)
    first, second = settings.config.sources
    assert settings.token(first) == settings.token(second) == Secret("s3cr3t-token-value")
