"""The webhook ASGI app: one generic path for every provider in the registry, plus health.

    POST /webhooks/<provider>[/{segment}]    e.g. /webhooks/greenapi/{instance},
                                             /webhooks/evolution/{event-suffix}
    GET  /healthz  /readyz  /metrics

Each provider's adapter (`bridge.providers`) says what a body is and how a request carries its
credentials (`bridge.ingest.access`); nothing here branches on a provider's name.

A request is answered 200 only after RabbitMQ confirmed every message it produced (a
quarantined body counts: it was published to the invalid exchange). 401 bad or missing
credentials, 403 address not allowed, 404 unknown instance, 408 body too slow, 413 body too
large, 503 + Retry-After while the broker is not confirming. Never 5xx for a bad body, never
4xx for a broker problem. The content type is not checked: providers vary it, and a body that
is not JSON is quarantined like any other bad body.
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge.asgi import Receive, Scope, Send, lifespan
from bridge.asgi import answer as _answer
from bridge.config import HttpConfig, Settings, Source
from bridge.envelope import Outbound
from bridge.errors import PayloadError, PublishError
from bridge.ingest.access import (
    Addresses,
    Credential,
    Request,
    Signature,
    accepts,
    attribute,
    header,
)
from bridge.ingest.pipeline import Pipeline
from bridge.logs import get_logger
from bridge.metrics import REGISTRY as METRICS
from bridge.metrics import acknowledged, received, webhook_responses
from bridge.providers import REGISTRY, Adapter, Parsed

log = get_logger(__name__)

_OK = b'{"ok":true}'


class Reject(Exception):
    """Answer with this status and message; nothing is published."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Hook(NamedTuple):
    source: Source
    credential: Credential


class Route:
    """One provider's webhook sources, by instance and in configuration order."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self.hooks: dict[str, Hook] = {}
        self.credentials: list[tuple[Hook, Credential]] = []
        self.verify_tokens: list[bytes] = []

    def add(self, hook: Hook) -> None:
        self.hooks[hook.source.instance] = hook
        self.credentials.append((hook, hook.credential))


class Routing:
    """Everything a request is checked and routed against: the routes with their
    credentials, the address rules and the body limits. Built whole from one `Settings` and
    never changed after; a reload builds a new one and swaps the one reference, so a request
    sees one complete set, the one in force when it arrived."""

    def __init__(self, settings: Settings) -> None:
        self.http: HttpConfig = settings.config.http
        self.routes = {name: Route(adapter) for name, adapter in REGISTRY.items()}
        for source in settings.config.sources:
            if source.mode != "webhook":
                continue
            secret = settings.webhook_tokens.get(source.name)
            key = settings.hmac_keys.get(source.name)
            route = self.routes[source.provider]
            scheme = route.adapter.signature
            credential = Credential(
                token=secret.reveal().encode() if secret is not None else None,
                header=source.webhook_header.lower().encode(),
                query=route.adapter.query_token,
                signature=(
                    Signature(key.reveal().encode(), scheme)
                    if key is not None and scheme is not None
                    else None
                ),
            )
            route.add(Hook(source, credential))
            verify = settings.verify_tokens.get(source.name)
            if verify is not None:
                route.verify_tokens.append(verify.reveal().encode())
        self.addresses = Addresses(self.http.allow_ips, self.http.trusted_proxies)
        self.retry_headers = [(b"retry-after", str(self.http.retry_after).encode())]


class Webhooks:
    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._routing = Routing(settings)

    def reconfigure(self, settings: Settings) -> None:
        """Take `settings`' webhook sources, credentials, address rules and body limits: the
        new set is built first, then swapped in at once (requests in flight finish with the
        set they started with)."""
        self._routing = Routing(settings)

    def open_sources(self) -> list[str]:
        return [
            hook.source.name
            for route in self._routing.routes.values()
            for hook in route.hooks.values()
            if hook.credential.open
        ]

    # -- ASGI entry ----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await lifespan(receive, send)
            return
        if kind != "http":
            return
        path: str = scope["path"]
        routing = self._routing  # one set for the whole request
        if path.startswith("/webhooks/"):
            await self._webhook(routing, scope, receive, send)
        elif path == "/healthz":
            await _answer(send, 200, b'{"status":"alive"}')
        elif path == "/readyz":
            if self._pipeline.publisher.is_ready():
                await _answer(send, 200, b'{"status":"ready"}')
            else:
                await _answer(send, 503, b'{"status":"broker not ready"}', routing.retry_headers)
        elif path == "/metrics":
            body = generate_latest(METRICS)
            await _answer(send, 200, body, [(b"content-type", CONTENT_TYPE_LATEST.encode())])
        else:
            await _answer(send, 404, b'{"error":"no such route"}')

    async def _webhook(self, routing: Routing, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        parts = path.split("/")  # ["", "webhooks", provider, rest?]
        provider = parts[2]
        route = routing.routes.get(provider)
        if route is None or len(parts) > 4 or (len(parts) == 4 and not parts[3]):
            await _answer(send, 404, b'{"error":"no such route"}')
            return
        if method == "GET" and route.adapter.challenge is not None:
            await self._challenge(routing, route, scope, send)
            return
        if method != "POST":
            await _answer(send, 405, b'{"error":"use POST"}', [(b"allow", b"POST")])
            return
        rest = parts[3] if len(parts) == 4 else ""
        try:
            if routing.addresses and not _allowed(routing, scope):
                raise Reject(403, "address not allowed")
            outs = await self._messages(routing, route, scope, receive, rest)
            if not self._pipeline.publisher.is_ready():
                raise Reject(503, "broker not ready")
            await self._deliver(outs)
        except Reject as exc:
            webhook_responses(provider, str(exc.status)).inc()
            headers = routing.retry_headers if exc.status == 503 else []
            await _answer(send, exc.status, msgspec.json.encode({"error": str(exc)}), headers)
            return
        webhook_responses(provider, "200").inc()
        await _answer(send, 200, _OK)

    async def _deliver(self, outs: list[Outbound]) -> None:
        try:
            await self._pipeline.deliver_all(outs)
        except PublishError:
            raise Reject(503, "broker did not confirm") from None
        acknowledged(outs[0].provider, outs[0].instance, "http_200").inc(len(outs))

    # -- one generic path for every provider ---------------------------------------------

    async def _messages(
        self, routing: Routing, route: Route, scope: Scope, receive: Receive, rest: str
    ) -> list[Outbound]:
        """Authenticate, read and split a body into its messages (or its quarantine message).

        The instance is the path's (checked before the body is read), else the body's, else
        that of the one source whose credentials the request carries. A body the adapter
        splits into parts (Meta: one per account) is routed part by part; a signature always
        covers the whole body as received.
        """
        adapter = route.adapter
        request = Request(scope["headers"], scope.get("query_string", b""))
        hook = self._lookup(route, rest, request) if rest and adapter.path == "instance" else None
        body = await _body(routing.http, scope, receive)
        if (
            hook is not None
            and hook.credential.signature is not None
            and not accepts(hook.credential, request, body)
        ):
            raise Reject(401, "bad or missing credentials")  # the path's source: its signature
        if adapter.split is None:
            return self._part(route, request, body, body, hook)
        outs: list[Outbound] = []
        for part in adapter.split(body):
            outs += self._part(route, request, body, part, hook)
        return outs

    def _part(
        self, route: Route, request: Request, body: bytes, part: bytes, hook: Hook | None
    ) -> list[Outbound]:
        adapter = route.adapter
        parsed: Parsed | None = None
        error = ""
        try:
            parsed = adapter.parse(part)
        except PayloadError as exc:
            error = str(exc)
        if hook is None:
            named = parsed.instance if parsed is not None else None
            if named is not None:
                hook = self._lookup(route, named, request, body)
            else:
                hook, error = self._attribute(route, request, body, error)
        source = hook.source
        received(source.provider, source.instance, "webhook").inc()
        if error:
            return [self._pipeline.quarantine(source, adapter.clean(part), error, ingest="webhook")]
        return self._pipeline.messages(source, part, ingest="webhook", parsed=parsed)

    async def _challenge(self, routing: Routing, route: Route, scope: Scope, send: Send) -> None:
        """A provider's subscription check: echo its challenge if a source's verify token
        matches (text/plain, 200), else 403."""
        assert route.adapter.challenge is not None
        tokens = [t for t in route.verify_tokens if t]
        if routing.addresses and not _allowed(routing, scope):
            echo = None
        else:
            echo = route.adapter.challenge(scope.get("query_string", b""), tokens)
        status = 403 if echo is None else 200
        webhook_responses(route.adapter.name, f"challenge_{status}").inc()
        if echo is None:
            await _answer(send, 403, b'{"error":"verification refused"}')
        else:
            await _answer(send, 200, echo, [(b"content-type", b"text/plain; charset=utf-8")])

    def _lookup(
        self, route: Route, instance: str, request: Request, body: bytes | None = None
    ) -> Hook:
        hook = route.hooks.get(instance)
        if hook is None:
            raise Reject(404, "unknown instance")
        if not accepts(hook.credential, request, body):
            raise Reject(401, "bad or missing credentials")
        return hook

    def _attribute(
        self, route: Route, request: Request, body: bytes, error: str
    ) -> tuple[Hook, str]:
        """The source of a body that names no instance: the one whose credentials it carries.
        Several: the body is quarantined (under the first), since no single source can be told."""
        found = attribute(route.credentials, request, body)
        if not found:
            raise Reject(401, "bad or missing credentials")
        if len(found) > 1 and not error:
            error = f"the body names no instance and {len(found)} sources accept its credentials"
        return found[0], error


async def _body(http: HttpConfig, scope: Scope, receive: Receive) -> bytes:
    limit = http.max_body_bytes
    declared = header(scope["headers"], b"content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Reject(400, "bad content-length")
        digits = declared.lstrip(b"0")  # int() refuses more than 4300 digits
        if len(digits) > len(str(limit)) or int(digits or b"0") > limit:
            raise Reject(413, f"body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(http.body_timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise Reject(400, "client went away")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise Reject(413, f"body over {limit} bytes")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise Reject(408, "body not received in time") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _allowed(routing: Routing, scope: Scope) -> bool:
    client = scope.get("client")
    forwarded = header(scope["headers"], b"x-forwarded-for")
    return routing.addresses.allowed(client[0] if client else None, forwarded)
