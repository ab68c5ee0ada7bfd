"""A bridge queue read with plain pika: the body is JSON (`content_type` `application/json`),
the bridge's metadata is in the message properties and headers.

    AMQP_URL=amqp://guest:guest@127.0.0.1:5672/ QUEUE=billing.incoming \\
        python examples/pika_consumer.py
"""

from __future__ import annotations

import json
import os
from typing import Any

import pika
from pika.spec import BasicProperties


def main(
    amqp_url: str, queue: str, *, limit: int | None = None, timeout: float | None = None
) -> list[tuple[Any, BasicProperties]]:
    """Consume (and ack) until `limit` messages were handled; each (notification, properties)."""
    handled: list[tuple[Any, BasicProperties]] = []
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as connection:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=32)
        for method, properties, body in channel.consume(queue, inactivity_timeout=timeout):
            if method is None:
                raise TimeoutError(f"nothing from {queue} in {timeout} s")
            notification = json.loads(body)
            headers = properties.headers
            print(properties.type, headers["x-instance"], headers.get("x-chat-id"))
            channel.basic_ack(method.delivery_tag)
            handled.append((notification, properties))
            if limit is not None and len(handled) >= limit:
                break
        channel.cancel()
    return handled


if __name__ == "__main__":
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    main(url, os.environ.get("QUEUE", "billing.incoming"))
