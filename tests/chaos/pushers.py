"""The fault suite's webhook pushers besides GREEN-API's own: a client pushing GREEN-API bodies
one at a time (:class:`ClientPusher`), and the fake WAHA and fake Meta pushing signed events
(:class:`SignedPushers`).

* ``WAHA`` sessions, each with one webhook aimed at one bridge process, signed with
  ``WAHA_KEY``; every event is its own POST, concurrently, retried at a constant pace until a
  2xx (WAHA promises no order);
* one Meta app subscribed to the ``META`` accounts, its callback URL on the first bridge
  process, verified with Meta's GET first, batches of up to ``META_BATCH`` updates (entries of
  both accounts in one POST), retried with exponential back-off until exactly 200 (Meta
  promises no order either).

Events are handed to the fakes at a steady pace (one per stream every ``PACE`` seconds), so
that pushes are in flight when a fault strikes. A stream's mark is the message id its items carry: ``payload.id`` for WAHA, the
``messages[].id`` of the Cloud API body for Meta; the books find a published item by it.
"""

from __future__ import annotations

import asyncio
import collections
import json
from typing import TYPE_CHECKING

import httpx

from fakeprovider.meta import FakeMeta
from fakeprovider.meta_push import Backoff
from fakeprovider.push import PushHub
from fakeprovider.waha import FakeWaha
from fakeprovider.waha_push import Hmac, Retries, WahaWebhook
from tests.support.fleet import BridgeFleet

if TYPE_CHECKING:
    from tests.chaos.rig import Stream

__all__ = [
    "META",
    "WAHA",
    "ClientPusher",
    "SignedPushers",
    "mark_of",
    "signed_sources",
]

WAHA = [f"chaos-w{i}" for i in range(3)]
META = [str(1101630000 + i) for i in range(2)]
WAHA_KEY = "chaos-waha-hmac-key-0123456789abcdef"
META_SECRET = "chaos-meta-app-secret-0123456789abcdef"
META_TOKEN = "chaos-meta-verify-token-0123"
META_BATCH = 25
META_APP = "chaos"
#: seconds between two events of one WAHA session or Meta account given to the fakes
PACE = 0.03


def signed_sources() -> tuple[list[str], dict[str, str]]:
    """The bridge config's WAHA and Meta sources, and the environment they read."""
    lines: list[str] = []
    for session in WAHA:
        lines += ["[[sources]]", 'provider = "waha"', 'mode = "webhook"']
        lines += [f'instance = "{session}"', 'hmac_key_env = "CHAOS_WAHA"']
    for waba in META:
        lines += ["[[sources]]", 'provider = "meta"', 'mode = "webhook"', f'instance = "{waba}"']
        lines += ['app_secret_env = "CHAOS_META"', 'verify_token_env = "CHAOS_META_VERIFY"']
    env = {"CHAOS_WAHA": WAHA_KEY, "CHAOS_META": META_SECRET, "CHAOS_META_VERIFY": META_TOKEN}
    return lines, env


def waha_payload(mark: str, n: int) -> dict[str, object]:
    chat = f"7900{n % 17:07d}@c.us"
    return {
        "id": mark,
        "timestamp": 1_700_000_000 + n,
        "from": chat,
        "fromMe": False,
        "to": "79001234567@c.us",
        "body": f"note {n} ção",
        "hasMedia": False,
    }


def meta_value(mark: str, n: int) -> dict[str, object]:
    user = f"7900{n % 17:07d}"
    return {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": "106540352242922"},
        "contacts": [{"profile": {"name": "chaos"}, "wa_id": user}],
        "messages": [
            {
                "from": user,
                "id": mark,
                "timestamp": str(1_700_000_000 + n),
                "text": {"body": f"note {n} ção"},
                "type": "text",
            }
        ],
    }


def mark_of(provider: str, body: bytes) -> str | None:
    """The mark of a published WAHA or Meta body (None for another provider's, or none)."""
    if provider not in ("waha", "meta"):
        return None
    try:
        decoded = json.loads(body)
        if provider == "waha":
            return str(decoded["payload"]["id"])
        return str(decoded["entry"][0]["changes"][0]["value"]["messages"][0]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


class SignedPushers:
    """The fake WAHA and fake Meta, pushing into the fleet from this process."""

    def __init__(self, fleet: BridgeFleet) -> None:
        self.waha = FakeWaha(timeout=15.0, jitter=0.0)
        self.meta = FakeMeta(
            Backoff(initial=0.2, maximum=2.0, max_age=900.0, jitter=0.2, timeout=15.0)
        )
        retries = Retries(delaySeconds=0.5, attempts=1800, policy="constant")
        for k, session in enumerate(WAHA):
            self.waha.add_session(session, WAHA_KEY)
            url = f"{fleet.processes[k % fleet.size].url}/webhooks/waha"
            hook = WahaWebhook(
                url=url, events=["message"], hmac=Hmac(key=WAHA_KEY), retries=retries
            )
            self.waha.session(session).set_webhook(hook)
        self.meta.add_app(
            META_APP,
            META_SECRET,
            META,
            verify_token=META_TOKEN,
            callback_url=f"{fleet.processes[0].url}/webhooks/meta",
            batch=META_BATCH,
            linger=0.2,
        )
        self._hub = PushHub(httpx.AsyncClient(trust_env=False, limits=httpx.Limits()))
        self._backlog = {
            (kind, name): collections.deque[tuple[str, int]]()
            for kind, names in (("waha", WAHA), ("meta", META))
            for name in names
        }
        self._more = {key: asyncio.Event() for key in self._backlog}
        self._drips: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.waha.attach(self._hub)
        self.meta.attach(self._hub)
        self._drips = [asyncio.create_task(self._drip(*key)) for key in self._backlog]

    def append(self, kind: str, instance: str, marks: list[tuple[str, int]]) -> None:
        self._backlog[kind, instance].extend(marks)
        self._more[kind, instance].set()

    async def _drip(self, kind: str, instance: str) -> None:
        backlog, more = self._backlog[kind, instance], self._more[kind, instance]
        while True:
            while not backlog:
                more.clear()
                await more.wait()
            mark, n = backlog.popleft()
            if kind == "waha":
                self.waha.enqueue(instance, "message", waha_payload(mark, n))
            else:
                self.meta.enqueue(instance, "messages", meta_value(mark, n))
            await asyncio.sleep(PACE)

    def delivered(self) -> int:
        """Events acknowledged so far (2xx for WAHA, exactly 200 for Meta)."""
        waha = sum(self.waha.stats(s).successes for s in WAHA)
        return waha + self.meta.stats(META_APP).delivered

    def dropped(self) -> int:
        waha = sum(self.waha.stats(s).dropped for s in WAHA)
        return waha + self.meta.stats(META_APP).dropped

    def pending(self) -> int:
        """Events not acknowledged yet: still to be given to the fakes, or being pushed."""
        waha = sum(self.waha.stats(s).pending for s in WAHA)
        backlog = sum(len(b) for b in self._backlog.values())
        return backlog + waha + self.meta.stats(META_APP).pending

    def notes(self) -> list[str]:
        meta = self.meta.stats(META_APP)
        waha_retries = sum(self.waha.stats(s).failures for s in WAHA)
        return [
            f"WAHA/Meta pushers so far: {waha_retries} WAHA retries, Meta {meta.posts} POSTs"
            f" ({meta.retried} retried, {meta.verification.verified} verification)"
        ]

    async def aclose(self) -> None:
        for task in self._drips:
            task.cancel()
        await asyncio.gather(*self._drips, return_exceptions=True)
        self.waha.detach()
        self.meta.detach()
        await self._hub.aclose()


class ClientPusher:
    """Pushes the CLIENT streams: sequential per instance, only 200 acknowledges.

    ``streams`` are objects with ``instance``, ``sent``, ``acked``, ``more`` (an Event) and
    ``refused`` (a Counter), see :class:`tests.chaos.rig.Stream`.
    """

    def __init__(self, fleet: BridgeFleet, streams: list[Stream], token: str) -> None:
        self._fleet = fleet
        self._streams = streams
        self._token = token
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(15, connect=2), trust_env=False, limits=httpx.Limits()
        )
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._push(s, i), name=f"client-push-{s.instance}")
            for i, s in enumerate(self._streams)
        ]

    async def _push(self, stream: Stream, target: int) -> None:
        headers = {"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"}
        while True:
            while stream.acked >= len(stream.sent):
                stream.more.clear()
                await stream.more.wait()
            body = stream.sent[stream.acked]
            port = self._fleet.ports[target % len(self._fleet.ports)]
            url = f"http://127.0.0.1:{port}/webhooks/greenapi/{stream.instance}"
            try:
                status: int | str = (
                    await self._client.post(url, content=body, headers=headers)
                ).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            if status == 200:
                stream.acked += 1
                continue
            stream.refused[str(status)] += 1
            target += 1  # try the next process, like a load balancer after a failure
            await asyncio.sleep(0.1)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()
