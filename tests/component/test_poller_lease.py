"""The poller under a lease, against the fake GREEN-API over real HTTP: it receives only while
the lease is usable, a revoke abandons a pending long poll at once, and the notification in
hand is published and deleted before a hand-over may proceed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bridge.amqp.lease import Lease
from bridge.config import AmqpConfig, PollConfig, Secret, Source
from bridge.envelope import Outbound
from bridge.ingest.http import AiohttpProviderHttp
from bridge.ingest.pipeline import Pipeline
from bridge.ingest.poller import Poller
from fakeprovider.greenapi import Fault
from tests.component.test_poller import StubPublisher
from tests.support.harness import FakeServer, fake_greenapi, wait_until

pytestmark = pytest.mark.timeout(30)
IDENT = "1101000901"
TOKEN = "tok-lease-abcdefghijkl"
NOTE = b'{"typeWebhook":"incomingMessageReceived","idMessage":"L%d"}'
CLIENTS: dict[str, AiohttpProviderHttp] = {}


class HeldPublisher(StubPublisher):
    """Publishes only when `release` is set, to hold a notification in hand."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def publish(self, out: Outbound) -> bool:
        self.started.set()
        await self.release.wait()
        return await super().publish(out)


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    # timeout_scale 1: an empty long poll really lasts receive_timeout (5 s)
    async with fake_greenapi([(IDENT, TOKEN)], timeout_scale=1.0) as server:
        yield server


async def start(
    fake: FakeServer, stub: StubPublisher, poll: PollConfig | None = None
) -> tuple[Poller, Lease, asyncio.Task[None]]:
    """A poller under an ungranted lease, running; `stop()` ends it and closes its client."""
    source = Source(provider="greenapi", mode="poll", instance=IDENT, api_url=fake.url,
                    token_env="T", receive_timeout=5)  # fmt: skip
    lease = Lease("bridge.lease.greenapi." + IDENT, "greenapi", IDENT)
    poller = Poller(
        source, Secret(TOKEN), client=CLIENTS.setdefault(IDENT, AiohttpProviderHttp(max_connections=4)),
        pipeline=Pipeline(AmqpConfig(), stub), poll=poll or PollConfig(timeout_margin=2), lease=lease,
    )  # fmt: skip
    return poller, lease, asyncio.create_task(poller.run())


async def stop(poller: Poller, task: asyncio.Task[None]) -> None:
    poller.stop()
    await asyncio.wait_for(task, 10)
    await CLIENTS.pop(IDENT).aclose()


async def test_no_receive_until_the_lease_is_usable(fake: FakeServer) -> None:
    stub = StubPublisher()
    fake.state.enqueue(IDENT, NOTE % 1)
    poller, lease, task = await start(fake, stub)
    await asyncio.sleep(0.3)
    assert fake.state.instance(IDENT).receives == 0
    lease.grant()
    await wait_until(lambda: fake.state.instance(IDENT).deleted == 1, 5)
    assert [o.body for o in stub.published] == [NOTE % 1]
    await stop(poller, task)


async def test_a_revoke_abandons_the_pending_long_poll_and_a_grant_resumes(
    fake: FakeServer,
) -> None:
    stub = StubPublisher()
    poller, lease, task = await start(fake, stub)
    lease.grant()
    instance = fake.state.instance(IDENT)
    await wait_until(lambda: instance.in_flight == 1, 5)  # long-polling an empty queue
    lease.revoke()
    await wait_until(lambda: instance.in_flight == 0, 3)  # well before the 5 s long poll ends
    assert await lease.quiesce(1)
    receives = instance.receives
    fake.state.enqueue(IDENT, NOTE % 2)
    await asyncio.sleep(0.3)
    assert instance.receives == receives and instance.deleted == 0
    lease.grant()
    await wait_until(lambda: instance.deleted == 1, 5)
    assert [o.body for o in stub.published] == [NOTE % 2]
    assert not fake.state.stats().overlapped
    await stop(poller, task)


async def test_the_notification_in_hand_is_finished_before_a_hand_over(fake: FakeServer) -> None:
    stub = HeldPublisher()
    fake.state.enqueue_many(IDENT, [NOTE % 3, NOTE % 4])
    poller, lease, task = await start(fake, stub)
    lease.grant()
    await asyncio.wait_for(stub.started.wait(), 5)
    lease.revoke()
    quiesced = asyncio.create_task(lease.quiesce(10))
    await asyncio.sleep(0.2)
    assert not quiesced.done()  # a publish is still awaiting its confirm
    stub.release.set()
    assert await quiesced
    instance = fake.state.instance(IDENT)
    assert instance.deleted == 1  # deleted after its confirm, before the lease was let go
    await asyncio.sleep(0.2)
    assert [o.body for o in stub.published] == [NOTE % 3]  # nothing more without the lease
    await stop(poller, task)


async def test_a_hand_over_does_not_wait_out_a_back_off(fake: FakeServer) -> None:
    stub = StubPublisher()
    fake.state.set_fault(IDENT, Fault(kind="quota", methods=frozenset({"receive"})))
    poll = PollConfig(timeout_margin=2, long_backoff=60)
    poller, lease, task = await start(fake, stub, poll)
    lease.grant()
    instance = fake.state.instance(IDENT)
    await wait_until(lambda: instance.receives == 1 and instance.in_flight == 0, 5)  # 466
    lease.revoke()
    assert await lease.quiesce(1)  # the 60-s pause is not a notification in hand
    await stop(poller, task)
