"""GREEN-API HTTP-API polling: one loop per source, at most one notification in flight.

    receiveNotification (long poll) → decode → publish (confirm) → deleteNotification

With a lease (`bridge.amqp.lease`), the poller receives only while the lease is usable: a
revoked lease abandons a pending long poll and lets the notification in hand finish.

The provider is acknowledged (`deleteNotification`) only after `basic.ack`. A failed publish
leaves the notification at the head of the provider queue; it comes back on the next receive
and is published again with the same `message_id`. client errors are mapped to the bridge's
error tree here; every class maps to one action: back off, long back-off, or stop the source.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import httpx

from bridge.aio import first, sleep_unless
from bridge.amqp.lease import Lease
from bridge.config import PollConfig, Secret, Source
from bridge.errors import (
    PermanentProviderError,
    ProviderError,
    PublishError,
    SuspendedProviderError,
    TransientProviderError,
)
from bridge.ingest.http import HTTP_ERRORS, ProviderHttp
from bridge.ingest.pipeline import Pipeline
from bridge.logs import get_logger
from bridge.metrics import ACKNOWLEDGED, POLL_ERRORS, RECEIVED, SOURCE_UP
from bridge.providers.greenapi import (
    MalformedResponse,
    decode_deleted,
    decode_received,
    error_for_status,
)
from bridge.retry import Backoff

log = get_logger(__name__)


class Head(NamedTuple):
    """The notification at the head of the provider queue, as received."""

    receipt_id: int
    body: bytes | None  # None: the answer named a receipt but carried no usable body
    answer: bytes


class Poller:
    def __init__(
        self,
        source: Source,
        token: Secret,
        *,
        client: ProviderHttp,
        pipeline: Pipeline,
        poll: PollConfig,
        lease: Lease | None = None,
    ) -> None:
        self.source = source
        self._lease = lease
        self._abandoned = False
        self._failures = 0  # consecutive failed receives, for the back-off
        if lease is not None:
            lease.on_revoke(self._abandon_receive)
        self._client = client
        self._pipeline = pipeline
        self._poll = poll
        base = f"{(source.api_url or '').rstrip('/')}/waInstance{source.instance}"
        secret = token.reveal()
        self._receive_url = (
            f"{base}/receiveNotification/{secret}?receiveTimeout={source.receive_timeout}"
        )
        self._delete_base = f"{base}/deleteNotification/{secret}/"
        self._read_timeout = float(source.receive_timeout + poll.timeout_margin)
        self._delete_timeout = poll.delete_timeout
        self._backoff = Backoff(initial=poll.backoff_initial, maximum=poll.backoff_max)
        self._stop = asyncio.Event()
        self._receiving: asyncio.Future[Head | None] | None = None
        self._received = RECEIVED.labels(source.provider, source.instance, "poll")
        self._deleted = ACKNOWLEDGED.labels(source.provider, source.instance, "deleted")
        self._stale = ACKNOWLEDGED.labels(source.provider, source.instance, "already_gone")
        self.stopped_reason: str | None = None
        self.last_error: ProviderError | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the notification in hand, abandon a pending long poll, then return."""
        self._stop.set()
        if self._receiving is not None:
            self._receiving.cancel()

    def _abandon_receive(self) -> None:
        """The lease was revoked: a pending long poll is dropped (nothing was taken)."""
        if self._receiving is not None and not self._receiving.done():
            self._abandoned = True
            self._receiving.cancel()

    async def run(self) -> None:
        SOURCE_UP.labels(self.source.provider, self.source.instance).set(1)
        log.info("source.started", **self._fields())
        try:
            while not self._stop.is_set():
                publisher = self._pipeline.publisher
                if not publisher.is_ready() and not await self._wait(publisher.wait_ready):
                    break
                lease = self._lease
                if lease is None:
                    pause = await self._step()
                elif lease.usable() or await self._wait(lease.wait_usable):
                    with lease.in_use():  # a hand-over waits for the step, not the pause
                        pause = await self._step()
                else:
                    break
                if pause:
                    await sleep_unless(self._stop, pause)
        finally:
            if self._lease is not None:  # a restarted source's next poller takes the lease
                self._lease.off_revoke(self._abandon_receive)
            if self.stopped_reason is None:
                log.info("source.stopped", **self._fields())

    async def _step(self) -> float:
        """One receive and the notification it brought; returns the pause before the next."""
        try:
            received = await self._receive_once()
        except asyncio.CancelledError:
            if self._stop.is_set():
                return 0.0
            current = asyncio.current_task()
            if self._abandoned and not (current and current.cancelling()):
                self._abandoned = False  # only the receive was cancelled
                return 0.0
            raise
        except PermanentProviderError as exc:
            self._stop_loudly(exc, "receive")
            return 0.0
        except SuspendedProviderError as exc:
            self._count_error("receive", exc)
            self._log_failure("receive", exc, self._poll.long_backoff)
            return self._poll.long_backoff
        except TransientProviderError as exc:
            delay = self._backoff.delay(self._failures)
            self._failures += 1
            self._count_error("receive", exc)
            self._log_failure("receive", exc, delay)
            return delay
        except Exception as exc:  # a bug must not silently end the source
            delay = self._unexpected(exc, self._failures)
            self._failures += 1
            return delay
        self._failures = 0
        if received is None:
            return 0.0
        try:
            return await self._handle(received)
        except Exception as exc:  # not deleted: the head comes back
            return self._unexpected(exc, 0)

    def _unexpected(self, exc: Exception, failures: int) -> float:
        delay = self._backoff.delay(failures)
        log.error(
            "source.unexpected_error",
            exc_info=exc,
            **self._fields(),
            error=type(exc).__name__,
            retry_in=round(delay, 2),
        )
        return delay

    async def _wait(self, ready: Callable[[], Awaitable[None]]) -> bool:
        """Pause (without receiving) until `ready()` returns; False if stopped meanwhile."""
        await first(ready(), self._stop)
        return not self._stop.is_set()

    # -- one notification ----------------------------------------------------------------

    async def _receive_once(self) -> Head | None:
        self._receiving = asyncio.ensure_future(self._receive())
        try:
            return await self._receiving
        finally:
            self._receiving = None

    async def _receive(self) -> Head | None:
        try:
            status, body = await self._client.request(
                "GET", self._receive_url, read_timeout=self._read_timeout
            )
        except HTTP_ERRORS as exc:
            raise _network_error(exc) from None
        if status != 200:
            raise error_for_status(status, body)
        try:
            received = decode_received(body)
        except MalformedResponse as exc:
            if exc.receipt_id is None:
                log.error(
                    "poll.malformed_answer", **self._fields(), detail=str(exc)[:300], size=len(body)
                )
                raise TransientProviderError(str(exc), error_class="malformed") from None
            # The answer names a receipt but its body is unusable: quarantine the whole answer.
            return Head(exc.receipt_id, None, body)
        if received is None:
            return None
        if not len(received.body):
            return Head(received.receiptId, None, body)
        return Head(received.receiptId, bytes(received.body), body)

    async def _handle(self, head: Head) -> float:
        """Publish, then delete; returns the pause before the next receive."""
        self._received.inc()
        receipt = head.receipt_id
        if head.body is None:
            error = "receiveNotification answer without a usable body"
            outs = [
                self._pipeline.quarantine(
                    self.source, head.answer, error, ingest="poll", receipt_id=receipt
                )
            ]
        else:
            outs = self._pipeline.messages(
                self.source, head.body, ingest="poll", receipt_id=receipt
            )
        out = outs[0]
        try:
            await self._pipeline.deliver_all(outs)
        except PublishError:
            # Not deleted: the same notification returns on the next receive.
            return self._backoff.delay(0)
        try:
            await self._delete(receipt)
        except PermanentProviderError as exc:
            self._stop_loudly(exc, "delete")
            return 0.0
        except ProviderError as exc:
            delay = (
                self._poll.long_backoff
                if isinstance(exc, SuspendedProviderError)
                else self._backoff.delay(1)
            )
            self._log_failure("delete", exc, delay)
            return delay
        log.debug(
            "notification.acknowledged",
            **self._fields(),
            event=out.event,
            message_id=out.message_id,
            receipt_id=receipt,
        )
        return 0.0

    async def _delete(self, receipt: int) -> None:
        """`deleteNotification`, retried on ≥ 500, 429, network errors and unreadable answers."""
        url = f"{self._delete_base}{receipt}"
        last: ProviderError | None = None
        for attempt in range(self._poll.delete_attempts):
            if attempt and await sleep_unless(self._stop, self._backoff.delay(attempt - 1)):
                break
            try:
                status, body = await self._client.request(
                    "DELETE", url, read_timeout=self._delete_timeout
                )
            except HTTP_ERRORS as exc:
                last = _network_error(exc)
                self._count_error("delete", last)
                continue
            if status != 200:
                last = error_for_status(status, body)
                self._count_error("delete", last)
                if not isinstance(last, TransientProviderError):
                    raise last
                continue
            try:
                result = decode_deleted(body)
            except MalformedResponse as exc:
                last = TransientProviderError(str(exc), error_class="malformed")
                self._count_error("delete", last)
                continue
            if result.result:
                self._deleted.inc()
            else:
                self._stale.inc()
                log.info(
                    "delete.already_gone",
                    **self._fields(),
                    receipt_id=receipt,
                    reason=result.reason or "",
                )
            return
        raise last or TransientProviderError("delete abandoned", error_class="stopped")

    # -- reporting -----------------------------------------------------------------------

    def _fields(self) -> dict[str, str]:
        return {"provider": self.source.provider, "instance": self.source.instance}

    def _count_error(self, method: str, exc: ProviderError) -> None:
        self.last_error = exc
        POLL_ERRORS.labels(
            self.source.provider, self.source.instance, method, exc.error_class
        ).inc()

    def _log_failure(self, method: str, exc: ProviderError, delay: float) -> None:
        log.warning(
            f"{method}.failed",
            **self._fields(),
            error_class=exc.error_class,
            detail=str(exc)[:300],
            retry_in=round(delay, 2),
        )

    def _stop_loudly(self, exc: ProviderError, method: str) -> None:
        self._count_error(method, exc)
        self.stopped_reason = exc.error_class
        self._stop.set()
        SOURCE_UP.labels(self.source.provider, self.source.instance).set(0)
        log.error(
            "source.stopped",
            **self._fields(),
            method=method,
            error_class=exc.error_class,
            detail=str(exc)[:300],
            hint="fix the credentials or instance and restart the bridge",
        )


def _network_error(exc: BaseException) -> TransientProviderError:
    # Client messages can embed the request URL, and so the token: keep only the class name.
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return TransientProviderError("timed out", error_class="timeout")
    name = type(exc).__name__
    return TransientProviderError(f"network error: {name}", error_class=_snake(name))


def _snake(name: str) -> str:
    out = [f"_{c.lower()}" if c.isupper() else c for c in name]
    return "".join(out).lstrip("_")
