"""`bridge tail` output, without a broker."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from bridge.tools import tail
from bridge.tools.tail import Seen, epoch, format_json, format_pretty, jsonable, parse_body

HEADERS = {
    "x-provider": "greenapi", "x-instance": "1101000001", "x-event": "incomingMessageReceived",
    "x-chat-id": "79001234568@c.us", "x-message-key": "1101000001:79001234568@c.us:F7AE",
    "x-received-at": 1700000000123,
}  # fmt: skip
BODY = b'{"typeWebhook":"incomingMessageReceived","idMessage":"F7AE","senderData":{"chatId":"79001234568@c.us"}}'


def item(body: bytes = BODY, **changes: object) -> Seen:
    seen = Seen("incomingMessageReceived", "3f2a", 1588091580, dict(HEADERS), body)
    return seen._replace(**changes)  # type: ignore[arg-type]


def test_json_line_has_the_documented_fields_and_the_parsed_body() -> None:
    line = format_json(item())
    assert "\n" not in line
    record = json.loads(line)
    assert record == {
        "routing_key": "incomingMessageReceived",
        "message_id": "3f2a",
        "timestamp": 1588091580,
        "headers": HEADERS,
        "body": json.loads(BODY),
    }


@pytest.mark.parametrize(
    ("body", "expected"),
    [(b"not json", "not json"), (b"", ""), (b"\xff\xfe", "\ufffd\ufffd"), (b"[1, 2]", [1, 2]),
     (b'"text"', "text"), ('{"t":"привет"}'.encode(), {"t": "привет"})],
)  # fmt: skip
def test_body_is_json_when_it_parses_else_text(body: bytes, expected: object) -> None:
    assert parse_body(body) == expected
    assert json.loads(format_json(item(body)))["body"] == expected


def test_header_values_become_json() -> None:
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    value = {"b": b"bytes", "t": when, "d": Decimal("1.5"), "l": [b"x", 1], "n": None, "i": 7}
    assert jsonable(value) == {
        "b": "bytes", "t": "2024-01-02T03:04:05+00:00", "d": "1.5", "l": ["x", 1], "n": None,
        "i": 7,
    }  # fmt: skip


def test_epoch_treats_naive_times_as_utc() -> None:
    assert epoch(None) is None
    assert epoch(datetime(1970, 1, 1, 0, 1)) == 60
    assert epoch(datetime(1970, 1, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))) == 60


def test_pretty_shows_time_key_source_ids_and_the_indented_body() -> None:
    text = format_pretty(item())
    lines = text.splitlines()
    assert lines[0] == "── 2020-04-28 16:33:00Z  incomingMessageReceived  greenapi/1101000001"
    assert "id 3f2a" in lines[1] and "chat 79001234568@c.us" in lines[1]
    assert "key 1101000001:79001234568@c.us:F7AE" in lines[1]
    assert '     "typeWebhook": "incomingMessageReceived",' in lines


def test_pretty_falls_back_to_the_receive_time_and_dashes() -> None:
    seen = Seen("ack", None, None, {"x-received-at": 1700000000000}, b"plain")
    assert format_pretty(seen).splitlines() == [
        "── 2023-11-14 22:13:20Z  ack  -", "   id -", "   plain",
    ]  # fmt: skip
    assert format_pretty(Seen("ack", None, None, {}, b"")).splitlines()[0] == "── -  ack  -"


def test_pretty_cuts_long_bodies() -> None:
    body = json.dumps({f"k{n}": n for n in range(100)}).encode()
    lines = format_pretty(item(body), max_lines=40).splitlines()
    assert len(lines) == 2 + 40 + 1
    assert lines[-1] == "   … 62 more lines"


def test_pretty_shows_quarantine_errors() -> None:
    seen = Seen("invalid", "x", None, {"x-provider": "evolution", "x-error": "bad json"}, b"{")
    assert "error bad json" in format_pretty(seen)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    tail.add_arguments(parser)
    return parser.parse_args(argv)


def test_arguments() -> None:
    args = parse(["--bind", "#", "--bind", "messages.*", "--count", "3", "--json"])
    assert (args.bind, args.count, args.json, args.pretty) == (["#", "messages.*"], 3, True, False)
    with pytest.raises(SystemExit):
        parse([])  # --bind is required
    with pytest.raises(SystemExit):
        parse(["--bind", "#", "--json", "--pretty"])
    with pytest.raises(SystemExit):
        parse(["--bind", "#", "--config", "b.toml", "--amqp-url", "amqp://h/"])


def test_count_below_one_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert tail.run(parse(["--bind", "#", "--count", "0"])) == 2
    assert "--count" in capsys.readouterr().err
