"""Which bridge process polls which instance (pure): the membership view and the plan.

Every process beats its id, the leases it can take (its polling sources) and the leases it
holds on a fanout exchange, and keeps a `Members` view of the beats it heard recently. Each
process computes the same `assign()` plan from the same view, so they agree without talking:

* rendezvous hashing ranks the members for each lease (a member's rank for a lease does not
  depend on who else is alive, so a death moves only what the dead member held);
* a load cap keeps the spread even: a lease goes to its best-ranked member that still has
  room, so loads differ by at most one when every member can take every lease.

The plan only says who should hold what; RabbitMQ's exclusive queues decide who does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import msgspec


class Beat(msgspec.Struct, frozen=True):
    """One member's beat, as published on the members exchange."""

    member: str
    sources: list[str] = []
    held: list[str] = []
    leaving: bool = False
    interval: float = 0.0  # the sender's beat period; 0 = unknown


BEAT_DECODER = msgspec.json.Decoder(Beat)
BEAT_ENCODER = msgspec.json.Encoder()


@dataclass(slots=True)
class _Seen:
    first: float
    at: float
    expiry: float
    sources: frozenset[str]
    held: frozenset[str]


@dataclass
class Members:
    """The members heard from recently, with what they can take and hold.

    A member is gone when silent for `expiry` seconds, or for 3 of its own beat intervals if
    that is longer (processes configured differently, as during a rolling change)."""

    expiry: float
    _seen: dict[str, _Seen] = field(default_factory=dict)

    def saw(self, beat: Beat, now: float) -> bool:
        """Record a beat; True when the set of members or their sources changed."""
        if beat.leaving:
            return self._seen.pop(beat.member, None) is not None
        before = self._seen.get(beat.member)
        sources = frozenset(beat.sources)
        first = now if before is None else before.first
        expiry = max(self.expiry, 3 * beat.interval)
        self._seen[beat.member] = _Seen(first, now, expiry, sources, frozenset(beat.held))
        return before is None or before.sources != sources

    def expire(self, now: float) -> list[str]:
        """Forget the members that fell silent; returns them."""
        gone = [m for m, seen in self._seen.items() if now - seen.at > seen.expiry]
        for member in gone:
            del self._seen[member]
        return gone

    def stable(self, member: str, now: float, age: float) -> bool:
        """Heard from for at least `age` seconds (a member worth handing leases to)."""
        seen = self._seen.get(member)
        return seen is not None and now - seen.first >= age

    def sources(self) -> dict[str, frozenset[str]]:
        return {member: seen.sources for member, seen in self._seen.items()}

    def holders(self, exclude: str) -> dict[str, str]:
        """lease -> the other member that said last it holds it."""
        out: dict[str, str] = {}
        for member, seen in self._seen.items():
            if member != exclude:
                for lease in seen.held:
                    out[lease] = member
        return out

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, member: object) -> bool:
        return member in self._seen


def score(member: str, lease: str) -> int:
    """The rendezvous weight of `member` for `lease`: stable across processes and runs."""
    digest = hashlib.blake2b(f"{member}\x00{lease}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign(members: Mapping[str, Collection[str]]) -> dict[str, str]:
    """lease -> member, for every lease some member can take (bounded-load rendezvous)."""
    takers: dict[str, list[str]] = {}
    for member, leases in members.items():
        for lease in leases:
            takers.setdefault(lease, []).append(member)
    if not takers:
        return {}
    # ⌊L/M⌋ each, and L mod M members one more: loads differ by at most one.
    floor, extra = divmod(len(takers), len(members))
    load = dict.fromkeys(members, 0)
    plan: dict[str, str] = {}

    def has_room(member: str) -> bool:
        return load[member] < floor or (load[member] == floor and extra > 0)

    for lease in sorted(takers):
        ranked = sorted(takers[lease], key=lambda m: (score(m, lease), m), reverse=True)
        chosen = next((m for m in ranked if has_room(m)), None)
        if chosen is None:  # every member that can take it is full (uneven source sets)
            chosen = min(ranked, key=lambda m: load[m])
        elif load[chosen] == floor:
            extra -= 1
        plan[lease] = chosen
        load[chosen] += 1
    return plan
