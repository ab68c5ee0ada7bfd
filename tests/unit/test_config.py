"""The configuration: the file, `BRIDGE_…` overrides, and the message of every refusal
(secrets and masking: test_config_secrets.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from bridge.config import Config, dump, load
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
WEBHOOK = """
[[sources]]
provider = "evolution"
mode = "webhook"
instance = "demo-bot"
webhook_token_env = "HOOK"
"""
HOOK_ENV = {"HOOK": "hook-token"}


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
        # every refusal of the checks after msgspec, by its whole message
        (
            POLL.replace('instance = "1101000001"', 'instance = " "'),
            ENV,
            r"^sources\[0\]\.instance: must not be empty$",
        ),
        (
            WEBHOOK.replace('instance = "demo-bot"', 'instance = ""'),
            HOOK_ENV,
            r"^sources\[0\]\.instance: must not be empty$",
        ),
        (
            POLL.replace('provider = "greenapi"', 'provider = "chatapi"'),
            ENV,
            r"^sources\[0\]\.mode: 'poll' works only with provider 'greenapi'$",
        ),
        (
            POLL.replace('api_url = "https://1101.api.greenapi.com"', 'api_url = ""'),
            ENV,
            r"^sources\[0\]\.api_url: required for mode 'poll'$",
        ),
        (
            POLL.replace('api_url = "https://1101', 'api_url = "1101'),
            ENV,
            r"^sources\[0\]\.api_url: must be an http\(s\) URL$",
        ),
        (
            POLL.replace('instance = "1101000001"', 'instance = "11010-1"'),
            ENV,
            r"^sources\[0\]\.instance: a GREEN-API idInstance is digits only$",
        ),
        (
            WEBHOOK.replace('"evolution"', '"greenapi"'),
            HOOK_ENV,
            r"^sources\[0\]\.instance: a GREEN-API idInstance is digits only$",
        ),
        (
            POLL + 'token_file = "/run/secrets/token"\n',
            ENV,
            r"^sources\[0\]: set exactly one of token_env or token_file$",
        ),
        (
            POLL + POLL.replace('"1101000001"', '"1101000002"') + POLL,
            ENV,
            r"^sources\[2\]: duplicate source greenapi:1101000001$",
        ),
        (
            WEBHOOK + 'routing_key = "{provider}.{who}.{event}.{what}"\n',
            HOOK_ENV,
            r"^sources\[0\]\.routing_key: unknown placeholder what, who$",
        ),
        *(
            (
                f'[http]\nlisten = "{listen}"\n',
                {},
                rf"^http\.listen: must be HOST:PORT, got '{re.escape(listen)}'$",
            )
            for listen in ("8080", ":8080", "0.0.0.0:", "0.0.0.0:http", "0.0.0.0:65536")
        ),
        (
            '[http]\nallow_ips = ["10.0.0.0/8", "2001:db8::/32", "example.com"]\n',
            {},
            r"^http\.allow_ips\[2\]: not an IP address or network: 'example\.com'$",
        ),
        (
            '[http]\ntrusted_proxies = ["10.0.0.1/33"]\n',
            {},
            r"^http\.trusted_proxies\[0\]: not an IP address or network: '10\.0\.0\.1/33'$",
        ),
        (
            "[lease]\ninterval = 1.5\nsettle = 3\n",
            {},
            r"^lease\.settle: must be more than twice lease\.interval \(3 s\)$",
        ),
        # the refusals msgspec words, with the key path in front
        (
            "[http]\nmax_body_bytes = 10\n",
            {},
            r"^http\.max_body_bytes: Expected `int` >= 1024$",
        ),
        ("amqp = 1\n", {}, r"^amqp: Expected `object`, got `int`$"),
        (
            "[[sources]]\nprovider = 'evolution'\ninstance = 'x'\n",
            {},
            r"^sources\[0\]\.mode: required key missing$",
        ),
        ("colour = 1\n", {}, r"\bcolour\b"),
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


def test_broker_only_tools_need_no_provider_secrets(tmp_path: Path) -> None:
    settings = load(write(tmp_path, POLL), {}, secrets=False)
    assert settings.config.sources[0].instance == "1101000001"
    assert settings.tokens == {}
    with pytest.raises(ConfigError, match="TOKEN_1"):
        load(write(tmp_path, POLL), {})


def test_an_unknown_top_level_key_is_named_like_a_nested_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, "colour = 1\n"), {})
    assert str(caught.value) == "colour: unknown key"


# -- BRIDGE_… environment overrides ---------------------------------------------------------


def _at(config: Config, path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


@pytest.mark.parametrize(
    ("text", "env", "path", "value"),
    [
        # a section absent from the file is created
        ("", {"BRIDGE_LEASE__SETTLE": "9"}, "lease.settle", 9.0),
        # names are case-insensitive below the prefix
        ("", {"BRIDGE_Log__Level": "debug"}, "log.level", "debug"),
        # a key in a section the file has
        ("[amqp]\nexchange = 'a'\n", {"BRIDGE_AMQP__EXCHANGE": "b"}, "amqp.exchange", "b"),
        # a list item's key, by index
        (
            POLL + POLL.replace("1101000001", "1101000002"),
            {"BRIDGE_SOURCES__1__INSTANCE": "1101000003"},
            "sources.1.instance",
            "1101000003",
        ),
        # one item of a list of strings
        (
            "[http]\nallow_ips = ['10.0.0.1']\n",
            {"BRIDGE_HTTP__ALLOW_IPS__0": "192.0.2.0/24"},
            "http.allow_ips.0",
            "192.0.2.0/24",
        ),
        # variables outside the prefix, or without a level, are not overrides
        (
            "",
            {"AMQP__URL": "amqp://other/", "BRIDGE_AMQP": "x", "BRIDGE_TEST_URL": "x"},
            "amqp.url",
            "amqp://guest:guest@127.0.0.1:5672/",
        ),
    ],
)
def test_env_override_sets_the_key(
    tmp_path: Path, text: str, env: dict[str, str], path: str, value: object
) -> None:
    assert _at(load(write(tmp_path, text), {**ENV, **env}).config, path) == value


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("", {"BRIDGE_AMQP____URL": "x"}, r"^BRIDGE_AMQP____URL: empty key segment$"),
        ("", {"BRIDGE_AMQP__URL__": "x"}, r"^BRIDGE_AMQP__URL__: empty key segment$"),
        (
            "",
            {"BRIDGE_SOURCES__0__API_URL": "x"},
            r"^BRIDGE_SOURCES__0__API_URL: no list 'sources' in the config file$",
        ),
        (
            POLL,
            {"BRIDGE_SOURCES__1__API_URL": "x"},
            r"^BRIDGE_SOURCES__1__API_URL: no list item '1'$",
        ),
        (
            POLL,
            {"BRIDGE_SOURCES__FIRST__API_URL": "x"},
            r"^BRIDGE_SOURCES__FIRST__API_URL: no list item 'first'$",
        ),
        (
            "[amqp]\nurl = 'amqp://h/'\n",
            {"BRIDGE_AMQP__URL__HOST": "x"},
            r"^BRIDGE_AMQP__URL__HOST: amqp\.url is not a table$",
        ),
        # a whole list item replaced by a string: msgspec refuses it, by path
        (POLL, {"BRIDGE_SOURCES__0": "x"}, r"^sources\[0\]: Expected `object`, got `str`$"),
        # an override is a string; msgspec converts it where the key's type allows
        ("", {"BRIDGE_AMQP__HEARTBEAT": "often"}, r"^amqp\.heartbeat: Expected `int`, got `str`$"),
    ],
)
def test_bad_env_override_is_refused_by_name(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load(write(tmp_path, text), {**ENV, **env})


# -- a RabbitMQ cluster: amqp.urls ------------------------------------------------------------

NODES = ["amqp://u:p1@rabbit-1:5672/vh", "amqp://u:p2@rabbit-2/vh", "amqps://u:p3@rabbit-3/vh"]


def test_amqp_urls_from_the_file_name_the_nodes_and_url_is_the_first(tmp_path: Path) -> None:
    listed = ", ".join(f'"{url}"' for url in NODES)
    amqp = load(write(tmp_path, f"[amqp]\nurls = [{listed}]\n"), {}).config.amqp
    assert amqp.urls == tuple(NODES)
    assert amqp.nodes == tuple(NODES)
    assert amqp.url == NODES[0]  # for code that knows only `url`


def test_one_url_is_a_cluster_of_one() -> None:
    amqp = load(None, {"BRIDGE_AMQP__URL": "amqp://u:p@broker:5672/"}).config.amqp
    assert amqp.urls == ()
    assert amqp.nodes == ("amqp://u:p@broker:5672/",)


def test_amqp_urls_from_the_environment_are_comma_separated() -> None:
    env = {"BRIDGE_AMQP__URLS": " , ".join(NODES)}
    assert load(None, env).config.amqp.urls == tuple(NODES)


def test_amqp_urls_in_the_environment_replace_the_file_list(tmp_path: Path) -> None:
    path = write(tmp_path, '[amqp]\nurls = ["amqp://old-1/", "amqp://old-2/"]\n')
    env = {"BRIDGE_AMQP__URLS": "amqp://new-1/,amqp://new-2/"}
    assert load(path, env).config.amqp.urls == ("amqp://new-1/", "amqp://new-2/")


@pytest.mark.parametrize(
    ("text", "env"),
    [
        ('[amqp]\nurl = "amqp://a/"\nurls = ["amqp://b/"]\n', {}),
        ('[amqp]\nurls = ["amqp://b/"]\n', {"BRIDGE_AMQP__URL": "amqp://a/"}),
        ('[amqp]\nurl = "amqp://a/"\n', {"BRIDGE_AMQP__URLS": "amqp://b/,amqp://c/"}),
        ("", {"BRIDGE_AMQP__URL": "amqp://a/", "BRIDGE_AMQP__URLS": "amqp://b/"}),
    ],
)
def test_url_and_urls_together_are_refused(tmp_path: Path, text: str, env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"^amqp\.urls: set either amqp\.url .* not both"):
        load(write(tmp_path, text), env)


@pytest.mark.parametrize(
    ("urls", "message"),
    [
        ("", r"^amqp\.urls\[0\]: must be an amqp:// or amqps:// URL with a host$"),
        ("amqp://a/,", r"^amqp\.urls\[1\]: must be an amqp:// or amqps:// URL with a host$"),
        ("amqp://a/,http://b/", r"^amqp\.urls\[1\]: must be an amqp:// or amqps:// URL"),
        ("amqp:///vh", r"^amqp\.urls\[0\]: must be an amqp:// or amqps:// URL with a host$"),
        ("amqp://u:p@a:56x2/", r"^amqp\.urls\[0\]: not a valid URL \(its port is not a number\)$"),
        ("amqp://a/,amqp://u:p@A:5672/", r"^amqp\.urls\[1\]: the same node as amqp\.urls\[0\]$"),
        ("amqps://a/,amqp://a:5671", r"^amqp\.urls\[1\]: the same node as amqp\.urls\[0\]$"),
        (
            "amqp://a/,amqp://b/other",
            r"^amqp\.urls\[1\]: vhost 'other' differs from amqp\.urls\[0\]'s '/'",
        ),
    ],
)
def test_bad_amqp_urls_are_refused_by_index(urls: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load(None, {"BRIDGE_AMQP__URLS": urls})
    assert "p@" not in str(caught.value)  # no password in the message


def test_vhost_spellings_of_one_vhost_agree() -> None:
    urls = "amqp://a,amqp://b/,amqp://c/%2F"
    assert len(load(None, {"BRIDGE_AMQP__URLS": urls}).config.amqp.urls) == 3


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://broker/", r"^amqp\.url: must be an amqp:// or amqps:// URL with a host$"),
        ("amqp://broker:port/", r"^amqp\.url: not a valid URL \(its port is not a number\)$"),
    ],
)
def test_a_bad_amqp_url_is_refused(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(None, {"BRIDGE_AMQP__URL": url})


def test_an_empty_urls_list_in_the_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^amqp\.urls: must list at least one node$"):
        load(write(tmp_path, "[amqp]\nurls = []\n"), {})


def test_urls_of_the_wrong_type_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^amqp\.urls"):
        load(write(tmp_path, "[amqp]\nurls = 5\n"), {})


def test_check_config_shows_the_nodes_masked() -> None:
    data = dump(load(None, {"BRIDGE_AMQP__URLS": ",".join(NODES)}))
    assert data["amqp"]["urls"] == [
        "amqp://u:***@rabbit-1:5672/vh",
        "amqp://u:***@rabbit-2/vh",
        "amqps://u:***@rabbit-3/vh",
    ]
    assert "url" not in data["amqp"]  # the first node, not a key the operator set
    assert not any(f"p{n}@" in str(data) for n in (1, 2, 3))
    one = dump(load(None, {"BRIDGE_AMQP__URL": "amqp://u:pw@h/"}))["amqp"]
    assert (one["url"], one["urls"]) == ("amqp://u:***@h/", [])
