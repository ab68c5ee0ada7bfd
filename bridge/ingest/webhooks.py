"""The webhook ASGI app: GREEN-API, Evolution API and Chat API pushes, plus health endpoints.

    POST /webhooks/greenapi[/{instance}]     Authorization: Bearer <webhookUrlToken>
    POST /webhooks/evolution[/{event-suffix}]  the source's webhook_header
    POST /webhooks/chatapi                   Authorization: Bearer <t>, or ?token=<t>
    GET  /healthz  /readyz  /metrics

A request is answered 200 only after RabbitMQ confirmed every message it produced (a
quarantined body counts: it was published to the invalid exchange). 401 bad or missing
credentials, 403 address not allowed, 404 unknown instance, 408 body too slow, 413 body too
large, 503 + Retry-After while the broker is not confirming. Never 5xx for a bad body, never
4xx for a broker problem. The content type is not checked: providers vary it, and a body that
is not JSON is quarantined like any other bad body.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NamedTuple
from urllib.parse import parse_qs

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge.config import HttpConfig, Settings, Source
from bridge.envelope import Outbound
from bridge.errors import PayloadError, PublishError
from bridge.httpserver import lifespan
from bridge.ingest.pipeline import Pipeline
from bridge.logs import get_logger
from bridge.metrics import REGISTRY, acknowledged, received, webhook_responses
from bridge.providers import DECODE_ERRORS, chatapi, evolution, greenapi

log = get_logger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_JSON = [(b"content-type", b"application/json")]
_OK = b'{"ok":true}'


class Reject(Exception):
    """Answer with this status and message; nothing is published."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Hook(NamedTuple):
    source: Source
    token: bytes | None  # None: the source takes unauthenticated webhooks
    header: bytes


class _GreenHead(msgspec.Struct):
    instanceData: greenapi.InstanceData | None = None


_green_head = msgspec.json.Decoder(_GreenHead)


class Webhooks:
    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        self._http: HttpConfig = settings.config.http
        self._pipeline = pipeline
        self._hooks: dict[str, dict[str, Hook]] = {"greenapi": {}, "evolution": {}, "chatapi": {}}
        for source in settings.config.sources:
            if source.mode != "webhook":
                continue
            secret = settings.webhook_tokens.get(source.name)
            token = secret.reveal().encode() if secret is not None else None
            header = source.webhook_header.lower().encode()
            self._hooks[source.provider][source.instance] = Hook(source, token, header)
        self._allow = _networks(self._http.allow_ips)
        self._trusted = _networks(self._http.trusted_proxies)
        self._retry_after = str(self._http.retry_after).encode()
        self._routes: dict[str, Callable[[Scope, Receive, str], Awaitable[list[Outbound]]]] = {
            "greenapi": self._greenapi,
            "evolution": self._evolution,
            "chatapi": self._chatapi,
        }

    def open_sources(self) -> list[str]:
        return [h.source.name for p in self._hooks.values() for h in p.values() if h.token is None]

    # -- ASGI entry ----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await lifespan(receive, send)
            return
        if kind != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith("/webhooks/"):
            await self._webhook(scope, receive, send, path, method)
        elif path == "/healthz":
            await _answer(send, 200, b'{"status":"alive"}')
        elif path == "/readyz":
            if self._pipeline.publisher.is_ready():
                await _answer(send, 200, b'{"status":"ready"}')
            else:
                await _answer(send, 503, b'{"status":"broker not ready"}', self._retry_headers())
        elif path == "/metrics":
            body = generate_latest(REGISTRY)
            await _answer(send, 200, body, [(b"content-type", CONTENT_TYPE_LATEST.encode())])
        else:
            await _answer(send, 404, b'{"error":"no such route"}')

    async def _webhook(
        self, scope: Scope, receive: Receive, send: Send, path: str, method: str
    ) -> None:
        parts = path.split("/")  # ["", "webhooks", provider, rest?]
        provider = parts[2]
        handler = self._routes.get(provider)
        if handler is None or len(parts) > 4 or (len(parts) == 4 and not parts[3]):
            await _answer(send, 404, b'{"error":"no such route"}')
            return
        if method != "POST":
            await _answer(send, 405, b'{"error":"use POST"}', [(b"allow", b"POST")])
            return
        rest = parts[3] if len(parts) == 4 else ""
        try:
            if self._allow and not self._allowed(scope):
                raise Reject(403, "address not allowed")
            outs = await handler(scope, receive, rest)
            if not self._pipeline.publisher.is_ready():
                raise Reject(503, "broker not ready")
            await self._deliver(outs)
        except Reject as exc:
            webhook_responses(provider, str(exc.status)).inc()
            headers = self._retry_headers() if exc.status == 503 else []
            await _answer(send, exc.status, msgspec.json.encode({"error": str(exc)}), headers)
            return
        webhook_responses(provider, "200").inc()
        await _answer(send, 200, _OK)

    async def _deliver(self, outs: list[Outbound]) -> None:
        try:
            if len(outs) == 1:
                await self._pipeline.deliver(outs[0])
            else:
                results = await asyncio.gather(
                    *(self._pipeline.deliver(o) for o in outs), return_exceptions=True
                )
                for result in results:
                    if isinstance(result, BaseException):
                        raise result
        except PublishError as exc:
            log.warning(
                "publish.failed",
                provider=str(outs[0].headers["x-provider"]),
                instance=str(outs[0].headers["x-instance"]),
                event=outs[0].event,
                message_id=outs[0].message_id,
                error=type(exc).__name__,
                detail=str(exc)[:200],
                messages=len(outs),
            )
            raise Reject(503, "broker did not confirm") from None
        first = outs[0].headers
        acknowledged(str(first["x-provider"]), str(first["x-instance"]), "http_200").inc(len(outs))

    def _retry_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", self._retry_after)]

    # -- providers -------------------------------------------------------------------------

    async def _greenapi(self, scope: Scope, receive: Receive, rest: str) -> list[Outbound]:
        hooks = self._hooks["greenapi"]
        presented = _bearer(_header(scope, b"authorization"))
        if rest:
            hook = self._lookup(hooks, rest, presented)
            body = await self._body(scope, receive)
        else:
            body = await self._body(scope, receive)
            try:
                head = _green_head.decode(body)
                ident = head.instanceData.idInstance if head.instanceData else None
            except DECODE_ERRORS:
                ident = None
            if ident is None or isinstance(ident, bool):
                return [
                    self._quarantine_unknown(
                        hooks, presented, body, "greenapi body names no instance"
                    )
                ]
            hook = self._lookup(hooks, str(ident), presented)
        received("greenapi", hook.source.instance, "webhook").inc()
        return [self._pipeline.prepare(hook.source, body, ingest="webhook")]

    async def _evolution(self, scope: Scope, receive: Receive, rest: str) -> list[Outbound]:
        hooks = self._hooks["evolution"]
        body = await self._body(scope, receive)
        try:
            head = evolution.read_head(body)
        except PayloadError as exc:
            presented = self._evolution_token(scope, None)
            clean = evolution.strip_secrets(body)  # quarantined bodies lose the key too
            return [self._quarantine_unknown(hooks, presented, clean, str(exc))]
        if not head.instance:
            presented = self._evolution_token(scope, None)
            clean = evolution.strip_secrets(body)
            return [self._quarantine_unknown(hooks, presented, clean, "instance missing")]
        known = hooks.get(head.instance)
        presented = self._evolution_token(scope, known)
        hook = self._lookup(hooks, head.instance, presented)
        received("evolution", hook.source.instance, "webhook").inc()
        clean = evolution.strip_secrets(body)
        try:
            classified = evolution.classify(head, hook.source.instance)
        except PayloadError as exc:
            return [self._pipeline.quarantine(hook.source, clean, str(exc), ingest="webhook")]
        return [self._pipeline.outbound(hook.source, clean, classified, ingest="webhook")]

    async def _chatapi(self, scope: Scope, receive: Receive, rest: str) -> list[Outbound]:
        hooks = self._hooks["chatapi"]
        presented = _bearer(_header(scope, b"authorization")) or _query_token(scope)
        body = await self._body(scope, receive)
        try:
            top, ident = chatapi.instance_of(body)
        except PayloadError as exc:
            return [self._quarantine_unknown(hooks, presented, body, str(exc))]
        hook = self._lookup(hooks, ident, presented)
        received("chatapi", hook.source.instance, "webhook").inc()
        try:
            items = chatapi.split(top, body, hook.source.instance)
        except PayloadError as exc:
            return [self._pipeline.quarantine(hook.source, body, str(exc), ingest="webhook")]
        return [
            self._pipeline.outbound(hook.source, item.body, item.classified, ingest="webhook")
            for item in items
        ]

    # -- auth and body ---------------------------------------------------------------------

    def _lookup(self, hooks: dict[str, Hook], instance: str, presented: bytes | None) -> Hook:
        hook = hooks.get(instance)
        if hook is None:
            raise Reject(404, "unknown instance")
        if not _matches(presented, hook.token):
            raise Reject(401, "bad or missing credentials")
        return hook

    def _quarantine_unknown(
        self, hooks: dict[str, Hook], presented: bytes | None, body: bytes, error: str
    ) -> Outbound:
        """A body naming no usable instance: quarantined under the source its token matches."""
        candidates = [
            h for h in hooks.values() if h.token is not None and _matches(presented, h.token)
        ]
        if not candidates and len(hooks) == 1:
            only = next(iter(hooks.values()))
            if only.token is None:
                candidates = [only]
        if not candidates:
            raise Reject(401, "bad or missing credentials")
        return self._pipeline.quarantine(candidates[0].source, body, error, ingest="webhook")

    def _evolution_token(self, scope: Scope, hook: Hook | None) -> bytes | None:
        header = hook.header if hook is not None else b"authorization"
        return _bearer(_header(scope, header)) or _query_token(scope)

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self._http.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.isdigit():
                raise Reject(400, "bad content-length")
            digits = declared.lstrip(b"0")  # int() refuses more than 4300 digits
            if len(digits) > len(str(limit)) or int(digits or b"0") > limit:
                raise Reject(413, f"body over {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self._http.body_timeout):
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

    def _allowed(self, scope: Scope) -> bool:
        client = scope.get("client")
        if not client:
            return False
        try:
            address = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        if self._trusted and _in(address, self._trusted):
            forwarded = _header(scope, b"x-forwarded-for")
            if forwarded:
                for hop in reversed(forwarded.decode("latin-1").split(",")):
                    try:
                        address = ipaddress.ip_address(hop.strip())
                    except ValueError:
                        return False
                    if not _in(address, self._trusted):
                        break
        return _in(address, self._allow)


# -- helpers -------------------------------------------------------------------------------


def _networks(values: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(v, strict=False) for v in values]


def _in(address: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: list[Network]) -> bool:
    return any(address in n for n in networks)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _bearer(value: bytes | None) -> bytes | None:
    if not value:
        return None
    value = value.strip()
    if value[:7].lower() == b"bearer ":
        value = value[7:].strip()
    return value or None


def _query_token(scope: Scope) -> bytes | None:
    query: bytes = scope.get("query_string", b"")
    if b"token=" not in query:
        return None
    # latin-1 both ways: %XX escapes decode to the very bytes they name, whatever they are
    values = parse_qs(query.decode("latin-1"), encoding="latin-1").get("token")
    return values[0].encode("latin-1") if values and values[0] else None


def _matches(presented: bytes | None, expected: bytes | None) -> bool:
    if expected is None:
        return True
    if presented is None:
        return False
    return hmac.compare_digest(presented, expected)


async def _answer(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*(headers or _JSON), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
