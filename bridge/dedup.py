"""The bounded set of recent message ids behind both dedups: the publisher's (ids RabbitMQ
confirmed, not published twice while the process lives) and the consumer helper's (ids acked,
skipped when they come again).
"""

from __future__ import annotations

from collections import OrderedDict


class RecentIds:
    """A bounded LRU set of message ids: `add` and `seen` make an id the most recent, and past
    `size` ids the least recent is forgotten; `size` 0 remembers nothing."""

    __slots__ = ("_ids", "size")

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("size must be >= 0")
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, message_id: str) -> None:
        """Remember `message_id` as the most recent; evict the least recent beyond `size`."""
        if not self.size:
            return
        self._ids[message_id] = None
        self._ids.move_to_end(message_id)
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)

    def seen(self, message_id: str | None) -> bool:
        """True if remembered, and refresh it (it becomes the most recent); None never is."""
        if message_id is None or message_id not in self._ids:
            return False
        self._ids.move_to_end(message_id)
        return True

    def __contains__(self, message_id: object) -> bool:
        """Remembered (without refreshing it)."""
        return message_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)
