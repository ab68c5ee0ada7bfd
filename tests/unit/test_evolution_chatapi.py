from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from bridge.errors import PayloadError
from bridge.providers import chatapi, evolution
from tests.conftest import SAMPLES

EVOLUTION = sorted((SAMPLES / "evolution").glob("*.json"))
CHATAPI = sorted((SAMPLES / "chatapi").glob("*.json"))


@pytest.mark.parametrize("path", EVOLUTION, ids=lambda p: p.name)
def test_evolution_samples_route_by_event(path: Path) -> None:
    body = path.read_bytes()
    head = evolution.read_head(body)
    expected = json.loads(body)
    assert head.event == expected["event"]
    assert path.name.startswith(head.event)
    got = evolution.classify(head, "inst")
    assert got.event == expected["event"]
    assert got.known
    clean = evolution.strip_secrets(body)
    stripped = json.loads(clean)
    assert "apikey" not in stripped
    expected.pop("apikey", None)
    assert stripped == expected  # everything else kept, in order
    assert list(stripped) == list(expected)


def test_evolution_message_keys_and_time() -> None:
    body = (SAMPLES / "evolution" / "messages.upsert-text-fromMe.v2.json").read_bytes()
    got = evolution.classify(evolution.read_head(body), "inst")
    data = json.loads(body)["data"]
    assert got.chat_id == data["key"]["remoteJid"]
    assert got.message_key == f"inst:messages.upsert:{data['key']['id']}"
    assert got.timestamp == int(data["messageTimestamp"])
    status = (SAMPLES / "evolution" / "messages.update-status.v2.json").read_bytes()
    got = evolution.classify(evolution.read_head(status), "inst")
    assert got.message_key == "inst:messages.update:A5561E44C2A63682E4295B52F484C14E:DELETED"
    assert got.timestamp is None  # date_time is never trusted as the event time


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (1700000000, 1700000000),
        ("1700000000", 1700000000),
        ({"low": 1700000000, "high": 0, "unsigned": True}, 1700000000),
        ("x", None),
        (True, None),
        (None, None),
    ],
)
def test_evolution_timestamp_shapes(value: object, seconds: int | None) -> None:
    body = msgspec.json.encode(
        {"event": "messages.upsert", "instance": "i", "data": {"messageTimestamp": value}}
    )
    assert evolution.classify(evolution.read_head(body), "i").timestamp == seconds


def test_evolution_strip_keeps_bytes_without_secrets() -> None:
    body = b'{ "event" : "call",  "instance":"i", "data": {"apikey": "nested stays"} }'
    assert evolution.strip_secrets(body) == body
    with_key = b'{"event":"error","data":{},"api_key":"GLOBAL"}'
    assert b"GLOBAL" not in evolution.strip_secrets(with_key)


@pytest.mark.parametrize("body", [b"", b"[]", b"nope", b'{"event": 5}', b'"s"'])
def test_evolution_bad_envelopes(body: bytes) -> None:
    with pytest.raises(PayloadError):
        evolution.classify(evolution.read_head(body), "i")


def test_evolution_missing_event() -> None:
    with pytest.raises(PayloadError, match="event missing"):
        evolution.classify(evolution.read_head(b'{"instance":"i","data":{}}'), "i")


@pytest.mark.parametrize("path", CHATAPI, ids=lambda p: p.name)
def test_chatapi_samples_split(path: Path) -> None:
    body = path.read_bytes()
    top, ident = chatapi.instance_of(body)
    original = json.loads(body)
    assert ident == original["instanceId"]
    items = chatapi.split(top, body, ident)
    expected = [(k, item) for name, k in chatapi.KINDS.items() for item in original.get(name, [])]
    assert sorted(i.kind for i in items) == sorted(k for k, _ in expected)
    for item in items:
        decoded = json.loads(item.body)
        assert decoded["instanceId"] == original["instanceId"]
        assert item.classified.event == item.kind


def test_chatapi_one_message_per_item_and_keys() -> None:
    body = json.dumps(
        {
            "instanceId": 42,
            "messages": [{"id": "m1", "chatId": "c@c.us", "time": 1638829630}, {"id": "m2"}],
            "ack": [{"id": "m1", "status": "viewed", "chatId": "c@c.us"}],
            "chatUpdate": [{"old": None, "new": {"id": "g@g.us", "name": "x"}}],
            "surprise": [1],
        }
    ).encode()
    top, ident = chatapi.instance_of(body)
    assert ident == "42"
    items = chatapi.split(top, body, ident)
    assert [i.kind for i in items] == ["message", "message", "ack", "chatUpdate", "surprise"]
    assert (
        items[0].body
        == b'{"instanceId":42,"message":{"id": "m1", "chatId": "c@c.us", "time": 1638829630}}'
    )
    assert (
        items[0].classified.message_key == "42:m1" and items[0].classified.timestamp == 1638829630
    )
    assert items[2].classified.message_key == "42:m1:viewed"
    assert items[3].classified.chat_id == "g@g.us"
    assert not items[4].classified.known


def test_chatapi_status_body_is_one_message() -> None:
    body = b'{"instanceId":"7","accountStatus":"authenticated","statusData":{"substatus":"normal"}}'
    top, ident = chatapi.instance_of(body)
    (item,) = chatapi.split(top, body, ident)
    assert item.kind == "status" and item.body == body


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"{}", "instanceId missing"),
        (b'{"instanceId": ""}', "not a string"),
        (b'{"instanceId": true}', "not a string"),
        (b'{"instanceId": {"a": 1}}', "not a string"),
        (b"[1]", "undecodable"),
        (b"{bad", "undecodable"),
    ],
)
def test_chatapi_bad_bodies(body: bytes, match: str) -> None:
    with pytest.raises(PayloadError, match=match):
        chatapi.instance_of(body)


def test_chatapi_empty_envelope_is_payload_error() -> None:
    top, ident = chatapi.instance_of(b'{"instanceId":"1"}')
    with pytest.raises(PayloadError):
        chatapi.split(top, b'{"instanceId":"1"}', ident)
