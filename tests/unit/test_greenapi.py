from __future__ import annotations

import pytest

from bridge.errors import (
    PayloadError,
    PermanentProviderError,
    SuspendedProviderError,
    TransientProviderError,
)
from bridge.providers import greenapi
from tests.conftest import SAMPLES, greenapi_samples

SAMPLE_EVENTS = {name: body for name, body in greenapi_samples()}


@pytest.mark.parametrize("name", sorted(SAMPLE_EVENTS))
def test_every_sample_classifies_to_its_type_webhook(name: str) -> None:
    expected = name.split("-", maxsplit=1)[0].removesuffix(".json")
    got = greenapi.classify(SAMPLE_EVENTS[name], "1101000001")
    assert got.event == expected
    assert got.known


def test_incoming_message_keys() -> None:
    body = SAMPLE_EVENTS["incomingMessageReceived-textMessage.json"]
    got = greenapi.classify(body, "42")
    assert got.chat_id and got.chat_id.endswith("@c.us")
    assert got.message_key == f"42:{got.chat_id}:" + got.message_key.split(":")[-1]  # type: ignore[union-attr]
    assert isinstance(got.timestamp, int)


def test_status_key_includes_status() -> None:
    body = SAMPLE_EVENTS["outgoingMessageStatus-sent.json"]
    got = greenapi.classify(body, "7")
    assert got.chat_id == "71231234567@c.us"
    assert got.message_key == "7:71231234567@c.us:ECE6BBEA514B66872790C3D9D52C5C19:sent"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "undecodable"),
        (b"not json", "undecodable"),
        (b"[]", "undecodable"),
        (b'"text"', "undecodable"),
        (b"null", "undecodable"),
        (b"{}", "typeWebhook missing"),
        (b'{"typeWebhook": 5}', "undecodable"),
        (b'{"typeWebhook": ""}', "typeWebhook is empty"),
        (b'{"typeWebhook": "x", "timestamp": "soon"}', "undecodable"),
        (b'{"typeWebhook": "x"', "undecodable"),
    ],
)
def test_bad_bodies_are_payload_errors(body: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        greenapi.classify(body, "1")


def test_unknown_type_passes_through() -> None:
    got = greenapi.classify(b'{"typeWebhook": "brandNewThing", "extra": [1]}', "1")
    assert got.event == "brandNewThing"
    assert not got.known


def test_receive_answer_shapes() -> None:
    sample = (SAMPLES / "greenapi" / "receiveNotification-response.json").read_bytes()
    got = greenapi.decode_received(sample)
    assert got is not None and got.receiptId == 1234567
    assert greenapi.classify(bytes(got.body), "1").event == "incomingMessageReceived"
    assert greenapi.decode_received(b"null") is None
    assert greenapi.decode_received(b"") is None
    assert greenapi.decode_received(b"  \n") is None


def test_receive_body_bytes_are_exact() -> None:
    inner = b'{ "typeWebhook" : "x",\n  "z": 1.50 }'
    got = greenapi.decode_received(b'{"receiptId": 9, "body": ' + inner + b"}")
    assert got is not None and bytes(got.body) == inner


@pytest.mark.parametrize(
    ("answer", "receipt"),
    [
        (b"[1,2]", None),
        (b'{"receiptId": "x"}', None),
        (b'{"body": {}}', None),
        (b"garbage", None),
        (b'{"receiptId": 5, "body": {"typeWebhook": "x", ', 5),
        (b'{"receiptId":77,"body":{bad json}}', 77),
    ],
)
def test_malformed_receive_answers(answer: bytes, receipt: int | None) -> None:
    with pytest.raises(greenapi.MalformedResponse) as info:
        greenapi.decode_received(answer)
    assert info.value.receipt_id == receipt


def test_delete_answers() -> None:
    for name in (
        "deleteNotification-response.json",
        "deleteNotification-response-with-reason.json",
    ):
        got = greenapi.decode_deleted((SAMPLES / "greenapi" / name).read_bytes())
        assert got.result is True
    assert greenapi.decode_deleted(b'{"result": false}').result is False
    with pytest.raises(greenapi.MalformedResponse):
        greenapi.decode_deleted(b"")


@pytest.mark.parametrize(
    ("status", "body", "kind", "error_class"),
    [
        (
            400,
            b'{"message":"instance in starting process try later"}',
            TransientProviderError,
            "instance_starting",
        ),
        (400, b"instance account not authorized", SuspendedProviderError, "not_authorized"),
        (400, b"Instance account is expired. Renew", PermanentProviderError, "instance_expired"),
        (400, b"Instance is deleted", PermanentProviderError, "instance_deleted"),
        (400, b"Bad Request / Validation failed", PermanentProviderError, "bad_request"),
        (400, b"something new", SuspendedProviderError, "http_400"),
        (401, b"Unauthorized", PermanentProviderError, "unauthorized"),
        (403, b"Forbidden", PermanentProviderError, "forbidden"),
        (404, b"Not Found", PermanentProviderError, "not_found"),
        (429, b"Too Many Requests", TransientProviderError, "rate_limited"),
        (466, b"{}", SuspendedProviderError, "quota_exceeded"),
        (499, b"", TransientProviderError, "http_499"),
        (500, b"oops", TransientProviderError, "http_500"),
        (502, b"Bad Gateway", TransientProviderError, "http_502"),
        (503, b"", TransientProviderError, "http_503"),
        (418, b"", SuspendedProviderError, "http_418"),
    ],
)
def test_status_classes(status: int, body: bytes, kind: type, error_class: str) -> None:
    err = greenapi.error_for_status(status, body)
    assert type(err) is kind
    assert err.error_class == error_class
