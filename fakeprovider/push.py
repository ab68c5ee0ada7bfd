"""What every fake pusher shares: one HTTP client, the task set, counters and the back-off.

A :class:`PushHub` exists while a fake server runs: ``serve_socket`` creates it, attaches the
provider states to it (they start their pushers through :meth:`PushHub.spawn`) and closes it
when the server stops, which cancels every pusher and closes the one ``httpx.AsyncClient``.
"""

from __future__ import annotations

import abc
import asyncio
import random
from collections import Counter
from collections.abc import Coroutine, Mapping
from typing import Any, Final, Generic, TypeVar

import httpx
import msgspec

from bridge.logs import get_logger

__all__ = [
    "PushCounters",
    "PushHub",
    "PushStats",
    "backoff_delay",
    "outcome_label",
    "post_once",
]

D = TypeVar("D")

logger = get_logger(__name__)

_POOL: Final = httpx.Limits(max_connections=None, max_keepalive_connections=200)


class PushStats(msgspec.Struct):
    """Counters of one instance's webhook pusher.

    ``failures`` counts attempts that did not succeed, ``given_up`` deliveries abandoned (a
    non-retryable status or the last attempt failed), ``skipped`` events never sent (filtered
    out, webhook disabled, or an unusable URL). ``statuses`` counts outcomes: an HTTP status
    as a string (``"200"``, ``"503"``), or ``"timeout"`` / ``"error"`` when no answer came.
    ``overlapped`` says two requests of an instance that must push one at a time were ever in
    flight together.
    """

    attempts: int
    successes: int
    failures: int
    given_up: int
    skipped: int
    statuses: dict[str, int]
    in_flight: int
    max_in_flight: int
    overlapped: bool


class PushCounters:
    """Mutable counters behind :class:`PushStats`; ``serial`` instances flag any overlap."""

    __slots__ = (
        "attempts",
        "failures",
        "given_up",
        "in_flight",
        "max_in_flight",
        "overlapped",
        "serial",
        "skipped",
        "statuses",
        "successes",
    )

    def __init__(self, *, serial: bool) -> None:
        self.serial = serial
        self.attempts = 0
        self.successes = 0
        self.failures = 0
        self.given_up = 0
        self.skipped = 0
        self.statuses: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.overlapped = False

    def begin(self) -> None:
        self.attempts += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if self.serial and self.in_flight > 1:
            self.overlapped = True

    def end(self, outcome: str) -> None:
        self.in_flight -= 1
        self.statuses[outcome] += 1

    def snapshot(self) -> PushStats:
        return PushStats(
            attempts=self.attempts,
            successes=self.successes,
            failures=self.failures,
            given_up=self.given_up,
            skipped=self.skipped,
            statuses=dict(self.statuses),
            in_flight=self.in_flight,
            max_in_flight=self.max_in_flight,
            overlapped=self.overlapped,
        )


def outcome_label(status: int | None, error: BaseException | None = None) -> str:
    if status is not None:
        return str(status)
    return "timeout" if isinstance(error, httpx.TimeoutException) else "error"


def backoff_delay(
    attempt: int, initial: float, maximum: float, jitter: float, rand: float | None = None
) -> float:
    """Evolution's delay before attempt ``attempt + 1``: ``min(initial*2^(attempt-1), max)``
    times ``1 ± jitter`` (``rand`` in [0, 1) picks the point), never below ``initial``."""
    base = min(initial * 2.0 ** min(attempt - 1, 32), maximum)
    point = random.random() if rand is None else rand
    return max(initial, base * (1.0 + jitter * (2.0 * point - 1.0)))


async def post_once(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    timeout: float,
) -> tuple[int | None, str]:
    """POST once; (status or None, outcome label). Never raises for transport trouble."""
    try:
        response = await client.post(url, content=body, headers=dict(headers), timeout=timeout)
    except httpx.HTTPError as exc:
        return None, outcome_label(None, exc)
    except ValueError:  # an unusable URL (httpx raises a plain ValueError for some)
        return None, "error"
    return response.status_code, outcome_label(response.status_code)


class PushHub:
    """One shared client plus the running pusher tasks; :meth:`aclose` stops them all."""

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self.client = client or httpx.AsyncClient(limits=_POOL, trust_env=False)
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        if self.closed:
            coro.close()
            raise RuntimeError("the push hub is closed")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("fake.pusher_failed", task=task.get_name(), exc_info=task.exception())

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def aclose(self) -> None:
        self.closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.aclose()


class HeldDeliveries(abc.ABC, Generic[D]):
    """Deliveries started on the push hub once one is attached (the server runs), held until
    then: the part the Evolution and WAHA fakes share."""

    def __init__(self) -> None:
        self._hub: PushHub | None = None
        self._pending: list[D] = []

    def _submit(self, delivery: D) -> None:
        if self._hub is None:
            self._pending.append(delivery)
        else:
            self._start(self._hub, delivery)

    @abc.abstractmethod
    def _start(self, hub: PushHub, delivery: D) -> None:
        """Start one delivery on the hub (each fake its own kind)."""

    def attach(self, hub: PushHub) -> None:
        self._hub = hub
        pending, self._pending = self._pending, []
        for delivery in pending:
            self._start(hub, delivery)

    def detach(self) -> None:
        self._hub = None

    def _forget_pending(self) -> None:
        self._pending = []
