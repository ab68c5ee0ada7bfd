"""Every provider adapter through the one interface: what a body is, its instance, its items.

The bodies below are shaped as the providers send them (sources in each comment); the sample
files in `bridge/data/samples/` are covered too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.arguments import SIMULATED
from bridge.config import load
from bridge.errors import ConfigError, PayloadError
from bridge.providers import KNOWN_EVENTS, REGISTRY, chatapi, evolution, greenapi
from bridge.providers.base import text_id, unchanged
from tests.conftest import SAMPLES

#: Evolution's HTTP-error webhook (`src/main.ts`, v2.3.6): global, so it names no instance and
#: carries the global API key as `api_key`.
EVOLUTION_ERROR = json.dumps(
    {
        "event": "error",
        "data": {
            "error": "Internal Server Error",
            "message": "Connection Closed",
            "status": 500,
            "response": {"message": "Connection Closed"},
        },
        "date_time": "2025-10-21T09:15:02.114Z",
        "api_key": "B6D711FCDE4D4FD5936544120E713976",
        "server_url": "https://evolution.example.com",
    }
).encode()
#: Evolution 2.4 spreads the history-sync fields into the envelope; `messaging-history.set`
#: is Baileys' history event forwarded as is ({chats, contacts, messages, isLatest, progress}).
EVOLUTION_HISTORY = json.dumps(
    {
        "event": "messaging-history.set",
        "instance": "sales-bot",
        "data": {
            "chats": [],
            "contacts": [{"id": "5511999990000@s.whatsapp.net", "name": "Ana"}],
            "messages": [],
            "isLatest": True,
            "progress": 100,
            "syncType": 2,
        },
        "isLatest": True,
        "progress": 100,
        "destination": "https://hooks.example.com/evolution",
        "date_time": "2025-11-03T10:00:00.000Z",
        "sender": "5511988887777@s.whatsapp.net",
        "server_url": "https://evolution.example.com",
        "apikey": None,
    }
).encode()
#: Chat API documentation examples of `ack` and `chatUpdate` bodies: no `instanceId`.
CHATAPI_ACK = (
    b'{"ack":[{"id":"false_17472822486@c.us_DF38E6A25B42CC8CCE57EC40F",'
    b'"chatId":"17472822486@c.us","status":"viewed"}]}'
)
CHATAPI_CHAT_UPDATE = (
    b'{"chatUpdate":[{"old":{"id":"17472822486@c.us","name":"Ann"},'
    b'"new":{"id":"17472822486@c.us","name":"Ann B.","image":"https://example.com/a.jpg"}}]}'
)
#: 1msg bodies name the channel `channelId`.
ONEMSG = (
    b'{"channelId":1234,"messages":[{"id":"true_17472822486@c.us_3EB0C7","body":"hi",'
    b'"fromMe":true,"time":1700000000,"chatId":"17472822486@c.us","type":"chat"}]}'
)


def test_the_registry_names_every_configurable_provider() -> None:
    assert set(REGISTRY) == set(SIMULATED)  # bridge simulate imitates each of them
    assert all(name == adapter.name for name, adapter in REGISTRY.items())
    assert frozenset().union(*(a.known_events for a in REGISTRY.values())) == KNOWN_EVENTS
    assert greenapi.KNOWN_EVENTS | evolution.KNOWN_EVENTS | chatapi.KNOWN_EVENTS <= KNOWN_EVENTS


@pytest.mark.parametrize(
    ("value", "text"),
    [("a", "a"), (7, "7"), ("", None), (True, None), (None, None), (1.5, None), ([1], None)],
)
def test_text_id(value: object, text: str | None) -> None:
    assert text_id(value) == text


# -- GREEN-API -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "instance"),
    [
        (b'{"typeWebhook":"incomingCall","instanceData":{"idInstance":1101000002}}', "1101000002"),
        (b'{"typeWebhook":"incomingCall","instanceData":{"idInstance":"77"}}', "77"),
        (b'{"typeWebhook":"incomingCall"}', None),
        (b'{"typeWebhook":"incomingCall","instanceData":{}}', None),
        (b'{"typeWebhook":"incomingCall","instanceData":{"idInstance":""}}', None),
    ],
)
def test_greenapi_instance(body: bytes, instance: str | None) -> None:
    parsed = greenapi.parse(body)
    assert parsed.instance == instance
    [item] = parsed.items("9")
    assert item.body == body and item.classified.event == "incomingCall"


def test_greenapi_samples_parse_to_one_item_each() -> None:
    for path in sorted((SAMPLES / "greenapi").glob("*.json")):
        if "Notification-response" in path.name:
            continue
        body = path.read_bytes()
        [item] = greenapi.parse(body).items("1")
        assert item.body == body
        assert item.classified == greenapi.classify(body, "1")


def test_greenapi_without_type_names_its_instance_and_is_refused() -> None:
    parsed = greenapi.parse(b'{"instanceData":{"idInstance":5}}')
    assert parsed.instance == "5"
    with pytest.raises(PayloadError, match="typeWebhook missing"):
        parsed.items("5")
    with pytest.raises(PayloadError, match="typeWebhook is empty"):
        greenapi.parse(b'{"typeWebhook":""}').items("5")


@pytest.mark.parametrize(
    "body", [b"{x", b"[1]", b'"s"', b"", b'{"instanceData":{"idInstance":true}}']
)
def test_greenapi_unreadable(body: bytes) -> None:
    with pytest.raises(PayloadError):
        greenapi.parse(body)


@pytest.mark.parametrize(
    ("status", "text", "kind", "error_class"),
    [
        (400, "Instance is starting process", "Transient", "instance_starting"),
        (400, "Instance not authorized", "Suspended", "not_authorized"),
        (400, "Instance expired", "Permanent", "instance_expired"),
        (400, "Instance is deleted", "Permanent", "instance_deleted"),
        (400, "Validation failed", "Permanent", "bad_request"),
        (400, "Bad request data", "Permanent", "bad_request"),
        (400, "Unexpected token } in JSON", "Permanent", "bad_request"),
        (400, "something else", "Suspended", "http_400"),
        (401, "", "Permanent", "unauthorized"),
        (403, "", "Permanent", "forbidden"),
        (404, "", "Permanent", "not_found"),
        (429, "", "Transient", "rate_limited"),
        (466, "quota", "Suspended", "quota_exceeded"),
        (499, "", "Transient", "http_499"),
        (502, "bad gateway", "Transient", "http_502"),
        (418, "", "Suspended", "http_418"),
    ],
)
def test_greenapi_error_for_status(status: int, text: str, kind: str, error_class: str) -> None:
    error = greenapi.error_for_status(status, text.encode())
    assert type(error).__name__ == f"{kind}ProviderError"
    assert error.error_class == error_class


# -- Evolution -----------------------------------------------------------------------------


def test_evolution_error_webhook_names_no_instance_and_loses_its_key() -> None:
    parsed = evolution.parse(EVOLUTION_ERROR)
    assert parsed.instance is None
    [item] = parsed.items("sales-bot")
    published = json.loads(item.body)
    assert "api_key" not in published and published["event"] == "error"
    original = json.loads(EVOLUTION_ERROR)
    del original["api_key"]
    assert published == original
    assert item.classified.event == "error" and item.classified.known


def test_evolution_24_envelope_extras_and_history_event() -> None:
    parsed = evolution.parse(EVOLUTION_HISTORY)
    assert parsed.instance == "sales-bot"
    [item] = parsed.items("sales-bot")
    assert item.classified.event == "messaging-history.set" and item.classified.known
    published = json.loads(item.body)
    assert published["isLatest"] is True and published["progress"] == 100
    assert "apikey" not in published


def test_evolution_samples() -> None:
    for path in sorted((SAMPLES / "evolution").glob("*.json")):
        body = path.read_bytes()
        parsed = evolution.parse(body)
        assert parsed.instance == json.loads(body)["instance"], path.name
        [item] = parsed.items("x")
        assert item.classified.event == json.loads(body)["event"]


@pytest.mark.parametrize("body", [b"{x", b"[]", b'{"event":"x","instance":7}'])
def test_evolution_unreadable(body: bytes) -> None:
    with pytest.raises(PayloadError):
        evolution.parse(body)


def test_evolution_without_event_is_refused_but_cleaned() -> None:
    body = b'{"instance":"a","apikey":"k"}'
    parsed = evolution.parse(body)
    with pytest.raises(PayloadError, match="event missing"):
        parsed.items("a")
    assert REGISTRY["evolution"].clean(body) == b'{"instance":"a"}'


# -- Chat API and 1msg ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "kind"), [(CHATAPI_ACK, "ack"), (CHATAPI_CHAT_UPDATE, "chatUpdate")]
)
def test_chatapi_documentation_bodies_without_instance(body: bytes, kind: str) -> None:
    parsed = chatapi.parse(body)
    assert parsed.instance is None
    [item] = parsed.items("79926")
    wrapped = json.loads(item.body)
    assert wrapped == {"instanceId": "79926", kind: json.loads(body)[kind][0]}
    assert item.classified.event == kind
    assert item.classified.chat_id == "17472822486@c.us"


def test_onemsg_channel_is_the_instance() -> None:
    parsed = chatapi.parse(ONEMSG)
    assert parsed.instance == "1234"
    [item] = parsed.items("1234")
    wrapped = json.loads(item.body)
    assert set(wrapped) == {"channelId", "message"} and wrapped["channelId"] == 1234
    assert item.classified.message_key == "1234:true_17472822486@c.us_3EB0C7"
    assert item.classified.timestamp == 1700000000


def test_chatapi_instance_id_wins_over_channel_id() -> None:
    parsed = chatapi.parse(b'{"instanceId":"1","channelId":"2","ack":[{"id":"a"}]}')
    assert parsed.instance == "1"
    assert set(json.loads(parsed.items("1")[0].body)) == {"instanceId", "ack"}


def test_chatapi_samples() -> None:
    for path in sorted((SAMPLES / "chatapi").glob("*.json")):
        body = path.read_bytes()
        parsed = chatapi.parse(body)
        assert parsed.instance == json.loads(body)["instanceId"]
        assert parsed.items(parsed.instance)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{x", "undecodable Chat API webhook"),
        (b'{"instanceId":true}', "instanceId is not a string or number"),
        (b'{"channelId":""}', "channelId is not a string or number"),
        (b'{"instanceId":"\xff"}', "undecodable instanceId"),
    ],
)
def test_chatapi_unreadable(body: bytes, error: str) -> None:
    with pytest.raises(PayloadError, match=error):
        chatapi.parse(body)


def test_chatapi_instance_of_needs_a_named_instance() -> None:
    with pytest.raises(PayloadError, match="instanceId missing"):
        chatapi.instance_of(CHATAPI_ACK)
    top, instance = chatapi.instance_of(ONEMSG)
    assert instance == "1234" and "messages" in top


@pytest.mark.parametrize("body", [b"{}", b'{"instanceId":"1"}', b'{"channelId":2}'])
def test_chatapi_nothing_to_publish(body: bytes) -> None:
    with pytest.raises(PayloadError, match="no messages"):
        chatapi.parse(body).items("1")


def test_chatapi_status_body_without_arrays_is_one_status_message() -> None:
    body = b'{"instanceId":"1","status":"authenticated"}'
    [item] = chatapi.parse(body).items("1")
    assert item.body == body and item.classified.event == "status"


def test_adapters_default_to_unchanged_quarantine_bodies() -> None:
    assert REGISTRY["greenapi"].clean is unchanged and REGISTRY["chatapi"].clean is unchanged
    assert unchanged(b"x") == b"x"


def test_config_takes_its_providers_from_the_registry(tmp_path: Path) -> None:
    path = tmp_path / "b.toml"
    path.write_text('[[sources]]\nprovider = "nope"\nmode = "webhook"\ninstance = "x"\n')
    with pytest.raises(ConfigError) as caught:
        load(path, {})
    assert str(caught.value) == (
        "sources[0].provider: unknown provider 'nope' (one of greenapi, evolution, chatapi, waha, meta)"
    )
    for name, adapter in REGISTRY.items():
        instance = "1" if adapter.check_instance("x") else "x"
        path.write_text(
            f'[[sources]]\nprovider = "{name}"\nmode = "webhook"\ninstance = "{instance}"\n'
        )
        assert load(path, {}).config.sources[0].provider == name


@pytest.mark.parametrize(
    ("event", "config", "suffix"),
    [
        ("messages.upsert", "MESSAGES_UPSERT", "messages-upsert"),
        ("group-participants.update", "GROUP_PARTICIPANTS_UPDATE", "group-participants-update"),
        ("messaging-history.set", "MESSAGING_HISTORY_SET", "messaging-history-set"),
        ("typebot.change-status", "TYPEBOT_CHANGE_STATUS", "typebot-change-status"),
    ],
)
def test_evolution_event_spellings(event: str, config: str, suffix: str) -> None:
    assert evolution.config_name(event) == config
    assert evolution.url_suffix(event) == suffix
