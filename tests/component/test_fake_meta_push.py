"""The fake Meta's pusher over real sockets: the body and its signature, the verification GET,
retries with growing delays, drops after the max age, batches of several accounts."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import AsyncIterator

import pytest

from bridge.ingest.access import Request, Signature, signed
from bridge.providers import meta
from bridge.providers.base import Item
from fakeprovider.meta import FakeMeta
from fakeprovider.meta_push import Update, batch_body
from tests.support.harness import wait_until
from tests.support.metafake import (
    OTHER_WABA,
    SECRET,
    TOKEN,
    WABA,
    Receiver,
    pushing,
    quick,
    receiving,
    text_message,
)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as recv:
        yield recv


def new_meta(receiver: Receiver, *, batch: int = 1, token: str | None = TOKEN) -> FakeMeta:
    state = FakeMeta(quick())
    state.add_app(
        "app",
        SECRET,
        [WABA, OTHER_WABA],
        verify_token=token,
        callback_url=receiver.url,
        batch=batch,
    )
    return state


def verified_by_bridge(body: bytes, headers: dict[str, str], secret: str = SECRET) -> bool:
    request = Request([(k.lower().encode(), v.encode()) for k, v in headers.items()])
    return signed(Signature(secret.encode(), meta.SIGNATURE), request, body)


async def test_post_is_compact_escaped_and_signed(receiver: Receiver) -> None:
    state = new_meta(receiver)
    async with pushing(state):
        state.enqueue(WABA, "messages", text_message("wamid.A1", "äöå 😮"))
        await wait_until(lambda: state.stats("app").delivered == 1)
    (post,) = receiver.posts
    assert post.headers["content-type"] == "application/json"
    assert post.headers["x-hub-signature-256"].startswith("sha256=")
    assert verified_by_bridge(post.body, post.headers)
    assert not verified_by_bridge(post.body, post.headers, secret="another-secret")
    assert b"\\u00e4\\u00f6\\u00e5 \\ud83d\\ude2e" in post.body
    assert post.body.isascii() and b", " not in post.body and b": " not in post.body
    decoded = json.loads(post.body)
    assert decoded["object"] == "whatsapp_business_account"
    assert [e["id"] for e in decoded["entry"]] == [WABA]
    change = decoded["entry"][0]["changes"][0]
    assert change["field"] == "messages" and change["value"]["messages"][0]["id"] == "wamid.A1"
    assert post.body == batch_body([Update(WABA, "messages", text_message("wamid.A1", "äöå 😮"))])


async def test_verification_get_comes_first_once_per_url(receiver: Receiver) -> None:
    state = new_meta(receiver)
    async with pushing(state):
        for n in range(3):
            state.enqueue(WABA, "messages", text_message(f"wamid.V{n}"))
        await wait_until(lambda: state.stats("app").delivered == 3)
    assert [h.method for h in receiver.hits] == ["GET", "POST", "POST", "POST"]
    query = receiver.gets[0].query
    assert query["hub.mode"] == "subscribe" and query["hub.verify_token"] == TOKEN
    assert query["hub.challenge"].isdigit()
    stats = state.stats("app")
    assert (stats.verification.requests, stats.verification.verified) == (1, 1)


@pytest.mark.parametrize("answer", ["wrong", "refuse"])
async def test_a_wrong_verification_answer_means_no_push(
    receiver: Receiver, answer: str, caplog: pytest.LogCaptureFixture
) -> None:
    setattr(receiver, answer, True)
    state = FakeMeta(quick(max_age=0.3))
    state.add_app("app", SECRET, [WABA], verify_token=TOKEN, callback_url=receiver.url)
    with caplog.at_level(logging.WARNING):
        async with pushing(state):
            state.enqueue(WABA, "messages", text_message("wamid.N1"))
            await wait_until(lambda: state.stats("app").dropped == 1)
    assert receiver.gets and not receiver.posts
    stats = state.stats("app")
    assert stats.verification.failed == len(receiver.gets) and stats.verification.verified == 0
    assert stats.statuses.get("unverified") == len(receiver.gets)
    assert stats.delivered == 0 and stats.pending == 0


async def test_a_new_verify_token_is_checked_again(receiver: Receiver) -> None:
    state = new_meta(receiver)
    async with pushing(state):
        state.enqueue(WABA, "messages", text_message("wamid.T1"))
        await wait_until(lambda: state.stats("app").delivered == 1)
        state.apps["app"].set_verify_token("another")
        state.enqueue(WABA, "messages", text_message("wamid.T2"))
        await wait_until(lambda: state.stats("app").dropped == 1, timeout=8)
    assert len(receiver.posts) == 1 and len(receiver.gets) > 1


async def test_anything_but_200_is_retried_with_growing_delays(receiver: Receiver) -> None:
    receiver.script = [500, 201, 429, 204]
    state = new_meta(receiver, token=None)
    async with pushing(state):
        state.enqueue(WABA, "messages", text_message("wamid.R1"))
        await wait_until(lambda: state.stats("app").delivered == 1)
    posts = receiver.posts
    assert len(posts) == 5 and not receiver.gets
    assert len({p.body for p in posts}) == 1
    assert len({p.headers["x-hub-signature-256"] for p in posts}) == 1
    gaps = [b.at - a.at for a, b in itertools.pairwise(posts)]
    for gap, expected in zip(gaps, [0.05, 0.1, 0.2, 0.4], strict=True):
        # never early (the doubling shows); late by jitter and a busy machine's stall at most
        assert expected * 0.9 <= gap < expected * 1.25 + 0.45, gaps
    stats = state.stats("app")
    assert (stats.retried, stats.failures, stats.successes) == (4, 4, 1)
    assert stats.statuses == {"500": 1, "201": 1, "429": 1, "204": 1, "200": 1}


async def test_dropped_after_the_max_age_and_logged(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.script = [503] * 100
    state = FakeMeta(quick(max_age=0.5))
    state.add_app("app", SECRET, [WABA], callback_url=receiver.url)
    with caplog.at_level(logging.WARNING):
        async with pushing(state):
            state.enqueue(WABA, "messages", text_message("wamid.D1"))
            await wait_until(lambda: state.stats("app").dropped == 1)
    posts = receiver.posts
    # retried, and never once the batch was older than its max age (a post sent just before
    # may arrive a little after it on a busy machine)
    assert 2 <= len(posts) <= 6 and posts[-1].at - posts[0].at <= 0.5 + 0.3
    stats = state.stats("app")
    assert (stats.delivered, stats.pending, stats.given_up) == (0, 0, 1)
    assert any("fake.meta_dropped" in r.getMessage() for r in caplog.records)


async def test_a_batch_holds_several_accounts_and_splits_back(receiver: Receiver) -> None:
    state = new_meta(receiver, batch=10, token=None)
    status = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": "1065"},
        "statuses": [
            {"id": "wamid.S1", "status": "sent", "timestamp": "1", "recipient_id": "55119"},
            {"id": "wamid.S1", "status": "read", "timestamp": "2", "recipient_id": "55119"},
        ],
    }
    template = {"event": "APPROVED", "message_template_id": 1, "message_template_name": "x"}
    updates = [
        (WABA, "messages", text_message("wamid.B1")),
        (OTHER_WABA, "messages", text_message("wamid.B2", sender="5521912345678")),
        (WABA, "messages", status),
        (OTHER_WABA, "message_template_status_update", template),
    ]
    async with pushing(state):
        for waba, field, value in updates:
            state.enqueue(waba, field, value)
        await wait_until(lambda: state.stats("app").delivered == 4)
    (post,) = receiver.posts
    assert state.stats("app").posts == 1
    parts = meta.split(post.body)
    assert [json.loads(p)["entry"][0]["id"] for p in parts] == [WABA, OTHER_WABA]
    items: dict[str | None, list[Item]] = {}
    for part in parts:
        parsed = meta.parse(part)
        for item in parsed.items(parsed.instance or ""):
            items.setdefault(parsed.instance, []).append(item)
    assert [i.classified.message_key for i in items[WABA]] == [
        "wamid.B1",
        "wamid.S1:sent",
        "wamid.S1:read",
    ]
    assert [i.classified.event for i in items[OTHER_WABA]] == [
        "messages",
        "message_template_status_update",
    ]
    assert items[OTHER_WABA][0].classified.chat_id == "5521912345678"
    for item in items[WABA][:1]:
        assert (
            json.loads(item.body)["entry"][0]["changes"][0]["value"]["messages"][0]
            == (
                text_message("wamid.B1")["messages"][0]  # type: ignore[index]
            )
        )


async def test_batches_take_at_most_batch_updates(receiver: Receiver) -> None:
    state = new_meta(receiver, batch=3, token=None)
    async with pushing(state):
        for n in range(7):
            state.enqueue(WABA if n % 2 else OTHER_WABA, "messages", text_message(f"wamid.C{n}"))
        await wait_until(lambda: state.stats("app").delivered == 7)
    sizes = sorted(
        sum(len(e["changes"]) for e in json.loads(p.body)["entry"]) for p in receiver.posts
    )
    assert sizes == [1, 3, 3] and state.stats("app").posts == 3


async def test_no_callback_url_skips(receiver: Receiver) -> None:
    state = FakeMeta(quick())
    state.add_app("app", SECRET, [WABA])
    async with pushing(state):
        assert state.enqueue(WABA, "messages", text_message("wamid.K1")) == 0
    stats = state.stats("app")
    assert (stats.enqueued, stats.skipped, stats.pending) == (1, 1, 0) and not receiver.hits
