"""Silent-instance detection: each instance's silence threshold and, where its provider has a
state API (`bridge.probes`), its state, read at a low rate.

Providers stop delivering without saying so. The pipeline stamps
`bridge_last_notification_timestamp_seconds` when a notification of an instance is confirmed;
this component adds what the alerts compare it with:

- `bridge_instance_silent_after_seconds` (`monitor.silent_after`) for every configured
  source, and the watch's start as its last notification until a real one comes, so that an
  instance silent since the bridge started is noticed too;
- for every source whose provider has a state API and whose credentials are configured, one
  state call every `monitor.state_interval` seconds (plus up to 10 % jitter, the first at
  start), at most `PARALLEL` at a time over the service's provider HTTP client:
  `bridge_instance_state{state=<the provider's word>}` (1 for the current state, 0 for the
  others seen), `bridge_instance_authorized`, `bridge_instance_state_checked_timestamp_seconds`,
  and `bridge_instance_state_probe_errors_total{error_class}` when a call fails.

Probes run in their own tasks, never on the ingest path; leaving the context cancels them
(a call in flight is abandoned, not awaited). Nothing here logs a URL: GREEN-API's token is in
its path.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterable
from types import TracebackType
from typing import NamedTuple, Self

import httpx
from prometheus_client import Gauge

from bridge.config import Secret, Settings, Source
from bridge.ingest.http import HTTP_ERRORS, ProviderHttp
from bridge.logs import get_logger
from bridge.metrics import (
    INSTANCE_AUTHORIZED,
    INSTANCE_STATE,
    LAST_NOTIFICATION,
    SILENT_AFTER,
    STATE_CHECKED,
    STATE_PROBE_ERRORS,
)
from bridge.probes import PROBES, Probe, StateAnswerError, StateRequest, status_class

log = get_logger(__name__)

#: State calls in flight at once, whatever the number of instances.
PARALLEL = 8
#: Distinct state labels kept per instance; a provider inventing more shares `other`.
MAX_STATES = 16
#: Each wait between two probes of an instance is the interval plus up to this share of it.
JITTER = 0.1


class Unprobed(NamedTuple):
    source: Source
    reason: str


class Watch:
    """One probed instance: how to ask, what it last said, its metric children."""

    def __init__(self, source: Source, probe: Probe, request: StateRequest) -> None:
        self.source = source
        self.probe = probe
        self.request = request
        self.state: str | None = None
        self.failing: str | None = None  # the error class of the current failure streak
        labels = (source.provider, source.instance)
        self._states: dict[str, Gauge] = {}
        self._authorized = INSTANCE_AUTHORIZED.labels(*labels)
        self._checked = STATE_CHECKED.labels(*labels)

    def record(self, word: str) -> None:
        """The provider answered `word`: set the gauges, log a change."""
        if word not in self._states and len(self._states) >= MAX_STATES:
            word = "other"
        if word not in self._states:
            self._states[word] = INSTANCE_STATE.labels(
                self.source.provider, self.source.instance, word
            )
        for seen, gauge in self._states.items():
            gauge.set(1 if seen == word else 0)
        authorized = word in self.probe.authorized
        self._authorized.set(1 if authorized else 0)
        self._checked.set_to_current_time()
        if self.failing is not None:
            log.info("instance.state_probe_recovered", **self._fields(), state=word)
            self.failing = None
        if word != self.state:
            log.log(
                logging.INFO if authorized else logging.WARNING,
                "instance.state",
                **self._fields(),
                state=word,
                previous=self.state,
                authorized=authorized,
            )
            self.state = word

    def failed(self, error_class: str, **detail: object) -> None:
        STATE_PROBE_ERRORS.labels(self.source.provider, self.source.instance, error_class).inc()
        if error_class != self.failing:  # once per streak and class, not every interval
            log.warning(
                "instance.state_probe_failed", **self._fields(), error_class=error_class, **detail
            )
            self.failing = error_class

    def _fields(self) -> dict[str, str]:
        return {"provider": self.source.provider, "instance": self.source.instance}


def plan(settings: Settings) -> tuple[list[Watch], list[Unprobed]]:
    """Which sources get a state probe, and why each other source whose provider has one
    does not."""
    watches: list[Watch] = []
    unprobed: list[Unprobed] = []
    for source in settings.config.sources:
        probe = PROBES.get(source.provider)
        if probe is None:
            continue
        kind = probe.credential
        secret: Secret | None = (settings.tokens if kind == "token" else settings.api_keys).get(
            source.name
        )
        if source.api_url is None:
            unprobed.append(Unprobed(source, "no api_url"))
        elif secret is None and probe.credential_required:
            unprobed.append(Unprobed(source, f"no {kind}_env or {kind}_file"))
        else:
            value = secret.reveal() if secret is not None else None
            request = probe.request(source.api_url, source.instance, value)
            watches.append(Watch(source, probe, request))
    return watches, unprobed


class Monitor:
    """The silence thresholds and the state probes, as an async context manager."""

    def __init__(self, settings: Settings, client: ProviderHttp) -> None:
        self._config = settings.config.monitor
        self._sources = settings.config.sources
        self._client = client
        self.watches, self.unprobed = plan(settings) if self._config.enabled else ([], [])
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Self:
        if not self._config.enabled:
            log.info("monitor.disabled")
            return self
        _watching(self._sources, self._config.silent_after)
        for skipped in self.unprobed:
            log.info(
                "monitor.state_unprobed",
                provider=skipped.source.provider,
                instance=skipped.source.instance,
                reason=skipped.reason,
            )
        slots = asyncio.Semaphore(PARALLEL)
        self._tasks = [
            asyncio.create_task(self._watch(watch, slots), name=f"state {watch.source.name}")
            for watch in self.watches
        ]
        log.info(
            "monitor.started",
            probed=len(self.watches),
            unprobed=len(self.unprobed),
            state_interval=self._config.state_interval,
            silent_after=self._config.silent_after,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _watch(self, watch: Watch, slots: asyncio.Semaphore) -> None:
        interval = self._config.state_interval
        while True:
            async with slots:
                try:
                    await self.probe(watch)
                except Exception as exc:  # one instance's bug must not end its watch
                    watch.failed("unexpected", detail=type(exc).__name__)
            await asyncio.sleep(interval * (1 + JITTER * random.random()))

    async def probe(self, watch: Watch) -> None:
        """One state call: record the state, or count and log the failure."""
        timeout = self._config.state_timeout
        request = watch.request
        try:
            async with asyncio.timeout(timeout):
                status, body = await self._client.request(
                    "GET", request.url, read_timeout=timeout, headers=request.headers or None
                )
        except HTTP_ERRORS as exc:
            # a client error's message can hold the URL, and so GREEN-API's token
            timed_out = isinstance(exc, TimeoutError | httpx.TimeoutException)
            watch.failed("timeout" if timed_out else "network", detail=type(exc).__name__)
            return
        if status != 200:
            watch.failed(status_class(status), status=status)
            return
        try:
            word = watch.probe.parse(body)
        except StateAnswerError as exc:
            watch.failed("bad_answer", detail=str(exc)[:200])
            return
        watch.record(word)


def _watching(sources: Iterable[Source], silent_after: float) -> None:
    """Export the threshold of every source, and now as its last notification (unless one
    was confirmed or stamped before: the monitor restarts on a reload)."""
    for source in sources:
        labels = (source.provider, source.instance)
        SILENT_AFTER.labels(*labels).set(silent_after)
        LAST_NOTIFICATION.times.setdefault(labels, time.time())  # a reload's restart keeps it
