"""From raw notification bytes to confirmed AMQP messages: shared by every ingest path.

`messages()` is pure apart from logging: the source's provider adapter reads the body into its
items, each is routed and built — or, for a body that does not decode, its quarantine message
is built. `deliver()` publishes and waits for the confirm; `deliver_all()` does it for every
message of one body, and fails if any one fails.
"""

from __future__ import annotations

import asyncio
import time

from bridge.amqp.publisher import Publisher
from bridge.config import AmqpConfig, Source
from bridge.envelope import Outbound, build, quarantine
from bridge.errors import PayloadError, PublishError
from bridge.logs import get_logger
from bridge.metrics import LAST_NOTIFICATION, QUARANTINED, published
from bridge.providers import KNOWN_EVENTS, REGISTRY, Parsed
from bridge.routing import MAX_ROUTING_KEY_BYTES, Classified, routing_key

log = get_logger(__name__)

#: Events that get their own metric label: every documented one, and quarantine.
LABELLED_EVENTS = KNOWN_EVENTS | {"invalid"}

#: Unknown event types remembered for the once-per-type WARN (bounded against hostile input).
MAX_UNKNOWN_TRACKED = 10_000


class Pipeline:
    def __init__(self, amqp: AmqpConfig, publisher: Publisher) -> None:
        self._amqp = amqp
        self.publisher = publisher
        self._unknown_seen: set[tuple[str, str]] = set()

    def messages(
        self,
        source: Source,
        body: bytes,
        *,
        ingest: str,
        parsed: Parsed | None = None,
        receipt_id: int | None = None,
    ) -> list[Outbound]:
        """The messages of one body from `source` (`parsed`: already read by its adapter),
        or its quarantine message."""
        adapter = REGISTRY[source.provider]
        try:
            if parsed is None:
                parsed = adapter.parse(body)
            items = parsed.items(source.instance)
        except PayloadError as exc:
            clean = adapter.clean(body)
            return [self.quarantine(source, clean, str(exc), ingest=ingest, receipt_id=receipt_id)]
        return [
            self.outbound(source, item.body, item.classified, ingest=ingest, receipt_id=receipt_id)
            for item in items
        ]

    def outbound(
        self,
        source: Source,
        body: bytes,
        classified: Classified,
        *,
        ingest: str,
        receipt_id: int | None = None,
    ) -> Outbound:
        """The message for a classified notification (quarantined if its key cannot route)."""
        received_at_ms = int(time.time() * 1000)
        try:
            if len(classified.event.encode()) > MAX_ROUTING_KEY_BYTES:
                # the event is also the AMQP `type` property, a short string, whatever the key
                raise PayloadError(f"event type longer than {MAX_ROUTING_KEY_BYTES} bytes")
            key = routing_key(
                source.routing_key,
                provider=source.provider,
                instance=source.instance,
                event=classified.event,
            )
        except PayloadError as exc:
            return self.quarantine(
                source,
                body,
                str(exc),
                ingest=ingest,
                receipt_id=receipt_id,
                received_at_ms=received_at_ms,
            )
        out = build(
            exchange=source.exchange or self._amqp.exchange,
            routing_key=key,
            provider=source.provider,
            instance=source.instance,
            ingest=ingest,
            body=body,
            classified=classified,
            received_at_ms=received_at_ms,
            receipt_id=receipt_id,
            cloudevents=self._amqp.cloudevents,
        )
        if not classified.known:
            self._note_unknown(source, classified.event)
        log.debug(
            "notification.received",
            provider=source.provider,
            instance=source.instance,
            event=out.event,
            message_id=out.message_id,
            ingest=ingest,
        )
        return out

    def quarantine(
        self,
        source: Source,
        body: bytes,
        error: str,
        *,
        ingest: str,
        receipt_id: int | None = None,
        received_at_ms: int | None = None,
    ) -> Outbound:
        out = quarantine(
            exchange=self._amqp.invalid_exchange,
            provider=source.provider,
            instance=source.instance,
            ingest=ingest,
            body=body,
            error=error,
            received_at_ms=received_at_ms or int(time.time() * 1000),
            receipt_id=receipt_id,
        )
        QUARANTINED.labels(source.provider, source.instance).inc()
        log.error(
            "notification.quarantined",
            provider=source.provider,
            instance=source.instance,
            message_id=out.message_id,
            error=error,
            size=len(body),
            ingest=ingest,
        )
        return out

    async def deliver_all(self, outs: list[Outbound]) -> None:
        """Publish every message of one body; once all were confirmed or refused, the first
        `PublishError` propagates (logged here: the provider is not acknowledged)."""
        try:
            if len(outs) == 1:
                await self.deliver(outs[0])
                return
            results = await asyncio.gather(*(self.deliver(o) for o in outs), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        except PublishError as exc:
            first = outs[0]
            log.warning(
                "publish.failed",
                provider=first.provider,
                instance=first.instance,
                event=first.event,
                message_id=first.message_id,
                error=type(exc).__name__,
                detail=str(exc)[:200],
                messages=len(outs),
            )
            raise

    async def deliver(self, out: Outbound) -> bool:
        """Publish and wait for the confirm; `PublishError` propagates. False = duplicate."""
        provider = out.provider
        try:
            fresh = await self.publisher.publish(out)
        except Exception as exc:
            published(provider, self._event_label(out), type(exc).__name__).inc()
            raise
        published(provider, self._event_label(out), "confirmed" if fresh else "duplicate").inc()
        LAST_NOTIFICATION.stamp(provider, out.instance)
        return fresh

    @staticmethod
    def _event_label(out: Outbound) -> str:
        """The event as a metric label; unknown events share one label (bounded cardinality)."""
        return out.event if out.event in LABELLED_EVENTS else "unknown"

    def _note_unknown(self, source: Source, event: str) -> None:
        key = (source.provider, event)
        if key in self._unknown_seen or len(self._unknown_seen) >= MAX_UNKNOWN_TRACKED:
            return
        self._unknown_seen.add(key)
        log.warning(
            "notification.unknown_event",
            provider=source.provider,
            instance=source.instance,
            event=event[:200],
        )
