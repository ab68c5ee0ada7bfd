"""Property test: the poller against random provider answers never deletes what it did not
publish, never dies of a surprise, and stops only on a permanent error."""

from __future__ import annotations

import asyncio

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.component.test_poller import make

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
DELETES = st.lists(st.tuples(st.sampled_from([200, 200, 500, 429, 401]), st.sampled_from(
    [b'{"result":true}', b'{"result":false}', b"", b"oops"])), max_size=10)  # fmt: skip


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
