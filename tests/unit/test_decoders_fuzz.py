"""Property tests: the decoders take any bytes and answer with a value or their own error.

For any input a decoder returns a classified notification or raises the error the pipeline
quarantines (`PayloadError`, `MalformedResponse`) — never another exception. What the pipeline
then builds from it frames as AMQP, and its `message_id` is the same for identical bytes.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bridge.config import AmqpConfig, Source
from bridge.envelope import Outbound
from bridge.errors import PayloadError
from bridge.ingest.pipeline import Pipeline
from bridge.providers import REGISTRY, chatapi, evolution, greenapi
from bridge.routing import Classified
from tests.unit.test_envelope_fuzz import amqp_frames

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)
KEYS = ["typeWebhook", "instanceData", "idInstance", "timestamp", "idMessage", "senderData", "chatId",
        "status", "event", "instance", "data", "key", "id", "remoteJid", "keyId", "messageTimestamp",
        "apikey", "api_key", "instanceId", "channelId", "messages", "ack", "chatUpdate", "statuses", "receiptId", "body",
        "session", "payload", "from", "to", "fromMe", "ackName", "object", "entry", "changes",
        "field", "value", "metadata", "phone_number_id", "contacts", "wa_id", "errors"]  # fmt: skip
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
    _check_greenapi_answer(body)


def _check_greenapi_answer(body: bytes) -> None:
    """A receive or delete answer decodes, or raises MalformedResponse, never anything else."""
    try:
        received = greenapi.decode_received(body)
    except greenapi.MalformedResponse as exc:
        assert exc.receipt_id is None or isinstance(exc.receipt_id, int)
    else:
        assert received is None or isinstance(received.receiptId, int)
    try:
        deleted = greenapi.decode_deleted(body)
    except greenapi.MalformedResponse:
        pass
    else:
        assert isinstance(deleted.result, bool)


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
    source = Source(provider="greenapi", mode="webhook", instance="1", routing_key=template)
    body = b'{"typeWebhook":"%s"}' % (b"e" * 256)
    [out] = Pipeline(AmqpConfig(), None).messages(source, body, ingest="webhook")  # type: ignore[arg-type]
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


# -- structurally generated JSON text -----------------------------------------------------
#
# Valid JSON (and near-JSON) built as text, so that it can hold what a value-level generator
# cannot: duplicate keys, \u escapes (also of key names), lone surrogate escapes, invalid UTF-8
# inside strings, numbers beyond any machine type, deep nesting, odd whitespace.


SHORT_TEXT = st.text(max_size=16)


@st.composite
def json_string(draw: st.DrawFn, text: st.SearchStrategy[str] = SHORT_TEXT) -> bytes:
    value = draw(text)
    ascii_only = draw(st.booleans())
    mask = draw(st.integers(0, 2 ** len(value) - 1)) if draw(st.booleans()) else 0
    # \u-escape some plain letters too: "api\u006bey" is "apikey"
    encoded = "".join(
        f"\\u{ord(c):04x}"
        if mask >> i & 1 and c.isascii() and c.isalnum()
        else json.dumps(c, ensure_ascii=ascii_only)[1:-1]
        for i, c in enumerate(value)
    )
    raw = encoded.encode()
    junk = draw(st.sampled_from([b"", b"", b"", b"\\ud800", b"\xff", b"\xed\xa0\x80", b"\\x"]))
    return b'"' + raw + junk + b'"'


NUMBERS = st.one_of(
    st.integers().map(lambda n: str(n).encode()),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: repr(f).encode()),
    st.integers(1, 5000).map(lambda n: b"9" * n),  # beyond uint64, beyond Python's int-str limit
    st.sampled_from([b"1e400", b"-1e400", b"1E+2", b"-0", b"0.5e-400", b"-9223372036854775809"]),
)
SCALARS = st.one_of(
    st.sampled_from([b"null", b"true", b"false"]),
    NUMBERS,
    json_string(),
    json_string(st.sampled_from(KEYS)),
)
WS = st.sampled_from([b"", b"", b" ", b"\n\t ", b"\r\n"])
KEY_TEXT = st.one_of(json_string(st.sampled_from(KEYS)), json_string())


def _array(items: list[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


def _object(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return b"{" + b",".join(k + b":" + v for k, v in pairs) + b"}"


JSON_TEXT = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(_array),
        st.lists(st.tuples(KEY_TEXT, inner), max_size=6).map(_object),  # duplicates allowed
        st.tuples(WS, inner, WS).map(b"".join),
    ),
    max_leaves=30,
)
DEEP = st.integers(1, 3000).flatmap(
    lambda n: st.sampled_from([b"[" * n + b"]" * n, b'{"a":' * n + b"1" + b"}" * n])
)
#: A top-level object that usually carries the fields a decoder looks for.
STRUCTURED = st.one_of(
    JSON_TEXT,
    st.lists(st.tuples(KEY_TEXT, st.one_of(JSON_TEXT, DEEP)), max_size=8).map(_object),
    st.lists(st.tuples(json_string(st.sampled_from(KEYS)), JSON_TEXT), min_size=1, max_size=8).map(
        _object
    ),
)


def _pipeline() -> Pipeline:
    return Pipeline(AmqpConfig(), publisher=None)  # type: ignore[arg-type]  # never delivers


def _source(provider: str, template: str) -> Source:
    return Source(provider=provider, mode="webhook", instance="1101000002", routing_key=template)  # type: ignore[arg-type]


TEMPLATES = st.sampled_from(["{event}", "{event}", "{provider}.{instance}.{event}", "{provider}"])
HOSTILE = st.one_of(STRUCTURED, BODIES)


def _check_classified(classify: Callable[[], Classified]) -> None:
    """A decoder either refuses the body (PayloadError) or names a non-empty event type and an
    integer timestamp or none."""
    try:
        got = classify()
    except PayloadError:
        return
    assert isinstance(got.event, str) and got.event
    assert got.timestamp is None or isinstance(got.timestamp, int)


def _check(out: Outbound, again: Outbound) -> None:
    """A message that frames, with a message_id that depends on the bytes only."""
    amqp_frames(out)
    assert out.message_id == again.message_id
    assert out.body == again.body


DEEP_FIELD = b'{"typeWebhook":"x","instance":"i","event":"e","instanceId":1,"j":%s}' % (
    b"[" * 50_000 + b"]" * 50_000
)
BAD_UTF8 = b'{"typeWebhook":"\xff","event":"\xff","instance":"i","instanceId":"\xff"}'


@settings(max_examples=200, deadline=None)
@given(body=HOSTILE, template=TEMPLATES)
@example(body=DEEP_FIELD, template="{event}")
@example(body=BAD_UTF8, template="{event}")
@example(body=b'{"typeWebhook":"x","timestamp":-5}', template="{event}")
@example(body=b'{"typeWebhook":"' + b"e" * 300 + b'"}', template="{provider}")
def test_greenapi_any_bytes_classified_or_quarantined(body: bytes, template: str) -> None:
    """The webhook and poll path: classify, route, build — a message either way."""
    _check_classified(lambda: greenapi.classify(body, "1101000002"))
    source = _source("greenapi", template)
    [out] = _pipeline().messages(source, body, ingest="webhook", receipt_id=7)
    [again] = _pipeline().messages(source, body, ingest="webhook", receipt_id=7)
    _check(out, again)
    assert out.body == body  # GREEN-API bodies travel unchanged, valid or not


@settings(max_examples=150, deadline=None)
@given(body=HOSTILE)
@example(body=b'{"receiptId":1,"body":' + b"[" * 50_000 + b"]" * 50_000 + b"}")
@example(body=b'{"receiptId":1,"body":{"typeWebhook":"\xff"}}')
@example(body=b'{"result":true,"reason":"\xff"}')
def test_greenapi_answers_any_bytes(body: bytes) -> None:
    _check_greenapi_answer(body)


def _evolution_route(body: bytes, template: str) -> Outbound:
    """What the Evolution route builds for a body whose instance is known."""
    pipeline, source = _pipeline(), _source("evolution", template)
    try:
        head = evolution.read_head(body)
        classified = evolution.classify(head, source.instance)
    except PayloadError as exc:
        return pipeline.quarantine(
            source, evolution.strip_secrets(body), str(exc), ingest="webhook"
        )
    return pipeline.outbound(source, evolution.strip_secrets(body), classified, ingest="webhook")


@settings(max_examples=200, deadline=None)
@given(body=HOSTILE, template=TEMPLATES)
@example(body=DEEP_FIELD, template="{event}")
@example(body=BAD_UTF8, template="{event}")
@example(body=b'{"event":"e","data":{"messageTimestamp":"\xc2\xb2"}}', template="{event}")
@example(body=b'{"event":"e","data":{"messageTimestamp":{"low":1,"high":-9}}}', template="{event}")
@example(body=b'{"event":"e","api\\u006bey":"secret"}', template="{event}")
@example(body=b'{"event":1,"apikey":"secret"}', template="{event}")
def test_evolution_any_bytes(body: bytes, template: str) -> None:
    _check_classified(lambda: evolution.classify(evolution.read_head(body), "i"))
    out = _evolution_route(body, template)
    _check(out, _evolution_route(body, template))
    try:
        published = msgspec.json.decode(out.body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        assert out.body == body  # what does not decode travels unchanged
    else:
        if isinstance(published, dict):
            assert not set(published) & set(evolution.SECRET_FIELDS), "secret republished"
            original = msgspec.json.decode(body)
            for name in evolution.SECRET_FIELDS:
                original.pop(name, None)
            assert published == original  # nothing but the secrets removed


@settings(max_examples=200, deadline=None)
@given(body=HOSTILE, template=TEMPLATES)
@example(body=DEEP_FIELD, template="{event}")
@example(body=BAD_UTF8, template="{event}")
@example(body=b'{"instanceId":1,"messages":[{"id":"\xff"}]}', template="{event}")
@example(body=b'{"instanceId":1,"a\\"b":[1],"\\u0000":[2]}', template="{event}")
@example(body=b'{"instanceId":' + b"9" * 4300 + b',"ack":[{}]}', template="{event}")
def test_chatapi_any_bytes(body: bytes, template: str) -> None:
    pipeline, source = _pipeline(), _source("chatapi", template)
    try:
        top, ident = chatapi.instance_of(body)
        items = chatapi.split(top, body, ident)
    except PayloadError:
        out = pipeline.quarantine(source, body, "x", ingest="webhook")
        _check(out, pipeline.quarantine(source, body, "x", ingest="webhook"))
        return
    assert items
    again = chatapi.split(*chatapi.instance_of(body)[:1], body, ident)
    whole = _decoded(body)
    for item, twin in zip(items, again, strict=True):
        assert item.classified.event == item.kind
        out = pipeline.outbound(source, item.body, item.classified, ingest="webhook")
        _check(out, pipeline.outbound(source, twin.body, twin.classified, ingest="webhook"))
        if whole is None or item.body == body:
            continue
        named = next(k for k in chatapi.INSTANCE_KEYS if k in whole)  # as the body named it
        wrapped = msgspec.json.decode(item.body)  # one JSON document of its own per item
        assert isinstance(wrapped, dict) and set(wrapped) == {named, item.kind}
        assert wrapped[named] == whole[named]
    if whole is not None and items[0].body != body:
        named = next(k for k in chatapi.INSTANCE_KEYS if k in whole)
        arrays = [v for k, v in whole.items() if k != named and isinstance(v, list)]
        assert len(items) == sum(len(a) for a in arrays)  # one message per item, none lost


def _decoded(body: bytes) -> dict[str, object] | None:
    try:
        value = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


@settings(max_examples=200, deadline=None)
@given(body=HOSTILE, template=TEMPLATES)
@example(body=DEEP_FIELD, template="{event}")
@example(body=BAD_UTF8, template="{event}")
@example(
    body=b'{"event":"message.ack","session":"s","payload":{"id":"a","ack":1e400}}',
    template="{event}",
)
@example(
    body=b'{"event":"message","timestamp":-1e300,"payload":{"timestamp":1e300}}', template="{event}"
)
@example(
    body=b'{"event":"message","timestamp":1e400,"payload":{"timestamp":-1e400}}', template="{event}"
)
def test_waha_any_bytes(body: bytes, template: str) -> None:
    """Any body: one message, the bytes unchanged, or its quarantine message — never a crash."""
    source = _source("waha", template)
    [out] = _pipeline().messages(source, body, ingest="webhook")
    [again] = _pipeline().messages(source, body, ingest="webhook")
    _check(out, again)
    assert out.body == body  # WAHA bodies travel unchanged, valid or not


@settings(max_examples=200, deadline=None)
@given(body=HOSTILE, template=TEMPLATES)
@example(body=DEEP_FIELD, template="{event}")
@example(body=BAD_UTF8, template="{event}")
@example(
    body=b'{"entry":[{"id":1,"changes":[{"field":"messages","value":{"messages":[1]}}]},{"id":2}]}',
    template="{event}",
)
def test_meta_any_bytes(body: bytes, template: str) -> None:
    """Any body, split and parsed as the route does: messages or a quarantine, never a crash;
    every item body is one JSON document of its own, and the same again on a redelivery."""
    adapter = REGISTRY["meta"]
    assert adapter.split is not None
    for part in adapter.split(body):
        source = _source("meta", template)
        outs = _pipeline().messages(source, part, ingest="webhook")
        again = _pipeline().messages(source, part, ingest="webhook")
        for out, twin in zip(outs, again, strict=True):
            _check(out, twin)
            if out.exchange != "notifications.invalid":
                assert isinstance(msgspec.json.decode(out.body), dict)
