"""The provider interface: what a notification body is, whatever the gateway (pure).

An adapter reads a body in two steps, because the instance a body belongs to may have to come
from the request's credentials instead of the body:

1. `parse(body)` → `Parsed`: the instance the body names (`None` when it names none) and a
   way to get its items; `PayloadError` when the body cannot be read at all.
2. `Parsed.items(instance)` → one `Item` per AMQP message: the bytes to republish and their
   `Classified` (event, event time, chat, provider message key); `PayloadError` when the body
   was readable but holds no routable notification.

`clean(body)` is what a quarantined body looks like (a body keeps no secret even there).
Adapters are pure: no I/O, no logging, no configuration. `bridge.providers.REGISTRY` lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import msgspec

from bridge.routing import Classified

#: What msgspec raises for bytes that are not usable JSON: its own error, invalid UTF-8 inside a
#: string, and nesting deeper than the interpreter's recursion limit. Every decoder maps all
#: three to its own error, so that a hostile body is quarantined instead of crashing a route.
DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


class Item(NamedTuple):
    """One notification: the bytes to republish and what the bridge needs to know of them."""

    body: bytes
    classified: Classified


class Parsed(NamedTuple):
    """A readable body: the instance it names, and its items for the instance it belongs to."""

    instance: str | None
    items: Callable[[str], list[Item]]


#: How one path segment after `/webhooks/<provider>` is read: `instance` — it names the
#: instance (and wins over the body); `ignored` — it is accepted and means nothing to the
#: bridge (Evolution's by-events suffix `/messages-upsert`).
PathRule = Literal["instance", "ignored"]


class SignatureScheme(NamedTuple):
    """How a provider signs a webhook: an HMAC of the raw body, hex, in a header."""

    header: bytes  # lower case, as ASGI gives header names
    digest: str  # a hashlib name: "sha512", "sha256"
    prefix: bytes = b""  # before the hex digits ("sha256=" for Meta)
    algorithm_header: bytes | None = None  # when sent, it must name `digest`


def unchanged(body: bytes) -> bytes:
    return body


def any_instance(instance: str) -> str | None:
    """Every non-empty instance name is valid."""
    return None


@dataclass(frozen=True, slots=True)
class Adapter:
    """One provider, as the ingest layer sees it."""

    name: str
    known_events: frozenset[str]
    parse: Callable[[bytes], Parsed]
    clean: Callable[[bytes], bytes] = unchanged
    path: PathRule = "ignored"
    #: a webhook token may also come as `?token=…` (for gateways that cannot send headers)
    query_token: bool = False
    #: the provider has a queue the bridge polls (`mode = "poll"`)
    polls: bool = False
    #: what is wrong with a configured instance name, or None (config validation)
    check_instance: Callable[[str], str | None] = any_instance
    #: how the provider signs its webhooks with a source's `hmac_key`, if it does
    signature: SignatureScheme | None = None
    #: the parts of one body that may belong to different instances, each a body of its own
    #: (Meta: one per `entry[]`); None: a body is one part
    split: Callable[[bytes], list[bytes]] | None = None
    #: the answer to a subscription check (`GET` with the query string), given the sources'
    #: verify tokens: the challenge to echo, or None to refuse (Meta's `hub.challenge`)
    challenge: Callable[[bytes, Sequence[bytes]], bytes | None] | None = None


def text_id(value: object) -> str | None:
    """An instance id given as a JSON string or integer, as text; `None` for anything else."""
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return None
    return str(value)
