"""The aiormq internals `bridge.amqp.publisher.ConfirmLane` publishes on, checked against the
installed aiormq and a real broker. A failure here means aiormq changed underneath the bridge's
publish path: read the new aiormq before moving the pin in pyproject.toml.

What the lane relies on:
- `Channel.delivery_tag` (the last tag taken), `Channel.confirmations` (tag -> future, resolved
  by the reader: `Basic.Ack` as result, `DeliveryError` on nack, one `multiple=true` ack for
  every tag up to its own), `Channel.message_id_delivery_tag` (message id -> tag, where a
  `basic.return` finds its future and fails it with `PublishError`);
- a done (cancelled) future left in `confirmations` makes a late confirm a quiet no-op;
- `Channel.write_queue` is the connection's writer queue of `ChannelFrame(payload,
  should_close, drain_future)`; the writer writes the payload as it is and resolves
  `drain_future` after `writer.drain()`;
- `Channel.closing` completes when the channel or its connection closes;
- `connection_tune.frame_max` is what `Channel.max_content_size` cuts bodies by;
- pamqp encodes table integers the AMQP way (not its deprecated-RabbitMQ mode).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import aiormq
import aiormq.exceptions
import pamqp.encode
import pytest
from aiormq.abc import ChannelFrame
from pamqp.commands import Basic

from bridge.amqp import frames
from tests.conftest import AMQP_URL
from tests.integration.test_publisher import outbound
from tests.support.harness import Names

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_the_installed_aiormq_is_inside_the_pinned_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = [d for d in project["project"]["dependencies"] if d.startswith("aiormq")]
    assert len(pins) == 1, "pyproject.toml pins aiormq once, with a range"
    low, high = re.fullmatch(r"aiormq>=([\d.]+),<([\d.]+)", pins[0]).groups()  # type: ignore[union-attr]
    installed = _version(metadata.version("aiormq"))
    assert _version(low) <= installed < _version(high)


def test_the_frame_shapes_the_lane_builds() -> None:
    fields = [f.name for f in dataclasses.fields(ChannelFrame)]
    assert fields == ["payload", "should_close", "drain_future"]
    assert aiormq.Channel.CONTENT_FRAME_SIZE == frames.FRAME_OVERHEAD
    assert pamqp.encode.DEPRECATED_RABBITMQ_SUPPORT is False


async def _send(channel: aiormq.Channel, outs: list[Any]) -> list[asyncio.Future[Any]]:
    """Publish the lane's way: tags, futures where the reader looks, one ChannelFrame."""
    loop = asyncio.get_running_loop()
    encode = frames.Encoder(channel.number, channel.connection.connection_tune.frame_max)
    parts: list[bytes] = []
    futures = []
    for out in outs:
        encode.into(parts, out)
        channel.delivery_tag += 1
        future = loop.create_future()
        channel.confirmations[channel.delivery_tag] = future
        channel.message_id_delivery_tag[out.message_id] = channel.delivery_tag
        futures.append(future)
    drained = loop.create_future()
    channel.write_queue.put_nowait(
        ChannelFrame(payload=b"".join(parts), should_close=False, drain_future=drained)
    )
    await asyncio.wait_for(drained, 10)
    return futures


async def test_the_channel_internals_resolve_what_the_lane_registers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    names = Names()
    connection = await aiormq.connect(AMQP_URL)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        assert isinstance(channel, aiormq.Channel)
        assert channel.write_queue is connection.write_queue
        assert isinstance(channel.delivery_tag, int)
        assert isinstance(channel.confirmations, dict)
        assert isinstance(channel.message_id_delivery_tag, dict)
        frame_max = connection.connection_tune.frame_max
        assert channel.max_content_size == frame_max - frames.FRAME_OVERHEAD
        routed = f"{names.prefix}.routed"
        await channel.exchange_declare(routed, exchange_type="fanout", auto_delete=True)
        await channel.queue_declare(routed, auto_delete=True)
        await channel.queue_bind(routed, routed)
        lonely = f"{names.prefix}.lonely"
        await channel.exchange_declare(lonely, exchange_type="fanout", auto_delete=True)

        # acks (RabbitMQ sends `multiple=true` for runs of them) resolve every future
        acked = await _send(channel, [outbound(routed, "k", mid=f"a{i}") for i in range(50)])
        results = await asyncio.wait_for(asyncio.gather(*acked), 10)
        assert all(isinstance(r, Basic.Ack) for r in results)

        # a return fails the future of the message it names
        (returned,) = await _send(channel, [outbound(lonely, "k", mid="returned")])
        with pytest.raises(aiormq.exceptions.PublishError):
            await asyncio.wait_for(returned, 10)

        # a tag left as a cancelled future: its confirm is dropped without a warning
        caplog.set_level(logging.DEBUG, logger="aiormq")
        (late,) = await _send(channel, [outbound(routed, "k", mid="late")])
        tag = channel.delivery_tag
        placeholder = asyncio.get_running_loop().create_future()
        placeholder.cancel()
        channel.confirmations[tag] = placeholder
        (after,) = await _send(channel, [outbound(routed, "k", mid="after")])
        assert isinstance(await asyncio.wait_for(after, 10), Basic.Ack)
        assert tag not in channel.confirmations  # the reader took the placeholder's confirm
        assert not late.done()
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

        closing = channel.closing
        assert isinstance(closing, asyncio.Future) and not closing.done()
    finally:
        # never consumed, so auto_delete would never remove them
        cleanup = await connection.channel()
        await cleanup.queue_delete(f"{names.prefix}.routed")
        await cleanup.exchange_delete(f"{names.prefix}.routed")
        await cleanup.exchange_delete(f"{names.prefix}.lonely")
        await connection.close()
    await asyncio.wait([closing], timeout=10)
    assert closing.done()
