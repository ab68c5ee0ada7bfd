"""`bridge simulate`: post sample notifications to a bridge deployment as the provider would.

GREEN-API: the bare notification bytes to ``{url}/webhooks/greenapi[/{instance}]`` with
``Authorization: Bearer <webhookUrlToken>``. Evolution: the envelope to
``{url}/webhooks/evolution`` (``/{event-suffix}`` with ``--by-events``), the token in the
configured header (``authorization: Bearer <t>`` by default). Chat API: the batch body to
``{url}/webhooks/chatapi`` with ``Authorization: Bearer <t>``. WAHA: the envelope to
``{url}/webhooks/waha`` with WAHA's headers (``User-Agent``, a fresh ``X-Webhook-Request-Id``
per request, ``X-Webhook-Timestamp``), signed (``X-Webhook-Hmac``, HMAC-SHA512 of the exact
bytes) with the key in ``--hmac-key-env``; a token, if given, goes in ``--auth-header`` as a
WAHA custom header would. The WAHA sample files are pretty-printed: their bodies are sent
compact, every other byte kept, as WAHA's ``JSON.stringify`` sends them.

Bodies are sent as the samples hold them; only ``--instance`` (Evolution ``instance``, Chat API
``instanceId``, WAHA ``session``) makes it re-encode (compact, raw UTF-8), and ``--count``
beyond one pass gives each further GREEN-API copy its own ``idMessage``. The summary counts
answers per status with p50/p99 latency; the exit status is 0 only when every answer was 200.
Tokens and keys are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import importlib.resources
import math
import os
import secrets
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, get_args
from urllib.parse import urlsplit

import httpx
import msgspec

from bridge import arguments
from bridge.providers.evolution import url_suffix
from bridge.tools import waha

__all__ = [
    "Post",
    "Result",
    "add_arguments",
    "build_posts",
    "load_samples",
    "percentile",
    "renumbered",
    "run",
    "summarize",
]

Provider = Literal["greenapi", "evolution", "chatapi", "waha", "meta"]
PROVIDERS: Final[tuple[str, ...]] = get_args(Provider)
EXIT_USAGE: Final = 2

#: the command's arguments (defined in bridge.arguments, with every command's)
add_arguments = arguments.simulate


class _Probe(msgspec.Struct):
    typeWebhook: str | None = None
    receiptId: int | None = None
    body: msgspec.Raw = msgspec.Raw()
    event: str | None = None
    instanceId: str | int | None = None
    messages: list[msgspec.Raw] | None = None
    ack: list[msgspec.Raw] | None = None
    chatUpdate: list[msgspec.Raw] | None = None
    entry: list[msgspec.Raw] | None = None


_PROBE: Final = msgspec.json.Decoder(_Probe)
_ANY: Final = msgspec.json.Decoder(dict[str, Any])


@dataclass(frozen=True, slots=True)
class Post:
    url: str
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class Result:
    status: str  # "200", "503", "timeout", "error"
    seconds: float


def _sample(provider: Provider, data: bytes) -> bytes | None:
    """The request body a sample file stands for, or None when it is not one."""
    try:
        probe = _PROBE.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if provider == "greenapi":
        if probe.typeWebhook is not None:
            return data.strip()
        if probe.receiptId is not None and bytes(probe.body).startswith(b"{"):
            return bytes(probe.body)  # a receiveNotification answer: its body
        return None
    if provider == "evolution":
        return data.strip() if probe.event is not None else None
    if provider == "waha":
        return waha.compact(data) if probe.event is not None else None
    if provider == "meta":  # Meta sends compact JSON, non-ASCII escaped
        return msgspec.json.encode(_ANY.decode(data)) if probe.entry is not None else None
    if probe.messages is None and probe.ack is None and probe.chatUpdate is None:
        return None
    return data.strip()


def load_samples(provider: Provider, directory: Path | None = None) -> list[bytes]:
    """Sample bodies sorted by file name: shipped ones, or every usable ``*.json`` of a dir."""
    files: Iterable[tuple[str, bytes]]
    if directory is None:
        root = importlib.resources.files("bridge").joinpath("data", "samples", provider)
        entries = [e for e in root.iterdir() if e.name.endswith(".json")]
        files = [(e.name, e.read_bytes()) for e in entries]
    else:
        files = [(p.name, p.read_bytes()) for p in directory.glob("*.json") if p.is_file()]
    bodies = (_sample(provider, data) for _, data in sorted(files))
    return [body for body in bodies if body is not None]


def _with_field(raw: bytes, name: str, value: str) -> bytes:
    obj = _ANY.decode(raw)
    obj[name] = value
    return waha.stringify(obj)


def renumbered(raw: bytes, tag: str) -> bytes:
    """A sample with its `idMessage` value replaced by `tag` (if it has one), so it is a new
    notification with its own `message_id`; every other byte is kept."""
    head, found, tail = raw.partition(b'"idMessage"')
    if not found:
        return raw
    colon, quote, rest = tail.partition(b'"')
    _old, _, rest = rest.partition(b'"')
    return head + found + colon + quote + tag.encode() + b'"' + rest


def build_posts(
    provider: Provider,
    base_url: str,
    samples: list[bytes],
    *,
    count: int | None = None,
    instance: str | None = None,
    token: str | None = None,
    auth_header: str = "authorization",
    by_events: bool = False,
    run_tag: str = "",
    hmac_key: str | None = None,
) -> list[Post]:
    """The requests, in order: ``count`` of them (default one per sample), cycling."""
    base = base_url.rstrip("/")
    total = len(samples) if count is None else count
    if provider == "waha":
        custom = {auth_header: f"Bearer {token}"} if token is not None else {}
        url = f"{base}/webhooks/waha"
        return _waha_posts(url, samples, total=total, session=instance, key=hmac_key, custom=custom)
    if provider == "meta":
        return _meta_posts(
            f"{base}/webhooks/meta", samples, total=total, account=instance, key=hmac_key
        )
    headers = {"Content-Type": "application/json"}
    if token is not None:
        name = auth_header if provider == "evolution" else "Authorization"
        headers[name] = f"Bearer {token}"
    if provider == "greenapi":
        url = f"{base}/webhooks/greenapi" + (f"/{instance}" if instance else "")
        bodies = samples
    elif provider == "evolution":
        bodies = [_with_field(s, "instance", instance) for s in samples] if instance else samples
        url = f"{base}/webhooks/evolution"
    else:
        bodies = [_with_field(s, "instanceId", instance) for s in samples] if instance else samples
        url = f"{base}/webhooks/chatapi"
    posts = []
    for n in range(total):
        body = bodies[n % len(bodies)]
        target = url
        if provider == "greenapi" and n >= len(bodies):
            body = renumbered(body, f"SIM{run_tag}{n:010d}")
        elif provider == "evolution" and by_events:
            event = _PROBE.decode(body).event or ""
            target = f"{url}/{url_suffix(event)}"
        posts.append(Post(target, body, headers))
    return posts


def _waha_posts(
    url: str,
    samples: list[bytes],
    *,
    total: int,
    session: str | None,
    key: str | None,
    custom: dict[str, str],
) -> list[Post]:
    """One signed delivery per request, each with its own request id."""
    bodies = [_with_field(s, "session", session) for s in samples] if session else samples
    posts = []
    for n in range(total):
        body = bodies[n % len(bodies)]
        posts.append(Post(url, body, waha.webhook_headers(body, key=key, custom=custom)))
    return posts


def _meta_posts(
    url: str, samples: list[bytes], *, total: int, account: str | None, key: str | None
) -> list[Post]:
    """As Meta posts: `X-Hub-Signature-256: sha256=<hex>` with the app secret (``key``)."""
    bodies = [_with_account(s, account) for s in samples] if account else samples
    posts = []
    for n in range(total):
        body = bodies[n % len(bodies)]
        headers = {"Content-Type": "application/json"}
        if key is not None:
            digest = hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
            headers["X-Hub-Signature-256"] = f"sha256={digest}"
        posts.append(Post(url, body, headers))
    return posts


def _with_account(raw: bytes, account: str) -> bytes:
    obj = _ANY.decode(raw)
    for entry in obj.get("entry") or []:
        if isinstance(entry, dict):
            entry["id"] = account
    return msgspec.json.encode(obj)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (``fraction`` in (0, 1])."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def _status_key(status: str) -> tuple[int, str]:
    return (0, status) if status.isdigit() else (1, status)


def summarize(results: list[Result]) -> str:
    """A table: count and p50/p99 latency (ms) per status, then the total."""
    by_status: defaultdict[str, list[float]] = defaultdict(list)
    for result in results:
        by_status[result.status].append(result.seconds)
    lines = [f"{'status':<8} {'count':>8} {'p50 ms':>9} {'p99 ms':>9}"]
    for status in sorted(by_status, key=_status_key):
        values = sorted(by_status[status])
        p50, p99 = percentile(values, 0.50) * 1000, percentile(values, 0.99) * 1000
        lines.append(f"{status:<8} {len(values):>8} {p50:>9.1f} {p99:>9.1f}")
    lines.append(f"{'total':<8} {len(results):>8}")
    return "\n".join(lines)


class _Progress:
    """One line on a terminal (stderr), redrawn at most five times a second."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.tty = sys.stderr.isatty()
        self.counts: Counter[str] = Counter()
        self._last = 0.0

    def add(self, status: str) -> None:
        self.counts[status] += 1
        now = time.monotonic()
        if self.tty and (now - self._last >= 0.2 or self.counts.total() == self.total):
            self._last = now
            shown = " ".join(f"{s}:{n}" for s, n in sorted(self.counts.items()))
            sys.stderr.write(f"\rsimulate: {self.counts.total()}/{self.total}  {shown}\x1b[K")
            sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


async def send_all(
    posts: list[Post],
    *,
    concurrency: int = 1,
    timeout: float = 30.0,
    client: httpx.AsyncClient | None = None,
) -> list[Result]:
    """POST every request with ``concurrency`` workers; results in request order."""
    results: list[Result | None] = [None] * len(posts)
    progress = _Progress(len(posts))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    http = client or httpx.AsyncClient(limits=limits, timeout=timeout)
    indexes = iter(range(len(posts)))

    async def worker() -> None:
        for index in indexes:
            post = posts[index]
            started = time.perf_counter()
            try:
                response = await http.post(post.url, content=post.body, headers=post.headers)
                status = str(response.status_code)
            except httpx.TimeoutException:
                status = "timeout"
            except httpx.HTTPError:
                status = "error"
            results[index] = Result(status, time.perf_counter() - started)
            progress.add(status)

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    finally:
        progress.close()
        if client is None:
            await http.aclose()
    return [r for r in results if r is not None]


def _usage(message: str) -> int:
    print(f"bridge simulate: {message}", file=sys.stderr)
    return EXIT_USAGE


def _shown_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"


def run(args: argparse.Namespace) -> int:
    provider: Provider = args.provider
    if args.count is not None and args.count < 1:
        return _usage("--count must be at least 1")
    if args.concurrency < 1:
        return _usage("--concurrency must be at least 1")
    if not urlsplit(args.url).scheme.startswith("http"):
        return _usage("--url must be an http:// or https:// URL")
    token: str | None = args.token
    if args.token_env is not None:
        token = os.environ.get(args.token_env)
        if not token:
            return _usage(f"environment variable {args.token_env} is not set")
    key: str | None = None
    if args.hmac_key_env is not None:
        key = os.environ.get(args.hmac_key_env)
        if not key:
            return _usage(f"environment variable {args.hmac_key_env} is not set")
    if args.samples is not None and not args.samples.is_dir():
        return _usage(f"--samples {args.samples} is not a directory")
    try:
        samples = load_samples(provider, args.samples)
    except OSError as exc:
        return _usage(f"cannot read samples: {exc.strerror}")
    if not samples:
        return _usage(f"no {provider} samples found")
    posts = build_posts(
        provider,
        args.url,
        samples,
        count=args.count,
        instance=args.instance,
        token=token,
        auth_header=args.auth_header,
        by_events=args.by_events,
        run_tag=secrets.token_hex(3).upper(),
        hmac_key=key,
    )
    print(
        f"simulate: {len(posts)} {provider} notifications to {_shown_url(args.url)}"
        f" (concurrency {args.concurrency}, auth {'on' if token else 'off'}"
        f"{', signed' if key else ''})",
        file=sys.stderr,
    )
    results = asyncio.run(send_all(posts, concurrency=args.concurrency, timeout=args.timeout))
    print(summarize(results))
    return 0 if all(r.status == "200" for r in results) else 1
