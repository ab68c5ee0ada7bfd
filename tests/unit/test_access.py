"""Webhook access checks from tables: credentials, attribution, client addresses (pure)."""

from __future__ import annotations

import hmac

import pytest

from bridge.ingest.access import (
    Addresses,
    Credential,
    Request,
    Signature,
    accepts,
    attribute,
    bearer,
    header,
    presented,
    query_token,
    signed,
)
from bridge.providers.base import SignatureScheme

TOKEN = b"s3cret-token"


@pytest.mark.parametrize(
    ("value", "token"),
    [
        (None, None),
        (b"", None),
        (b"   ", None),
        (b"Bearer ", b"Bearer"),  # stripped first: a bare word is a token (it matches none)
        (b"bearer s3cret-token", TOKEN),
        (b"BEARER   s3cret-token  ", TOKEN),
        (b"s3cret-token", TOKEN),
        (b"Basic abc", b"Basic abc"),
    ],
)
def test_bearer(value: bytes | None, token: bytes | None) -> None:
    assert bearer(value) == token


@pytest.mark.parametrize(
    ("query", "token"),
    [
        (b"", None),
        (b"a=1", None),
        (b"token=", None),
        (b"token=s3cret-token", TOKEN),
        (b"a=1&token=s3cret%2Dtoken", TOKEN),
        (b"token=%FF", b"\xff"),
        (b"token=%E2%82%AC", "€".encode()),
        (b"token=x&token=y", b"x"),
    ],
)
def test_query_token(query: bytes, token: bytes | None) -> None:
    assert query_token(query) == token


def test_header_is_the_first_of_its_name() -> None:
    headers = [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")]
    assert header(headers, b"a") == b"1"
    assert header(headers, b"c") is None


H = b"authorization"
# (credential, headers, query, accepted)
CASES = [
    (Credential(TOKEN), [(H, b"Bearer s3cret-token")], b"", True),
    (Credential(TOKEN), [(H, b"s3cret-token")], b"", True),
    (Credential(TOKEN), [(H, b"Bearer wrong")], b"", False),
    (Credential(TOKEN), [], b"", False),
    (Credential(TOKEN), [], b"token=s3cret-token", False),  # no query tokens for this source
    (Credential(TOKEN, query=True), [], b"token=s3cret-token", True),
    (Credential(TOKEN, query=True), [(H, b"Bearer wrong")], b"token=s3cret-token", False),
    (Credential(TOKEN, header=b"x-hook"), [(b"x-hook", b"s3cret-token")], b"", True),
    (Credential(TOKEN, header=b"x-hook"), [(H, b"Bearer s3cret-token")], b"", False),
    (Credential(None), [], b"", True),
    (Credential(None), [(H, b"anything")], b"", True),
    (Credential(TOKEN), [(H, b"s3cret-token\x00")], b"", False),
]


@pytest.mark.parametrize(("credential", "headers", "query", "accepted"), CASES)
def test_accepts(
    credential: Credential, headers: list[tuple[bytes, bytes]], query: bytes, accepted: bool
) -> None:
    assert accepts(credential, Request(headers, query)) is accepted


def test_presented_reads_where_the_credential_says() -> None:
    request = Request([(b"x-hook", b"Bearer a"), (H, b"b")], b"token=c")
    assert presented(Credential(TOKEN, header=b"x-hook"), request) == b"a"
    assert presented(Credential(TOKEN), request) == b"b"
    assert presented(Credential(TOKEN, header=b"other", query=True), request) == b"c"
    assert presented(Credential(TOKEN, header=b"other"), request) is None


A, B, OPEN = Credential(b"token-a"), Credential(b"token-b"), Credential(None)
# (sources, headers, attributed)
ATTRIBUTION = [
    ([("a", A), ("b", B)], [(H, b"token-a")], ["a"]),
    ([("a", A), ("b", B)], [(H, b"token-b")], ["b"]),
    ([("a", A), ("b", B)], [(H, b"token-c")], []),
    ([("a", A), ("a2", A)], [(H, b"token-a")], ["a", "a2"]),  # shared: no single source
    ([("open", OPEN)], [], ["open"]),  # the provider's only source takes any body
    ([("open", OPEN), ("b", B)], [], []),  # an open source does not swallow the others' bodies
    ([("open", OPEN), ("b", B)], [(H, b"token-b")], ["b"]),
    ([], [(H, b"token-a")], []),
]


@pytest.mark.parametrize(("sources", "headers", "attributed"), ATTRIBUTION)
def test_attribute(
    sources: list[tuple[str, Credential]],
    headers: list[tuple[bytes, bytes]],
    attributed: list[str],
) -> None:
    assert attribute(sources, Request(headers), b"{}") == attributed


# (allow, trusted, client, x-forwarded-for, allowed)
ADDRESSES = [
    (["10.0.0.0/8"], [], "10.1.2.3", None, True),
    (["10.0.0.0/8"], [], "192.168.1.1", None, False),
    (["10.0.0.0/8"], [], None, None, False),
    (["10.0.0.0/8"], [], "not-an-ip", None, False),
    (["::1"], [], "::1", None, True),
    # the header is ignored from a peer that is not a trusted proxy
    (["10.0.0.0/8"], [], "192.168.1.1", b"10.1.2.3", False),
    (["10.0.0.0/8"], ["127.0.0.1"], "192.168.1.1", b"10.1.2.3", False),
    # from a trusted proxy, the right-most hop that is not a trusted proxy is the client
    (["10.0.0.0/8"], ["127.0.0.1"], "127.0.0.1", b"10.1.2.3", True),
    (["10.0.0.0/8"], ["127.0.0.1"], "127.0.0.1", b"10.1.2.3, 192.168.1.1", False),
    (["10.0.0.0/8"], ["127.0.0.1", "172.16.0.0/12"], "127.0.0.1", b"10.9.9.9, 172.16.0.5", True),
    (["10.0.0.0/8"], ["127.0.0.1"], "127.0.0.1", b"garbage", False),
    (["127.0.0.1"], ["127.0.0.1"], "127.0.0.1", b"", True),
    (["127.0.0.1"], ["127.0.0.1"], "127.0.0.1", b"127.0.0.1", True),
]


@pytest.mark.parametrize(("allow", "trusted", "client", "forwarded", "allowed"), ADDRESSES)
def test_addresses(
    allow: list[str], trusted: list[str], client: str | None, forwarded: bytes | None, allowed: bool
) -> None:
    assert Addresses(allow, trusted).allowed(client, forwarded) is allowed


def test_addresses_without_an_allow_list_are_off() -> None:
    assert not Addresses([])
    assert Addresses(["0.0.0.0/0"])


PREFIXED = SignatureScheme(header=b"x-hub-signature-256", digest="sha256", prefix=b"sha256=")


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (b"sha256=" + hmac.new(b"k", b"{}", "sha256").hexdigest().encode(), True),
        (b"SHA256=" + hmac.new(b"k", b"{}", "sha256").hexdigest().encode(), True),
        (hmac.new(b"k", b"{}", "sha256").hexdigest().encode(), False),  # the prefix is required
        (b"sha1=" + hmac.new(b"k", b"{}", "sha1").hexdigest().encode(), False),
    ],
)
def test_a_prefixed_signature(value: bytes, ok: bool) -> None:
    request = Request([(b"x-hub-signature-256", value)])
    assert signed(Signature(b"k", PREFIXED), request, b"{}") is ok


def test_attribution_by_signature() -> None:
    scheme = SignatureScheme(header=b"x-sig", digest="sha256")
    a = Credential(None, signature=Signature(b"key-a", scheme))
    b = Credential(None, signature=Signature(b"key-b", scheme))
    body = b'{"x":1}'
    request = Request([(b"x-sig", hmac.new(b"key-b", body, "sha256").hexdigest().encode())])
    assert attribute([("a", a), ("b", b)], request, body) == ["b"]
    assert attribute([("a", a), ("b", b)], request, b"{}") == []
