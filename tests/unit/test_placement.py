"""The membership view and the lease plan (pure)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.placement import BEAT_DECODER, BEAT_ENCODER, Beat, Members, assign, score

LEASES = [f"bridge.lease.greenapi.{1101000000 + i}" for i in range(200)]


def loads(plan: dict[str, str]) -> Counter[str]:
    return Counter(plan.values())


@pytest.mark.parametrize(
    ("members", "leases"), [(1, 200), (2, 200), (3, 200), (7, 200), (3, 2), (5, 5)]
)
def test_every_lease_has_one_member_and_loads_differ_by_at_most_one(
    members: int, leases: int
) -> None:
    view = {f"m{k}": LEASES[:leases] for k in range(members)}
    plan = assign(view)
    assert set(plan) == set(LEASES[:leases])
    counts = [loads(plan)[m] for m in view]
    assert max(counts) - min(counts) <= 1


def test_every_member_computes_the_same_plan_whatever_the_order_it_heard_them() -> None:
    a = {"m1": LEASES, "m2": LEASES, "m3": LEASES}
    b = {"m3": list(reversed(LEASES)), "m1": LEASES, "m2": sorted(LEASES, key=hash)}
    assert assign(a) == assign(b)


def test_a_member_leaving_moves_little_beyond_its_own_leases() -> None:
    before = assign({"m1": LEASES, "m2": LEASES, "m3": LEASES})
    after = assign({"m1": LEASES, "m2": LEASES})
    moved_from_survivors = [
        lease for lease, member in before.items() if member != "m3" and after[lease] != member
    ]
    assert len(moved_from_survivors) <= len(LEASES) // 10
    assert all(after[lease] in {"m1", "m2"} for lease in LEASES)


def test_a_lease_goes_only_to_a_member_that_can_poll_it() -> None:
    view = {"m1": LEASES[:10], "m2": LEASES[5:20], "m3": LEASES[15:]}
    plan = assign(view)
    assert set(plan) == set(LEASES)
    assert all(lease in view[member] for lease, member in plan.items())


def test_no_members_no_plan() -> None:
    assert assign({}) == {}
    assert assign({"m1": []}) == {}


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.lists(st.sampled_from(LEASES[:30]), max_size=30),
        min_size=1,
        max_size=6,
    )
)
def test_any_view_gives_each_pollable_lease_to_a_member_that_can_poll_it(
    view: dict[str, list[str]],
) -> None:
    plan = assign(view)
    assert set(plan) == {lease for leases in view.values() for lease in leases}
    assert all(lease in view[member] for lease, member in plan.items())


def test_members_expire_and_leave() -> None:
    members = Members(expiry=3.0)
    assert members.saw(Beat(member="a", sources=["x"], held=["x"]), now=0.0)
    assert not members.saw(Beat(member="a", sources=["x"], held=[]), now=1.0)
    assert members.saw(Beat(member="b", sources=["x", "y"]), now=1.0)
    assert members.holders(exclude="b") == {}
    assert members.saw(Beat(member="a", sources=["x"], held=["x"]), now=2.0) is False
    assert members.holders(exclude="b") == {"x": "a"}
    assert members.stable("a", now=2.0, age=2.0) and not members.stable("b", now=2.0, age=2.0)
    assert members.expire(now=4.5) == ["b"]
    assert "a" in members and "b" not in members
    assert members.saw(Beat(member="a", leaving=True), now=4.6)
    assert len(members) == 0


def test_beats_round_trip_and_tolerate_new_fields() -> None:
    beat = Beat(member="h/1/ab", sources=["s"], held=["s"])
    assert BEAT_DECODER.decode(BEAT_ENCODER.encode(beat)) == beat
    assert BEAT_DECODER.decode(b'{"member":"m","zone":"eu"}') == Beat(member="m")


def test_a_member_beating_slower_is_kept_for_three_of_its_own_intervals() -> None:
    members = Members(expiry=3.0)
    members.saw(Beat(member="slow", interval=5.0), now=0.0)
    members.saw(Beat(member="quick", interval=1.0), now=0.0)
    assert members.expire(now=4.0) == ["quick"]
    assert members.expire(now=16.0) == ["slow"]


# -- the membership view, branch by branch --------------------------------------------------

A = Beat(member="a", sources=["x"])


@pytest.mark.parametrize(
    ("heard", "beat", "changed", "a_member"),
    [
        ([], A, True, True),  # a new member
        ([A], A, False, True),  # the same member, the same sources
        ([A], Beat(member="a", sources=["x", "y"]), True, True),  # its sources changed
        ([A], Beat(member="a", sources=["x"], held=["x"]), False, True),  # holding is no change
        ([A], Beat(member="a", leaving=True), True, False),  # a member leaves
        ([], Beat(member="a", leaving=True), False, False),  # one never heard of leaves
        ([A], Beat(member="b", leaving=True), False, True),
    ],
)
def test_a_beat_changes_the_view_when_members_or_their_sources_change(
    heard: list[Beat], beat: Beat, changed: bool, a_member: bool
) -> None:
    members = Members(expiry=3.0)
    for earlier in heard:
        members.saw(earlier, now=0.0)
    assert members.saw(beat, now=1.0) is changed
    assert ("a" in members) is a_member


@pytest.mark.parametrize(
    ("expiry", "interval", "silent", "gone"),
    [
        (3.0, 0.0, 3.0, False),  # silent for exactly the expiry: still a member
        (3.0, 0.0, 3.01, True),
        (3.0, 0.5, 3.01, True),  # a quicker beat does not shorten the view's expiry
        (3.0, 5.0, 15.0, False),  # a slower one lengthens it to 3 of its intervals
        (3.0, 5.0, 15.01, True),
    ],
)
def test_a_member_expires_after_silence(
    expiry: float, interval: float, silent: float, gone: bool
) -> None:
    members = Members(expiry=expiry)
    members.saw(Beat(member="a", interval=interval), now=10.0)
    assert members.expire(now=10.0 + silent) == (["a"] if gone else [])
    assert ("a" in members) is not gone


def test_a_member_is_stable_once_heard_from_for_long_enough() -> None:
    members = Members(expiry=3.0)
    members.saw(A, now=0.0)
    members.saw(A, now=2.0)  # a later beat keeps the first one's time
    members.saw(Beat(member="b"), now=1.0)
    assert members.stable("a", now=2.0, age=2.0)
    assert not members.stable("b", now=2.0, age=2.0)
    assert not members.stable("nobody", now=2.0, age=0.0)
    members.saw(Beat(member="a", leaving=True), now=3.0)
    members.saw(A, now=3.0)  # back after leaving: heard from anew
    assert not members.stable("a", now=4.0, age=2.0)


def test_the_view_lists_sources_and_the_other_members_holdings() -> None:
    members = Members(expiry=3.0)
    members.saw(Beat(member="a", sources=["x", "y"], held=["x"]), now=0.0)
    members.saw(Beat(member="b", sources=["y"], held=["y"]), now=0.0)
    members.saw(Beat(member="me", sources=["x", "y"], held=["z"]), now=0.0)
    assert members.sources() == {
        "a": frozenset({"x", "y"}),
        "b": frozenset({"y"}),
        "me": frozenset({"x", "y"}),
    }
    assert members.holders(exclude="me") == {"x": "a", "y": "b"}
    members.saw(Beat(member="a", sources=["x", "y"], held=[]), now=1.0)  # it let x go
    assert members.holders(exclude="me") == {"y": "b"}
    assert members.holders(exclude="nobody") == {"y": "b", "z": "me"}
    assert len(members) == 3


# -- the plan, branch by branch --------------------------------------------------------------


@pytest.mark.parametrize(
    ("view", "loads_seen"),
    [
        # 5 leases on 2 members: 2 each and one member one more
        ({"m1": list("abcde"), "m2": list("abcde")}, [2, 3]),
        # a member that can take nothing counts for the cap, so the others go over it
        ({"m1": list("abc"), "m2": list("abc"), "m3": []}, [1, 2]),
        # a lease only one member can take goes to it, however loaded it is
        ({"m1": list("abcd"), "m2": ["a"]}, [1, 3]),
    ],
)
def test_the_plan_places_every_lease_with_a_member_that_can_take_it(
    view: dict[str, list[str]], loads_seen: list[int]
) -> None:
    plan = assign(view)
    assert set(plan) == {lease for leases in view.values() for lease in leases}
    assert all(lease in view[member] for lease, member in plan.items())
    assert sorted(loads(plan)[m] for m in view if view[m]) == loads_seen


def test_a_members_rank_for_a_lease_is_the_same_in_every_process_and_release() -> None:
    # mixed releases during a rolling change must compute the same plan
    assert score("m1", "bridge.lease.greenapi.1101000000") == 6859809777363251909
    assert score("m1", "x") != score("m2", "x") != score("m2", "y")
