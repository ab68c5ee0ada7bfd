"""What a reload changes (`bridge.reload.diff`): sources added, removed, changed; pollers to
restart; keys that need a restart kept at their running values; undeclared exchanges held."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from bridge.config import Config, Settings, load
from bridge.reload import LIVE_KEYS, diff, needs_restart, summary

Make = Callable[[str], Settings]
ENV = {
    "T1": "token-one-aaaa",
    "T2": "token-two-bbbb",
    "T2B": "token-two-rotated",
    "H1": "hook-one-aaaa",
    "H1B": "hook-one-rotated",
}


def poll(instance: str, token: str = "T1", extra: str = "") -> str:
    return f"""
[[sources]]
provider = "greenapi"
mode = "poll"
instance = "{instance}"
api_url = "http://127.0.0.1:9"
token_env = "{token}"
{extra}
"""


def hook(instance: str, token: str = "H1", extra: str = "") -> str:
    return f"""
[[sources]]
provider = "evolution"
mode = "webhook"
instance = "{instance}"
webhook_token_env = "{token}"
{extra}
"""


@pytest.fixture
def settings(tmp_path: Path) -> Make:
    counter = iter(range(1000))

    def make(text: str) -> Settings:
        path = tmp_path / f"bridge-{next(counter)}.toml"
        path.write_text(text)
        return load(path, ENV)

    return make


def test_the_same_file_changes_nothing(settings: Make) -> None:
    text = poll("1101000001") + hook("bot")
    change = diff(settings(text), settings(text))
    assert (change.added, change.removed, change.changed, change.restart) == ((), (), (), ())
    assert (change.stop, change.start, change.monitor) == ((), (), False)
    assert summary(change) == {"added": 0, "removed": 0, "changed": 0, "restart_needed": 0}


def test_added_removed_and_changed_sources_by_name(settings: Make) -> None:
    running = settings(poll("1101000001") + poll("1101000002", "T2") + hook("bot") + hook("old"))
    loaded = settings(
        poll("1101000002", "T2B")  # token rotated: changed, its poller restarts
        + poll("1101000003")  # added
        + hook("bot", "H1B")  # webhook token rotated: changed, no poller involved
        + hook("new")  # added
    )
    change = diff(running, loaded)
    assert change.added == ("greenapi:1101000003", "evolution:new")
    assert change.removed == ("greenapi:1101000001", "evolution:old")
    assert change.changed == ("greenapi:1101000002", "evolution:bot")
    assert change.stop == ("greenapi:1101000001", "greenapi:1101000002")
    assert [s.name for s in change.start] == ["greenapi:1101000002", "greenapi:1101000003"]
    assert change.settings.tokens["greenapi:1101000002"].reveal() == ENV["T2B"]
    assert change.settings.webhook_tokens["evolution:bot"].reveal() == ENV["H1B"]
    assert "evolution:old" not in change.settings.webhook_tokens
    assert summary(change) == {"added": 2, "removed": 2, "changed": 2, "restart_needed": 0}
    assert change.monitor  # it probes the sources


def test_a_changed_table_restarts_its_poller_only(settings: Make) -> None:
    running = settings(poll("1101000001") + poll("1101000002", "T2"))
    loaded = settings(poll("1101000001", extra="receive_timeout = 7") + poll("1101000002", "T2"))
    change = diff(running, loaded)
    assert change.changed == ("greenapi:1101000001",)
    assert change.stop == ("greenapi:1101000001",)
    assert [s.receive_timeout for s in change.start] == [7]


def test_a_source_moving_to_webhook_stops_its_poller(settings: Make) -> None:
    running = settings(poll("1101000001"))
    loaded = settings(
        '[[sources]]\nprovider = "greenapi"\nmode = "webhook"\ninstance = "1101000001"\n'
        'webhook_token_env = "H1"\n'
    )
    change = diff(running, loaded)
    assert change.changed == ("greenapi:1101000001",)
    assert (change.stop, change.start) == (("greenapi:1101000001",), ())


def test_a_live_poll_key_restarts_every_poller(settings: Make) -> None:
    sources = poll("1101000001") + poll("1101000002", "T2") + hook("bot")
    change = diff(settings(sources), settings("[poll]\nbackoff_max = 3\n" + sources))
    assert change.changed == ()
    assert change.stop == ("greenapi:1101000001", "greenapi:1101000002")
    assert len(change.start) == 2
    assert change.settings.config.poll.backoff_max == 3
    assert change.restart == ()


@pytest.mark.parametrize(
    ("table", "key", "value"),
    [
        ("amqp", "url", '"amqp://guest:guest@127.0.0.1:5999/"'),
        ("amqp", "confirm_timeout", "3"),
        ("http", "listen", '"127.0.0.1:9999"'),
        ("http", "header_timeout", "3"),
        ("http", "keepalive_timeout", "3"),
        ("http", "drain_timeout", "3"),
        ("poll", "max_connections", "7"),
        ("lease", "interval", "0.5"),
        ("lease", "enabled", "false"),
        ("log", "format", '"json"'),
    ],
)
def test_restart_keys_keep_their_running_value(
    settings: Make, table: str, key: str, value: str
) -> None:
    running = settings(poll("1101000001"))
    loaded = settings(f"[{table}]\n{key} = {value}\n" + poll("1101000001"))
    change = diff(running, loaded)
    assert change.restart == (f"{table}.{key}",)
    assert getattr(getattr(change.settings.config, table), key) == getattr(
        getattr(running.config, table), key
    )
    assert (change.stop, change.start) == ((), ())  # nothing else changed


@pytest.mark.parametrize(
    ("table", "key", "value", "expected"),
    [
        ("http", "max_body_bytes", "4096", 4096),
        ("http", "body_timeout", "3", 3),
        ("http", "retry_after", "9", 9),
        ("http", "allow_ips", '["10.0.0.0/8"]', ("10.0.0.0/8",)),
        ("http", "trusted_proxies", '["10.0.0.1"]', ("10.0.0.1",)),
        ("log", "level", '"debug"', "debug"),
        ("monitor", "state_interval", "60", 60),
        ("monitor", "enabled", "false", False),
    ],
)
def test_live_keys_take_their_new_value(
    settings: Make, table: str, key: str, value: str, expected: object
) -> None:
    change = diff(settings(hook("bot")), settings(f"[{table}]\n{key} = {value}\n" + hook("bot")))
    assert change.restart == ()
    assert getattr(getattr(change.settings.config, table), key) == expected
    assert change.monitor == (table == "monitor")


def test_a_source_naming_an_undeclared_exchange_is_held(settings: Make) -> None:
    running = settings(hook("bot") + hook("other", extra='exchange = "declared"'))
    loaded = settings(
        hook("bot", extra='exchange = "elsewhere"')  # changed to an undeclared one: kept
        + hook("other", extra='exchange = "declared"')
        + hook("new", "H1B", extra='exchange = "elsewhere"')  # added with one: not added
        + hook("fine", extra='exchange = "declared"')
    )
    change = diff(running, loaded, exchanges={"declared"})
    assert change.restart == ("sources[0].exchange", "sources[2].exchange")
    assert [s.name for s in change.settings.config.sources] == [
        "evolution:bot",
        "evolution:other",
        "evolution:fine",
    ]
    assert change.settings.config.sources[0].exchange is None
    assert change.added == ("evolution:fine",)
    assert change.changed == ()
    assert "evolution:new" not in change.settings.webhook_tokens


def test_every_key_not_known_live_needs_a_restart() -> None:
    assert needs_restart("amqp.exchange")
    assert needs_restart("http.listen")
    assert needs_restart("poll.max_connections")
    assert needs_restart("archive.enabled")  # a section this module does not know
    assert not needs_restart("http.allow_ips")
    assert not needs_restart("poll.backoff_max")
    sections = {f.name for f in msgspec.structs.fields(Config)}
    assert all(key.partition(".")[0] in sections for key in LIVE_KEYS)
