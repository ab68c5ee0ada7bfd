"""The fake Meta in a test: a recording callback URL standing in for the bridge (it answers
Meta's verification GET and the POSTs from a script), and a pusher hub of its own.

The receiver answers a GET ``hub.challenge`` when ``hub.verify_token`` is ``TOKEN`` (``wrong``
set: the challenge with a digit more; ``refuse`` set: 403), and each POST with the next status
of ``script`` (200 once it is empty).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
from aiohttp import web

from fakeprovider.meta import FakeMeta
from fakeprovider.meta_push import Backoff
from fakeprovider.push import PushHub

SECRET = "meta-app-secret-5f1c2b3a4d"
TOKEN = "verify-token-0123"
WABA = "102290129340398"
OTHER_WABA = "1234567890987654321"


@dataclass
class Hit:
    method: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    url: str = ""
    hits: list[Hit] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    wrong: bool = False
    refuse: bool = False

    @property
    def posts(self) -> list[Hit]:
        return [h for h in self.hits if h.method == "POST"]

    @property
    def gets(self) -> list[Hit]:
        return [h for h in self.hits if h.method == "GET"]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        query = dict(request.query)
        self.hits.append(Hit(request.method, query, headers, body, time.monotonic()))
        if request.method == "GET":
            if self.refuse or query.get("hub.verify_token") != TOKEN:
                return web.Response(status=403, text="Forbidden")
            challenge = query.get("hub.challenge", "")
            return web.Response(text=challenge + "1" if self.wrong else challenge)
        status = self.script.pop(0) if self.script else 200
        return web.Response(status=status, text="ok")


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    """A local aiohttp server recording every GET and POST; yields its receiver."""
    receiver = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    receiver.url = f"http://{host}:{port}/webhooks/meta"
    try:
        yield receiver
    finally:
        await runner.cleanup()


def quick(**changes: float) -> Backoff:
    """A policy of short delays: 50 ms doubling to 400 ms, no jitter, 5 s max age."""
    values = {"initial": 0.05, "maximum": 0.4, "max_age": 5.0, "jitter": 0.0, "timeout": 5.0}
    return Backoff(**{**values, **changes})


@contextlib.asynccontextmanager
async def pushing(meta: FakeMeta, client: httpx.AsyncClient | None = None) -> AsyncIterator[None]:
    """``meta`` attached to a hub (its own client, or ``client``) until the block ends."""
    hub = PushHub(client)
    meta.attach(hub)
    try:
        yield
    finally:
        meta.detach()
        await hub.aclose()


def text_message(id: str, text: str = "hi", sender: str = "5511987654321") -> dict[str, object]:
    """A ``messages`` change value holding one text message."""
    return {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": "106540352242922"},
        "contacts": [{"profile": {"name": "Ana"}, "wa_id": sender}],
        "messages": [
            {
                "from": sender,
                "id": id,
                "timestamp": "1697043223",
                "text": {"body": text},
                "type": "text",
            }
        ],
    }
