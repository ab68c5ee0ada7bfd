"""The frozen configuration: one TOML file, `BRIDGE_…` environment overrides, secrets resolved.

This is the only module that reads the environment. `load()` fails fast with a `ConfigError`
naming the key path (`sources[0].receive_timeout: …`) or the missing secret variable.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec
from msgspec import Meta, Struct

from bridge.errors import ConfigError
from bridge.probes import PROBES
from bridge.providers import REGISTRY

ENV_PREFIX = "BRIDGE_"
Mode = Literal["poll", "webhook"]
PositiveFloat = Annotated[float, Meta(gt=0)]


class Secret:
    """A credential: its value never appears in `repr`, `str`, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class AmqpConfig(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    url: str = "amqp://guest:guest@127.0.0.1:5672/"
    exchange: str = "notifications"
    unrouted_exchange: str = "notifications.unrouted"
    invalid_exchange: str = "notifications.invalid"
    confirm_timeout: PositiveFloat = 10.0
    connect_timeout: PositiveFloat = 10.0
    heartbeat: Annotated[int, Meta(ge=0, le=600)] = 30
    dedup_size: Annotated[int, Meta(ge=0)] = 100_000
    cloudevents: bool = False  # also the CloudEvents RabbitMQ binding's ce- headers


class HttpConfig(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The webhook server (also /healthz, /readyz, /metrics)."""

    listen: str = "0.0.0.0:8080"
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 32 * 1024 * 1024
    header_timeout: PositiveFloat = 10.0
    body_timeout: PositiveFloat = 30.0
    keepalive_timeout: PositiveFloat = 75.0
    retry_after: Annotated[int, Meta(ge=1, le=3600)] = 5
    drain_timeout: PositiveFloat = 15.0
    allow_ips: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()


class PollConfig(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Retry policy and HTTP client for every polling source."""

    backoff_initial: PositiveFloat = 0.5
    backoff_max: PositiveFloat = 30.0
    long_backoff: PositiveFloat = 300.0
    timeout_margin: PositiveFloat = 10.0
    delete_timeout: PositiveFloat = 30.0
    max_connections: Annotated[int, Meta(ge=1)] = 2000
    delete_attempts: Annotated[int, Meta(ge=1)] = 10


class LeaseConfig(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Per-instance polling leases: several processes share the polling sources."""

    enabled: bool = True
    interval: PositiveFloat = 1.0  # membership beat and lease check period
    settle: PositiveFloat = 3.0  # a new holder's wait before its first receive
    heartbeat: Annotated[int, Meta(ge=1, le=600)] = 5  # AMQP heartbeat of the lease connection
    exchange: str = "bridge.members"


#: RabbitMQ's retention age for a stream: a positive integer and one unit, Y M D h m s.
MAX_AGE = re.compile(r"[1-9][0-9]*[YMDhms]")


class ArchiveConfig(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`notifications.archive`: a stream holding every notification the bridge publishes."""

    enabled: bool = True
    stream: str | None = None  # default: "<amqp.exchange>.archive"
    ingest_suffix: str = ".ingest"  # the fanout before each topic exchange: "<exchange>.ingest"
    max_age: str = "7D"
    max_length_bytes: Annotated[int, Meta(ge=1)] = 10_000_000_000
    max_segment_size_bytes: Annotated[int, Meta(ge=1, le=3_000_000_000)] = 100_000_000

    def stream_for(self, amqp: AmqpConfig) -> str:
        return self.stream or f"{amqp.exchange}.archive"

    def ingest_for(self, exchange: str) -> str:
        return f"{exchange}{self.ingest_suffix}"


#: The shortest `monitor.state_interval`: one state call a second per instance, GREEN-API's
#: documented limit for `getStateInstance` (Evolution and WAHA are self-hosted, unlimited).
MIN_STATE_INTERVAL = 1.0


class MonitorConfig(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Silent-instance detection: the instance state probes and the silence threshold."""

    enabled: bool = True
    state_interval: Annotated[float, Meta(ge=MIN_STATE_INTERVAL)] = 300.0
    state_timeout: PositiveFloat = 10.0  # one state call's answer wait
    silent_after: PositiveFloat = 3600.0  # exported for BridgeInstanceSilent


class LogConfig(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "text"] = "auto"


class Source(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    provider: str  # a name in bridge.providers.REGISTRY
    mode: Mode
    instance: str
    api_url: str | None = None
    token_env: str | None = None
    token_file: str | None = None
    receive_timeout: Annotated[int, Meta(ge=5, le=60)] = 20
    webhook_token_env: str | None = None
    webhook_token_file: str | None = None
    webhook_header: str = "authorization"
    hmac_key_env: str | None = None  # the key the provider signs its webhooks with (WAHA)
    hmac_key_file: str | None = None
    app_secret_env: str | None = None  # Meta: the app secret that signs X-Hub-Signature-256
    app_secret_file: str | None = None
    verify_token_env: str | None = None  # Meta: answered on GET hub.challenge
    verify_token_file: str | None = None
    api_key_env: str | None = None  # Evolution `apikey`, WAHA `X-Api-Key`: the state probe
    api_key_file: str | None = None
    routing_key: str = "{event}"
    exchange: str | None = None

    @property
    def name(self) -> str:
        return f"{self.provider}:{self.instance}"


class Config(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    amqp: AmqpConfig = AmqpConfig()
    http: HttpConfig = HttpConfig()
    poll: PollConfig = PollConfig()
    lease: LeaseConfig = LeaseConfig()
    monitor: MonitorConfig = MonitorConfig()
    log: LogConfig = LogConfig()
    archive: ArchiveConfig = ArchiveConfig()
    sources: tuple[Source, ...] = ()


class Settings(Struct, frozen=True, kw_only=True):
    """The validated config plus the secrets it names, resolved once."""

    config: Config
    tokens: Mapping[str, Secret]  # source name -> API token (polling)
    webhook_tokens: Mapping[str, Secret]  # source name -> webhook token
    hmac_keys: Mapping[str, Secret] = msgspec.field(default_factory=dict)  # -> signing key
    verify_tokens: Mapping[str, Secret] = msgspec.field(default_factory=dict)  # -> Meta's
    api_keys: Mapping[str, Secret] = msgspec.field(default_factory=dict)  # -> state probe key

    def token(self, source: Source) -> Secret:
        return self.tokens[source.name]


_URL_SAFE = re.compile(r"[A-Za-z0-9._~-]+")
#: Signing keys that ship in providers' examples and defaults: anyone can forge with them.
WELL_KNOWN_KEYS = frozenset({"secret", "evolution", "changeme", "my-secret-key", "hmac", "key"})
_GUARDED = frozenset({"hmac_key", "app_secret", "verify_token"})
_TEMPLATE_FIELDS = frozenset({"provider", "instance", "event"})


def load(
    path: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None = None,
    *,
    secrets: bool = True,
) -> Settings:
    """Read the TOML file (if any), apply `BRIDGE_…` overrides, validate, resolve secrets.

    `secrets=False` skips resolving the sources' tokens: for tools that only talk to the
    broker (`bridge queues`, `bridge tail`) and should not need the providers' secrets.
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    apply_env_overrides(raw, env)
    try:
        config = msgspec.convert(raw, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    _check(config)
    _check_http(config.http)
    _check_lease(config.lease)
    _check_archive(config.archive)
    if not secrets:
        return Settings(config=config, tokens={}, webhook_tokens={})
    return Settings(
        config=config,
        tokens=_resolve(config, env, "token"),
        webhook_tokens=_resolve(config, env, "webhook_token"),
        hmac_keys={
            **_resolve(config, env, "hmac_key"),
            **_resolve(config, env, "app_secret"),
        },
        verify_tokens=_resolve(config, env, "verify_token"),
        api_keys=_resolve(config, env, "api_key"),
    )


def apply_env_overrides(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    """Apply `BRIDGE_…` variables: `BRIDGE_AMQP__URL` sets `amqp.url`,
    `BRIDGE_SOURCES__0__API_URL` sets `sources[0].api_url`."""
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if any(not p for p in parts):
            raise ConfigError(f"{name}: empty key segment")
        node: Any = raw
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"{name}: no list item {part!r}")
                if last:
                    node[int(part)] = env[name]
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = env[name]
                elif part not in node and parts[depth + 1].isdigit():
                    raise ConfigError(f"{name}: no list {part!r} in the config file")
                else:
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(f"{name}: {'.'.join(parts[:depth])} is not a table")


def _describe(exc: msgspec.ValidationError) -> str:
    message = str(exc)
    text, sep, where = message.rpartition(" - at `")
    if not sep:  # msgspec names no path for the top level
        text, where = message, "$`"
    key = where.rstrip("`").removeprefix("$").lstrip(".")
    prefix = f"{key}." if key else ""
    unknown = re.match(r"Object contains unknown field `(?P<f>[^`]+)`", text)
    if unknown:
        return f"{prefix}{unknown['f']}: unknown key"
    missing = re.match(r"Object missing required field `(?P<f>[^`]+)`", text)
    if missing:
        return f"{prefix}{missing['f']}: required key missing"
    return f"{key or '(top level)'}: {text}"


def _check(config: Config) -> None:
    seen: set[str] = set()
    for i, src in enumerate(config.sources):
        at = f"sources[{i}]"
        if src.name in seen:
            raise ConfigError(f"{at}: duplicate source {src.name}")
        seen.add(src.name)
        _check_source(at, src)


def _check_source(at: str, src: Source) -> None:
    adapter = REGISTRY.get(src.provider)
    if adapter is None:
        known = ", ".join(REGISTRY)
        raise ConfigError(f"{at}.provider: unknown provider {src.provider!r} (one of {known})")
    if not src.instance.strip():
        raise ConfigError(f"{at}.instance: must not be empty")
    if src.mode == "poll":
        if not adapter.polls:
            pollers = " or ".join(repr(name) for name, a in REGISTRY.items() if a.polls)
            raise ConfigError(f"{at}.mode: 'poll' works only with provider {pollers}")
        if not src.api_url:
            raise ConfigError(f"{at}.api_url: required for mode 'poll'")
    if src.api_url is not None and urlsplit(src.api_url).scheme not in ("http", "https"):
        raise ConfigError(f"{at}.api_url: must be an http(s) URL")
    _check_keys(at, src, signs=adapter.signature is not None, challenges=adapter.challenge)
    problem = adapter.check_instance(src.instance)
    if problem is not None:
        raise ConfigError(f"{at}.instance: {problem}")
    if src.mode == "poll" and (src.token_env is None) == (src.token_file is None):
        raise ConfigError(f"{at}: set exactly one of token_env or token_file")
    fields = set(re.findall(r"{([^{}]*)}", src.routing_key))
    if not fields <= _TEMPLATE_FIELDS:
        bad = ", ".join(sorted(fields - _TEMPLATE_FIELDS))
        raise ConfigError(f"{at}.routing_key: unknown placeholder {bad}")


def _check_keys(at: str, src: Source, *, signs: bool, challenges: object) -> None:
    hmac_key = src.hmac_key_env or src.hmac_key_file
    app_secret = src.app_secret_env or src.app_secret_file
    if (hmac_key or app_secret) and not signs:
        key = "hmac_key_env" if hmac_key else "app_secret_env"
        raise ConfigError(f"{at}.{key}: {src.provider} does not sign its webhooks")
    if hmac_key and app_secret:
        raise ConfigError(f"{at}: set one signing key, hmac_key_* or app_secret_*")
    if (src.verify_token_env or src.verify_token_file) and challenges is None:
        raise ConfigError(f"{at}.verify_token_env: {src.provider} sends no verification request")
    if src.api_key_env and src.api_key_file:
        raise ConfigError(f"{at}: set one of api_key_env or api_key_file")
    probe = PROBES.get(src.provider)
    if (src.api_key_env or src.api_key_file) and (probe is None or probe.credential != "api_key"):
        takes = " and ".join(name for name, p in PROBES.items() if p.credential == "api_key")
        raise ConfigError(f"{at}.api_key_env: only {takes} take an API key")


def split_host_port(text: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:PORT` for IPv6) as (host, port); ValueError when malformed."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"must be HOST:PORT, got {text!r}")
    return host, int(port)


def _check_http(http: HttpConfig) -> None:
    try:
        split_host_port(http.listen)
    except ValueError as exc:
        raise ConfigError(f"http.listen: {exc}") from None
    for key in ("allow_ips", "trusted_proxies"):
        for i, value in enumerate(getattr(http, key)):
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ConfigError(
                    f"http.{key}[{i}]: not an IP address or network: {value!r}"
                ) from None


def _check_lease(lease: LeaseConfig) -> None:
    # A holder pauses once its last confirmed beat is 2 intervals old; a taker waits `settle`
    # after acquiring: the pause must come first, or a cut-off holder could still be receiving.
    if lease.settle <= 2 * lease.interval:
        raise ConfigError(
            f"lease.settle: must be more than twice lease.interval ({2 * lease.interval:g} s)"
        )


def _check_archive(archive: ArchiveConfig) -> None:
    if not MAX_AGE.fullmatch(archive.max_age):
        raise ConfigError(
            f"archive.max_age: must be a number and one unit of Y M D h m s"
            f" (e.g. 7D, 12h), got {archive.max_age!r}"
        )
    if not archive.ingest_suffix.strip() or archive.stream == "":
        raise ConfigError("archive: stream and ingest_suffix must not be empty")


def _resolve(config: Config, env: Mapping[str, str], kind: str) -> dict[str, Secret]:
    out: dict[str, Secret] = {}
    for i, src in enumerate(config.sources):
        env_name: str | None = getattr(src, f"{kind}_env")
        file_name: str | None = getattr(src, f"{kind}_file")
        if env_name is not None:
            value = env.get(env_name, "")
            if not value:
                raise ConfigError(
                    f"sources[{i}].{kind}_env: environment variable {env_name} is not set"
                )
        elif file_name is not None:
            try:
                value = Path(file_name).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"sources[{i}].{kind}_file: cannot read {file_name}: {exc.strerror}"
                ) from None
            if not value:
                raise ConfigError(f"sources[{i}].{kind}_file: {file_name} is empty")
        else:
            continue
        if kind == "token" and not _URL_SAFE.fullmatch(value):
            raise ConfigError(
                f"sources[{i}].{kind}: the token has characters a URL path cannot carry"
            )
        if kind in _GUARDED and value.lower() in WELL_KNOWN_KEYS:
            raise ConfigError(
                f"sources[{i}].{kind}: a well-known default key, anyone can sign with it"
                " (use a long random one)"
            )
        out[src.name] = Secret(value)
    return out


def mask_url(url: str) -> str:
    """The AMQP URL with its password replaced, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def dump(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, secrets masked (for `bridge check-config`)."""
    data: dict[str, Any] = msgspec.to_builtins(settings.config)
    data["amqp"]["url"] = mask_url(settings.config.amqp.url)
    return data
