"""The hand encoder writes the bytes pamqp (through aiormq) writes, for every message.

The oracle is what `aiormq.Channel.basic_publish` sends: pamqp's `Basic.Publish`, a
`ContentHeader` with `Basic.Properties`, and the body cut by aiormq's own `_split_body`.
"""

from __future__ import annotations

import types
from datetime import UTC, datetime
from typing import Any

import aiormq
import pamqp.frame
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pamqp import commands
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from bridge import APP_ID
from bridge.amqp import frames
from bridge.envelope import MAX_TIMESTAMP, Outbound, build, quarantine
from bridge.routing import Classified

AMQP_FRAME_MIN = 4096  # the smallest frame_max AMQP 0-9-1 allows
RABBIT_FRAME_MAX = 131_072


def _pamqp_value(value: Any) -> Any:
    """pamqp takes `bytearray` where the bridge may hold `bytes` (same encoding: `x`)."""
    return bytearray(value) if isinstance(value, bytes) else value


def oracle(out: Outbound, *, channel: int = 1, frame_max: int = RABBIT_FRAME_MAX) -> bytes:
    aiormq.channel._check_routing_key(out.routing_key)  # basic_publish's own check
    properties = commands.Basic.Properties(
        content_type="application/json",
        delivery_mode=2,
        message_id=out.message_id,
        timestamp=None if out.timestamp is None else datetime.fromtimestamp(out.timestamp, UTC),
        message_type=out.event,
        app_id=APP_ID,
        headers={k: _pamqp_value(v) for k, v in out.headers.items()},
    )
    publish = commands.Basic.Publish(
        exchange=out.exchange, routing_key=out.routing_key, mandatory=True
    )
    header = ContentHeader(0, len(out.body), properties)
    size = types.SimpleNamespace(max_content_size=frame_max - aiormq.Channel.CONTENT_FRAME_SIZE)
    chunks: list[ContentBody] = aiormq.Channel._split_body(size, out.body)  # type: ignore[arg-type]
    return b"".join(pamqp.frame.marshal(f, channel) for f in [publish, header, *chunks])


def outbound(**fields: Any) -> Outbound:
    base: dict[str, Any] = {
        "exchange": "notifications",
        "routing_key": "incomingMessageReceived",
        "body": b'{"typeWebhook":"incomingMessageReceived"}',
        "message_id": "0123456789abcdef0123456789abcdef",
        "event": "incomingMessageReceived",
        "timestamp": 1_700_000_000,
        "headers": {"x-provider": "greenapi", "x-received-at": 1_700_000_000_123},
        "provider": "greenapi",
        "instance": "1101",
    }
    base.update(fields)
    return Outbound(**base)


# -- strategies ----------------------------------------------------------------------------


def short_text(min_size: int = 0) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=40, min_size=min_size),
        st.text(st.characters(codec="utf-8"), min_size=max(min_size, 1), max_size=127),
        st.sampled_from(["é" * 127, "🙂" * 63, "x" * 255]),
    ).filter(lambda s: len(s.encode()) <= 255 and len(s) >= min_size)


EXCHANGES = st.one_of(
    st.from_regex(r"[a-zA-Z0-9_.:@#,/+ \-]{0,127}", fullmatch=True),
    st.sampled_from(["", "notifications", "notifications.ingest", "x" * 127]),
)
INTEGERS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from(
        [-129, -128, 127, 128, -32769, -32768, 32767, 32768, 65535, 65536, -(2**31) - 1,
         -(2**31), 2**31 - 1, 2**31, 2**32 - 1, 2**32, -(2**63), 2**63 - 1]
    ),
)  # fmt: skip
KEYS = st.one_of(
    st.text(max_size=30),
    st.text(st.characters(codec="utf-8"), min_size=40, max_size=140),  # cut at 128 bytes
    st.sampled_from(["x-provider", "ce-specversion", "ce-id", "ce-time", "a" * 200]),
)
VALUES = st.one_of(
    st.text(max_size=60),
    st.text(st.characters(codec="utf-8"), min_size=200, max_size=2000),
    INTEGERS,
    st.booleans(),
    st.binary(max_size=300),
)
HEADERS = st.dictionaries(KEYS, VALUES, max_size=12)


@st.composite
def bodies(draw: st.DrawFn, frame_max: int) -> bytes:
    """Empty, one frame, exactly the frame limit, and several frames."""
    chunk = frame_max - frames.FRAME_OVERHEAD
    size = draw(
        st.one_of(
            st.integers(0, 300),
            st.sampled_from([chunk - 1, chunk, chunk + 1, 2 * chunk, 3 * chunk + 7]),
            st.integers(0, 3 * chunk),
        )
    )
    seed = draw(st.binary(min_size=1, max_size=16))
    return (seed * (size // len(seed) + 1))[:size]


@st.composite
def messages(draw: st.DrawFn) -> tuple[Outbound, int, int]:
    frame_max = draw(st.sampled_from([AMQP_FRAME_MIN, 8192, RABBIT_FRAME_MAX]))
    out = outbound(
        exchange=draw(EXCHANGES),
        routing_key=draw(short_text()),
        body=draw(bodies(frame_max)),
        message_id=draw(short_text(min_size=1)),
        event=draw(short_text()),
        timestamp=draw(st.none() | st.integers(0, MAX_TIMESTAMP) | st.sampled_from([0])),
        headers=draw(HEADERS),
    )
    return out, draw(st.integers(1, 65535)), frame_max


# -- tests ---------------------------------------------------------------------------------


@settings(max_examples=250, deadline=None)
@given(messages())
@example((outbound(headers={}), 1, RABBIT_FRAME_MAX))
@example((outbound(body=b"", event="", timestamp=None), 1, RABBIT_FRAME_MAX))
@example((outbound(timestamp=MAX_TIMESTAMP, message_id="é" * 127), 7, AMQP_FRAME_MIN))
@example((outbound(body=b"x" * (AMQP_FRAME_MIN - 8)), 1, AMQP_FRAME_MIN))
def test_every_message_encodes_as_pamqp_encodes_it(case: tuple[Outbound, int, int]) -> None:
    out, channel, frame_max = case
    assert frames.Encoder(channel, frame_max)(out) == oracle(
        out, channel=channel, frame_max=frame_max
    )


@settings(max_examples=150, deadline=None)
@given(
    event=short_text(min_size=1),
    timestamp=st.none() | st.integers(-(2**70), 2**70),
    chat_id=st.none() | st.text(st.characters(codec="utf-8"), max_size=700),
    message_key=st.none() | st.text(max_size=700),
    receipt_id=st.none() | st.integers(-(2**70), 2**70),
    extra=st.lists(st.tuples(st.sampled_from(["ce-source", "ce-type", "ce-subject"]),
                             st.text(st.characters(codec="utf-8"), max_size=600)), max_size=3),
    body=st.binary(max_size=400),
    ingest=st.sampled_from(["poll", "webhook"]),
    cloudevents=st.booleans(),
)  # fmt: skip
def test_what_the_envelope_builds_encodes_as_pamqp_encodes_it(
    event: str,
    timestamp: int | None,
    chat_id: str | None,
    message_key: str | None,
    receipt_id: int | None,
    extra: list[tuple[str, str]],
    body: bytes,
    ingest: str,
    cloudevents: bool,
) -> None:
    classified = Classified(event, timestamp, chat_id, message_key, True, tuple(extra))
    out = build(
        exchange="notifications.ingest", routing_key=event, provider="greenapi",
        instance="1101", ingest=ingest, body=body, classified=classified,
        received_at_ms=1_700_000_000_000, receipt_id=receipt_id, cloudevents=cloudevents,
    )  # fmt: skip
    if cloudevents:
        assert out.headers["ce-id"] == out.message_id
    encode = frames.Encoder(1, RABBIT_FRAME_MAX)
    assert encode(out) == oracle(out)
    bad = quarantine(
        exchange="notifications.invalid", provider="greenapi", instance="1101", ingest=ingest,
        body=body, error=message_key or "", received_at_ms=1, receipt_id=receipt_id,
    )  # fmt: skip
    assert encode(bad) == oracle(bad)


def test_the_publish_frame_is_cached_per_exchange_and_key() -> None:
    publish = frames.PublishFrames(3)
    first = publish("notifications", "a")
    assert publish("notifications", "a") is first
    assert publish("notifications.ingest", "a") != first
    assert publish("notifications", "b") != first
    expected = commands.Basic.Publish(exchange="notifications", routing_key="a", mandatory=True)
    assert first == pamqp.frame.marshal(expected, 3)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"event": "é" * 128}, TypeError),  # a short string over 255 bytes
        ({"message_id": "x" * 256}, TypeError),
        ({"headers": {"x": 2**63}}, TypeError),  # beyond a signed 64-bit table integer
        ({"headers": {"x": object()}}, TypeError),
        ({"routing_key": "k" * 256}, ValueError),
        ({"routing_key": "é" * 200}, TypeError),
        ({"exchange": "bad*name"}, ValueError),
        ({"exchange": "x" * 128}, ValueError),
    ],
)
def test_what_pamqp_refuses_is_refused(fields: dict[str, Any], error: type[Exception]) -> None:
    out = outbound(**fields)
    with pytest.raises(error):
        oracle(out)
    with pytest.raises(error):
        frames.Encoder(1, RABBIT_FRAME_MAX)(out)


def test_other_header_types_are_left_to_pamqp() -> None:
    from decimal import Decimal

    headers = {"f": 1.5, "d": Decimal("1.25"), "n": None, "t": {"a": [1, "b"]},
               "when": datetime(2024, 1, 2, tzinfo=UTC)}  # fmt: skip
    out = outbound(headers=headers)
    assert frames.Encoder(1, RABBIT_FRAME_MAX)(out) == oracle(out)


def test_no_frame_limit_sends_one_body_frame() -> None:
    content = frames.Content(1, 0)
    body = b"x" * 300_000
    assert content.body(body) == pamqp.frame.marshal(ContentBody(body), 1)


def test_content_without_optional_fixed_properties() -> None:
    content = frames.Content(2, RABBIT_FRAME_MAX, content_type="", delivery_mode=1, app_id="")
    got = content.header(0, message_id="", timestamp=None, message_type="", headers={})
    properties = commands.Basic.Properties(delivery_mode=1, headers={})
    assert got == pamqp.frame.marshal(ContentHeader(0, 0, properties), 2)
    with pytest.raises(ValueError, match="delivery_mode"):
        frames.Content(1, RABBIT_FRAME_MAX, delivery_mode=3)


def test_a_header_with_ever_new_values_stays_exact() -> None:
    encode = frames.Encoder(1, RABBIT_FRAME_MAX)
    for n in range(600):  # past the per-name cache: encoded afresh each time
        out = outbound(headers={"x-chat-id": f"7900{n}@c.us", "x-provider": "greenapi"})
        assert encode(out) == oracle(out)
