"""Property test: the poller against random provider answers never deletes what it did not
publish, never dies of a surprise, and stops only on a permanent error."""

from __future__ import annotations

import asyncio

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.envelope import Outbound
from bridge.errors import PermanentProviderError
from bridge.providers.greenapi import error_for_status
from tests.component.test_poller import make
from tests.component.test_webhooks_fuzz import FAILURES
from tests.unit.test_envelope_fuzz import amqp_frames

PERMANENT = {401, 403, 404}
STATUSES = st.sampled_from([200, 200, 200, 400, 401, 403, 404, 429, 466, 499, 500, 502, 503])
BODIES = st.one_of(
    st.binary(max_size=80),
    st.integers(1, 50).map(
        lambda r: b'{"receiptId":%d,"body":{"typeWebhook":"incomingCall","n":%d}}' % (r, r)
    ),
    st.integers(1, 50).map(lambda r: b'{"receiptId":%d,"body":{broken' % r),
    st.integers(1, 50).map(lambda r: b'{"receiptId":%d}' % r),
    st.sampled_from(
        [b"null", b"", b"[]", b'{"receiptId":"7"}', b"Instance is deleted", b"starting process"]
    ),
)
ANSWERS = st.lists(st.tuples(STATUSES, BODIES), max_size=25)
DELETE_ANSWERS = st.tuples(
    st.sampled_from([200, 200, 500, 429, 401]),
    st.sampled_from([b'{"result":true}', b'{"result":false}', b"", b"oops"]),
)
DELETES = st.lists(DELETE_ANSWERS, max_size=10)


@settings(max_examples=120, deadline=None)
@given(answers=ANSWERS, deletes=DELETES)
def test_random_provider(
    answers: list[tuple[int, bytes]], deletes: list[tuple[int, bytes]]
) -> None:
    receive_script = list(answers)
    delete_script = list(deletes)
    deleted: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE":
            status, body = delete_script.pop(0) if delete_script else (200, b'{"result":true}')
            if status == 200:
                deleted.append(request.url.path.rsplit("/", 1)[1])
            return httpx.Response(status, content=body)
        if receive_script:
            status, body = receive_script.pop(0)
            return httpx.Response(status, content=body)
        return httpx.Response(200, content=b"null")

    async def go() -> None:
        poller, stub, _ = make(handler)
        task = asyncio.create_task(poller.run())
        async with asyncio.timeout(10):
            while receive_script and not task.done():
                await asyncio.sleep(0.001)
        poller.stop()
        await asyncio.wait_for(task, 5)  # run() returns; it never raises
        published = {str(o.headers.get("x-receipt-id")) for o in stub.published}
        assert set(deleted) <= published, "deleted without a confirmed publish"
        stopped_on = {s for s, _ in answers if s in PERMANENT} | {
            401 for s, _ in deletes if s == 401
        }
        if poller.stopped_reason is not None:
            assert (
                stopped_on
                or "deleted" in poller.stopped_reason
                or "expired" in poller.stopped_reason
            )

    asyncio.run(go())


# -- a provider queue with real semantics, faults on every call, a broker that fails -------

DEEP = b"[" * 50_000 + b"]" * 50_000
NOTES = st.sampled_from(["note", "note", "note", "broken", "bare", "deep", "utf8", "negative"])
RECEIVE_FAULTS = st.one_of(
    st.just("head"),
    st.just("head"),
    st.tuples(
        st.sampled_from([400, 401, 404, 429, 466, 500, 502, 200]),
        st.sampled_from([b"", b"oops", b"Instance is deleted", b"starting process", b"<html>"]),
    ),
    st.sampled_from(["connect", "timeout", "bug"]),
)
DELETE_FAULTS = st.one_of(
    st.just("ok"),
    st.just("ok"),
    st.tuples(
        st.sampled_from([200, 401, 429, 466, 500]),
        st.sampled_from([b'{"result":false}', b"", b"oops", b'{"result":"\xff"}']),
    ),
    st.sampled_from(["connect", "bug"]),
)
PUBLISH = st.sampled_from(["ack", "ack", "ack", "nack", "timeout", "returned", "down", "bug"])


def _body(kind: str, n: int) -> bytes | None:
    return {
        "note": b'{"typeWebhook":"incomingCall","idMessage":"m%d"}' % n,
        "broken": b'{"typeWebhook":"incomingCall","n":%d,' % n,
        "bare": None,
        "deep": b'{"typeWebhook":"x","n":%d,"j":%s}' % (n, DEEP),
        "utf8": b'{"typeWebhook":"\xff","n":%d}' % n,
        "negative": b'{"typeWebhook":"x","timestamp":-%d}' % n,
    }[kind]


def _raise(kind: str) -> None:
    if kind == "connect":
        raise httpx.ConnectError("refused")
    if kind == "timeout":
        raise httpx.ReadTimeout("slow")
    raise RuntimeError("a surprise in the transport")


class FaultyQueue:
    """The provider's queue (delete only the head) and the broker, faults scripted on every call.

    Records what the poller did that it must never do, and which answers were permanent errors.
    """

    def __init__(
        self, notes: list[str], receives: list[object], deletes: list[object], publishes: list[str]
    ) -> None:
        self.queue = [(100 + i, _body(kind, i)) for i, kind in enumerate(notes)]
        self.order = [r for r, _ in self.queue]
        self.receive_script, self.delete_script = list(receives), list(deletes)
        self.publish_script = list(publishes)
        self.confirmed: list[int] = []  # receipts, in confirm order
        self.attempted_heads: list[tuple[int, int | None]] = []  # (receipt published, head then)
        self.violations: list[str] = []
        self.permanent_served: list[str] = []
        self.in_flight = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE":
            return self._delete(int(request.url.path.rsplit("/", 1)[1]))
        return self._receive()

    def _scripted(self, method: str, action: object, passes: str) -> httpx.Response | None:
        """The scripted fault of one call (raised or answered), or None if the call passes."""
        if isinstance(action, str) and action != passes:
            _raise(action)
        if isinstance(action, tuple):
            status, text = action
            if status != 200 and isinstance(error_for_status(status, text), PermanentProviderError):
                self.permanent_served.append(f"{method} {status}")
            return httpx.Response(status, content=text)
        return None

    def _delete(self, receipt: int) -> httpx.Response:
        action = self.delete_script.pop(0) if self.delete_script else "ok"
        fault = self._scripted("DELETE", action, "ok")
        if fault is not None:
            return fault
        if receipt not in self.confirmed:
            self.violations.append(f"deleted {receipt} before a confirm")
        if self.queue and self.queue[0][0] == receipt:
            self.queue.pop(0)
        return httpx.Response(200, content=b'{"result":true}')

    def _receive(self) -> httpx.Response:
        action = self.receive_script.pop(0) if self.receive_script else "head"
        fault = self._scripted("GET", action, "head")
        if fault is not None:
            return fault
        if not self.queue:
            return httpx.Response(200, content=b"null")
        receipt, body = self.queue[0]
        if body is None:
            return httpx.Response(200, content=b'{"receiptId":%d}' % receipt)
        return httpx.Response(200, content=b'{"receiptId":%d,"body":%s}' % (receipt, body))

    async def publish(self, out: Outbound) -> bool:
        self.in_flight += 1
        if self.in_flight > 1:
            self.violations.append("two notifications of one instance in flight")
        try:
            amqp_frames(out)  # what the real publisher would have to send
            receipt = int(out.headers["x-receipt-id"])
            self.attempted_heads.append((receipt, self.queue[0][0] if self.queue else None))
            await asyncio.sleep(0)
            outcome = self.publish_script.pop(0) if self.publish_script else "ack"
            if outcome == "bug":
                raise ValueError("a bug in the publisher")
            if outcome in FAILURES:
                raise FAILURES[outcome]
            self.confirmed.append(receipt)
            return True
        finally:
            self.in_flight -= 1


async def _poll_until_drained(provider: FaultyQueue) -> None:
    """Run the poller until the queue and the scripts are used up, or a permanent error."""
    poller, stub, _ = make(provider.handler)
    stub.publish = provider.publish  # type: ignore[method-assign]
    task = asyncio.create_task(poller.run())
    async with asyncio.timeout(8):
        while (provider.queue or provider.receive_script) and not task.done():
            await asyncio.sleep(0.001)
        if provider.permanent_served:
            await task  # a permanent error stops the source by itself
    poller.stop()
    await asyncio.wait_for(task, 5)  # run() returns; it never raises
    if poller.stopped_reason is not None:
        assert provider.permanent_served, (
            f"stopped on {poller.stopped_reason} without a permanent error"
        )
    else:
        assert not provider.permanent_served
        assert not provider.queue, "the poller gave up on a notification"


@settings(max_examples=60, deadline=None)
@given(
    notes=st.lists(NOTES, max_size=8),
    receives=st.lists(RECEIVE_FAULTS, max_size=12),
    deletes=st.lists(DELETE_FAULTS, max_size=8),
    publishes=st.lists(PUBLISH, max_size=10),
)
def test_provider_queue_with_faults_everywhere(
    notes: list[str], receives: list[object], deletes: list[object], publishes: list[str]
) -> None:
    provider = FaultyQueue(notes, receives, deletes, publishes)
    asyncio.run(_poll_until_drained(provider))
    assert provider.violations == []
    for receipt, head in provider.attempted_heads:
        assert receipt == head, "published something other than the head of the queue"
    firsts = list(dict.fromkeys(provider.confirmed))
    assert firsts == provider.order[: len(firsts)], "provider order not kept"
