"""Who may post a webhook: credentials and client addresses (pure).

A source's `Credential` is its token and where a request carries it: the source's header, as
`Bearer <token>` or bare, and, where the provider allows it, `?token=`; and, for providers that
sign their webhooks (WAHA), the HMAC of the raw body with the source's key, in the provider's
header. Both are compared in constant time, as bytes; a source with both needs both. A source
with neither takes unauthenticated webhooks.

`Addresses` is `http.allow_ips` with `X-Forwarded-For` believed only from `http.trusted_proxies`:
the client is the right-most hop that is not a trusted proxy.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable, Sequence
from typing import NamedTuple, TypeVar
from urllib.parse import parse_qs

from bridge.providers.base import SignatureScheme

Headers = Iterable[tuple[bytes, bytes]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
T = TypeVar("T")


class Signature(NamedTuple):
    key: bytes
    scheme: SignatureScheme


class Credential(NamedTuple):
    token: bytes | None  # None: no token asked for
    header: bytes = b"authorization"  # lower case, as ASGI gives header names
    query: bool = False  # `?token=` accepted too
    signature: Signature | None = None  # None: no signature asked for

    @property
    def open(self) -> bool:
        """The source takes unauthenticated webhooks."""
        return self.token is None and self.signature is None


class Request(NamedTuple):
    """What of a request credentials are read from."""

    headers: Sequence[tuple[bytes, bytes]]
    query_string: bytes = b""


def header(headers: Headers, name: bytes) -> bytes | None:
    """The first value of header `name` (lower case), or None."""
    for key, value in headers:
        if key == name:
            return bytes(value)
    return None


def bearer(value: bytes | None) -> bytes | None:
    """A token from `Bearer <t>` or a bare `<t>`; None when empty."""
    if not value:
        return None
    value = value.strip()
    if value[:7].lower() == b"bearer ":
        value = value[7:].strip()
    return value or None


def query_token(query: bytes) -> bytes | None:
    """`token=` of a query string, percent-decoded to the very bytes it names."""
    if b"token=" not in query:
        return None
    # latin-1 both ways: %XX escapes decode to the very bytes they name, whatever they are
    values = parse_qs(query.decode("latin-1"), encoding="latin-1").get("token")
    return values[0].encode("latin-1") if values and values[0] else None


def presented(credential: Credential, request: Request) -> bytes | None:
    """The token a request carries where `credential` says to look."""
    token = bearer(header(request.headers, credential.header))
    if token is None and credential.query:
        token = query_token(request.query_string)
    return token


def signed(signature: Signature, request: Request, body: bytes) -> bool:
    """Whether the request's signature header holds the HMAC of `body` with the key."""
    scheme = signature.scheme
    if scheme.algorithm_header is not None:
        named = header(request.headers, scheme.algorithm_header)
        if named is not None and named.strip().lower() != scheme.digest.encode():
            return False
    given = header(request.headers, scheme.header)
    if given is None:
        return False
    given = given.strip().lower()
    if not given.startswith(scheme.prefix):
        return False
    expected = hmac.new(signature.key, body, scheme.digest).hexdigest().encode()
    return hmac.compare_digest(given[len(scheme.prefix) :], expected)


def accepts(credential: Credential, request: Request, body: bytes | None = None) -> bool:
    """Whether the request carries the credential. The signature, if the source asks for one,
    is checked only once the body is there (`body` given)."""
    if credential.token is not None:
        token = presented(credential, request)
        if token is None or not hmac.compare_digest(token, credential.token):
            return False
    if credential.signature is not None and body is not None:
        return signed(credential.signature, request, body)
    return True


def attribute(sources: Sequence[tuple[T, Credential]], request: Request, body: bytes) -> list[T]:
    """The sources whose credentials the request carries, for a body that names no instance.

    A source without credentials matches nothing here unless it is the provider's only source:
    an open source must not swallow every body that names no instance.
    """
    found = [s for s, cred in sources if not cred.open and accepts(cred, request, body)]
    if not found and len(sources) == 1 and sources[0][1].open:
        found = [sources[0][0]]
    return found


class Addresses:
    """`http.allow_ips`, with `X-Forwarded-For` believed only from `http.trusted_proxies`."""

    def __init__(self, allow: Iterable[str], trusted: Iterable[str] = ()) -> None:
        self.allow = networks(allow)
        self.trusted = networks(trusted)

    def __bool__(self) -> bool:
        """True when an allow-list is in force."""
        return bool(self.allow)

    def allowed(self, client: str | None, forwarded: bytes | None = None) -> bool:
        """Whether a peer at `client` (with its `X-Forwarded-For`) may post."""
        if not client:
            return False
        try:
            address: Address = ipaddress.ip_address(client)
        except ValueError:
            return False
        if forwarded and self.trusted and _within(address, self.trusted):
            for hop in reversed(forwarded.decode("latin-1").split(",")):
                try:
                    address = ipaddress.ip_address(hop.strip())
                except ValueError:
                    return False
                if not _within(address, self.trusted):
                    break
        return _within(address, self.allow)


def networks(values: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(v, strict=False) for v in values]


def _within(address: Address, nets: list[Network]) -> bool:
    return any(address in n for n in nets)
