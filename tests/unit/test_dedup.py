"""The bounded set of recent message ids shared by the publisher's and the consumer's dedup."""

from __future__ import annotations

import pytest

from bridge.dedup import RecentIds


def test_bounded_the_oldest_forgotten_first() -> None:
    recent = RecentIds(3)
    for n in range(5):
        recent.add(str(n))
    assert len(recent) == 3
    assert [n for n in "01234" if n in recent] == ["2", "3", "4"]


def test_membership_does_not_refresh_but_seen_and_add_do() -> None:
    recent = RecentIds(2)
    recent.add("a")
    recent.add("b")
    assert "a" in recent  # a look only: "a" stays the oldest
    recent.add("c")
    assert "a" not in recent and "b" in recent
    assert recent.seen("b")  # "b" is now the most recent
    recent.add("d")
    assert "c" not in recent and "b" in recent
    recent.add("b")  # adding again refreshes too
    recent.add("e")
    assert "d" not in recent and "b" in recent


@pytest.mark.parametrize("probe", [None, "", "unknown"])
def test_seen_only_what_was_added(probe: str | None) -> None:
    recent = RecentIds(10)
    recent.add("x")
    assert not recent.seen(probe)
    assert recent.seen("x")


def test_size_zero_remembers_nothing() -> None:
    off = RecentIds(0)
    off.add("x")
    assert "x" not in off and not off.seen("x") and len(off) == 0


def test_a_negative_size_is_refused() -> None:
    with pytest.raises(ValueError):
        RecentIds(-1)
