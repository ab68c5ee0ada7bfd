"""Meta's Cloud API through the provider interface: samples, batches, keys, challenge (pure)."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from bridge.config import load
from bridge.errors import ConfigError, PayloadError
from bridge.ingest.access import Request, Signature, signed
from bridge.providers import meta
from tests.conftest import SAMPLES

META = SAMPLES / "meta"
VECTOR_SECRET = b"1222e786b144d0e85b9f365372d93676"
VECTOR_HEADER = b"sha256=54edfa1d7259e0eb13c677cc7d73d1b5c86cfa12433d19156e058ab9251bc441"


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def sample(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((META / name).read_bytes())
    return loaded


def items_of(body: bytes) -> list[tuple[str | None, meta.Item]]:
    out = []
    for part in meta.split(body):
        parsed = meta.parse(part)
        out += [(parsed.instance, item) for item in parsed.items(parsed.instance or "")]
    return out


def one_item(body: bytes) -> dict[str, Any]:
    """A body as a Cloud API parser sees it: one entry, one change, one item at most."""
    value: dict[str, Any] = json.loads(body)
    assert value["object"] == "whatsapp_business_account"
    [entry] = value["entry"]
    [change] = entry["changes"]
    arrays = [k for k in meta.ITEM_ARRAYS if k in change["value"]]
    assert len(arrays) <= 1 and all(len(change["value"][k]) == 1 for k in arrays)
    return value


@pytest.mark.parametrize("path", sorted(META.glob("*.json")), ids=lambda p: p.name)
def test_every_sample(path: Path) -> None:
    original = json.loads(path.read_bytes())
    body = compact(original)
    [(instance, item)] = items_of(body)
    assert instance == original["entry"][0]["id"]
    change = original["entry"][0]["changes"][0]
    expected = next((k for k in meta.ITEM_ARRAYS if k in change["value"]), change["field"])
    assert item.classified.event == expected and item.classified.known
    assert json.loads(item.body) == original  # one item already: the same payload
    one_item(item.body)
    if change["field"] == "messages":
        phone = change["value"]["metadata"]["phone_number_id"]
        assert item.classified.headers == (("x-phone-number-id", phone),)


def test_message_and_status_keys() -> None:
    [(_, message)] = items_of(compact(sample("messages.text.pywa.json")))
    assert message.classified.message_key == "wamid.xyzxyz"
    assert message.classified.chat_id == "972987654321"
    assert message.classified.timestamp == 1697043223
    [(_, status)] = items_of(compact(sample("statuses.read.pywa.json")))
    assert status.classified.message_key == "wamid.xyzxyz:read"
    assert status.classified.chat_id == "972987654321"


def batch() -> dict[str, Any]:
    """Two accounts; the first has two messages of two users, a status and an error."""
    text = sample("messages.text.pywa.json")
    value = text["entry"][0]["changes"][0]["value"]
    second_user = {"profile": {"name": "Other"}, "wa_id": "15550001111"}
    value["contacts"].append(second_user)
    value["messages"].append(
        {
            "from": "15550001111",
            "id": "wamid.two",
            "timestamp": "1697043299",
            "type": "text",
            "text": {"body": "2"},
        }
    )
    value["statuses"] = sample("statuses.sent.pywa.json")["entry"][0]["changes"][0]["value"][
        "statuses"
    ]
    value["errors"] = [{"code": 131000, "title": "Something went wrong"}]
    other = sample("message_template_status_update.approved.pywa.json")["entry"][0]
    text["entry"].append(other)
    return text


def test_a_batch_becomes_one_cloud_api_body_per_item() -> None:
    got = items_of(compact(batch()))
    assert [(i, it.classified.event) for i, it in got] == [
        ("1234567890987654321", "messages"),
        ("1234567890987654321", "messages"),
        ("1234567890987654321", "statuses"),
        ("1234567890987654321", "errors"),
        ("102290129340398", "message_template_status_update"),
    ]
    first, second, status, error, template = (one_item(it.body) for _, it in got)
    value = first["entry"][0]["changes"][0]["value"]
    assert [c["wa_id"] for c in value["contacts"]] == ["972987654321"]  # its own user only
    assert value["metadata"]["phone_number_id"] == "1122334455667"
    assert value["messaging_product"] == "whatsapp"
    second_value = second["entry"][0]["changes"][0]["value"]
    assert [c["wa_id"] for c in second_value["contacts"]] == ["15550001111"]
    assert second_value["messages"][0]["id"] == "wamid.two"
    assert status["entry"][0]["changes"][0]["value"]["statuses"][0]["status"] == "sent"
    assert error["entry"][0]["changes"][0]["value"]["errors"][0]["code"] == 131000
    assert template["entry"][0]["changes"][0]["field"] == "message_template_status_update"
    assert template["entry"][0]["time"] == 1751247548
    again = items_of(compact(batch()))  # a redelivery: the very same bodies
    assert [it.body for _, it in again] == [it.body for _, it in got]


def test_a_change_of_another_shape_travels_whole() -> None:
    body = compact(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": "1",
                    "changes": [
                        {"field": "messages", "value": []},
                        {"field": "calls", "value": {"calls": [{"id": "wacid.1"}]}},
                        {"field": "brand_new", "value": {}},
                    ],
                }
            ],
        }
    )
    got = items_of(body)
    assert [it.classified.event for _, it in got] == ["messages", "calls", "brand_new"]
    assert [it.classified.known for _, it in got] == [True, True, False]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{x", "undecodable Cloud API webhook"),
        (b'{"object":"whatsapp_business_account","entry":[]}', "0 entries"),
        (b'{"entry":[{"id":"1"}]}', "no changes"),
        (b'{"entry":[{"id":"1","changes":[{"value":{}}]}]}', "without its field"),
        (b'{"entry":[{"id":"1","changes":[7]}]}', "undecodable change"),
    ],
)
def test_refused(body: bytes, error: str) -> None:
    with pytest.raises(PayloadError, match=error):
        for part in meta.split(body):
            meta.parse(part).items("1")


def test_odd_items_still_travel() -> None:
    body = compact(
        {
            "entry": [
                {
                    "id": 5,
                    "changes": [
                        {
                            "field": "messages",
                            "value": {
                                "metadata": 3,
                                "contacts": [1, {"wa_id": "9"}],
                                "messages": [7, {"id": "m", "from": "8", "timestamp": 12}],
                            },
                        }
                    ],
                }
            ]
        }
    )
    got = items_of(body)
    assert [i for i, _ in got] == ["5", "5"]
    assert got[0][1].classified.message_key is None
    assert got[1][1].classified.message_key == "m" and got[1][1].classified.timestamp == 12
    assert got[1][1].classified.headers == ()


def test_more_odd_shapes() -> None:
    body = compact(
        {
            "entry": [
                {
                    "id": "5",
                    "time": 1e300,
                    "changes": [
                        {
                            "field": "messages",
                            "value": {
                                "contacts": {},
                                "messages": [{"id": 5}, {"from_user_id": "US.1", "id": "u"}],
                            },
                        }
                    ],
                }
            ]
        }
    )
    body = body.replace(b"1e+300", b"1e400")  # beyond a float: the time is left out
    got = items_of(body)
    assert [it.classified.message_key for _, it in got] == [None, "u"]
    assert all(it.classified.headers == () for _, it in got)
    contacts = [{"wa_id": "1"}, {"user_id": "US.1"}]
    body = compact(
        {
            "entry": [
                {
                    "id": "5",
                    "changes": [
                        {
                            "field": "messages",
                            "value": {
                                "contacts": contacts,
                                "messages": [{"from_user_id": "US.1", "id": "u"}],
                            },
                        }
                    ],
                }
            ]
        }
    )
    [(_, item)] = items_of(body)
    assert json.loads(item.body)["entry"][0]["changes"][0]["value"]["contacts"] == [
        {"user_id": "US.1"}
    ]
    assert item.classified.chat_id == "US.1"
    body = compact(
        {"entry": [{"id": "5", "time": "x", "changes": [{"field": "account_update", "value": {}}]}]}
    )
    [(_, item)] = items_of(body)
    assert item.classified.timestamp is None


def test_the_signature_vector() -> None:
    body = (META / "signature-vector.body").read_bytes()
    key = Signature(VECTOR_SECRET, meta.SIGNATURE)
    assert signed(key, Request([(b"x-hub-signature-256", VECTOR_HEADER)]), body)
    assert not signed(key, Request([(b"x-hub-signature-256", VECTOR_HEADER)]), body + b" ")
    assert not signed(key, Request([(b"x-hub-signature-256", VECTOR_HEADER[7:])]), body)
    digest = hmac.new(VECTOR_SECRET, body, hashlib.sha256).hexdigest().encode()
    assert b"sha256=" + digest == VECTOR_HEADER


TOKENS = [b"verify-me-0123", b"another-token-456"]


@pytest.mark.parametrize(
    ("query", "echo"),
    [
        (
            b"hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=verify-me-0123",
            b"1158201444",
        ),
        (b"hub.mode=subscribe&hub.challenge=abc&hub.verify_token=another-token-456", b"abc"),
        (b"hub.mode=subscribe&hub.challenge=1&hub.verify_token=wrong", None),
        (b"hub.mode=unsubscribe&hub.challenge=1&hub.verify_token=verify-me-0123", None),
        (b"hub.challenge=1&hub.verify_token=verify-me-0123", None),
        (b"hub.mode=subscribe&hub.verify_token=verify-me-0123", None),
        (b"hub.mode=subscribe&hub.challenge=1&hub.verify_token=", None),
        (
            b"hub.mode=subscribe&hub.challenge=" + b"9" * 300 + b"&hub.verify_token=verify-me-0123",
            None,
        ),
        (b"", None),
        (b"%FF%FE=x", None),
    ],
)
def test_challenge(query: bytes, echo: bytes | None) -> None:
    assert meta.challenge(query, TOKENS) == echo
    assert meta.challenge(query, []) is None


def _config(tmp_path: Path, extra: str, instance: str = "102290129340398") -> Path:
    path = tmp_path / "b.toml"
    path.write_text(
        f'[[sources]]\nprovider = "meta"\nmode = "webhook"\ninstance = "{instance}"\n{extra}'
    )
    return path


def test_config_keys(tmp_path: Path) -> None:
    path = _config(tmp_path, 'app_secret_env = "S"\nverify_token_env = "V"\n')
    settings = load(path, {"S": "app-secret-0123456789", "V": "verify-token-0123"})
    assert settings.hmac_keys["meta:102290129340398"].reveal() == "app-secret-0123456789"
    assert settings.verify_tokens["meta:102290129340398"].reveal() == "verify-token-0123"


@pytest.mark.parametrize(
    ("extra", "env", "instance", "error"),
    [
        (
            'app_secret_env = "S"\n',
            {},
            "1",
            r"sources\[0\]\.app_secret_env: environment variable S is not set",
        ),
        (
            'app_secret_env = "S"\n',
            {"S": "secret"},
            "1",
            r"sources\[0\]\.app_secret: a well-known default key",
        ),
        (
            'verify_token_env = "V"\n',
            {"V": "evolution"},
            "1",
            r"sources\[0\]\.verify_token: a well-known",
        ),
        ('app_secret_env = "S"\nhmac_key_env = "S"\n', {"S": "x" * 20}, "1", "set one signing key"),
        ("", {}, "abc", "a WhatsApp Business Account id is digits only"),
    ],
)
def test_config_refusals(
    tmp_path: Path, extra: str, env: dict[str, str], instance: str, error: str
) -> None:
    with pytest.raises(ConfigError, match=error):
        load(_config(tmp_path, extra, instance), env)


def test_only_meta_answers_verification_requests(tmp_path: Path) -> None:
    path = tmp_path / "b.toml"
    path.write_text(
        '[[sources]]\nprovider = "waha"\nmode = "webhook"\ninstance = "s"\nverify_token_env = "V"\n'
    )
    with pytest.raises(ConfigError, match="waha sends no verification request"):
        load(path, {"V": "a-long-verify-token"})
    path.write_text(
        '[[sources]]\nprovider = "chatapi"\nmode = "webhook"\ninstance = "s"\napp_secret_env = "V"\n'
    )
    with pytest.raises(ConfigError, match=r"app_secret_env: chatapi does not sign"):
        load(path, {"V": "a-long-verify-token"})
