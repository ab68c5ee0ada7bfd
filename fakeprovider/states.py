"""Instance states in the fake: the providers' state calls and a control to set each state.

Provider calls (real URL shapes)::

    GET /waInstance{id}/getStateInstance/{token}   {"stateInstance": …}; GREEN-API's checks
                                                   (400/403 idInstance, 401 token) and its
                                                   limit of 1 call a second per instance (429)
    GET /instance/connectionState/{name}           {"instance": {"instanceName", "state"}};
                                                   header apikey (global key or the instance
                                                   token), Evolution's 404/401
    GET /api/sessions/{session}                    WAHA's answer (:mod:`fakeprovider.waha`):
                                                   its ``status`` is the state

A GREEN-API instance starts ``authorized``, an Evolution one ``open``, a WAHA session
``WORKING`` (or ``STOPPED`` when created not working).

Control::

    GET /_control/states/{provider}/{instance}     {"state", "fail", "calls"}
    PUT /_control/states/{provider}/{instance}     {"state"?, "fail"?}: the state to answer
                                                   from now on; ``fail`` an HTTP status every
                                                   state call answers instead (null: none)

``calls`` holds the server's monotonic time of every state call of that instance, so a test
can see the rate it is probed at. A WAHA session's state is its ``status``: setting it also
decides whether the session delivers (only ``WORKING`` ones do).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Final, Literal

import msgspec

from fakeprovider.control import ControlError, decode_body
from fakeprovider.evolution import FakeEvolution
from fakeprovider.greenapi import FakeGreenApi
from fakeprovider.waha import FakeWaha
from fakeprovider.wire import SlidingWindow

__all__ = ["FakeStates", "StateRecord", "is_state_call"]

Provider = Literal["greenapi", "evolution", "waha"]
_DEFAULT: Final[dict[str, str]] = {"greenapi": "authorized", "evolution": "open"}
_ENCODER: Final = msgspec.json.Encoder()
_GREEN_PREFIX: Final = len("waInstance")


class StateRecord(msgspec.Struct):
    state: str
    fail: int | None = None
    calls: list[float] = msgspec.field(default_factory=list)


class _StateChange(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    state: str | None = None
    fail: int | None = None


_CHANGE: Final = msgspec.json.Decoder(_StateChange)


def is_state_call(path: str) -> bool:
    """Whether ``path`` is GREEN-API's or Evolution's state call (answered here)."""
    return path.startswith("/instance/") or (
        path.startswith("/waInstance") and path.split("/")[2:3] == ["getStateInstance"]
    )


def _text(status: int, text: str) -> tuple[int, bytes]:
    return status, _ENCODER.encode({"message": text})


class FakeStates:
    """The state of every instance of the three fakes, and what their state calls saw."""

    def __init__(self, green: FakeGreenApi, evolution: FakeEvolution, waha: FakeWaha) -> None:
        self._green = green
        self._evolution = evolution
        self._waha = waha
        self._records: dict[tuple[str, str], StateRecord] = {}
        self._windows: dict[str, SlidingWindow] = {}

    def record(self, provider: str, instance: str) -> StateRecord:
        """The instance's record (ControlError 404 when the fake has no such instance)."""
        key = (provider, instance)
        known = self._records.get(key)
        if known is None:
            known = self._records[key] = StateRecord(state=self._initial(provider, instance))
        if provider == "waha":
            known.state = self._waha.sessions[instance].status
        return known

    def _initial(self, provider: str, instance: str) -> str:
        names: dict[str, Collection[str]] = {
            "greenapi": self._green.instances.keys(),
            "evolution": self._evolution.instances.keys(),
            "waha": self._waha.sessions.keys(),
        }
        if instance not in names.get(provider, ()):
            raise ControlError(404, f"unknown instance {provider}/{instance}")
        if provider == "waha":
            return self._waha.sessions[instance].status
        return _DEFAULT[provider]

    # --- provider calls -----------------------------------------------------------------------

    def handle(self, method: str, path: str, apikey: str | None) -> tuple[int, bytes] | None:
        """Answer a state call; None for other paths (and for a WAHA session call, which is
        counted here and answered by :mod:`fakeprovider.waha`)."""
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "sessions"]:
            named = len(parts) == 3 and method == "GET" and parts[2] in self._waha.sessions
            return self._called(self.record("waha", parts[2])) if named else None
        if not is_state_call(path):
            return None
        evolution = parts[0] == "instance"
        if method != "GET" or len(parts) != 3 or (evolution and parts[1] != "connectionState"):
            return _text(404, f"Cannot {method} {path}")
        if evolution:
            return self._evolution_call(parts[2], apikey)
        return self._green_call(parts[0][_GREEN_PREFIX:], parts[2])

    def _called(self, record: StateRecord) -> tuple[int, bytes] | None:
        record.calls.append(asyncio.get_running_loop().time())
        if record.fail is not None:
            return _text(record.fail, f"state call failed with {record.fail} (fault injected)")
        return None

    def _green_call(self, id: str, token: str) -> tuple[int, bytes]:
        instance = self._green.instances.get(id)
        if instance is None:
            if id.isascii() and id.isdigit():
                return _text(403, "Forbidden")
            return _text(400, "Parameter idInstance not an integer")
        if token != instance.token:
            return _text(401, "Unauthorized")
        window = self._windows.setdefault(id, SlidingWindow(1))
        if not window.admit(asyncio.get_running_loop().time()):
            return _text(429, "Too Many Requests")
        record = self.record("greenapi", id)
        return self._called(record) or (200, _ENCODER.encode({"stateInstance": record.state}))

    def _evolution_call(self, name: str, apikey: str | None) -> tuple[int, bytes]:
        instance = self._evolution.instances.get(name)
        if instance is None:
            return _text(404, f'The "{name}" instance does not exist')
        if apikey is None or apikey not in (self._evolution.api_key, instance.token):
            return _text(401, "Unauthorized")
        record = self.record("evolution", name)
        state = {"instance": {"instanceName": name, "state": record.state}}
        return self._called(record) or (200, _ENCODER.encode(state))

    # --- control ------------------------------------------------------------------------------

    def control(self, method: str, path: str, body: bytes) -> tuple[int, bytes] | None:
        """``/_control/states/...``; None for other control paths."""
        parts = path.removeprefix("/_control").strip("/").split("/")
        if parts[0] != "states":
            return None
        if len(parts) != 3 or method not in ("GET", "PUT"):
            return _text(404, f"no control route {method} {path}")
        try:
            record = self.record(parts[1], parts[2])
            if method == "PUT":
                self._change(parts[1], parts[2], record, decode_body(_CHANGE, body))
        except ControlError as exc:
            return _text(exc.status, exc.message)
        return 200, _ENCODER.encode(record)

    def _change(
        self, provider: str, instance: str, record: StateRecord, change: _StateChange
    ) -> None:
        if change.fail is not None and not 400 <= change.fail <= 599:
            raise ControlError(400, "fail must be an HTTP error status (400..599)")
        record.fail = change.fail
        if change.state is not None:
            if not change.state:
                raise ControlError(400, "state must not be empty")
            record.state = change.state
            if provider == "waha":
                self._waha.sessions[instance].status = change.state

    def reset(self) -> None:
        self._records.clear()
        self._windows.clear()
