"""Decode and classify each provider's notifications (pure)."""

from __future__ import annotations

import msgspec

#: What msgspec raises for bytes that are not usable JSON: its own error, invalid UTF-8 inside a
#: string, and nesting deeper than the interpreter's recursion limit. Every decoder maps all
#: three to its own error, so that a hostile body is quarantined instead of crashing a route.
DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
