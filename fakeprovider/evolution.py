"""The fake Evolution API: instances, ``/webhook/set`` + ``/webhook/find``, and its pusher.

Provider calls (real URL shapes; header ``apikey: <global key or the instance token>``)::

    POST /webhook/set/{instance}     v2: {"webhook": {...}} -> 201 stored row
                                     v1: flat {url, enabled, webhook_by_events, ...} -> 201
    GET  /webhook/find/{instance}    the stored webhook (v2: row or null)

Checked in Evolution's guard order: the instance exists (404), then the apikey (401), then the
body (400). Events are enqueued through the control API or :meth:`FakeEvolution.enqueue`; each
one is delivered by its own task (concurrently, no order, like Evolution's un-awaited
``sendDataWebhook``) with Evolution 2.3's retries; see :mod:`fakeprovider.evolution_push`.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Final

import msgspec

from fakeprovider.evolution_push import (
    Delivery,
    EvolutionWebhook,
    PushTarget,
    RetryPolicy,
    V1Webhook,
    deliver,
    envelope,
    validate_v1,
    validate_v2,
)
from fakeprovider.push import HeldDeliveries, PushCounters, PushHub, PushStats

__all__ = ["EvolutionInstance", "EvolutionStats", "FakeEvolution", "UnknownEvolutionInstance"]

_ENCODER: Final = msgspec.json.Encoder()
SERVER_URL: Final = "http://fake-evolution"


class UnknownEvolutionInstance(LookupError):
    """No Evolution instance with this name exists in the fake."""


class EvolutionStats(PushStats):
    name: str
    v1: bool
    enqueued: int
    deliveries: int
    pending: int


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error(status: int, error: str, message: object) -> tuple[int, bytes]:
    body = {"status": status, "error": error, "response": {"message": message}}
    return status, _ENCODER.encode(body)


class EvolutionInstance:
    """One named instance: its token, API version, stored webhook and push counters."""

    __slots__ = (
        "deliveries",
        "enqueued",
        "expose_token",
        "instance_id",
        "name",
        "push_counts",
        "sender",
        "tasks",
        "token",
        "v1",
        "webhook",
        "webhook_v1",
    )

    def __init__(
        self, name: str, token: str, *, v1: bool, sender: str | None, expose_token: bool
    ) -> None:
        self.name = name
        self.token = token
        self.v1 = v1
        self.sender = sender
        self.expose_token = expose_token
        self.instance_id = str(uuid.uuid4())
        self.webhook: EvolutionWebhook | None = None
        self.webhook_v1: V1Webhook | None = None
        self.push_counts = PushCounters(serial=False)
        self.enqueued = 0
        self.deliveries = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def target(self) -> PushTarget | None:
        """Where events go now, or None when no enabled webhook is stored."""
        if self.v1:
            v1 = self.webhook_v1
            if v1 is None or not v1.enabled:
                return None
            return PushTarget(v1.url, {}, v1.webhook_by_events, frozenset(v1.events))
        hook = self.webhook
        if hook is None or not hook.enabled:
            return None
        return PushTarget(
            hook.url, dict(hook.headers), hook.webhookByEvents, frozenset(hook.events)
        )


class FakeEvolution(HeldDeliveries[Delivery]):
    """All fake Evolution instances, the global API key and the delivery policy.

    ``utc_offset`` (hours) is the fake server's time zone: ``date_time`` is local wall-clock
    time with a literal ``Z``, as real Evolution sends it. ``retry`` holds Evolution 2.3's
    defaults (30 s timeout, 10 attempts, 5 s doubling to 300 s, ±20 % jitter).
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        server_url: str = SERVER_URL,
        utc_offset: float = -3.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.api_key = api_key
        self.server_url = server_url
        self.utc_offset = utc_offset
        self.retry = retry or RetryPolicy()
        self.instances: dict[str, EvolutionInstance] = {}
        super().__init__()

    def add_instance(
        self,
        name: str,
        token: str,
        *,
        v1: bool = False,
        sender: str | None = "5511999990000@s.whatsapp.net",
        expose_token: bool = True,
    ) -> bool:
        """Create an instance; False when it exists with the same token (ValueError if not)."""
        existing = self.instances.get(name)
        if existing is not None:
            if existing.token != token:
                raise ValueError(f"evolution instance {name} exists with a different token")
            return False
        self.instances[name] = EvolutionInstance(
            name, token, v1=v1, sender=sender, expose_token=expose_token
        )
        return True

    def instance(self, name: str) -> EvolutionInstance:
        try:
            return self.instances[name]
        except KeyError:
            raise UnknownEvolutionInstance(name) from None

    # --- provider API -------------------------------------------------------------------------

    def handle_api(
        self, method: str, path: str, apikey: str | None, body: bytes
    ) -> tuple[int, bytes]:
        """Answer one ``/webhook/...`` call: (status, JSON body)."""
        parts = path.strip("/").split("/")
        if len(parts) != 3 or (method, parts[1]) not in (("POST", "set"), ("GET", "find")):
            return _error(404, "Not Found", [f"Cannot {method} {path}"])
        name = parts[2]
        instance = self.instances.get(name)
        if instance is None:
            return _error(404, "Not Found", [f'The "{name}" instance does not exist'])
        if apikey is None or apikey not in (self.api_key, instance.token):
            return _error(401, "Unauthorized", "Unauthorized")
        if method == "GET":
            return 200, self._find(instance)
        return self._set(instance, body)

    def _find(self, instance: EvolutionInstance) -> bytes:
        if instance.v1:
            stored = instance.webhook_v1 or V1Webhook(url="", enabled=False)
            return _ENCODER.encode(stored)
        return _ENCODER.encode(instance.webhook)

    def _set(self, instance: EvolutionInstance, body: bytes) -> tuple[int, bytes]:
        if instance.v1:
            v1, problem = validate_v1(body)
            if v1 is None:
                return _error(400, "Bad Request", [problem])
            instance.webhook_v1 = v1
            answer = {"webhook": {"instanceName": instance.name, "webhook": v1}}
            return 201, _ENCODER.encode(answer)
        spec, problems = validate_v2(body)
        if spec is None:
            return _error(400, "Bad Request", [problems])
        now = _now()
        previous = instance.webhook
        instance.webhook = EvolutionWebhook(
            id=previous.id if previous else "cm" + uuid.uuid4().hex[:23],
            url=spec.url,
            headers=spec.headers,
            enabled=spec.enabled,
            events=spec.stored_events(),
            webhookByEvents=spec.byEvents,
            webhookBase64=spec.base64,
            createdAt=previous.createdAt if previous else now,
            updatedAt=now,
            instanceId=instance.instance_id,
        )
        return 201, _ENCODER.encode(instance.webhook)

    # --- events -------------------------------------------------------------------------------

    def enqueue(self, name: str, event: str, data: bytes | object) -> bool:
        """Emit one event (``data`` as raw JSON bytes or any JSON-able object). Returns whether
        a delivery was scheduled: False when no enabled webhook takes this event."""
        instance = self.instance(name)
        instance.enqueued += 1
        raw = data if isinstance(data, bytes) else _ENCODER.encode(data)
        target = instance.target()
        if target is None or not target.wants(event):
            instance.push_counts.skipped += 1
            return False
        body = envelope(
            event=event,
            instance=instance.name,
            data=raw,
            destination=target.url,
            sender=instance.sender,
            server_url=self.server_url,
            apikey=instance.token if instance.expose_token else None,
            omit_apikey=instance.v1 and not instance.expose_token,
            utc_offset=self.utc_offset,
        )
        delivery = Delivery(instance.name, target.url_for(event), body, target.send_headers())
        instance.deliveries += 1
        self._submit(delivery)
        return True

    def _start(self, hub: PushHub, delivery: Delivery) -> None:
        instance = self.instances.get(delivery.instance)
        if instance is None:
            return
        task = hub.spawn(
            deliver(hub.client, delivery, instance.push_counts, self.retry),
            f"evolution-push-{delivery.instance}",
        )
        instance.tasks.add(task)
        task.add_done_callback(instance.tasks.discard)

    def stats(self, name: str) -> EvolutionStats:
        instance = self.instance(name)
        snapshot = instance.push_counts.snapshot()
        done = snapshot.successes + snapshot.given_up
        return EvolutionStats(
            **msgspec.structs.asdict(snapshot),
            name=name,
            v1=instance.v1,
            enqueued=instance.enqueued,
            deliveries=instance.deliveries,
            pending=instance.deliveries - done,
        )

    def reset(self) -> None:
        """Forget every instance and cancel the deliveries still running."""
        for instance in self.instances.values():
            for task in list(instance.tasks):
                task.cancel()
        self.instances = {}
        self._forget_pending()
