"""The fake WAHA in a test: a recording receiver standing in for the bridge, the fake served
on a socket of its own, and the webhook items the tests set.

The receiver answers from a per-path script (``(status, headers)`` to give first, status ``0``
= hang for 2 s), 200 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
from aiohttp import web

from fakeprovider.greenapi import FakeGreenApi
from fakeprovider.server import serve_socket
from fakeprovider.waha import FakeWaha

API_KEY = "waha-api-key-0123"
KEY = "session-hmac-key-1"
SESSION = "sales"
ID_RE = re.compile(r"evt_[0-9abcdefghjkmnpqrstvwxyz]{26}")


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    url: str = ""
    hits: list[Hit] = field(default_factory=list)
    script: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    delay: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0

    def reset(self) -> None:
        self.hits.clear()
        self.script.clear()
        self.delay = 0.0
        self.max_in_flight = 0

    def on(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path == path]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.hits.append(Hit(request.path, headers, body, time.monotonic()))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            planned = self.script.get(request.path)
            status, extra = planned.pop(0) if planned else (200, {})
            if status == 0:
                await asyncio.sleep(2)
                status = 200
            if self.delay:
                await asyncio.sleep(self.delay)
            return web.Response(status=status, text="ok", headers=extra)
        finally:
            self.in_flight -= 1


@dataclass
class Fake:
    waha: FakeWaha
    url: str

    def fresh(self) -> Fake:
        """No sessions but ``SESSION`` (signing with ``KEY``), no jitter, 5 s timeout."""
        self.waha.reset()
        self.waha.timeout, self.waha.jitter = 5.0, 0.0
        self.waha.add_session(SESSION, KEY)
        return self


@contextlib.asynccontextmanager
async def serve_fake() -> AsyncIterator[Fake]:
    """A fake WAHA (API key ``API_KEY``) served until the block ends."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    fake = Fake(FakeWaha(api_key=API_KEY), f"http://127.0.0.1:{sock.getsockname()[1]}")
    ready = asyncio.Event()
    task = asyncio.create_task(serve_socket(FakeGreenApi(), sock, ready=ready, waha=fake.waha))
    await asyncio.wait_for(ready.wait(), 5)
    try:
        yield fake
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def api_client(fake: Fake) -> httpx.AsyncClient:
    headers = {"X-Api-Key": API_KEY}
    return httpx.AsyncClient(base_url=fake.url, headers=headers, timeout=10)


def hook(url: str, **extra: object) -> dict[str, object]:
    return {"url": url, "events": ["*"], **extra}


def retries(policy: str, delay: float, attempts: int) -> dict[str, object]:
    return {"policy": policy, "delaySeconds": delay, "attempts": attempts}


async def put_webhooks(client: httpx.AsyncClient, hooks: list[dict[str, object]]) -> None:
    response = await client.put(f"/api/sessions/{SESSION}", json={"config": {"webhooks": hooks}})
    assert response.status_code == 200, response.text
