"""The archive's pure parts: `[archive]` config, the topology it adds, replay's plan and
filters, the audit's comparison, the fake GREEN-API journal."""

from __future__ import annotations

import argparse
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiormq
import pytest
from aiormq.abc import DeliveredMessage
from pamqp.header import ContentHeader

from bridge.amqp.topology import topology
from bridge.config import AmqpConfig, ArchiveConfig, Source, load
from bridge.errors import ConfigError
from bridge.tools import audit, replay
from bridge.tools.archive import SKEW, parse_when, received_at_ms
from fakeprovider.greenjournal import Journal, minutes_from_query


def config(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ArchiveConfig:
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    return load(path, env or {}).config.archive


def test_archive_defaults_on_with_a_week_and_ten_gigabytes(tmp_path: Path) -> None:
    archive = config(tmp_path, "")
    assert archive.enabled and archive.max_age == "7D"
    assert archive.max_length_bytes == 10_000_000_000
    assert archive.stream_for(AmqpConfig()) == "notifications.archive"
    assert archive.stream_for(AmqpConfig(exchange="x")) == "x.archive"
    assert archive.ingest_for("notifications") == "notifications.ingest"


@pytest.mark.parametrize("age", ["7D", "1Y", "6M", "36h", "90m", "3600s"])
def test_rabbitmq_retention_ages_are_accepted(tmp_path: Path, age: str) -> None:
    assert config(tmp_path, f'[archive]\nmax_age = "{age}"\n').max_age == age


@pytest.mark.parametrize("age", ["7d", "0D", "7", "D", "1h30m", "7 D", "-1D", "1W"])
def test_other_ages_are_refused_naming_the_key(tmp_path: Path, age: str) -> None:
    with pytest.raises(ConfigError, match=r"^archive\.max_age: must be a number and one unit"):
        config(tmp_path, f'[archive]\nmax_age = "{age}"\n')


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[archive]\nstream = ""\n', "must not be empty"),
        ('[archive]\ningest_suffix = " "\n', "must not be empty"),
        ("[archive]\nmax_length_bytes = 0\n", r"archive\.max_length_bytes"),
        ("[archive]\nmax_segment_size_bytes = 0\n", r"archive\.max_segment_size_bytes"),
        ("[archive]\nretention = 1\n", r"archive\.retention: unknown key"),
    ],
)
def test_bad_archive_keys_are_refused(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        config(tmp_path, text)


def test_archive_keys_follow_the_environment(tmp_path: Path) -> None:
    env = {"BRIDGE_ARCHIVE__ENABLED": "false", "BRIDGE_ARCHIVE__MAX_AGE": "2D"}
    archive = config(tmp_path, "", env)
    assert (archive.enabled, archive.max_age) == (False, "2D")


def test_the_topology_puts_an_ingest_fanout_before_every_topic_exchange() -> None:
    amqp = AmqpConfig()
    topo = topology(amqp, ["crm"])
    assert topo.archive is not None
    assert topo.archive.stream == "notifications.archive"
    assert topo.archive.ingest == {"notifications": "notifications.ingest", "crm": "crm.ingest"}
    assert topo.archive.arguments == {
        "x-queue-type": "stream",
        "x-max-age": "7D",
        "x-max-length-bytes": 10_000_000_000,
        "x-stream-max-segment-size-bytes": 100_000_000,
    }
    kinds = {ex.name: ex.kind for ex in topo.exchanges}
    assert kinds["notifications.ingest"] == kinds["crm.ingest"] == "fanout"
    assert topo.publish_exchange("notifications") == "notifications.ingest"
    assert topo.publish_exchange("notifications.invalid") == "notifications.invalid"
    off = topology(amqp, ["crm"], ArchiveConfig(enabled=False))
    assert off.archive is None and off.publish_exchange("crm") == "crm"
    assert "crm.ingest" not in {ex.name for ex in off.exchanges}


# -- replay ----------------------------------------------------------------------------------


def parsed(*args: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    replay.add_arguments(parser)
    return parser.parse_args(list(args))


NOW = datetime(2026, 1, 31, 12, tzinfo=UTC)


def test_a_plan_to_one_queue_goes_through_the_default_exchange() -> None:
    plan = replay.plan_from(parsed("--since", "2h", "--to-queue", "billing"), NOW)
    assert (plan.exchange, plan.routing_key) == ("", "billing")
    assert plan.since == NOW - timedelta(hours=2) and plan.until is None
    to_x = replay.plan_from(
        parsed("--since", "2h", "--until", "1h", "--to-exchange", "n", "--routing-key", "k"), NOW
    )
    assert (to_x.exchange, to_x.routing_key, to_x.until) == ("n", "k", NOW - timedelta(hours=1))
    dry = replay.plan_from(
        parsed("--since", "5m", "--dry-run", "--event", "a", "--event", "b"), NOW
    )
    assert dry.dry_run and dry.filters.events == {"a", "b"}


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--since", "1h", "--until", "2h", "--dry-run"], "later than"),
        (["--since", "1h"], "say where to"),
        (["--since", "1h", "--to-queue", "q", "--routing-key", "k"], "--routing-key goes"),
        (["--since", "1h", "--dry-run", "--limit", "0"], "--limit"),
        (["--since", "1h", "--dry-run", "--in-flight", "0"], "--in-flight"),
        (["--since", "someday", "--dry-run"], "not a duration"),
    ],
)
def test_plans_that_cannot_work_are_refused(args: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        replay.plan_from(parsed(*args), NOW)


def test_filters_match_any_value_of_each_given_header() -> None:
    headers: dict[str, Any] = {"x-event": "a", "x-instance": "1", "x-provider": b"greenapi"}
    assert replay.Filters().match(headers)
    assert replay.Filters(events=frozenset({"a", "b"}), providers=frozenset({"greenapi"})).match(
        headers
    )
    assert not replay.Filters(instances=frozenset({"2"})).match(headers)
    assert not replay.Filters(events=frozenset({"a"})).match({})


def delivered(headers: dict[str, Any]) -> DeliveredMessage:
    props = aiormq.spec.Basic.Properties(
        content_type="application/json",
        delivery_mode=2,
        message_id="m" * 32,
        message_type="incomingMessageReceived",
        app_id="bridge/1",
        user_id="guest",
        headers=headers,
    )
    header = ContentHeader(properties=props)
    return DeliveredMessage(
        delivery=aiormq.spec.Basic.Deliver(routing_key="incomingMessageReceived"),
        header=header,
        body=b"{}",
        channel=None,  # type: ignore[arg-type]
    )


def test_replayed_properties_keep_the_original_and_add_x_replayed_at() -> None:
    message = delivered({"x-instance": "1", "x-stream-offset": 7})
    props = replay.properties(message, 1234)
    assert props.headers == {"x-instance": "1", "x-replayed-at": 1234}
    assert (props.message_id, props.message_type, props.delivery_mode) == (
        "m" * 32,
        "incomingMessageReceived",
        2,
    )
    assert props.user_id is None  # RabbitMQ refuses another user's id


def test_the_summary_says_when_a_replay_is_incomplete() -> None:
    done = replay.Summary(read=3, matched=2, published=2, seconds=1.0, complete=True)
    assert done.text() == "read 3, matched 2, published 2, failed 0, in 1.0 s"
    again = replay.Summary(complete=True, reconnects=2)
    assert again.text().endswith("in 0.0 s (2 reconnects)")
    cut = replay.Summary(error="lost the connection")
    for n in range(12):
        cut.fail(f"m{n}")
    assert "INCOMPLETE: lost the connection" in cut.text()
    assert cut.failed == 12 and len(cut.failures) == 10


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_shows_only_on_a_terminal() -> None:
    quiet = io.StringIO()
    bar = replay.Progress(0, 1000, quiet)
    bar.update(500, replay.Summary(), force=True)
    bar.close()
    assert quiet.getvalue() == ""
    tty = Tty()
    bar = replay.Progress(0, 1000, tty)
    bar.update(500, replay.Summary(read=5), force=True)
    bar.update(600, replay.Summary(read=6))  # throttled
    bar.close()
    assert " 50% read 5" in tty.getvalue() and "read 6" not in tty.getvalue()
    assert tty.getvalue().endswith("\n")


def test_archive_times() -> None:
    assert parse_when("1d", NOW) == NOW - timedelta(days=1)
    assert parse_when("2026-01-31T10:00:00Z", NOW) == datetime(2026, 1, 31, 10, tzinfo=UTC)
    assert received_at_ms({"x-received-at": 5}) == 5
    assert received_at_ms({"x-received-at": True}) is None
    assert received_at_ms(None) is None
    assert timedelta(minutes=1) == SKEW


# -- audit -----------------------------------------------------------------------------------


SOURCE = Source(provider="greenapi", mode="poll", instance="1101000001", api_url="http://x")


def test_the_audit_lists_what_the_archive_lacks_and_spares_the_recent() -> None:
    entries = [
        audit.JournalEntry("A", 100, "incoming", "textMessage", "1@c.us"),
        audit.JournalEntry("B", 101, "outgoing", "textMessage", "2@c.us"),
        audit.JournalEntry("C", 500, "incoming", "textMessage", "3@c.us"),
    ]
    report = audit.compare(SOURCE, entries, {"A"}, judged_until=200)
    assert (report.journal, report.in_rabbitmq, report.recent) == (2, 1, 1)
    assert report.missing == [audit.Missing("B", "1970-01-01T00:01:41Z", "outgoing", "2@c.us")]
    assert "missing B  1970-01-01T00:01:41Z  outgoing  2@c.us" in report.text()
    failed = audit.Report("greenapi", "1", error="lastIncomingMessages: HTTP 403")
    assert failed.text() == "greenapi:1  ERROR lastIncomingMessages: HTTP 403"


def test_the_audit_collects_message_notifications_of_its_instances_only() -> None:
    found: dict[str, set[str]] = {"1": set()}
    body = json.dumps({"typeWebhook": "incomingMessageReceived", "idMessage": "A"}).encode()
    status = json.dumps({"typeWebhook": "outgoingMessageStatus", "idMessage": "S"}).encode()
    mine = {"x-provider": "greenapi", "x-instance": "1", "x-received-at": 10}
    assert audit._collect(mine, body, found, until_ms=20)
    assert audit._collect(mine, status, found, until_ms=20)
    assert audit._collect(mine, b"not json", found, until_ms=20)
    assert audit._collect({**mine, "x-instance": "2"}, body, found, until_ms=20)
    assert audit._collect({"x-replay-marker": "x"}, b"", found, until_ms=20)
    assert not audit._collect({**mine, "x-received-at": 30}, body, found, until_ms=20)
    assert found == {"1": {"A"}}


# -- the fake's journal ----------------------------------------------------------------------


def green(kind: str, ident: str, ts: int) -> bytes:
    return json.dumps(
        {
            "typeWebhook": kind,
            "idMessage": ident,
            "timestamp": ts,
            "senderData": {"chatId": "1@c.us", "senderName": "n"},
            "messageData": {"typeMessage": "textMessage"},
        }
    ).encode()


def test_the_fake_journal_records_messages_and_loses_on_demand() -> None:
    journal = Journal()
    assert journal.record(green("incomingMessageReceived", "A", 1000))
    journal.lose_next = 1
    assert not journal.record(green("outgoingAPIMessageReceived", "B", 1001))
    assert journal.record(green("outgoingMessageStatus", "B", 1002))  # not journaled
    assert journal.record(b"{not json")
    assert journal.lost == ["B"]
    incoming = json.loads(journal.answer("lastIncomingMessages", 1, now=1030))
    assert incoming == [
        {
            "type": "incoming",
            "idMessage": "A",
            "timestamp": 1000,
            "typeMessage": "textMessage",
            "chatId": "1@c.us",
            "senderName": "n",
        }
    ]
    outgoing = json.loads(journal.answer("lastOutgoingMessages", 1, now=1030))
    assert [(e["idMessage"], e["statusMessage"]) for e in outgoing] == [("B", "sent")]
    assert journal.answer("lastIncomingMessages", 1, now=2000) == b"[]"
    journal.reset()
    assert journal.entries == [] and journal.lost == []
    assert minutes_from_query(b"") == 1440
    assert minutes_from_query(b"minutes=5") == 5
    with pytest.raises(ValueError):
        minutes_from_query(b"minutes=0")
