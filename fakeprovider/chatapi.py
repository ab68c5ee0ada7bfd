"""The fake Chat API (chat-api.com / 1msg legacy format): instances that push batches.

Items of three kinds (``messages``, ``ack``, ``chatUpdate``) are queued per instance. While an
instance has a ``webhook_url`` its pusher waits for items, then every ``batch_interval``
takes up to ``batch_size`` of them (mixed kinds, each in its own array, queue order kept) and
POSTs ``{"instanceId": ..., "messages": [...], "ack": [...], "chatUpdate": [...]}`` (empty
arrays left out). With ``guaranteedHooks`` the real service tries 20 times until it gets a 200;
the fake does the same (``max_attempts``), pausing ``retry_pause`` between attempts. The
token travels as ``?token=`` (``auth="query"``), ``Authorization: Bearer`` or not at all.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final, Literal
from urllib.parse import quote

import msgspec

from fakeprovider.push import PushCounters, PushHub, PushStats, post_once

__all__ = [
    "KINDS",
    "ChatApiConfig",
    "ChatApiInstance",
    "ChatApiStats",
    "ChatKind",
    "FakeChatApi",
    "UnknownChatApiInstance",
    "batch_body",
]

ChatKind = Literal["messages", "ack", "chatUpdate"]
KINDS: Final[tuple[ChatKind, ...]] = ("messages", "ack", "chatUpdate")
Auth = Literal["query", "bearer", "none"]


class UnknownChatApiInstance(LookupError):
    """No Chat API instance with this id exists in the fake."""


class ChatApiConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How an instance pushes; ``webhook_url=""`` means it does not push."""

    webhook_url: str = ""
    auth: Auth = "query"
    batch_size: int = 10
    batch_interval: float = 1.0
    max_attempts: int = 20
    retry_pause: float = 5.0
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_attempts < 1:
            raise ValueError("batch_size and max_attempts must be at least 1")
        for name in ("batch_interval", "retry_pause", "timeout"):
            if not 0.0 <= getattr(self, name) <= 3600.0:
                raise ValueError(f"{name} must be between 0 and 3600 seconds")


class ChatApiStats(PushStats):
    id: str
    config: ChatApiConfig
    enqueued: int
    queued: int
    batches: int
    items_delivered: int
    items_dropped: int


class _Batch(msgspec.Struct, frozen=True, omit_defaults=True):
    instanceId: str
    messages: list[msgspec.Raw] = []
    ack: list[msgspec.Raw] = []
    chatUpdate: list[msgspec.Raw] = []


_ENCODER: Final = msgspec.json.Encoder()


def batch_body(instance_id: str, items: list[tuple[ChatKind, bytes]]) -> bytes:
    """One webhook body: each item in its kind's array, in order; empty arrays omitted."""
    arrays: dict[ChatKind, list[msgspec.Raw]] = {kind: [] for kind in KINDS}
    for kind, raw in items:
        arrays[kind].append(msgspec.Raw(raw))
    return _ENCODER.encode(_Batch(instanceId=instance_id, **arrays))


class ChatApiInstance:
    __slots__ = (
        "batches",
        "closed",
        "config",
        "enqueued",
        "id",
        "items_delivered",
        "items_dropped",
        "push_counts",
        "pusher",
        "queue",
        "token",
        "waiters",
    )

    def __init__(self, id: str, token: str, config: ChatApiConfig) -> None:
        self.id = id
        self.token = token
        self.config = config
        self.queue: deque[tuple[ChatKind, bytes]] = deque()
        self.waiters: set[asyncio.Future[None]] = set()
        self.push_counts = PushCounters(serial=True)
        self.pusher: asyncio.Task[None] | None = None
        self.closed = False
        self.enqueued = 0
        self.batches = 0
        self.items_delivered = 0
        self.items_dropped = 0

    def wake(self) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()

    def target(self) -> tuple[str, dict[str, str]]:
        url, headers = self.config.webhook_url, {"Content-Type": "application/json"}
        if self.config.auth == "query":
            url += ("&" if "?" in url else "?") + "token=" + quote(self.token, safe="")
        elif self.config.auth == "bearer":
            headers["Authorization"] = f"Bearer {self.token}"
        return url, headers


class FakeChatApi:
    """All fake Chat API instances."""

    def __init__(self) -> None:
        self.instances: dict[str, ChatApiInstance] = {}
        self._hub: PushHub | None = None

    def add_instance(self, id: str, token: str, config: ChatApiConfig | None = None) -> bool:
        """Create an instance; False when it exists with the same token (config then updated)."""
        existing = self.instances.get(id)
        if existing is not None:
            if existing.token != token:
                raise ValueError(f"chatapi instance {id} exists with a different token")
            if config is not None:
                self.configure(id, config)
            return False
        self.instances[id] = ChatApiInstance(id, token, config or ChatApiConfig())
        self._ensure_pusher(self.instances[id])
        return True

    def instance(self, id: str) -> ChatApiInstance:
        try:
            return self.instances[id]
        except KeyError:
            raise UnknownChatApiInstance(id) from None

    def configure(self, id: str, config: ChatApiConfig) -> None:
        instance = self.instance(id)
        instance.config = config
        instance.wake()
        self._ensure_pusher(instance)

    def enqueue(self, id: str, kind: ChatKind, item: bytes | object) -> None:
        """Queue one item (raw JSON bytes or any JSON-able object) of ``kind``."""
        self.enqueue_many(id, [(kind, item)])

    def enqueue_many(self, id: str, items: list[tuple[ChatKind, bytes | object]]) -> int:
        instance = self.instance(id)
        for kind, item in items:
            if kind not in KINDS:
                raise ValueError(f"kind must be one of {', '.join(KINDS)}")
            raw = item if isinstance(item, bytes) else _ENCODER.encode(item)
            instance.queue.append((kind, raw))
            instance.enqueued += 1
        instance.wake()
        return len(items)

    def stats(self, id: str) -> ChatApiStats:
        instance = self.instance(id)
        return ChatApiStats(
            **msgspec.structs.asdict(instance.push_counts.snapshot()),
            id=id,
            config=instance.config,
            enqueued=instance.enqueued,
            queued=len(instance.queue),
            batches=instance.batches,
            items_delivered=instance.items_delivered,
            items_dropped=instance.items_dropped,
        )

    def attach(self, hub: PushHub) -> None:
        self._hub = hub
        for instance in self.instances.values():
            self._ensure_pusher(instance)

    def detach(self) -> None:
        self._hub = None

    def reset(self) -> None:
        """Forget every instance and stop its pusher (a batch in flight is dropped)."""
        for instance in self.instances.values():
            instance.closed = True
            if instance.pusher is not None:
                instance.pusher.cancel()
            instance.wake()
        self.instances = {}

    def _ensure_pusher(self, instance: ChatApiInstance) -> None:
        hub = self._hub
        if hub is None or hub.closed or instance.closed or not instance.config.webhook_url:
            return
        if instance.pusher is None or instance.pusher.done():
            instance.pusher = hub.spawn(_push_loop(instance, hub), f"chatapi-push-{instance.id}")


async def _push_loop(instance: ChatApiInstance, hub: PushHub) -> None:
    while not instance.closed and instance.config.webhook_url:
        if not instance.queue:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            instance.waiters.add(waiter)
            try:
                await waiter
            finally:
                instance.waiters.discard(waiter)
            continue
        await asyncio.sleep(instance.config.batch_interval)
        if instance.closed or not instance.config.webhook_url:
            break
        count = min(instance.config.batch_size, len(instance.queue))
        batch = [instance.queue.popleft() for _ in range(count)]
        await _send(instance, hub, batch)


async def _send(
    instance: ChatApiInstance, hub: PushHub, batch: list[tuple[ChatKind, bytes]]
) -> None:
    counters, body, items = instance.push_counts, batch_body(instance.id, batch), len(batch)
    for attempt in range(1, instance.config.max_attempts + 1):
        if instance.closed or not instance.config.webhook_url:
            instance.queue.extendleft(reversed(batch))  # pushing was switched off: keep them
            return
        url, headers = instance.target()
        counters.begin()
        outcome = "cancelled"
        try:
            status, outcome = await post_once(
                hub.client, url, body, headers, instance.config.timeout
            )
        finally:
            counters.end(outcome)
        if status == 200:
            counters.successes += 1
            instance.batches += 1
            instance.items_delivered += items
            return
        counters.failures += 1
        if attempt < instance.config.max_attempts:
            await asyncio.sleep(instance.config.retry_pause)
    counters.given_up += 1
    instance.items_dropped += items
