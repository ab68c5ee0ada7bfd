"""What a reload changes (pure): the running settings against the file read again.

`SIGHUP` makes `bridge run` read its file (and the secrets it names) again; `diff()` says what
of it takes effect:

* sources: by name (`provider:instance`), added, removed, or changed (the source's table or
  one of its secrets differs); each polling source whose poller must restart (a changed table
  or token, or any change of a live `[poll]` key) is in `stop` and `start`;
* keys that only take effect at start (all but `LIVE_KEYS`) keep their running value and are
  named in `restart`, for a "needs a restart" warning;
* a source whose own `exchange` was not declared at start is held at its running form (not
  added, if it is new): the publisher declares exchanges only when it connects.

`Change.settings` is what the service runs from then on (and the next reload is compared with).
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from typing import Any

import msgspec

from bridge.config import Secret, Settings, Source

#: What a reload changes in a running process: a section name (every key of it, but those in
#: `RESTART_KEYS`) or `section.key`. Every other key is read once, at start.
LIVE_KEYS = frozenset(
    {
        "poll",  # each poller takes the section when it starts: every poller restarts
        "monitor",  # the monitor restarts with the new sources and settings
        "http.max_body_bytes",  # the webhook app's limits and rules, swapped whole
        "http.body_timeout",
        "http.retry_after",
        "http.allow_ips",
        "http.trusted_proxies",
        "log.level",
    }
)
#: Keys of a live section that still need a restart.
RESTART_KEYS = frozenset({"poll.max_connections"})  # the one pool every poller shares
_SECRETS = ("tokens", "webhook_tokens", "hmac_keys", "verify_tokens", "api_keys")


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """What one reload does."""

    settings: Settings  # the settings to run with from now on
    added: tuple[str, ...] = ()  # source names, in the file's order
    removed: tuple[str, ...] = ()  # in the running order
    changed: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()  # keys whose new value needs a restart (kept as running)
    stop: tuple[str, ...] = ()  # running pollers to stop (removed, or restarting)
    start: tuple[Source, ...] = ()  # pollers to start (added, or restarting)
    monitor: bool = False  # the monitor restarts (its sources or its section changed)


def needs_restart(key: str) -> bool:
    """Whether `section.key` takes effect only at start: every key not known to be live
    (`amqp`, `lease`, `http.listen`, …, and any section added later)."""
    live = key in LIVE_KEYS or key.partition(".")[0] in LIVE_KEYS
    return key in RESTART_KEYS or not live


def diff(running: Settings, loaded: Settings, *, exchanges: Set[str] = frozenset()) -> Change:
    """The change from `running` to `loaded`; `exchanges`: the sources' own exchanges the
    publisher declared at start."""
    restart: list[str] = []
    sections = {
        field.name: _section(
            field.name,
            getattr(running.config, field.name),
            getattr(loaded.config, field.name),
            restart,
        )
        for field in msgspec.structs.fields(loaded.config)
        if field.name != "sources"
    }
    sources, secrets = _sources(running, loaded, exchanges, restart)
    effective = Settings(
        config=msgspec.structs.replace(loaded.config, sources=sources, **sections),
        **secrets,
    )
    old = {s.name: s for s in running.config.sources}
    new = {s.name: s for s in sources}
    changed = tuple(
        n for n in new if n in old and _identity(running, old[n]) != _identity(effective, new[n])
    )
    stop, start = _pollers(running, effective)
    added = tuple(n for n in new if n not in old)
    removed = tuple(n for n in old if n not in new)
    return Change(
        settings=effective,
        added=added,
        removed=removed,
        changed=changed,
        restart=tuple(restart),
        stop=stop,
        start=start,
        monitor=bool(added or removed or changed)
        or running.config.monitor != effective.config.monitor,
    )


def _section(name: str, running: Any, loaded: Any, restart: list[str]) -> Any:
    """`loaded`'s section with its restart-only keys at their running values."""
    kept: dict[str, Any] = {}
    for field in msgspec.structs.fields(loaded):
        key = f"{name}.{field.name}"
        before, after = getattr(running, field.name), getattr(loaded, field.name)
        if before != after and needs_restart(key):
            restart.append(key)
            kept[field.name] = before
    return msgspec.structs.replace(loaded, **kept)


def _sources(
    running: Settings, loaded: Settings, exchanges: Set[str], restart: list[str]
) -> tuple[tuple[Source, ...], dict[str, dict[str, Secret]]]:
    """The sources to run, and their secrets: `loaded`'s, except those naming an exchange
    not declared at start, which stay as they run (or are not added)."""
    old = {s.name: s for s in running.config.sources}
    sources: list[Source] = []
    secrets: dict[str, dict[str, Secret]] = {kind: {} for kind in _SECRETS}
    for i, source in enumerate(loaded.config.sources):
        chosen, origin = source, loaded
        if source.exchange is not None and source.exchange not in exchanges:
            restart.append(f"sources[{i}].exchange")
            if source.name not in old:
                continue
            chosen, origin = old[source.name], running
        sources.append(chosen)
        for kind in _SECRETS:
            value = _secrets(origin, kind).get(chosen.name)
            if value is not None:
                secrets[kind][chosen.name] = value
    return tuple(sources), secrets


def _secrets(settings: Settings, kind: str) -> Mapping[str, Secret]:
    found: Mapping[str, Secret] = getattr(settings, kind)
    return found


def _identity(settings: Settings, source: Source) -> tuple[object, ...]:
    """A source as it runs: its table and its secrets."""
    return (source, *(_secrets(settings, kind).get(source.name) for kind in _SECRETS))


def _pollers(running: Settings, effective: Settings) -> tuple[tuple[str, ...], tuple[Source, ...]]:
    """Which running pollers stop, which start (a restart is both)."""
    before = _polled(running)
    after = _polled(effective)
    every = running.config.poll != effective.config.poll  # each poller takes [poll] at start
    stop = tuple(n for n in before if every or after.get(n) != before[n])
    start = tuple(s for n, (s, token) in after.items() if every or before.get(n) != (s, token))
    return stop, start


def _polled(settings: Settings) -> dict[str, tuple[Source, Secret | None]]:
    polled = (s for s in settings.config.sources if s.mode == "poll")
    return {s.name: (s, settings.tokens.get(s.name)) for s in polled}


def summary(change: Change) -> dict[str, int]:
    """The counts `config.reloaded` logs."""
    return {
        "added": len(change.added),
        "removed": len(change.removed),
        "changed": len(change.changed),
        "restart_needed": len(change.restart),
    }


__all__ = ["LIVE_KEYS", "RESTART_KEYS", "Change", "diff", "needs_restart", "summary"]
