"""A bridge queue read as CloudEvents with the CloudEvents Python SDK, for a bridge run with
`amqp.cloudevents = true`: the `ce-` headers and the JSON body make one event, through the
SDK's RabbitMQ binding (`from_binary`), with pika as the client.

    AMQP_URL=amqp://guest:guest@127.0.0.1:5672/ QUEUE=billing.incoming \\
        python examples/cloudevents_consumer.py
"""

from __future__ import annotations

import os

import pika
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.rabbitmq import RabbitMQMessage, from_binary
from cloudevents.core.formats.json import JSONFormat


def main(
    amqp_url: str, queue: str, *, limit: int | None = None, timeout: float | None = None
) -> list[BaseCloudEvent]:
    """Consume (and ack) until `limit` messages were handled; each as a CloudEvent."""
    handled: list[BaseCloudEvent] = []
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as connection:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=32)
        for method, properties, body in channel.consume(queue, inactivity_timeout=timeout):
            if method is None:
                raise TimeoutError(f"nothing from {queue} in {timeout} s")
            message = RabbitMQMessage(properties.headers, properties.content_type, body)
            event = from_binary(message, JSONFormat())
            print(event.get_type(), event.get_source(), event.get_subject(), event.get_time())
            channel.basic_ack(method.delivery_tag)
            handled.append(event)
            if limit is not None and len(handled) >= limit:
                break
        channel.cancel()
    return handled


if __name__ == "__main__":
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    main(url, os.environ.get("QUEUE", "billing.incoming"))
