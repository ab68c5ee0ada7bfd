"""The one retry policy: exponential back-off with full jitter, capped; off in tests.

A policy is a value (`Backoff`); loops own their attempt counters. Tests call
`set_testing(True)` to make every delay zero, as stamina's `set_testing` does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_testing = False


def set_testing(on: bool) -> None:
    global _testing  # noqa: PLW0603 - one process-wide switch, like stamina's
    _testing = on


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5  # fraction of the delay that is randomised
    floor: float = 0.0  # kept even in tests: a reconnect loop must not spin

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (0-based)."""
        if _testing:
            return self.floor
        base = min(self.maximum, self.initial * self.multiplier ** min(attempt, 32))
        return max(self.floor, base * (1 - self.jitter) + random.uniform(0, base * self.jitter))
