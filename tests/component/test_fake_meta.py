"""The fake Meta's control API, `bridge fake-provider --meta`, and the fake pushing into the
bridge's own webhook app (verification GET and signed batches included)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bridge.config import load
from fakeprovider.greenapi import FakeGreenApi
from fakeprovider.meta import FakeMeta
from fakeprovider.server import _meta_state, serve_socket
from tests.component.test_webhooks import app_of
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

CONFIG = f"""
[[sources]]
provider = "meta"
mode = "webhook"
instance = "{WABA}"
app_secret_env = "SECRET"
verify_token_env = "VERIFY"

[[sources]]
provider = "meta"
mode = "webhook"
instance = "{OTHER_WABA}"
app_secret_env = "SECRET"
verify_token_env = "VERIFY"
"""
ENV = {"SECRET": SECRET, "VERIFY": TOKEN}


@contextlib.asynccontextmanager
async def served(state: FakeMeta) -> AsyncIterator[httpx.AsyncClient]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    ready = asyncio.Event()
    task = asyncio.create_task(serve_socket(FakeGreenApi(), sock, ready=ready, meta=state))
    await asyncio.wait_for(ready.wait(), 5)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            yield client
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as recv:
        yield recv


async def test_control_api(receiver: Receiver) -> None:
    state = FakeMeta()
    async with served(state) as client:
        spec = {"name": "app", "secret": SECRET, "wabas": [WABA, OTHER_WABA], "batch": 5}
        created = await client.post("/_control/meta/apps", json=spec)
        assert created.json() == {"name": "app", "created": True}
        again = await client.post("/_control/meta/apps", json={**spec, "secret": "x"})
        assert again.status_code == 409
        bad = await client.post("/_control/meta/apps", json={**spec, "name": "b", "batch": 0})
        assert bad.status_code == 400
        policy = await client.put("/_control/meta/delivery", json={"initial_delay": 0.05})
        assert policy.json()["initial_delay"] == 0.05
        refused = await client.put("/_control/meta/delivery", json={"jitter": 1.5})
        assert refused.status_code == 400
        changed = await client.put(
            "/_control/meta/apps/app", json={"callback_url": receiver.url, "verify_token": TOKEN}
        )
        assert changed.json()["callback_url"] == receiver.url
        updates = [
            {"value": text_message("wamid.X1")},
            {"value": text_message("wamid.X2"), "field": "messages"},
        ]
        sent = await client.post(f"/_control/meta/wabas/{WABA}/updates", json=updates)
        assert sent.json() == {"enqueued": 2, "scheduled": 2}
        other = {"value": text_message("wamid.X3")}
        await client.post(f"/_control/meta/wabas/{OTHER_WABA}/updates", json=other)
        await wait_until(lambda: state.stats("app").delivered == 3)
        stats = (await client.get("/_control/meta/stats")).json()["app"]
        assert (stats["enqueued"], stats["delivered"], stats["pending"]) == (3, 3, 0)
        assert stats["verification"] == {"requests": 1, "verified": 1, "failed": 0}
        unknown = await client.post("/_control/meta/wabas/999/updates", json=other)
        assert unknown.status_code == 404
        assert (await client.get("/_control/meta/apps/nope")).status_code == 404
        assert (await client.post("/_control/reset")).status_code == 200
        assert state.apps == {}
    assert [h.method for h in receiver.hits][:1] == ["GET"]
    first = json.loads(receiver.posts[0].body)
    assert [len(e["changes"]) for e in first["entry"]] == [2]


def test_cli_meta_apps(tmp_path: Path) -> None:
    from bridge.cli import _fake_meta

    path = tmp_path / "b.toml"
    path.write_text(CONFIG)
    settings = load(path, ENV)
    args = argparse.Namespace(meta=["777:other-secret", "778:other-secret:tok"])
    apps = _fake_meta(args, settings)
    assert apps == [
        (WABA, SECRET, TOKEN),
        (OTHER_WABA, SECRET, TOKEN),
        ("777", "other-secret", ""),
        ("778", "other-secret", "tok"),
    ]
    state = _meta_state(apps)
    assert {name: app.wabas for name, app in state.apps.items()} == {
        "app1": [WABA, OTHER_WABA],
        "app2": ["777"],
        "app3": ["778"],
    }
    assert state.apps["app1"].verify_token == TOKEN and state.apps["app2"].verify_token is None
    for bad in ("x1:s", "1", "1:"):
        with pytest.raises(ValueError, match="--meta wants"):
            _fake_meta(argparse.Namespace(meta=[bad]), None)


async def test_every_pushed_item_is_published_by_the_bridge(tmp_path: Path) -> None:
    client, stub = app_of(tmp_path, CONFIG, ENV)
    state = FakeMeta(quick())
    url = "http://bridge/webhooks/meta"
    state.add_app("app", SECRET, [WABA, OTHER_WABA], verify_token=TOKEN, callback_url=url, batch=4)
    ids = [f"wamid.E{n:03d}" for n in range(20)]
    async with pushing(state, client):
        for n, id in enumerate(ids):
            state.enqueue(WABA if n % 3 else OTHER_WABA, "messages", text_message(id, "olá"))
        await wait_until(lambda: state.stats("app").delivered == len(ids))
    stats = state.stats("app")
    assert stats.verification.verified == 1 and stats.failures == 0 and stats.posts == 5
    keys = sorted(out.message_id for out in stub.published)
    assert len(keys) == len(ids) == len(set(keys))
    bodies = [json.loads(out.body) for out in stub.published]
    seen = sorted(b["entry"][0]["changes"][0]["value"]["messages"][0]["id"] for b in bodies)
    assert seen == ids
    accounts = {b["entry"][0]["id"] for b in bodies}
    assert accounts == {WABA, OTHER_WABA}


async def test_a_bridge_with_another_token_gets_nothing(tmp_path: Path) -> None:
    client, stub = app_of(tmp_path, CONFIG, {**ENV, "VERIFY": "not-the-fake's"})
    state = FakeMeta(quick(max_age=0.2))
    state.add_app(
        "app", SECRET, [WABA], verify_token=TOKEN, callback_url="http://bridge/webhooks/meta"
    )
    async with pushing(state, client):
        state.enqueue(WABA, "messages", text_message("wamid.Z1"))
        await wait_until(lambda: state.stats("app").dropped == 1)
    assert stub.published == [] and state.stats("app").verification.verified == 0
