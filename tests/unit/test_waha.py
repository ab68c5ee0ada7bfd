"""WAHA through the provider interface: samples, routing, keys, the signature (pure)."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest

from bridge.config import load
from bridge.errors import ConfigError, PayloadError
from bridge.ingest.access import Credential, Request, Signature, accepts, signed
from bridge.providers import REGISTRY, waha
from tests.conftest import SAMPLES

WAHA = SAMPLES / "waha"
#: The documented test vector (docs how-to/events "HMAC", reproduced in SOURCES.txt).
VECTOR_KEY = b"my-secret-key"
VECTOR_HMAC = (
    b"208f8a55dde9e05519e898b10b89bf0d0b3b0fdf11fdbf09b6b90476301b98d8"
    b"097c462b2b17a6ce93b6b47a136cf2e78a33a63f6752c2c1631777076153fa89"
)


def sign(key: bytes, body: bytes) -> str:
    return hmac.new(key, body, hashlib.sha512).hexdigest()


def compact(path: Path) -> bytes:
    """A sample as WAHA sends it: compact JSON.stringify, raw UTF-8."""
    return json.dumps(
        json.loads(path.read_bytes()), separators=(",", ":"), ensure_ascii=False
    ).encode()


@pytest.mark.parametrize("path", sorted(WAHA.glob("*.json")), ids=lambda p: p.name)
def test_every_sample_routes_to_its_event(path: Path) -> None:
    body = compact(path)
    envelope = json.loads(body)
    parsed = waha.parse(body)
    assert parsed.instance == envelope["session"]
    [item] = parsed.items(envelope["session"])
    assert item.body == body  # unchanged
    assert item.classified.event == envelope["event"]
    assert item.classified.known
    if "id" in envelope:
        assert item.classified.headers == (("x-event-id", envelope["id"]),)


def test_message_keys_and_times() -> None:
    [message] = waha.parse(compact(WAHA / "message.docs.json")).items("default")
    assert message.classified.message_key == (
        "default:message:true_11111111111@c.us_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    )
    assert message.classified.timestamp == 1667561485
    assert message.classified.chat_id == "11111111111@c.us"  # fromMe: the chat is `to`
    [ack] = waha.parse(compact(WAHA / "message.ack.docs.json")).items("default")
    assert ack.classified.message_key == (
        "default:message.ack:true_11111111111@c.us_4CC5EDD64BC22EBA6D639F2AF571346C:READ"
    )
    body = b'{"event":"message.ack","session":"s","payload":{"id":"x","ack":2},"timestamp":1700000000123}'
    [numeric] = waha.parse(body).items("s")
    assert numeric.classified.message_key == "s:message.ack:x:2"
    assert numeric.classified.timestamp == 1700000000  # the envelope's ms
    incoming = (
        b'{"event":"message","session":"s","payload":{"id":"m","from":"1@c.us","fromMe":false}}'
    )
    assert waha.parse(incoming).items("s")[0].classified.chat_id == "1@c.us"


def test_gows_capture_keeps_its_bytes_and_non_ascii() -> None:
    body = compact(WAHA / "message.text.gows-2026.1.2.capture.json")
    assert "João".encode() in body
    [item] = waha.parse(body).items("default")
    assert item.body == body and item.classified.headers[0][0] == "x-event-id"


@pytest.mark.parametrize(
    ("body", "instance"),
    [
        (b'{"event":"message"}', None),
        (b'{"event":"message","session":""}', None),
        (b'{"event":"message","session":7}', "7"),
        (b'{"event":"x","session":"s","payload":[1]}', "s"),
        (b'{"event":"message","session":"s","payload":{"id":5}}', "s"),
    ],
)
def test_tolerant_envelopes(body: bytes, instance: str | None) -> None:
    parsed = waha.parse(body)
    assert parsed.instance == instance
    [item] = parsed.items("s")
    assert item.classified.message_key is None


def test_unknown_event_passes_under_its_own_name() -> None:
    [item] = waha.parse(b'{"event":"brand.new","session":"s"}').items("s")
    assert item.classified.event == "brand.new" and not item.classified.known


@pytest.mark.parametrize("body", [b"{x", b"[]", b'"s"', b"", b'{"event":1}'])
def test_unreadable(body: bytes) -> None:
    with pytest.raises(PayloadError):
        waha.parse(body)


def test_no_event_is_refused() -> None:
    with pytest.raises(PayloadError, match="event missing"):
        waha.parse(b'{"session":"s"}').items("s")


def test_the_documented_vector() -> None:
    body = (WAHA / "signature-vector.body").read_bytes()
    assert sign(VECTOR_KEY, body).encode() == VECTOR_HMAC
    credential = Credential(None, signature=Signature(VECTOR_KEY, waha.SIGNATURE))
    headers = [(b"x-webhook-hmac", VECTOR_HMAC), (b"x-webhook-hmac-algorithm", b"sha512")]
    assert accepts(credential, Request(headers), body)
    assert accepts(credential, Request(headers[:1]), body)  # the algorithm header is optional


KEY = b"a-long-random-key-0123456789"
EMOJI = '{"event":"message","session":"s","payload":{"body":"olá 👋🏽 ção"}}'.encode()


@pytest.mark.parametrize(
    ("headers", "body", "ok"),
    [
        ([(b"x-webhook-hmac", sign(KEY, EMOJI).encode())], EMOJI, True),
        ([(b"x-webhook-hmac", sign(KEY, EMOJI).upper().encode())], EMOJI, True),
        ([(b"x-webhook-hmac", b" " + sign(KEY, EMOJI).encode() + b" ")], EMOJI, True),
        ([], EMOJI, False),
        ([(b"x-webhook-hmac", b"")], EMOJI, False),
        ([(b"x-webhook-hmac", sign(b"other", EMOJI).encode())], EMOJI, False),
        # a valid signature of another body (a stale or swapped body)
        ([(b"x-webhook-hmac", sign(KEY, b"{}").encode())], EMOJI, False),
        # the same text re-encoded with escapes is other bytes
        (
            [(b"x-webhook-hmac", sign(KEY, EMOJI).encode())],
            json.dumps(json.loads(EMOJI), separators=(",", ":")).encode(),
            False,
        ),
        (
            [
                (b"x-webhook-hmac", sign(KEY, EMOJI).encode()),
                (b"x-webhook-hmac-algorithm", b"sha256"),
            ],
            EMOJI,
            False,
        ),
        ([(b"x-webhook-hmac", sign(KEY, EMOJI).encode()[:-2])], EMOJI, False),
        ([(b"x-webhook-hmac", b"\xff" * 128)], EMOJI, False),
    ],
)
def test_signatures(headers: list[tuple[bytes, bytes]], body: bytes, ok: bool) -> None:
    assert signed(Signature(KEY, waha.SIGNATURE), Request(headers), body) is ok


def test_token_and_signature_both_needed_when_both_are_set() -> None:
    credential = Credential(b"tok", header=b"x-api-key", signature=Signature(KEY, waha.SIGNATURE))
    good = (b"x-webhook-hmac", sign(KEY, EMOJI).encode())
    assert accepts(credential, Request([good, (b"x-api-key", b"tok")]), EMOJI)
    assert not accepts(credential, Request([good]), EMOJI)
    assert not accepts(credential, Request([(b"x-api-key", b"tok")]), EMOJI)
    assert accepts(credential, Request([(b"x-api-key", b"tok")]))  # before the body: token only
    assert not credential.open and Credential(None).open


def _config(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "b.toml"
    path.write_text(
        f'[[sources]]\nprovider = "waha"\nmode = "webhook"\ninstance = "default"\n{extra}'
    )
    return path


def test_config_keys(tmp_path: Path) -> None:
    settings = load(_config(tmp_path, 'hmac_key_env = "K"\n'), {"K": "a-long-random-key"})
    assert settings.hmac_keys["waha:default"].reveal() == "a-long-random-key"
    assert "a-long-random-key" not in repr(settings)
    key_file = tmp_path / "key"
    key_file.write_text("from-a-file-0123\n")
    settings = load(_config(tmp_path, f'hmac_key_file = "{key_file}"\n'), {})
    assert settings.hmac_keys["waha:default"].reveal() == "from-a-file-0123"


@pytest.mark.parametrize(
    ("extra", "env", "error"),
    [
        (
            'hmac_key_env = "K"\n',
            {},
            r"sources\[0\]\.hmac_key_env: environment variable K is not set",
        ),
        (
            'hmac_key_env = "K"\n',
            {"K": "secret"},
            r"sources\[0\]\.hmac_key: a well-known default key",
        ),
        ('hmac_key_env = "K"\n', {"K": "My-Secret-Key"}, r"a well-known default key"),
        ('hmac_key_env = "K"\n', {"K": "evolution"}, r"a well-known default key"),
        ('hmac_key_file = "/nonexistent/key"\n', {}, r"sources\[0\]\.hmac_key_file: cannot read"),
    ],
)
def test_config_refusals(tmp_path: Path, extra: str, env: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load(_config(tmp_path, extra), env)


def test_config_session_names_and_signing_providers(tmp_path: Path) -> None:
    path = tmp_path / "b.toml"
    path.write_text('[[sources]]\nprovider = "waha"\nmode = "webhook"\ninstance = "a b"\n')
    with pytest.raises(ConfigError, match=r"sources\[0\]\.instance: a WAHA session name"):
        load(path, {})
    path.write_text(
        '[[sources]]\nprovider = "evolution"\nmode = "webhook"\ninstance = "x"\nhmac_key_env = "K"\n'
    )
    with pytest.raises(ConfigError, match="evolution does not sign its webhooks"):
        load(path, {"K": "a-long-random-key"})
    assert REGISTRY["waha"].signature is waha.SIGNATURE


def test_numbers_beyond_range_are_ignored_not_quarantined() -> None:
    body = b'{"event":"message","session":"s","timestamp":1e400,"payload":{"id":"m","timestamp":-1e400}}'
    [item] = waha.parse(body).items("s")
    assert item.classified.timestamp is None and item.classified.message_key == "s:message:m"
