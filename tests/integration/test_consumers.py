"""Consumer-side tools against the real broker: `queues declare`, `tail`, `bridge.consumer`.

Every object has a unique prefix and is deleted afterwards; the real `notifications` exchange is
never touched (each test declares its own `<prefix>.notifications`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq.exceptions
import pytest

from bridge.consumer import Consumer, Delivery, QueueNotFound
from bridge.errors import TopologyError
from bridge.tools import queues, tail
from tests.conftest import AMQP_URL
from tests.support.harness import wait_until
from tests.support.tcpproxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@dataclass
class Sandbox:
    """A private exchange and dead-letter name; tracks what to delete."""

    connection: aio_pika.abc.AbstractConnection
    channel: aio_pika.abc.AbstractChannel
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")
    queues: set[str] = field(default_factory=set)
    exchanges: set[str] = field(default_factory=set)

    @property
    def exchange(self) -> str:
        return f"{self.prefix}.notifications"

    @property
    def dead(self) -> str:
        return f"{self.prefix}.dead"

    def name(self, suffix: str) -> str:
        return f"{self.prefix}.{suffix}"

    def track(self, name: str, shards: int | None = None) -> None:
        self.queues.update([name] if shards is None else [f"{name}.{n}" for n in range(shards)])
        if shards is not None:
            self.exchanges.add(f"{name}.hash")

    def argv(self, name: str, *binds: str, extra: tuple[str, ...] = ()) -> list[str]:
        keys = [arg for key in binds for arg in ("--bind", key)]
        return [name, *keys, "--exchange", self.exchange, "--dead-letter-exchange", self.dead,
                "--amqp-url", AMQP_URL, *extra]  # fmt: skip

    async def declare(self, name: str, *binds: str, shards: int | None = None) -> None:
        self.track(name, shards)
        todo = queues.plan(
            name, binds, exchange=self.exchange, dead_letter=self.dead, shards=shards
        )
        await queues.declare(AMQP_URL, todo)

    async def publish(
        self, key: str, body: bytes = b"{}", *, mid: str | None = None, **headers: Any
    ) -> None:
        exchange = await self.channel.get_exchange(self.exchange, ensure=False)
        message = aio_pika.Message(body, message_id=mid, headers=headers, delivery_mode=2)
        await exchange.publish(message, routing_key=key)

    async def ready(self, queue: str) -> int:
        declared = await self.channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count

    async def settles(self, queue: str, expected: int, timeout: float = 5.0) -> None:
        """Wait until `queue` holds `expected` ready messages (returns are asynchronous)."""
        counts = [await self.ready(queue)]
        deadline = asyncio.get_running_loop().time() + timeout
        while counts[-1] != expected and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            counts.append(await self.ready(queue))
        assert counts[-1] == expected, counts


@pytest.fixture
async def box() -> AsyncIterator[Sandbox]:
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()  # publisher confirms on
    sandbox = Sandbox(connection, channel)
    await channel.declare_exchange(sandbox.exchange, "topic", durable=True)
    try:
        yield sandbox
    finally:
        for name in (*sandbox.queues, sandbox.dead):
            async with connection.channel() as cleanup:
                with contextlib.suppress(aiormq.exceptions.AMQPError):
                    await cleanup.queue_delete(name)
        for name in (*sandbox.exchanges, sandbox.dead, sandbox.exchange):
            async with connection.channel() as cleanup:
                with contextlib.suppress(aiormq.exceptions.AMQPError):
                    await cleanup.exchange_delete(name)
        await connection.close()


def parse(add: Callable[[argparse.ArgumentParser], None], argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add(parser)
    return parser.parse_args(argv)


async def run_queues(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = await asyncio.to_thread(queues.run, parse(queues.add_arguments, argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- queues declare ------------------------------------------------------------------------------


async def test_declare_creates_quorum_sac_queues_with_dead_lettering_and_bindings(
    box: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    name = box.name("billing")
    box.track(name)
    code, out, _ = await run_queues(box.argv(name, "incomingMessageReceived", "messages.*"), capsys)
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert {(r["kind"], r["name"], r["state"]) for r in rows} >= {
        ("exchange", box.dead, "created"),
        ("queue", box.dead, "created"),
        ("queue", name, "created"),
    }
    keys = {r["routing_key"] for r in rows if r["kind"] == "binding" and r["name"] == name}
    assert keys == {"incomingMessageReceived", "messages.*"}
    # The broker holds exactly these arguments: re-declaring with them is accepted, anything
    # else (a classic queue, no dead-lettering) is refused.
    expected = {
        "x-queue-type": "quorum", "x-single-active-consumer": True,
        "x-dead-letter-exchange": box.dead, "x-delivery-limit": 20,
    }  # fmt: skip
    await box.channel.declare_queue(name, durable=True, arguments=expected)
    for wrong in ({**expected, "x-queue-type": "classic"}, {"x-queue-type": "quorum"}):
        async with box.connection.channel() as probe:
            with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
                await probe.declare_queue(name, durable=True, arguments=wrong)
    for key in ("incomingMessageReceived", "messages.upsert", "outgoingMessageStatus"):
        await box.publish(key)
    await box.settles(name, 2)  # the third key is not bound


async def test_declare_twice_is_idempotent_and_reports_what_exists(
    box: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    name = box.name("twice")
    box.track(name)
    argv = box.argv(name, "ack")
    assert (await run_queues(argv, capsys))[0] == 0
    code, out, _ = await run_queues(argv, capsys)
    assert code == 0
    states = {(r["kind"], r["name"]): r["state"] for r in map(json.loads, out.splitlines())}
    assert states[("queue", name)] == "exists"
    assert states[("exchange", box.dead)] == "exists"
    assert states[("binding", name)] == "bound"


async def test_conflicting_queue_exits_2_naming_it_and_what_differs(
    box: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    classic = box.name("classic")
    box.track(classic)
    await box.channel.declare_queue(classic, durable=True)
    code, out, err = await run_queues(box.argv(classic, "ack"), capsys)
    assert code == 2
    assert out == ""
    assert repr(classic) in err
    assert "x-queue-type: wanted 'quorum', found none" in err

    limited = box.name("limited")
    box.track(limited)
    assert (await run_queues(box.argv(limited, "ack"), capsys))[0] == 0
    code, _, err = await run_queues(
        box.argv(limited, "ack", extra=("--delivery-limit", "5")), capsys
    )
    assert code == 2
    assert f"queue {limited!r} already exists" in err
    assert "x-delivery-limit: wanted '5', found '20'" in err


async def test_missing_exchange_and_missing_plugin_are_clear_errors(box: Sandbox) -> None:
    todo = queues.plan(box.name("q"), ["#"], exchange=box.name("nope"), dead_letter=box.dead)
    with pytest.raises(TopologyError, match="does not exist"):
        await queues.declare(AMQP_URL, todo)
    # What RabbitMQ answers for an exchange type it does not have (the plugin disabled).
    unknown = queues.Decl(box.name("h"), "x-no-such-type", {})
    todo = queues.Plan(box.exchange, (unknown,), (), ())
    with pytest.raises(TopologyError, match="rabbitmq-plugins enable rabbitmq_consistent_hash"):
        await queues.declare(AMQP_URL, todo)


async def consistent_hash_enabled() -> None:
    name = f"t{uuid.uuid4().hex[:10]}.probe"
    connection = await aio_pika.connect(AMQP_URL)
    try:
        probe = await connection.channel()
        await probe.declare_exchange(name, "x-consistent-hash", auto_delete=True)
        await probe.exchange_delete(name)
    except aiormq.exceptions.ConnectionCommandInvalid:
        pytest.fail(
            "the consistent-hash exchange plugin is not enabled on the test broker: "
            "rabbitmq-plugins enable rabbitmq_consistent_hash_exchange"
        )
    finally:
        with contextlib.suppress(Exception):
            await connection.close()


async def test_shards_keep_each_chat_in_one_shard_in_order(
    box: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    await consistent_hash_enabled()
    name = box.name("chats")
    box.track(name, shards=4)
    code, out, _ = await run_queues(
        box.argv(name, "incomingMessageReceived", extra=("--shards", "4", "--by", "chat")), capsys
    )
    assert code == 0, out
    chats = [f"7900000{n:04d}@c.us" for n in range(10)]
    for seq in range(200):
        chat = chats[seq % 10]
        await box.publish(
            "incomingMessageReceived", json.dumps({"seq": seq}).encode(), mid=f"m{seq}",
            **{"x-chat-id": chat},
        )  # fmt: skip
    for seq in range(5):
        await box.publish("incomingMessageReceived", b"{}", mid=f"nochat{seq}")
    consumers = [Consumer(AMQP_URL, f"{name}.{n}", prefetch=50) for n in range(4)]
    got: list[tuple[int, str | None, int | None]] = []

    async def drain(shard: int, consumer: Consumer) -> None:
        async with consumer:  # SAC quorum queues refuse basic.get: consume
            async for delivery in consumer:
                got.append((shard, delivery.chat_id, delivery.json().get("seq")))
                await delivery.ack()
                if len(got) == 205:
                    for each in consumers:
                        each.stop()

    await asyncio.wait_for(asyncio.gather(*(drain(n, c) for n, c in enumerate(consumers))), 20)
    where: dict[str | None, set[int]] = {}
    order: dict[str | None, list[int | None]] = {}
    for shard, chat, seq in got:
        where.setdefault(chat, set()).add(shard)
        order.setdefault(chat, []).append(seq)
    no_chat = where.pop(None)
    assert len(no_chat) == 1  # messages without x-chat-id all hash to the same shard
    assert len(order.pop(None)) == 5
    assert set(order) == set(chats)
    assert all(len(shards) == 1 for shards in where.values()), where
    assert len(set().union(*where.values())) > 1  # spread over several shards
    for chat, seqs in order.items():
        assert seqs == list(range(chats.index(chat or ""), 200, 10)), chat  # all, in order


# -- tail ---------------------------------------------------------------------------------------


async def test_tail_prints_json_lines_and_takes_nothing_from_consumer_queues(
    box: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    name = box.name("billing")
    await box.declare(name, "incomingMessageReceived")
    args = parse(tail.add_arguments, [
        "--bind", "incomingMessageReceived", "--count", "3", "--json",
        "--exchange", box.exchange, "--amqp-url", AMQP_URL,
    ])  # fmt: skip
    running = asyncio.create_task(asyncio.to_thread(tail.run, args))
    out = err = ""

    def bound() -> bool:
        nonlocal out, err
        captured = capsys.readouterr()
        out, err = out + captured.out, err + captured.err
        return "tail:" in err or running.done()

    await wait_until(bound, timeout=10)
    headers = {"x-provider": "greenapi", "x-instance": "1101000001", "x-chat-id": "7900@c.us"}
    for n in range(3):
        await box.publish("incomingMessageReceived", b'{"n": %d}' % n, mid=f"m{n}", **headers)
    await box.publish("outgoingMessageStatus", b"{}", mid="other")
    assert await asyncio.wait_for(running, 10) == 0
    out += capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["body"] for line in lines] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [line["message_id"] for line in lines] == ["m0", "m1", "m2"]
    assert lines[0]["routing_key"] == "incomingMessageReceived"
    assert lines[0]["headers"] == headers
    assert set(lines[0]) == {"routing_key", "message_id", "timestamp", "headers", "body"}
    await box.settles(name, 3)  # the consumer queue still got every message


TAIL_MAIN = (
    "import argparse, sys\n"
    "from bridge.tools import tail\n"
    "parser = argparse.ArgumentParser()\n"
    "tail.add_arguments(parser)\n"
    "sys.exit(tail.run(parser.parse_args(sys.argv[1:])))\n"
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_tail_exits_0_on_sigterm_and_ctrl_c(box: Sandbox, signum: signal.Signals) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", TAIL_MAIN, "--bind", "#", "--exchange", box.exchange,
        "--amqp-url", AMQP_URL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        ready = await asyncio.wait_for(process.stderr.readline(), 10)
        assert ready.startswith(b"tail: "), ready
        await box.publish("anything", b'{"seen": true}', mid="m1")
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 10)
        assert json.loads(line)["body"] == {"seen": True}
        process.send_signal(signum)
        assert await asyncio.wait_for(process.wait(), 10) == 0
        assert await process.stderr.read() == b""
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# -- the consumer ----------------------------------------------------------------------------


async def next_delivery(consumer: Consumer) -> Delivery:
    return await asyncio.wait_for(anext(aiter(consumer)), 10)


async def test_consumer_ack_nack_reject_and_dead_lettering(box: Sandbox) -> None:
    name = box.name("work")
    await box.declare(name, "incomingMessageReceived")
    headers = {
        "x-provider": "greenapi", "x-instance": "1101000001", "x-event": "incomingMessageReceived",
        "x-chat-id": "7900@c.us", "x-message-key": "1101000001:7900@c.us:ABC",
    }  # fmt: skip
    for mid in ("m1", "m2", "m3"):
        await box.publish(
            "incomingMessageReceived", b'{"id": "%s"}' % mid.encode(), mid=mid, **headers
        )
    async with Consumer(AMQP_URL, name, prefetch=1) as consumer:  # 1: a nack'ed one is next
        first = await next_delivery(consumer)
        assert (first.message_id, first.json(), first.redelivered) == ("m1", {"id": "m1"}, False)
        assert (first.provider, first.instance, first.event) == (
            "greenapi",
            "1101000001",
            "incomingMessageReceived",
        )
        assert (first.chat_id, first.message_key) == ("7900@c.us", "1101000001:7900@c.us:ABC")
        await first.ack()
        with pytest.raises(RuntimeError, match="already settled"):
            await first.ack()
        second = await next_delivery(consumer)
        assert second.message_id == "m2"
        await second.nack(requeue=True)  # a quorum queue returns it to the head
        again = await next_delivery(consumer)
        assert (again.message_id, again.redelivered) == ("m2", True)
        await again.ack()
        third = await next_delivery(consumer)
        await third.reject()
        assert dict(consumer.stats) == {"delivered": 4, "acked": 2, "nacked": 1, "rejected": 1}
    dead = await box.channel.get_queue(box.dead, ensure=False)
    message = await dead.get(timeout=5)
    assert message.message_id == "m3"
    await message.ack()
    await box.settles(name, 0)


async def test_a_poison_message_is_dead_lettered_after_the_delivery_limit(box: Sandbox) -> None:
    name = box.name("poison")
    box.track(name)
    todo = queues.plan(name, ["ack"], exchange=box.exchange, dead_letter=box.dead, delivery_limit=2)
    await queues.declare(AMQP_URL, todo)
    await box.publish("ack", b"{}", mid="poison")
    attempts = 0
    async with Consumer(AMQP_URL, name, prefetch=1) as consumer:
        with contextlib.suppress(TimeoutError):
            while True:
                await (await asyncio.wait_for(anext(aiter(consumer)), 1)).nack(requeue=True)
                attempts += 1
    assert 2 <= attempts <= 3
    dead = await box.channel.get_queue(box.dead, ensure=False)
    message = await dead.get(timeout=5)
    assert message.message_id == "poison"
    await message.ack()


async def test_consumer_skips_a_republished_message_id(box: Sandbox) -> None:
    name = box.name("dedup")
    await box.declare(name, "ack")
    await box.publish("ack", b"{}", mid="same")
    await box.publish("ack", b"{}", mid="same")  # the bridge republishing after a crash
    await box.publish("ack", b"{}", mid="next")
    async with Consumer(AMQP_URL, name, dedup=100) as consumer:
        first = await next_delivery(consumer)
        await first.ack()
        following = await next_delivery(consumer)
        assert following.message_id == "next"
        await following.ack()
        assert consumer.skipped == 1
    await box.settles(name, 0)


async def test_consumer_prefetch_and_clean_stop_return_unacked(box: Sandbox) -> None:
    name = box.name("prefetch")
    await box.declare(name, "ack")
    for n in range(6):
        await box.publish("ack", b"{}", mid=f"m{n}")
    async with Consumer(AMQP_URL, name, prefetch=2) as consumer:
        held = await next_delivery(consumer)
        await asyncio.sleep(0.3)
        assert await box.ready(name) == 4  # two in flight, no more
        await held.ack()
        handled = []
        async for delivery in consumer:
            handled.append(delivery.message_id)
            consumer.stop()  # from the handler: this one is finished, the iteration ends
            await delivery.ack()
        assert handled == ["m1"]
        assert consumer.stopping
    await box.settles(name, 4)  # the unacked prefetched ones went back to the queue


async def test_consumer_fails_clearly_when_the_queue_is_missing(box: Sandbox) -> None:
    with pytest.raises(QueueNotFound, match="bridge queues declare"):
        async with Consumer(AMQP_URL, box.name("missing")):
            pass


async def test_consumer_reconnects_and_dedup_catches_the_lost_ack(box: Sandbox) -> None:
    name = box.name("reconnect")
    await box.declare(name, "ack")
    await box.publish("ack", b"{}", mid="m1")
    await box.publish("ack", b"{}", mid="m2")
    host, port = "127.0.0.1", int(AMQP_URL.rsplit(":", 1)[1].split("/")[0])
    async with TcpProxy(target=(host, port)) as proxy:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        async with Consumer(url, name, prefetch=10) as consumer:
            await (await next_delivery(consumer)).ack()
            second = await next_delivery(consumer)
            proxy.cut(hold_new=True)
            await wait_until(lambda: consumer.stats["reconnects"] == 1, timeout=10)
            await second.ack()  # the channel is gone: the broker never gets this ack
            assert consumer.stats["lost"] == 1
            proxy.restore()
            await box.publish("ack", b"{}", mid="m3")
            third = await next_delivery(consumer)  # m2 came back first and was skipped
            assert third.message_id == "m3"
            await third.ack()
            assert consumer.skipped == 1
    await box.settles(name, 0)
