from __future__ import annotations

import logging

import pytest

from bridge.envelope import build, message_id, quarantine
from bridge.errors import PayloadError
from bridge.logs import JsonFormatter, Redactor, TextFormatter, get_logger, redact_url
from bridge.retry import Backoff, set_testing
from bridge.routing import Classified, routing_key


def test_message_id_is_stable_and_distinct() -> None:
    body = b'{"typeWebhook":"x"}'
    assert message_id("greenapi", "1", body) == message_id("greenapi", "1", body)
    assert message_id("greenapi", "1", body) != message_id("greenapi", "2", body)
    assert message_id("greenapi", "1", body) != message_id("evolution", "1", body)
    assert message_id("greenapi", "1", body) != message_id("greenapi", "1", body + b" ")
    # the separator keeps (provider, instance) pairs from colliding
    assert message_id("a", "bc", b"") != message_id("ab", "c", b"")


def test_build_headers() -> None:
    c = Classified(event="outgoingMessageStatus", timestamp=17, chat_id="c@c.us", message_key="k")
    out = build(
        exchange="notifications", routing_key="outgoingMessageStatus", provider="greenapi",
        instance="9", ingest="poll", body=b"{}", classified=c, received_at_ms=5, receipt_id=3,
    )  # fmt: skip
    assert out.headers == {
        "x-provider": "greenapi",
        "x-instance": "9",
        "x-event": "outgoingMessageStatus",
        "x-ingest": "poll",
        "x-received-at": 5,
        "x-receipt-id": 3,
        "x-chat-id": "c@c.us",
        "x-message-key": "k",
    }
    assert out.timestamp == 17 and out.event == "outgoingMessageStatus"


def test_build_omits_absent_keys() -> None:
    out = build(
        exchange="e", routing_key="r", provider="greenapi", instance="9", ingest="webhook",
        body=b"{}", classified=Classified(event="x"), received_at_ms=5,
    )  # fmt: skip
    assert set(out.headers) == {"x-provider", "x-instance", "x-event", "x-ingest", "x-received-at"}


def test_quarantine_carries_error() -> None:
    out = quarantine(
        exchange="notifications.invalid", provider="greenapi", instance="1", ingest="poll",
        body=b"\xff", error="e" * 5000, received_at_ms=1, receipt_id=4,
    )  # fmt: skip
    assert out.exchange == "notifications.invalid"
    assert len(str(out.headers["x-error"])) == 1000
    assert out.headers["x-receipt-id"] == 4


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{event}", "incomingCall"),
        ("{provider}.{instance}.{event}", "greenapi.11.incomingCall"),
        ("wa.{event}", "wa.incomingCall"),
    ],
)
def test_routing_key_templates(template: str, expected: str) -> None:
    assert (
        routing_key(template, provider="greenapi", instance="11", event="incomingCall") == expected
    )


def test_routing_key_does_not_expand_event_content() -> None:
    key = routing_key("{instance}.{event}", provider="p", instance="1", event="{provider}")
    assert key == "1.{provider}"


def test_overlong_routing_key_is_payload_error() -> None:
    with pytest.raises(PayloadError):
        routing_key("{event}", provider="p", instance="1", event="x" * 256)


def test_redaction() -> None:
    url = "https://1101.api.greenapi.com/waInstance1101/receiveNotification/abcdef123?receiveTimeout=5"
    assert "abcdef123" not in redact_url(url)
    assert (
        redact_url("/waInstance1/deleteNotification/tok/55")
        == "/waInstance1/deleteNotification/***/55"
    )
    redactor = Redactor(["topsecret"])
    record = logging.LogRecord("bridge", logging.ERROR, __file__, 1, "x %s", ("topsecret",), None)
    record.bridge_fields = {"detail": "the topsecret leaked"}
    redactor.filter(record)
    for formatter in (JsonFormatter(), TextFormatter()):
        assert "topsecret" not in formatter.format(record)


def test_redaction_of_tracebacks() -> None:
    try:
        raise ValueError("token topsecret in text")
    except ValueError:
        import sys

        record = logging.LogRecord("b", logging.ERROR, __file__, 1, "m", None, sys.exc_info())
    Redactor(["topsecret"]).filter(record)
    assert "topsecret" not in JsonFormatter().format(record)


def test_log_event_fields(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "bridge.t")
    get_logger("bridge.t").info("thing.done", a=1)
    assert caplog.records[0].bridge_fields == {"a": 1}  # type: ignore[attr-defined]


def test_backoff_is_capped_and_jittered() -> None:
    set_testing(False)
    try:
        policy = Backoff(initial=1, maximum=8, jitter=0.5)
        for attempt in range(40):
            delay = policy.delay(attempt)
            assert 0.5 * min(8, 2**attempt) <= delay <= min(8, 2**attempt)
    finally:
        set_testing(True)
    assert Backoff().delay(5) == 0


def test_ids_from_payloads_are_capped_in_headers() -> None:
    huge = "x" * 100_000
    out = build(
        exchange="e", routing_key="r", provider="greenapi", instance="9", ingest="webhook",
        body=b"{}", classified=Classified(event="x", chat_id=huge, message_key=huge), received_at_ms=5,
    )  # fmt: skip
    assert len(str(out.headers["x-chat-id"])) == 512
    assert len(str(out.headers["x-message-key"])) == 512


def test_backoff_floor_holds_even_in_tests() -> None:
    assert Backoff(floor=0.05).delay(7) == 0.05  # retries are switched off in tests, not spinning


def test_provider_headers_travel_capped() -> None:
    classified = Classified(
        event="message", headers=(("x-event-id", "evt_1"), ("x-long", "y" * 9999))
    )
    out = build(
        exchange="e",
        routing_key="r",
        provider="waha",
        instance="default",
        ingest="webhook",
        body=b"{}",
        classified=classified,
        received_at_ms=5,
    )
    assert out.headers["x-event-id"] == "evt_1"
    assert len(str(out.headers["x-long"])) == 512
    assert out.provider == "waha" and out.instance == "default"
