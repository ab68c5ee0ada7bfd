"""`amqp.cloudevents = true`: the CloudEvents RabbitMQ binding's headers, read back by the SDK."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cloudevents.core.bindings.rabbitmq import RabbitMQMessage, from_binary_event

from bridge.config import AmqpConfig, Source, load
from bridge.envelope import Outbound, build, quarantine, rfc3339
from bridge.ingest.pipeline import Pipeline
from bridge.routing import Classified
from tests.conftest import SAMPLES

CE_KEYS = {"ce-specversion", "ce-id", "ce-source", "ce-type", "ce-time", "ce-subject"}


def built(
    classified: Classified,
    *,
    instance: str = "1101000001",
    cloudevents: bool = True,
    received_at_ms: int = 1_700_000_000_123,
) -> Outbound:
    return build(
        exchange="notifications",
        routing_key=classified.event,
        provider="greenapi",
        instance=instance,
        ingest="webhook",
        body=b'{"a": 1}',
        classified=classified,
        received_at_ms=received_at_ms,
        cloudevents=cloudevents,
    )


def test_headers_are_the_binding_attributes_all_strings() -> None:
    c = Classified(event="incomingMessageReceived", timestamp=1_700_000_000, chat_id="7@c.us")
    out = built(c)
    ce = {k: v for k, v in out.headers.items() if k.startswith("ce-")}
    assert ce == {
        "ce-specversion": "1.0",
        "ce-id": out.message_id,
        "ce-source": "/greenapi/1101000001",
        "ce-type": "incomingMessageReceived",
        "ce-time": "2023-11-14T22:13:20Z",
        "ce-subject": "7@c.us",
    }
    assert all(isinstance(v, str) for v in ce.values())
    # the bridge's own headers stay as they are
    assert out.headers["x-chat-id"] == "7@c.us" and out.headers["x-event"] == c.event


def test_the_sdk_reads_them_as_a_cloudevent_with_the_json_body_as_data() -> None:
    c = Classified(event="outgoingMessageStatus", timestamp=1_700_000_000, chat_id="7@c.us")
    out = built(c)
    message = RabbitMQMessage(headers=out.headers, content_type="application/json", body=out.body)  # type: ignore[arg-type]
    event = from_binary_event(message)
    assert event.get_id() == out.message_id
    assert event.get_source() == "/greenapi/1101000001"
    assert event.get_type() == "outgoingMessageStatus"
    assert event.get_subject() == "7@c.us"
    assert event.get_time() == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert event.get_datacontenttype() == "application/json"
    assert event.get_data() == {"a": 1}


def test_without_event_time_the_receipt_time_and_without_chat_no_subject() -> None:
    out = built(Classified(event="stateInstanceChanged"), received_at_ms=1_700_000_000_123)
    assert out.headers["ce-time"] == "2023-11-14T22:13:20.123Z"
    assert "ce-subject" not in out.headers
    # a provider time the AMQP timestamp cannot carry is not the event time either
    out = built(Classified(event="x", timestamp=-5), received_at_ms=7)
    assert out.headers["ce-time"] == "1970-01-01T00:00:00.007Z"


def test_an_instance_name_is_one_escaped_path_segment_of_the_source() -> None:
    out = built(Classified(event="x"), instance="sales bot/2")
    assert out.headers["ce-source"] == "/greenapi/sales%20bot%2F2"
    assert built(Classified(event="x"), instance="sales-bot_2").headers["ce-source"] == (
        "/greenapi/sales-bot_2"
    )


def test_the_subject_is_cut_like_the_chat_header() -> None:
    out = built(Classified(event="x", chat_id="c" * 2000))
    assert out.headers["ce-subject"] == out.headers["x-chat-id"] == "c" * 512


def test_off_by_default_and_never_on_quarantined_bodies() -> None:
    c = Classified(event="x", timestamp=1, chat_id="7@c.us")
    assert not CE_KEYS & set(built(c, cloudevents=False).headers)
    assert not CE_KEYS & set(
        build(
            exchange="e",
            routing_key="x",
            provider="greenapi",
            instance="1",
            ingest="poll",
            body=b"{}",
            classified=c,
            received_at_ms=1,
        ).headers
    )
    bad = quarantine(
        exchange="notifications.invalid",
        provider="greenapi",
        instance="1",
        ingest="poll",
        body=b"\xff",
        error="not JSON",
        received_at_ms=1,
    )
    assert not CE_KEYS & set(bad.headers)


@pytest.mark.parametrize(
    ("seconds", "ms", "text"),
    [
        (0, 0, "1970-01-01T00:00:00Z"),
        (253_402_300_799, 0, "9999-12-31T23:59:59Z"),
        (None, 0, "1970-01-01T00:00:00.000Z"),
        (None, 1_700_000_000_999, "2023-11-14T22:13:20.999Z"),
    ],
)
def test_rfc3339(seconds: int | None, ms: int, text: str) -> None:
    assert rfc3339(seconds=seconds, ms=ms) == text


def test_the_config_key_reaches_every_message_the_pipeline_builds(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text(
        '[[sources]]\nprovider = "greenapi"\nmode = "webhook"\ninstance = "1101000002"\n'
        'webhook_token_env = "T"\n'
    )
    env = {"T": "t" * 24}
    assert load(path, env).config.amqp.cloudevents is False
    cfg = load(path, {**env, "BRIDGE_AMQP__CLOUDEVENTS": "true"}).config
    assert cfg.amqp.cloudevents is True
    body = (SAMPLES / "greenapi" / "incomingMessageReceived-extendedTextMessage.json").read_bytes()
    source: Source = cfg.sources[0]
    for amqp, expected in ((cfg.amqp, CE_KEYS), (AmqpConfig(), set())):
        pipeline = Pipeline(amqp, publisher=None)  # type: ignore[arg-type]  # messages() only
        (out,) = pipeline.messages(source, body, ingest="webhook")
        assert CE_KEYS & set(out.headers) == expected
