from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import Secret, dump, load, mask_url
from bridge.errors import ConfigError
from tests.conftest import DEMO_ENV

POLL = """
[[sources]]
provider = "greenapi"
mode = "poll"
instance = "1101000001"
api_url = "https://1101.api.greenapi.com"
token_env = "TOKEN_1"
receive_timeout = 20
"""
ENV = {"TOKEN_1": "s3cr3t-token-value"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    return path


def test_defaults_without_file() -> None:
    settings = load(None, {})
    assert settings.config.amqp.exchange == "notifications"
    assert settings.config.http.listen == "0.0.0.0:8080"
    assert settings.config.sources == ()


def test_design_example_loads(tmp_path: Path) -> None:
    text = (Path(__file__).parents[2] / "bridge.toml").read_text()
    settings = load(
        write(tmp_path, text),
        DEMO_ENV,
    )
    assert settings.config.sources


def test_poll_source_and_secret(tmp_path: Path) -> None:
    settings = load(write(tmp_path, POLL), ENV)
    (source,) = settings.config.sources
    assert source.receive_timeout == 20
    token = settings.token(source)
    assert token.reveal() == "s3cr3t-token-value"
    assert "s3cr3t" not in repr(token) and "s3cr3t" not in str(token)
    assert "s3cr3t" not in repr(settings)


def test_token_file(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-file-token\n")
    text = POLL.replace('token_env = "TOKEN_1"', f'token_file = "{secret}"')
    settings = load(write(tmp_path, text), {})
    assert settings.token(settings.config.sources[0]).reveal() == "from-file-token"


def test_env_overrides(tmp_path: Path) -> None:
    env = {
        **ENV,
        "BRIDGE_AMQP__URL": "amqp://u:p@broker:5672/vh",
        "BRIDGE_AMQP__CONFIRM_TIMEOUT": "2.5",
        "BRIDGE_SOURCES__0__RECEIVE_TIMEOUT": "30",
        "BRIDGE_HTTP__LISTEN": "127.0.0.1:9000",
    }
    cfg = load(write(tmp_path, POLL), env).config
    assert cfg.amqp.url == "amqp://u:p@broker:5672/vh"
    assert cfg.amqp.confirm_timeout == 2.5
    assert cfg.sources[0].receive_timeout == 30
    assert cfg.http.listen == "127.0.0.1:9000"


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        (
            POLL.replace("receive_timeout = 20", "receive_timeout = 61"),
            ENV,
            r"sources\[0\]\.receive_timeout",
        ),
        (
            POLL.replace("receive_timeout = 20", "receive_timeout = 4"),
            ENV,
            r"sources\[0\]\.receive_timeout",
        ),
        (POLL.replace('mode = "poll"', 'mode = "push"'), ENV, r"sources\[0\]\.mode"),
        (POLL + "\ncolour = 1\n", ENV, r"sources\[0\]\.colour: unknown key"),
        ("[amqp]\nexchnage = 'x'\n", {}, r"amqp\.exchnage: unknown key"),
        ("[amqp]\nconfirm_timeout = -1\n", {}, r"amqp\.confirm_timeout"),
        (POLL, {}, r"sources\[0\]\.token_env: environment variable TOKEN_1 is not set"),
        (
            POLL.replace('api_url = "https://1101.api.greenapi.com"\n', ""),
            ENV,
            r"sources\[0\]\.api_url",
        ),
        (
            POLL.replace('api_url = "https://1101', 'api_url = "ftp://1101'),
            ENV,
            r"sources\[0\]\.api_url",
        ),
        (
            POLL.replace('instance = "1101000001"', 'instance = "abc"'),
            ENV,
            r"sources\[0\]\.instance",
        ),
        (
            POLL.replace('instance = "1101000001"', "instance = 1101000001"),
            ENV,
            r"sources\[0\]\.instance",
        ),
        (
            POLL.replace('provider = "greenapi"', 'provider = "evolution"'),
            ENV,
            r"sources\[0\]\.mode",
        ),
        (POLL + POLL, ENV, r"sources\[1\]: duplicate source"),
        (POLL + 'routing_key = "{event}.{nope}"\n', ENV, r"sources\[0\]\.routing_key"),
        (POLL.replace('token_env = "TOKEN_1"', ""), ENV, r"token_env or token_file"),
        ("[[sources]]\nmode = 'poll'\n", ENV, r"sources\[0\]\.provider: required key missing"),
        ("not toml [", {}, "invalid TOML"),
        ("[lease]\ninterval = 2\nsettle = 3\n", {}, r"lease\.settle: must be more than twice"),
        ("[lease]\nheartbeat = 0\n", {}, r"lease\.heartbeat"),
    ],
)
def test_invalid_config_names_the_key(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load(write(tmp_path, text), env)


def test_bad_env_override_names_variable() -> None:
    with pytest.raises(ConfigError, match="BRIDGE_SOURCES__3__API_URL"):
        load(None, {"BRIDGE_SOURCES__3__API_URL": "x"})
    with pytest.raises(ConfigError, match=r"amqp\.confirm_timeout"):
        load(None, {"BRIDGE_AMQP__CONFIRM_TIMEOUT": "soon"})


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load("/nonexistent/bridge.toml", {})


def test_dump_masks_password() -> None:
    settings = load(None, {"BRIDGE_AMQP__URL": "amqp://user:hunter2@host:5672/"})
    assert "hunter2" not in str(dump(settings))
    assert mask_url("amqp://user:pw@h/") == "amqp://user:***@h/"
    assert mask_url("amqp://h/") == "amqp://h/"


def test_secret_equality_and_hash() -> None:
    assert Secret("a") == Secret("a")
    assert hash(Secret("a")) == hash(Secret("a"))


def test_broker_only_tools_need_no_provider_secrets(tmp_path: Path) -> None:
    settings = load(write(tmp_path, POLL), {}, secrets=False)
    assert settings.config.sources[0].instance == "1101000001"
    assert settings.tokens == {}
    with pytest.raises(ConfigError, match="TOKEN_1"):
        load(write(tmp_path, POLL), {})
