"""The fake Meta (WhatsApp Cloud API): apps with their WABAs, and their webhook pusher.

An app has an app secret (it signs every POST), a callback URL and a verify token (checked
with Meta's GET before the first push to a URL; an app without one pushes unchecked), and is
subscribed to WhatsApp Business Accounts. An update enqueued on a WABA (through the control API
or :meth:`FakeMeta.enqueue`) is queued on every app subscribed to it; each app sends its queue
in batches of up to ``batch`` updates (after ``linger`` seconds, so updates enqueued close
together share a POST), every batch as its own task with its retries, in no promised order;
see :mod:`fakeprovider.meta_push`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Coroutine
from typing import Any

import msgspec

from fakeprovider.meta_push import (
    Backoff,
    Batch,
    Retries,
    Update,
    Verifier,
    batch_body,
    deliver,
    sign,
)
from fakeprovider.push import PushCounters, PushHub, PushStats

__all__ = ["FakeMeta", "MetaApp", "MetaStats", "UnknownMetaApp", "Verification"]


class UnknownMetaApp(LookupError):
    """No Meta app with this name (or no app subscribed to this WABA) exists in the fake."""


class Verification(msgspec.Struct):
    requests: int
    verified: int
    failed: int


class MetaStats(PushStats):
    app: str
    wabas: list[str]
    callback_url: str | None
    batch: int
    enqueued: int
    posts: int
    delivered: int
    retried: int
    dropped: int
    pending: int
    verification: Verification


class MetaApp:
    """One app: its secret, callback, subscribed WABAs, queue and counters."""

    __slots__ = (
        "batch",
        "callback_url",
        "delivered",
        "dropped",
        "enqueued",
        "flushing",
        "linger",
        "name",
        "posts",
        "push_counts",
        "queue",
        "retries",
        "secret",
        "tasks",
        "verifier",
        "wabas",
    )

    def __init__(
        self,
        name: str,
        secret: str,
        *,
        verify_token: str | None = None,
        callback_url: str | None = None,
        batch: int = 1,
        linger: float = 0.0,
    ) -> None:
        self.name = name
        self.secret = secret
        self.verifier = Verifier(verify_token or None)
        self.callback_url = callback_url or None
        self.batch = batch
        self.linger = linger
        self.wabas: list[str] = []
        self.queue: list[Update] = []
        self.push_counts = PushCounters(serial=False)
        self.enqueued = 0
        self.posts = 0
        self.delivered = 0
        self.dropped = 0
        self.retries = Retries()
        self.flushing = False
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def verify_token(self) -> str | None:
        return self.verifier.token

    def set_verify_token(self, token: str | None) -> None:
        if (token or None) != self.verifier.token:
            self.verifier.forget(token or None)

    def take(self) -> list[Update]:
        taken, self.queue = self.queue[: self.batch], self.queue[self.batch :]
        return taken


class FakeMeta:
    """Every fake Meta app and the delivery policy (:class:`~fakeprovider.meta_push.Backoff`)."""

    def __init__(self, policy: Backoff | None = None) -> None:
        self.policy = policy or Backoff()
        self.apps: dict[str, MetaApp] = {}
        self._hub: PushHub | None = None

    def add_app(
        self,
        name: str,
        secret: str,
        wabas: list[str],
        *,
        verify_token: str | None = None,
        callback_url: str | None = None,
        batch: int = 1,
        linger: float = 0.0,
    ) -> bool:
        """Create an app (or subscribe an existing one with the same secret to more WABAs);
        False when it existed. ValueError on a bad WABA id or another secret."""
        for waba in wabas:
            if not (waba.isascii() and waba.isdigit()):
                raise ValueError(f"a WhatsApp Business Account id is digits, got {waba!r}")
        if batch < 1:
            raise ValueError("batch must be at least 1")
        app = self.apps.get(name)
        created = app is None
        if app is None:
            app = MetaApp(
                name,
                secret,
                verify_token=verify_token,
                callback_url=callback_url,
                batch=batch,
                linger=linger,
            )
            self.apps[name] = app
        elif app.secret != secret:
            raise ValueError(f"meta app {name} exists with another app secret")
        app.wabas += [w for w in wabas if w not in app.wabas]
        return created

    def app(self, name: str) -> MetaApp:
        try:
            return self.apps[name]
        except KeyError:
            raise UnknownMetaApp(name) from None

    def enqueue(self, waba: str, field: str, value: Any) -> int:
        """Queue one change of ``waba`` on every app subscribed to it; returns how many apps
        will send it (an app without a callback URL skips it). UnknownMetaApp if none."""
        apps = [app for app in self.apps.values() if waba in app.wabas]
        if not apps:
            raise UnknownMetaApp(waba)
        sent = 0
        for app in apps:
            app.enqueued += 1
            if app.callback_url is None:
                app.push_counts.skipped += 1
                continue
            app.queue.append(Update(waba, field, value))
            sent += 1
            self._schedule(app)
        return sent

    def _schedule(self, app: MetaApp) -> None:
        if self._hub is None or app.flushing or not app.queue:
            return
        app.flushing = True
        self._spawn(app, self._flush(app), f"meta-flush-{app.name}")

    def _spawn(self, app: MetaApp, coro: Coroutine[Any, Any, None], name: str) -> None:
        assert self._hub is not None
        task = self._hub.spawn(coro, name)
        app.tasks.add(task)
        task.add_done_callback(app.tasks.discard)

    async def _flush(self, app: MetaApp) -> None:
        """After ``linger`` (at least one loop turn), every queued update as batches."""
        try:
            await asyncio.sleep(app.linger)
            while app.queue and self._hub is not None and app.callback_url is not None:
                updates = app.take()
                body = batch_body(updates)
                headers = {
                    "Content-Type": "application/json",
                    "X-Hub-Signature-256": sign(body, app.secret),
                }
                wabas = tuple(dict.fromkeys(u.waba for u in updates))
                batch = Batch(app.name, app.callback_url, body, headers, len(updates), wabas)
                app.posts += 1
                self._spawn(app, self._send(app, batch), f"meta-push-{app.name}")
        finally:
            app.flushing = False

    async def _send(self, app: MetaApp, batch: Batch) -> None:
        assert self._hub is not None
        client = self._hub.client
        if await deliver(
            client, batch, app.push_counts, app.verifier, policy=self.policy, retries=app.retries
        ):
            app.delivered += batch.updates
        else:
            app.dropped += batch.updates

    def stats(self, name: str) -> MetaStats:
        app = self.app(name)
        snapshot = app.push_counts.snapshot()
        sent = app.enqueued - snapshot.skipped
        return MetaStats(
            **msgspec.structs.asdict(snapshot),
            app=name,
            wabas=list(app.wabas),
            callback_url=app.callback_url,
            batch=app.batch,
            enqueued=app.enqueued,
            posts=app.posts,
            delivered=app.delivered,
            retried=app.retries.count,
            dropped=app.dropped,
            pending=sent - app.delivered - app.dropped,
            verification=Verification(**dataclasses.asdict(app.verifier.counters)),
        )

    def attach(self, hub: PushHub) -> None:
        self._hub = hub
        for app in self.apps.values():
            self._schedule(app)

    def detach(self) -> None:
        self._hub = None

    def reset(self) -> None:
        """Forget every app and cancel the deliveries still running."""
        for app in self.apps.values():
            for task in list(app.tasks):
                task.cancel()
        self.apps = {}
