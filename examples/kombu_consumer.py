"""A bridge queue read with kombu, the messaging library Celery runs on, as Celery configures
it: `accept=["json"]`. kombu decodes the body by its `content_type` (`application/json`), so
the handler gets the provider's notification as a dict; the bridge's metadata is in
`message.properties` and `message.headers`.

    AMQP_URL=amqp://guest:guest@127.0.0.1:5672/ QUEUE=billing.incoming \\
        python examples/kombu_consumer.py
"""

from __future__ import annotations

import os
from typing import Any

from kombu import Connection, Consumer, Queue
from kombu.message import Message


def main(
    amqp_url: str, queue: str, *, limit: int | None = None, timeout: float | None = None
) -> list[tuple[Any, Message]]:
    """Consume (and ack) until `limit` messages were handled; each (notification, message)."""
    handled: list[tuple[Any, Message]] = []

    def on_message(notification: Any, message: Message) -> None:
        headers = message.headers
        print(message.properties["type"], headers["x-instance"], headers.get("x-chat-id"))
        message.ack()
        handled.append((notification, message))

    with Connection(amqp_url) as connection:
        # the queue is the operator's (`bridge queues declare`): consumed, never declared here
        source = Queue(queue, no_declare=True)
        with Consumer(connection, [source], accept=["json"], callbacks=[on_message]) as consumer:
            consumer.qos(prefetch_count=32)
            while limit is None or len(handled) < limit:
                connection.drain_events(timeout=timeout)
    return handled


if __name__ == "__main__":
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    main(url, os.environ.get("QUEUE", "billing.incoming"))
