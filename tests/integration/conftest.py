from __future__ import annotations

from tests.support.rabbitnode import own_rabbit

__all__ = ["own_rabbit"]
