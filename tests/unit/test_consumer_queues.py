"""`bridge queues declare` without a broker: the plan, argument checks, conflict texts, output."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bridge.errors import ConfigError
from bridge.tools import queues
from bridge.tools.queues import (
    Binding,
    Decl,
    Difference,
    Row,
    format_rows,
    parse_inequivalent,
    plan,
)

ARGS = {
    "x-queue-type": "quorum", "x-single-active-consumer": True,
    "x-dead-letter-exchange": "notifications.dead", "x-delivery-limit": 20,
}  # fmt: skip


def test_plan_for_one_queue() -> None:
    todo = plan("billing", ["incomingMessageReceived", "ack", "ack"], exchange="notifications")
    assert todo.source == "notifications"
    assert todo.exchanges == (Decl("notifications.dead", "fanout", {}),)
    assert todo.queues == (
        Decl("notifications.dead", "queue", {"x-queue-type": "quorum"}),
        Decl("billing", "queue", ARGS),
    )
    assert todo.bindings == (
        Binding("notifications.dead", "notifications.dead", ""),
        Binding("notifications", "billing", "incomingMessageReceived"),
        Binding("notifications", "billing", "ack"),  # duplicates bound once
    )


def test_plan_for_shards() -> None:
    todo = plan(
        "chats", ["#"], exchange="n", dead_letter="d", delivery_limit=5, shards=3, by="chat"
    )
    assert todo.exchanges[0] == Decl(
        "chats.hash", "x-consistent-hash", {"hash-header": "x-chat-id"}
    )
    args = {**ARGS, "x-dead-letter-exchange": "d", "x-delivery-limit": 5}
    assert [q for q in todo.queues if q.name != "d"] == [
        Decl(f"chats.{n}", "queue", args) for n in range(3)
    ]
    assert Binding("n", "chats.hash", "#", to_exchange=True) in todo.bindings
    assert [b for b in todo.bindings if b.source == "chats.hash"] == [
        Binding("chats.hash", f"chats.{n}", "1") for n in range(3)
    ]
    assert not any(b.destination == "chats" for b in todo.bindings)


def test_shards_default_to_by_chat() -> None:
    assert plan("c", ["#"], exchange="n", shards=2).queues[-1].name == "c.1"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ""}, "must be non-empty"),
        ({"name": "amq.x"}, "amq."),
        ({"binds": []}, "at least one --bind"),
        ({"binds": [""]}, "1..255 bytes"),
        ({"binds": ["k" * 256]}, "1..255 bytes"),
        ({"delivery_limit": 0}, "--delivery-limit"),
        ({"dead_letter": ""}, "--dead-letter-exchange"),
        ({"dead_letter": "q"}, "--dead-letter-exchange"),
        ({"dead_letter": "notifications"}, "--dead-letter-exchange"),
        ({"by": "chat"}, "--by needs --shards"),
        ({"shards": 0}, "--shards must be between"),
        ({"shards": 4, "by": "instance"}, "only 'chat' is supported"),
    ],
)
def test_plan_refuses_arguments_that_cannot_work(kwargs: dict[str, object], message: str) -> None:
    call: dict[str, object] = {"name": "q", "binds": ["#"], "exchange": "notifications", **kwargs}
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("*", r"\*")):
        plan(**call)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'b' in vhost '/':"
            " received '5' but current is '20'",
            Difference("x-delivery-limit", "'5'", "'20'", 20),
        ),
        (
            "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q.x' in vhost '/':"
            " received the value 'quorum' of type 'longstr' but current is none",
            Difference("x-queue-type", "'quorum'", "none", None),
        ),
        (
            "PRECONDITION_FAILED - inequivalent arg 'x-single-active-consumer' for queue 'q' in"
            " vhost '/': received none but current is the value 'true' of type 'bool'",
            Difference("x-single-active-consumer", "none", "'true'", True),
        ),
        (
            "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'q' in vhost 'v':"
            " received none but current is the value '100' of type 'long'",
            Difference("x-max-length", "none", "'100'", 100),
        ),
        (
            "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/':"
            " received 'true' but current is 'false'",
            Difference("durable", "'true'", "'false'", False),
        ),
        (
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'e' in vhost '/':"
            " received 'fanout' but current is 'topic'",
            Difference("type", "'fanout'", "'topic'", "topic"),
        ),
        (
            "PRECONDITION_FAILED - inequivalent arg 'x-foo' for queue 'q' in vhost '/':"
            " received none but current is the value '1.5' of type 'table'",
            Difference("x-foo", "none", "'1.5'", ...),
        ),
        ("PRECONDITION_FAILED - invalid property 'non-durable' for queue 'q'", None),
    ],
)
def test_parse_inequivalent(text: str, expected: Difference | None) -> None:
    assert parse_inequivalent(text, ARGS) == expected


def test_conflict_description_names_the_queue_and_every_difference() -> None:
    text = queues.describe_conflict(
        "queue", "billing",
        [Difference("x-dead-letter-exchange", "'d'", "none", None),
         Difference("x-queue-type", "'quorum'", "none", None)],
        "raw",
    )  # fmt: skip
    assert text.splitlines()[:3] == [
        "queue 'billing' already exists with different settings:",
        "  x-dead-letter-exchange: wanted 'd', found none",
        "  x-queue-type: wanted 'quorum', found none",
    ]
    assert "classic queue cannot become a quorum queue" in text
    assert "  raw" in queues.describe_conflict("exchange", "e", [], "raw")


ROWS = [
    Row("exchange", "notifications.dead", "exists", {"type": "fanout", "arguments": {}}),
    Row("queue", "billing", "created", {"arguments": ARGS, "messages": 0, "consumers": 1}),
    Row("binding", "billing", "bound", {"source": "notifications", "routing_key": "ack"}),
]


def test_rows_as_json_lines() -> None:
    lines = [json.loads(line) for line in format_rows(ROWS, table=False).splitlines()]
    assert lines[1] == {
        "kind": "queue", "name": "billing", "state": "created", "arguments": ARGS,
        "messages": 0, "consumers": 1,
    }  # fmt: skip
    assert lines[2] == {
        "kind": "binding", "name": "billing", "state": "bound", "source": "notifications",
        "routing_key": "ack",
    }  # fmt: skip


def test_rows_as_a_table() -> None:
    lines = format_rows(ROWS, table=True).splitlines()
    assert lines[0].split() == ["KIND", "NAME", "STATE", "DETAIL"]
    assert lines[1].split()[:4] == ["exchange", "notifications.dead", "exists", "fanout"]
    assert "queue-type=quorum" in lines[2] and "delivery-limit=20" in lines[2]
    assert "0 messages, 1 consumers" in lines[2]
    assert lines[3].endswith("from notifications key 'ack'")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    queues.add_arguments(parser)
    return parser.parse_args(argv)


def test_arguments_and_defaults() -> None:
    args = parse(["billing", "--bind", "a", "--bind", "b.*"])
    assert (args.name, args.bind, args.shards, args.by) == ("billing", ["a", "b.*"], None, None)
    assert (args.delivery_limit, args.dead_letter_exchange) == (20, "notifications.dead")
    with pytest.raises(SystemExit):
        parse(["billing"])  # --bind is required


def test_broker_target(tmp_path: Path) -> None:
    url = "amqp://u:p@h:5673/v"
    assert queues.broker_target(parse(["q", "--bind", "#", "--amqp-url", url])) == (
        url, "notifications",
    )  # fmt: skip
    config = tmp_path / "bridge.toml"
    config.write_text('[amqp]\nurl = "amqp://c:c@cfg:5672/"\nexchange = "events"\n')
    args = parse(["q", "--bind", "#", "--config", str(config)])
    assert queues.broker_target(args) == ("amqp://c:c@cfg:5672/", "events")
    args = parse(["q", "--bind", "#", "--config", str(config), "--exchange", "other"])
    assert queues.broker_target(args)[1] == "other"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["q", "--bind", "#", "--shards", "2", "--by", "instance"], "only 'chat'"),
        (["q", "--bind", "#", "--config", "/nonexistent/bridge.toml"], "not found"),
    ],
)
def test_run_exits_2_before_connecting(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert queues.run(parse(argv)) == 2
    assert message in capsys.readouterr().err
