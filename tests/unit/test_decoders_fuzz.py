"""Property tests: the decoders take any bytes and answer with a value or their own error."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import PayloadError
from bridge.providers import chatapi, evolution, greenapi

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)
KEYS = ["typeWebhook", "instanceData", "idInstance", "timestamp", "idMessage", "senderData", "chatId",
        "status", "event", "instance", "data", "key", "id", "remoteJid", "keyId", "messageTimestamp",
        "apikey", "api_key", "instanceId", "messages", "ack", "chatUpdate", "statuses", "receiptId", "body"]  # fmt: skip
SHAPED = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=6)
    ),
    max_leaves=25,
)
BODIES = st.one_of(
    st.binary(max_size=300),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    SHAPED.map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=400)
@given(BODIES)
def test_greenapi_classify(body: bytes) -> None:
    try:
        got = greenapi.classify(body, "1")
    except PayloadError:
        return
    assert got.event


@settings(max_examples=300)
@given(BODIES)
def test_greenapi_answers(body: bytes) -> None:
    try:
        received = greenapi.decode_received(body)
    except greenapi.MalformedResponse as exc:
        assert exc.receipt_id is None or isinstance(exc.receipt_id, int)
    else:
        assert received is None or isinstance(received.receiptId, int)
    with contextlib.suppress(greenapi.MalformedResponse):
        greenapi.decode_deleted(body)


@settings(max_examples=400)
@given(BODIES)
def test_evolution(body: bytes) -> None:
    try:
        head = evolution.read_head(body)
        got = evolution.classify(head, "i")
    except PayloadError:
        return
    assert got.event
    clean = evolution.strip_secrets(body)
    decoded = json.loads(clean)
    assert "apikey" not in decoded and "api_key" not in decoded


@settings(max_examples=400)
@given(BODIES)
def test_chatapi(body: bytes) -> None:
    try:
        top, ident = chatapi.instance_of(body)
        items = chatapi.split(top, body, ident)
    except PayloadError:
        return
    assert items
    for item in items:
        json.loads(item.body)  # every item is a JSON document of its own
        assert item.classified.event == item.kind


DEEP = b"[" * 50_000 + b"]" * 50_000  # beyond any recursion limit
HOSTILE_BODIES = [
    b'{"typeWebhook":"x","event":"e","instance":"i","instanceId":1,"j":%s}' % DEEP,
    b'{"typeWebhook":"\xff","event":"\xff","instance":"i","instanceId":"\xff"}',
    b'{"instanceId":1,"messages":[{"id":"\xff"}],"ack":[{"id":"\xff"}]}',
    b'{"instanceId":1,"chatUpdate":[{"new":{"id":"\xff"}}]}',
    b'{"instanceId":1,"messages":[%s]}' % DEEP,
    b'{"event":"e","instance":"i","data":{"key":{"id":"\xff"}}}',
]


@pytest.mark.parametrize("body", HOSTILE_BODIES, ids=range(len(HOSTILE_BODIES)))
def test_deep_nesting_and_invalid_utf8_are_payload_errors(body: bytes) -> None:
    """msgspec raises RecursionError and UnicodeDecodeError too: the decoders map them."""
    with contextlib.suppress(PayloadError):
        greenapi.classify(body, "1")
    with contextlib.suppress(PayloadError):
        evolution.classify(evolution.read_head(body), "i")
    with contextlib.suppress(PayloadError):
        top, ident = chatapi.instance_of(body)
        chatapi.split(top, body, ident)
    for answer in (b'{"receiptId":1,"body":%s}' % body, body):
        with contextlib.suppress(greenapi.MalformedResponse):
            greenapi.decode_received(answer)
        with contextlib.suppress(greenapi.MalformedResponse):
            greenapi.decode_deleted(answer)
    assert greenapi.decode_received(b'{"receiptId":1,"body":{"a":"\xff"}}') is not None


@pytest.mark.parametrize("stamp", ['"\\u00b2"', '"\\u0663"', '"' + "1" * 5000 + '"', '"12"'])
def test_evolution_odd_numeric_strings(stamp: str) -> None:
    body = b'{"event":"e","data":{"messageTimestamp":%s}}' % stamp.encode()
    got = evolution.classify(evolution.read_head(body), "i")
    assert got.timestamp == (12 if stamp == '"12"' else None)


@pytest.mark.parametrize("template", ["{event}", "{provider}", "all.{instance}"])
def test_an_event_longer_than_a_short_string_is_quarantined(template: str) -> None:
    from bridge.config import AmqpConfig, Source
    from bridge.ingest.pipeline import Pipeline
    from tests.unit.test_envelope_fuzz import amqp_frames

    source = Source(provider="greenapi", mode="webhook", instance="1", routing_key=template)
    body = b'{"typeWebhook":"%s"}' % (b"e" * 256)
    out = Pipeline(AmqpConfig(), None).prepare(source, body, ingest="webhook")  # type: ignore[arg-type]
    assert out.exchange == "notifications.invalid" and out.body == body
    amqp_frames(out)


def test_chatapi_odd_array_names_make_json_items() -> None:
    body = b'{"instanceId":"1","a\\"b":[1],"\\u0000":[2],"messages":[{"id":"m"}]}'
    top, ident = chatapi.instance_of(body)
    items = chatapi.split(top, body, ident)
    assert [json.loads(i.body) for i in items] == [
        {"instanceId": "1", 'a"b': 1},
        {"instanceId": "1", "\x00": 2},
        {"instanceId": "1", "message": {"id": "m"}},
    ]
    assert items[2].body == b'{"instanceId":"1","message":{"id":"m"}}'


@pytest.mark.parametrize(
    "body",
    [
        b'{"event":"e","instance":"i","api\\u006bey":"secret"}',
        b'{"event":"e","instance":"i","\\u0061pi_key":"secret","apikey":"s2"}',
        b'{"event":1,"apikey":"secret"}',  # not an envelope: quarantined, still without the key
    ],
)
def test_evolution_secret_fields_go_however_they_are_written(body: bytes) -> None:
    clean = evolution.strip_secrets(body)
    assert b"secret" not in clean and json.loads(clean)["event"] in ("e", 1)


def test_evolution_strip_secrets_of_undecodable_bodies_is_identity() -> None:
    for body in (b'{"apikey":"k"', b'{"apikey":"\xff"}', b'{"apikey":%s}' % (b"[" * 50_000)):
        assert evolution.strip_secrets(body) == body
