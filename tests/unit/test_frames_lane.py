"""The confirm lane on a channel without a socket: aiormq's own confirm dispatch
(`Channel._on_confirm_frame`, `_confirm_delivery`) runs on a stand-in channel, and the test plays
aiormq's writer (takes `ChannelFrame`s off the write queue, resolves their drain futures).

What it shows: frames of one loop iteration are one write, in tag order; `multiple=true` acks
resolve many; a nack or a lost channel fails exactly the publishes concerned; a full write
queue or an undrained writer makes publishes wait and drops nothing; the deadline fires on time
and at most 10 % late.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from types import SimpleNamespace
from typing import Any

import aiormq
import aiormq.exceptions
import pytest
from pamqp.commands import Basic

from bridge.amqp import publisher as publisher_module
from bridge.amqp.publisher import ConfirmLane
from bridge.envelope import Outbound
from bridge.errors import BrokerUnavailable, PublishTimeout

_MID = re.compile(rb"\x05(m[0-9]{4})")


class FakeChannel:
    """The part of `aiormq.Channel` the lane and aiormq's confirm dispatch touch."""

    number = 1
    publisher_confirms = True
    _on_confirm_frame = aiormq.Channel._on_confirm_frame
    _confirm_delivery = aiormq.Channel._confirm_delivery

    def __init__(self, queue_size: int = 10) -> None:
        self.loop = asyncio.get_running_loop()
        self.delivery_tag = 0
        self.confirmations: OrderedDict[int, Any] = OrderedDict()
        self.message_id_delivery_tag: dict[str, int] = {}
        self.write_queue: asyncio.Queue[Any] = asyncio.Queue(queue_size)
        self.connection = SimpleNamespace(connection_tune=SimpleNamespace(frame_max=131_072))
        self.is_closed = False
        self.closing = self.loop.create_future()

    async def ack(self, tag: int, *, multiple: bool = False) -> None:
        await self._on_confirm_frame(Basic.Ack(delivery_tag=tag, multiple=multiple))
        await asyncio.sleep(0)  # aiormq resolves multiple acks with call_soon

    async def nack(self, tag: int) -> None:
        await self._on_confirm_frame(Basic.Nack(delivery_tag=tag))
        await asyncio.sleep(0)

    def take(self) -> list[str]:
        """One write off the queue, as aiormq's writer takes it: the message ids inside."""
        frame = self.write_queue.get_nowait()
        frame.drain_future.set_result(None)
        return [m.decode() for m in _MID.findall(frame.payload)]


def message(n: int, body: bytes = b"{}") -> Outbound:
    return Outbound(
        exchange="notifications", routing_key="k", body=body, message_id=f"m{n:04d}",
        event="k", timestamp=None, headers={}, provider="greenapi", instance="1",
    )  # fmt: skip


def start(lane: ConfirmLane, numbers: range) -> list[asyncio.Task[Any]]:
    return [asyncio.ensure_future(lane.publish(message(n))) for n in numbers]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_one_iteration_is_one_write_and_multiple_acks_resolve_many() -> None:
    channel = FakeChannel()
    lane = ConfirmLane(channel, 10.0)  # type: ignore[arg-type]
    tasks = start(lane, range(300))
    await settle()
    assert channel.write_queue.qsize() == 1
    assert channel.take() == [f"m{n:04d}" for n in range(300)]
    await channel.ack(200, multiple=True)
    await channel.nack(201)
    await channel.ack(300, multiple=True)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, Basic.Ack) for r in results[:200] + results[201:])
    assert isinstance(results[200], aiormq.exceptions.DeliveryError)
    assert not channel.confirmations and not channel.message_id_delivery_tag


async def test_a_lost_channel_fails_exactly_the_unconfirmed() -> None:
    channel = FakeChannel()
    lane = ConfirmLane(channel, 10.0)  # type: ignore[arg-type]
    tasks = start(lane, range(500))
    await settle()
    channel.take()
    await channel.ack(123, multiple=True)
    channel.closing.set_exception(ConnectionResetError())
    channel.closing.exception()  # aiormq's observer retrieves it
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, Basic.Ack) for r in results[:123])
    assert all(isinstance(r, BrokerUnavailable) for r in results[123:])
    with pytest.raises(BrokerUnavailable):
        await lane.publish(message(999))


async def test_a_full_write_queue_makes_publishes_wait_and_drops_nothing() -> None:
    channel = FakeChannel(queue_size=1)
    lane = ConfirmLane(channel, 10.0)  # type: ignore[arg-type]
    first = start(lane, range(0, 10))
    await settle()  # the first write fills the queue
    second = start(lane, range(10, 20))
    await settle()  # the second write cannot be queued: it is held, not dropped
    third = start(lane, range(20, 30))
    await settle()
    assert channel.delivery_tag == 20  # the third batch waits before taking tags
    written: list[str] = []
    while len(written) < 30:
        written += channel.take()
        await settle()
    assert written == [f"m{n:04d}" for n in range(30)]
    await channel.ack(30, multiple=True)
    results = await asyncio.gather(*first, *second, *third)
    assert all(isinstance(r, Basic.Ack) for r in results)


async def test_an_undrained_writer_makes_publishes_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publisher_module, "HIGH_WATER_BYTES", 1000)
    channel = FakeChannel()
    lane = ConfirmLane(channel, 10.0)  # type: ignore[arg-type]
    big = [asyncio.ensure_future(lane.publish(message(n, b"x" * 600))) for n in range(2)]
    await settle()
    waiting = start(lane, range(2, 4))
    await settle()
    assert channel.delivery_tag == 2  # over the high-water mark: no new frames
    frame = channel.write_queue.get_nowait()  # written, but the socket has not drained
    await settle()
    assert channel.delivery_tag == 2
    frame.drain_future.set_result(None)  # aiormq's writer.drain() returned
    await settle()
    assert channel.delivery_tag == 4
    assert channel.take() == ["m0002", "m0003"]
    await channel.ack(4, multiple=True)
    assert all(isinstance(r, Basic.Ack) for r in await asyncio.gather(*big, *waiting))


async def test_deadlines_fire_on_time_and_at_most_ten_percent_late() -> None:
    timeout = 1.0
    channel = FakeChannel()
    lane = ConfirmLane(channel, timeout)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    lateness: list[float] = []

    async def timed(n: int) -> None:
        started = loop.time()
        with pytest.raises(PublishTimeout):
            await lane.publish(message(n))
        lateness.append(loop.time() - started - timeout)

    tasks = []
    for n in range(6):
        tasks.append(asyncio.ensure_future(timed(n)))
        await asyncio.sleep(0.07)
    confirmed = asyncio.ensure_future(lane.publish(message(99)))
    await settle()
    await channel.ack(channel.delivery_tag)  # one publish confirmed in time
    assert isinstance(await confirmed, Basic.Ack)
    await asyncio.gather(*tasks)
    assert min(lateness) >= 0
    assert max(lateness) <= 0.1 * timeout, lateness
    await channel.ack(1)  # a confirm after the deadline is dropped quietly
    assert 1 not in channel.confirmations


async def test_concurrent_publishes_of_one_message_share_one_broker_publish() -> None:
    channel = FakeChannel()
    lane = ConfirmLane(channel, 10.0)  # type: ignore[arg-type]
    twice = [asyncio.ensure_future(lane.publish(message(7))) for _ in range(2)]
    await settle()
    assert channel.take() == ["m0007"]  # one publish, so a return can name only it
    await channel.ack(1)
    assert all(isinstance(r, Basic.Ack) for r in await asyncio.gather(*twice))
    with pytest.raises(ValueError, match="message_id"):
        await lane.publish(message(8)._replace(message_id=""))
