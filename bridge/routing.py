"""Event → exchange, routing key and headers (pure)."""

from __future__ import annotations

from typing import NamedTuple

from bridge.errors import PayloadError

MAX_ROUTING_KEY_BYTES = 255


class Classified(NamedTuple):
    """What the bridge needs to know of one notification, whatever the provider."""

    event: str
    timestamp: int | None = None  # provider event time, epoch seconds
    chat_id: str | None = None
    message_key: str | None = None  # provider-level id for business dedup
    known: bool = True
    headers: tuple[tuple[str, str], ...] = ()  # the provider's own, e.g. ("x-event-id", …)


def routing_key(template: str, *, provider: str, instance: str, event: str) -> str:
    """Render a source's `routing_key` template; an over-long key is a payload problem."""
    if template == "{event}":
        key = event
    else:
        key = template.replace("{provider}", provider).replace("{instance}", instance)
        key = key.replace("{event}", event)
    if len(key.encode()) > MAX_ROUTING_KEY_BYTES:
        raise PayloadError(f"routing key longer than {MAX_ROUTING_KEY_BYTES} bytes")
    return key
