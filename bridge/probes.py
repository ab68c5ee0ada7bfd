"""Instance state probes: how each provider is asked for an instance's state and what its
answer means (pure).

One `Probe` per provider that has a state API, listed in `PROBES`:

- `greenapi`: `GET {api_url}/waInstance{id}/getStateInstance/{token}` (the source's API
  token, in the path); authorized when `stateInstance` is `authorized`;
- `evolution`: `GET {api_url}/instance/connectionState/{instance}` with header `apikey` (the
  source's `api_key`); authorized when `instance.state` is `open`;
- `waha`: `GET {api_url}/api/sessions/{session}` with header `X-Api-Key` (the source's
  `api_key`, when it has one); authorized when `status` is `WORKING`.

The state keeps the provider's own word (the metric label); `Probe.authorized` says which of
them means "authorized". A word outside the documented ones is kept when it is a short
identifier (providers add states) and refused otherwise, so that a label stays bounded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple
from urllib.parse import quote

import msgspec

from bridge.providers.base import DECODE_ERRORS

#: Which credential of the source the probe sends: GREEN-API's API token, or an API key.
CredentialKind = Literal["token", "api_key"]

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")


class StateAnswerError(ValueError):
    """The state API answered 200 with a body that names no usable state."""


class StateRequest(NamedTuple):
    url: str  # percent-encoded; for GREEN-API it holds the token: never log it
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Probe:
    """How one provider's instance state is read."""

    provider: str
    #: the source's credential the call sends (`token_*` or `api_key_*`)
    credential: CredentialKind
    #: False: the call is made without one when the source has none (WAHA without a key)
    credential_required: bool
    #: the documented state words, in the provider's spelling
    states: tuple[str, ...]
    #: the words that mean the instance is logged in and should be delivering
    authorized: frozenset[str]
    build: Callable[[str, str, str | None], StateRequest]
    read: Callable[[bytes], str]

    def request(self, api_url: str, instance: str, credential: str | None) -> StateRequest:
        return self.build(api_url.rstrip("/"), instance, credential)

    def parse(self, body: bytes) -> str:
        """The state word of a 200 answer; `StateAnswerError` when there is none."""
        try:
            word = self.read(body)
        except (*DECODE_ERRORS, msgspec.ValidationError) as exc:
            raise StateAnswerError(f"not a {self.provider} state answer: {exc}") from None
        if word in self.states or _WORD.fullmatch(word):
            return word
        raise StateAnswerError(f"unusable state {word[:40]!r}")


def _segment(text: str) -> str:
    return quote(text, safe="")


# -- GREEN-API ---------------------------------------------------------------------------------


class _GreenState(msgspec.Struct):
    stateInstance: str


_GREEN = msgspec.json.Decoder(_GreenState)


def _green_request(base: str, instance: str, token: str | None) -> StateRequest:
    url = f"{base}/waInstance{_segment(instance)}/getStateInstance/{_segment(token or '')}"
    return StateRequest(url, {})


def _green_read(body: bytes) -> str:
    return _GREEN.decode(body).stateInstance


# -- Evolution ---------------------------------------------------------------------------------


class _EvolutionConnection(msgspec.Struct):
    state: str


class _EvolutionState(msgspec.Struct):
    # v2 and v1 answer {"instance": {"instanceName": …, "state": …}}; some builds the bare pair
    instance: _EvolutionConnection | None = None
    state: str | None = None


_EVOLUTION = msgspec.json.Decoder(_EvolutionState)


def _evolution_request(base: str, instance: str, api_key: str | None) -> StateRequest:
    url = f"{base}/instance/connectionState/{_segment(instance)}"
    return StateRequest(url, {"apikey": api_key or ""})


def _evolution_read(body: bytes) -> str:
    answer = _EVOLUTION.decode(body)
    state = answer.instance.state if answer.instance is not None else answer.state
    if state is None:
        raise StateAnswerError("no instance.state in the answer")
    return state


# -- WAHA --------------------------------------------------------------------------------------


class _WahaSession(msgspec.Struct):
    status: str


_WAHA = msgspec.json.Decoder(_WahaSession)


def _waha_request(base: str, session: str, api_key: str | None) -> StateRequest:
    headers = {"X-Api-Key": api_key} if api_key else {}
    return StateRequest(f"{base}/api/sessions/{_segment(session)}", headers)


def _waha_read(body: bytes) -> str:
    return _WAHA.decode(body).status


PROBES: Mapping[str, Probe] = {
    "greenapi": Probe(
        provider="greenapi",
        credential="token",
        credential_required=True,
        states=("authorized", "notAuthorized", "blocked", "sleepMode", "starting", "yellowCard"),
        authorized=frozenset({"authorized"}),
        build=_green_request,
        read=_green_read,
    ),
    "evolution": Probe(
        provider="evolution",
        credential="api_key",
        credential_required=True,
        states=("open", "connecting", "close", "refused"),
        authorized=frozenset({"open"}),
        build=_evolution_request,
        read=_evolution_read,
    ),
    "waha": Probe(
        provider="waha",
        credential="api_key",
        credential_required=False,
        states=(
            "STOPPED",
            "STARTING",
            "SCAN_QR_CODE",
            "PASSKEY_REQUIRED",
            "PASSKEY_CONFIRMATION_REQUIRED",
            "WORKING",
            "FAILED",
        ),
        authorized=frozenset({"WORKING"}),
        build=_waha_request,
        read=_waha_read,
    ),
}


def status_class(status: int) -> str:
    """A non-200 answer as a short, bounded metric label."""
    named = {401: "unauthorized", 403: "forbidden", 404: "not_found", 429: "rate_limited"}
    if status in named:
        return named[status]
    return f"http_{status}" if 100 <= status <= 599 else "http_other"
