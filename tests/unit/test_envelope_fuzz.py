"""Property tests: every message the envelope builds can be framed by AMQP as it is.

`amqp_frames` frames an `Outbound` exactly as `AmqpPublisher.publish` hands it to aiormq
(Basic.Publish, the content header with the same properties, the body) and marshals the frames
with pamqp, the encoder aiormq uses. A message that does not frame would fail in the publisher
with an error that is not a `PublishError`: a 500 for a webhook, an endless retry that blocks
a polled queue.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote, unquote

import pamqp.frame
from cloudevents.core.bindings.rabbitmq import RabbitMQMessage, from_binary_event
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pamqp import commands
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from bridge import APP_ID
from bridge.envelope import Outbound, build, message_id, quarantine
from bridge.routing import Classified

#: RabbitMQ's default frame_max: the content header (properties and headers) must fit one frame.
FRAME_MAX = 131_072


def amqp_frames(out: Outbound) -> bytes:
    """The wire frames of `out`; raises if any field cannot be encoded."""
    properties = commands.Basic.Properties(
        content_type="application/json",
        delivery_mode=2,
        message_id=out.message_id,
        timestamp=None if out.timestamp is None else datetime.fromtimestamp(out.timestamp, UTC),
        message_type=out.event,
        app_id=APP_ID,
        headers=dict(out.headers),
    )
    publish = commands.Basic.Publish(
        exchange=out.exchange, routing_key=out.routing_key, mandatory=True
    )
    header = pamqp.frame.marshal(ContentHeader(0, len(out.body), properties), 1)
    assert len(header) <= FRAME_MAX, "content header larger than one frame"
    return pamqp.frame.marshal(publish, 1) + header + pamqp.frame.marshal(ContentBody(out.body), 1)


HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec="utf-8"), min_size=200, max_size=3000),
    st.text(st.characters(max_codepoint=0x1F), max_size=40),  # control characters
    st.sampled_from(["\x00", "\u2028", "\ufeff", "🙂" * 600, "x" * 70_000]),
)
HOSTILE_INTS = st.one_of(
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([-1, 0, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**4000]),
)
EVENTS = st.one_of(
    st.text(min_size=1, max_size=255).filter(lambda e: len(e.encode()) <= 255),
    st.sampled_from(["incomingMessageReceived", "messages.upsert", "ack", "é" * 127]),
)


@settings(max_examples=300, deadline=None)
@given(
    event=EVENTS,
    timestamp=st.none() | HOSTILE_INTS,
    chat_id=st.none() | HOSTILE_TEXT,
    message_key=st.none() | HOSTILE_TEXT,
    receipt_id=st.none() | HOSTILE_INTS,
    body=st.binary(max_size=200),
)
@example(event="x", timestamp=-5, chat_id=None, message_key=None, receipt_id=None, body=b"{}")
@example(event="x", timestamp=None, chat_id=None, message_key=None, receipt_id=2**64, body=b"")
def test_built_messages_frame(
    event: str,
    timestamp: int | None,
    chat_id: str | None,
    message_key: str | None,
    receipt_id: int | None,
    body: bytes,
) -> None:
    classified = Classified(event, timestamp, chat_id, message_key)
    out = build(
        exchange="notifications", routing_key=event, provider="greenapi", instance="1101",
        ingest="poll", body=body, classified=classified, received_at_ms=1_700_000_000_000,
        receipt_id=receipt_id,
    )  # fmt: skip
    amqp_frames(out)
    assert out.message_id == message_id("greenapi", "1101", body)
    assert out.body == body
    bad = quarantine(
        exchange="notifications.invalid", provider="greenapi", instance="1101", ingest="poll",
        body=body, error=message_key or "", received_at_ms=1, receipt_id=receipt_id,
    )  # fmt: skip
    amqp_frames(bad)
    assert bad.message_id == out.message_id


@settings(max_examples=200, deadline=None)
@given(
    event=EVENTS,
    timestamp=st.none() | HOSTILE_INTS,
    chat_id=st.none() | HOSTILE_TEXT,
    instance=st.text(min_size=1, max_size=60),
    received_at_ms=st.integers(0, 253_402_300_799_999),
)
@example(event="x", timestamp=None, chat_id="🙂" * 600, instance="a b", received_at_ms=0)
def test_cloudevents_messages_frame_and_the_sdk_reads_them(
    event: str, timestamp: int | None, chat_id: str | None, instance: str, received_at_ms: int
) -> None:
    """With `cloudevents`, whatever the payload holds: the message frames, and the CloudEvents
    SDK's RabbitMQ binding reads it into an event with the bridge's values."""
    out = build(
        exchange="notifications", routing_key=event, provider="greenapi", instance=instance,
        ingest="webhook", body=b'{"a": 1}', classified=Classified(event, timestamp, chat_id),
        received_at_ms=received_at_ms, cloudevents=True,
    )  # fmt: skip
    amqp_frames(out)
    ce = {k: v for k, v in out.headers.items() if k.startswith("ce-")}
    assert all(isinstance(v, str) for v in ce.values())
    message = RabbitMQMessage(headers=ce, content_type="application/json", body=out.body)  # type: ignore[arg-type]
    read = from_binary_event(message)
    assert (read.get_id(), read.get_type()) == (out.message_id, event)
    assert read.get_source() == "/greenapi/" + quote(instance, safe="")
    assert unquote(read.get_source().split("/", 2)[2]) == instance
    assert read.get_subject() == (chat_id[:512] if chat_id else None)
    assert read.get_time() is not None and read.get_time().tzinfo is not None
    assert read.get_data() == {"a": 1}
