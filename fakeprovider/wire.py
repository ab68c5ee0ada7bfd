"""The fake GREEN-API's wire-level pieces, pure: request parameters, rate window, faults.

:mod:`fakeprovider.greenapi` re-exports them; they live here to keep the state module short.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final, Literal

import msgspec

__all__ = [
    "DEFAULT_RECEIVE_TIMEOUT",
    "METHODS",
    "BadRequestError",
    "Fault",
    "Method",
    "SlidingWindow",
    "notification_response",
    "parse_receipt_id",
    "parse_receive_timeout",
]

Method = Literal["receive", "delete"]
METHODS: Final[frozenset[Method]] = frozenset(("receive", "delete"))

DEFAULT_RECEIVE_TIMEOUT: Final = 5
MIN_RECEIVE_TIMEOUT: Final = 5
MAX_RECEIVE_TIMEOUT: Final = 60


class BadRequestError(ValueError):
    """A provider request parameter is invalid; the message is the 400 body's ``message``."""


class Fault(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An answer to substitute for the next ``count`` matching provider calls.

    ``count == -1`` keeps the fault until the faults are cleared. ``delay`` is used by
    ``slow``; ``status`` and ``body`` by ``status``. A slow receive whose client disconnects
    during the delay ends there (it no longer counts as in flight) and delivers nothing.
    """

    kind: Literal["status", "quota", "slow", "drop", "empty"]
    status: int = 500
    count: int = 1
    methods: frozenset[Method] = METHODS
    delay: float = 0.0
    body: str | None = None

    def __post_init__(self) -> None:
        if self.count != -1 and self.count < 1:
            raise ValueError("count must be -1 (until cleared) or at least 1")
        if not self.methods:
            raise ValueError("methods must name at least one of receive, delete")
        if not (math.isfinite(self.delay) and 0.0 <= self.delay <= 600.0):
            raise ValueError("delay must be between 0 and 600 seconds")
        if self.kind == "status" and not 200 <= self.status <= 599:
            raise ValueError("status must be between 200 and 599")
        if self.kind == "slow" and self.delay <= 0.0:
            raise ValueError("a slow fault needs a positive delay")


class SlidingWindow:
    """Admit at most ``limit`` events in any ``window``-second span; O(1) amortised."""

    __slots__ = ("_limit", "_stamps", "_window")

    def __init__(self, limit: int, window: float = 1.0) -> None:
        self._limit = limit
        self._window = window
        self._stamps: deque[float] = deque()

    def admit(self, now: float) -> bool:
        stamps = self._stamps
        edge = now - self._window
        while stamps and stamps[0] <= edge:
            stamps.popleft()
        if len(stamps) >= self._limit:
            return False
        stamps.append(now)
        return True


def parse_receive_timeout(query_string: bytes) -> int:
    """``receiveTimeout`` from a raw query string: integer 5..60, default 5."""
    if not query_string:
        return DEFAULT_RECEIVE_TIMEOUT
    value: str | None = None
    for pair in query_string.decode("latin-1").split("&"):
        name, _, raw = pair.partition("=")
        if name == "receiveTimeout":
            value = raw
    if value is None:
        return DEFAULT_RECEIVE_TIMEOUT
    if not (value.isascii() and value.isdigit()) or not (
        MIN_RECEIVE_TIMEOUT <= int(value) <= MAX_RECEIVE_TIMEOUT
    ):
        raise BadRequestError(
            f"Parameter receiveTimeout must be an integer from {MIN_RECEIVE_TIMEOUT}"
            f" to {MAX_RECEIVE_TIMEOUT}"
        )
    return int(value)


def parse_receipt_id(segment: str) -> int:
    if not (segment.isascii() and segment.isdigit()) or len(segment) > 19:
        raise BadRequestError("Parameter receiptId must be a Number")
    return int(segment)


def notification_response(receipt_id: int, raw: bytes) -> bytes:
    """The receiveNotification body, splicing the stored bytes unchanged."""
    return b'{"receiptId":%d,"body":%b}' % (receipt_id, raw)
