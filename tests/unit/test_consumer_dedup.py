"""The consumer's pure parts: the dedup LRU, header reading, constructor checks."""

from __future__ import annotations

import pytest

from bridge.consumer import Consumer, SeenIds, header_text


def test_seen_ids_remembers_and_evicts_the_least_recently_used() -> None:
    seen = SeenIds(3)
    for mid in ("a", "b", "c"):
        seen.add(mid)
    assert seen.seen("a")  # refreshes "a": "b" is now the oldest
    seen.add("d")
    assert len(seen) == 3
    assert "b" not in seen
    assert [m for m in ("a", "c", "d") if seen.seen(m)] == ["a", "c", "d"]


def test_seen_ids_adding_again_refreshes() -> None:
    seen = SeenIds(2)
    seen.add("a")
    seen.add("b")
    seen.add("a")
    seen.add("c")
    assert "a" in seen and "b" not in seen


@pytest.mark.parametrize("probe", [None, "", "unknown"])
def test_seen_ids_never_sees_what_it_was_not_given(probe: str | None) -> None:
    seen = SeenIds(10)
    seen.add("x")
    assert not seen.seen(probe)


def test_seen_ids_size_zero_is_off() -> None:
    seen = SeenIds(0)
    seen.add("a")
    assert not seen.seen("a")
    assert len(seen) == 0


def test_seen_ids_rejects_negative_size() -> None:
    with pytest.raises(ValueError):
        SeenIds(-1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("7900@c.us", "7900@c.us"), (b"7900@c.us", "7900@c.us"), (b"\xff", "\ufffd"), (5, None),
     (None, None)],
)  # fmt: skip
def test_header_text(value: object, expected: str | None) -> None:
    assert header_text({"x-chat-id": value}, "x-chat-id") == expected
    assert header_text({}, "x-chat-id") is None


@pytest.mark.parametrize(("prefetch", "dedup"), [(0, 10), (1, -1)])
def test_consumer_rejects_impossible_settings(prefetch: int, dedup: int) -> None:
    with pytest.raises(ValueError):
        Consumer("amqp://127.0.0.1/", "q", prefetch=prefetch, dedup=dedup)
