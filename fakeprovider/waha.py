"""The fake WAHA: sessions with their webhooks, WAHA's sessions API, and its pusher.

Provider calls (WAHA's URL shapes; header ``X-Api-Key: <key>`` when the fake has one)::

    GET  /api/sessions                   every session
    POST /api/sessions                   {name?, config?, start?} -> 201 (422 if it exists)
    GET  /api/sessions/{session}         {name, status, config, me, engine}
    PUT  /api/sessions/{session}         {config}: replaces the whole config, restarts it
    POST /api/sessions/{session}/start   and .../stop

Checked in this order: the API key (401), the session (404), the body (400, NestJS style).
Events are enqueued through the control API or :meth:`FakeWaha.enqueue`: each one is sent to
every webhook of the session that wants it, each as its own task (WAHA does not serialize),
with the webhook's retries; see :mod:`fakeprovider.waha_push`.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Final

import msgspec

from bridge.tools import waha
from fakeprovider.push import HeldDeliveries, PushCounters, PushHub, PushStats
from fakeprovider.waha_push import (
    Delivery,
    Hmac,
    Retries,
    WahaWebhook,
    deliver,
    envelope,
    validate_webhooks,
)

__all__ = ["FakeWaha", "UnknownWahaSession", "WahaSession", "WahaStats"]

_ENCODER: Final = msgspec.json.Encoder()
_OBJECT: Final = msgspec.json.Decoder(dict[str, Any])
_NAME: Final = re.compile(r"[a-zA-Z0-9_-]{1,54}")
_ME: Final = {"id": "5511999990000@c.us", "pushName": "Fake WAHA"}


class UnknownWahaSession(LookupError):
    """No WAHA session with this name exists in the fake."""


class _BadRequest(ValueError):
    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


class WahaStats(PushStats):
    name: str
    status: str
    webhooks: int
    restarts: int
    enqueued: int
    deliveries: int
    dropped: int
    pending: int


def _error(status: int, error: str, message: object) -> tuple[int, bytes]:
    return status, _ENCODER.encode({"message": message, "error": error, "statusCode": status})


class WahaSession:
    """One named session: its config (as sent), its parsed webhooks and push counters.

    ``hmac_key`` is the key a webhook set through the control API signs with when it names
    none itself (``bridge fake-provider --waha NAME:KEY``).
    """

    __slots__ = (
        "config",
        "deliveries",
        "engine",
        "enqueued",
        "hmac_key",
        "me",
        "name",
        "push_counts",
        "restarts",
        "status",
        "tasks",
        "webhooks",
    )

    def __init__(self, name: str, *, hmac_key: str | None, engine: str, working: bool) -> None:
        self.name = name
        self.hmac_key = hmac_key
        self.engine = engine
        self.status = "WORKING" if working else "STOPPED"
        self.me: dict[str, Any] | None = dict(_ME) if working else None
        self.config: dict[str, Any] = {}
        self.webhooks: list[WahaWebhook] = []
        self.push_counts = PushCounters(serial=False)
        self.restarts = 0
        self.enqueued = 0
        self.deliveries = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def set_config(self, config: dict[str, Any], webhooks: list[WahaWebhook]) -> None:
        self.config = config
        self.webhooks = webhooks

    def set_webhook(self, hook: WahaWebhook) -> None:
        """Replace the webhooks with this URL by ``hook``, or add it (the control API)."""
        if hook.hmac is None and self.hmac_key:
            hook = msgspec.structs.replace(hook, hmac=Hmac(key=self.hmac_key))
        kept = [h for h in self.webhooks if h.url != hook.url]
        self.webhooks = [*kept, hook]
        self.config = {**self.config, "webhooks": msgspec.to_builtins(self.webhooks)}

    def dto(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "config": self.config,
            "me": self.me,
            "engine": {"engine": self.engine},
        }


class FakeWaha(HeldDeliveries[Delivery]):
    """All fake WAHA sessions, the API key and the delivery settings.

    ``timeout`` is a request's limit (WAHA's keep-alive agent drops a socket silent for 8 s),
    ``jitter`` the exponential policy's extra share (0-20 %).
    """

    def __init__(
        self, *, api_key: str | None = None, timeout: float = 8.0, jitter: float = 0.2
    ) -> None:
        self.api_key = api_key
        self.timeout = timeout
        self.jitter = jitter
        self.sessions: dict[str, WahaSession] = {}
        super().__init__()

    def add_session(
        self, name: str, hmac_key: str | None = None, *, engine: str = "GOWS", working: bool = True
    ) -> bool:
        """Create a session; False when it exists with the same key (ValueError if not)."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"waha session name must match [a-zA-Z0-9_-]{{1,54}}, got {name!r}")
        existing = self.sessions.get(name)
        if existing is not None:
            if existing.hmac_key != (hmac_key or None):
                raise ValueError(f"waha session {name} exists with a different hmac key")
            return False
        self.sessions[name] = WahaSession(
            name, hmac_key=hmac_key or None, engine=engine, working=working
        )
        return True

    def session(self, name: str) -> WahaSession:
        try:
            return self.sessions[name]
        except KeyError:
            raise UnknownWahaSession(name) from None

    # --- provider API -------------------------------------------------------------------------

    def handle_api(
        self, method: str, path: str, api_key: str | None, body: bytes
    ) -> tuple[int, bytes]:
        """Answer one ``/api/sessions...`` call: (status, JSON body)."""
        if self.api_key is not None and api_key != self.api_key:
            return _error(401, "Unauthorized", "Unauthorized")
        parts = path.strip("/").split("/")[2:]
        match method, parts:
            case "GET", []:
                return 200, _ENCODER.encode([s.dto() for s in self.sessions.values()])
            case "POST", []:
                return self._create(body)
            case (("GET" | "PUT"), [name]):
                return self._session_call(name, method, parts, body)
            case "POST", [name, "start" | "stop"]:
                return self._session_call(name, method, parts, body)
        return _error(404, "Not Found", f"Cannot {method} {path}")

    def _session_call(
        self, name: str, method: str, parts: list[str], body: bytes
    ) -> tuple[int, bytes]:
        session = self.sessions.get(name)
        if session is None:
            return _error(404, "Not Found", f"Session '{name}' does not exist")
        if method == "PUT":
            return self._update(session, body)
        if method == "POST":
            start = parts[1] == "start"
            session.status = "WORKING" if start else "STOPPED"
            if start and session.me is None:
                session.me = dict(_ME)
            return 201, _ENCODER.encode(session.dto())
        return 200, _ENCODER.encode(session.dto())

    def _read(self, body: bytes) -> tuple[dict[str, Any], dict[str, Any], list[WahaWebhook]]:
        """(request, its config, the config's webhooks); _BadRequest when one is unusable."""
        try:
            request = _OBJECT.decode(body) if body.strip() else {}
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise _BadRequest(["body must be a JSON object"]) from None
        config = request.get("config")
        config = {} if config is None else config
        if not isinstance(config, dict):
            raise _BadRequest(["config must be an object"])
        hooks, problems = validate_webhooks(config.get("webhooks"))
        if hooks is None:
            raise _BadRequest(problems)
        return request, config, hooks

    def _create(self, body: bytes) -> tuple[int, bytes]:
        try:
            request, config, hooks = self._read(body)
        except _BadRequest as exc:
            return _error(400, "Bad Request", exc.messages)
        name = request.get("name") or "session_" + waha.event_id()[4:]
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            return _error(400, "Bad Request", ["name must match ^[a-zA-Z0-9_-]*$ (54 at most)"])
        if name in self.sessions:
            message = f"Session '{name}' already exists. Use PUT to update it."
            return _error(422, "Unprocessable Entity", message)
        working = bool(request.get("start"))
        session = WahaSession(name, hmac_key=None, engine="GOWS", working=working)
        session.set_config(config, hooks)
        self.sessions[name] = session
        return 201, _ENCODER.encode(session.dto())

    def _update(self, session: WahaSession, body: bytes) -> tuple[int, bytes]:
        try:
            _, config, hooks = self._read(body)
        except _BadRequest as exc:
            return _error(400, "Bad Request", exc.messages)
        session.set_config(config, hooks)
        if session.status == "WORKING":
            session.restarts += 1
        return 200, _ENCODER.encode(session.dto())

    # --- events -------------------------------------------------------------------------------

    def enqueue(self, name: str, event: str, payload: bytes | object) -> int:
        """Emit one event (``payload`` as JSON bytes or a JSON-able object) on a session;
        returns the deliveries scheduled: one per webhook that wants it (none while the
        session is stopped)."""
        session = self.session(name)
        session.enqueued += 1
        hooks = [h for h in session.webhooks if h.wants(event)]
        if session.status != "WORKING" or not hooks:
            session.push_counts.skipped += 1
            return 0
        raw = payload if isinstance(payload, bytes) else _ENCODER.encode(payload)
        metadata = session.config.get("metadata")
        event_id, body = envelope(
            event=event,
            session=session.name,
            payload=raw,
            me=session.me,
            engine=session.engine,
            metadata=metadata if isinstance(metadata, dict) else None,
        )
        for hook in hooks:
            retries = hook.retries or Retries()
            delivery = Delivery(
                session=session.name,
                event=event,
                event_id=event_id,
                url=hook.url,
                body=body,
                headers=waha.webhook_headers(body, key=hook.key(), custom=hook.headers()),
                policy=retries.policy or "constant",
                delay=retries.delay(),
                retries=retries.retries(),
            )
            session.deliveries += 1
            self._submit(delivery)
        return len(hooks)

    def _start(self, hub: PushHub, delivery: Delivery) -> None:
        session = self.sessions.get(delivery.session)
        if session is None:
            return
        task = hub.spawn(
            deliver(
                hub.client,
                delivery,
                session.push_counts,
                timeout=self.timeout,
                jitter=self.jitter,
            ),
            f"waha-push-{delivery.session}",
        )
        session.tasks.add(task)
        task.add_done_callback(session.tasks.discard)

    def stats(self, name: str) -> WahaStats:
        session = self.session(name)
        snapshot = session.push_counts.snapshot()
        done = snapshot.successes + snapshot.given_up
        return WahaStats(
            **msgspec.structs.asdict(snapshot),
            name=name,
            status=session.status,
            webhooks=len(session.webhooks),
            restarts=session.restarts,
            enqueued=session.enqueued,
            deliveries=session.deliveries,
            dropped=snapshot.given_up,
            pending=session.deliveries - done,
        )

    def reset(self) -> None:
        """Forget every session and cancel the deliveries still running."""
        for session in self.sessions.values():
            for task in list(session.tasks):
                task.cancel()
        self.sessions = {}
        self._forget_pending()
