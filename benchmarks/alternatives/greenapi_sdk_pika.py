"""The official GREEN-API SDK's receiving loop, publishing every notification with pika.

What `bridge bench compare` measures our poller against. Each instance gets a thread running
`GreenAPI(...).webhooks.startReceivingNotifications(on_event)` (the SDK's documented loop:
`receiveNotification` with the server's default receiveTimeout, the handler, then
`deleteNotification`) and its own pika `BlockingConnection` (pika connections are not
thread-safe) with a confirm channel. The handler publishes the notification persistent and
mandatory; `basic_publish` on a confirm channel returns only after RabbitMQ's ack and raises on
a nack or a return, so the SDK deletes a notification only after RabbitMQ confirmed it — the
honest way to get ack-after-confirm out of this SDK.

    python greenapi_sdk_pika.py --amqp-url URL --exchange NAME --ready-file PATH \
        ID:TOKEN@API_URL...

Touches `--ready-file` once every thread has its connection and has started polling. Runs until
it is killed. Needs `whatsapp-api-client-python` and `pika` (the bridge's dev dependencies).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from pathlib import Path
from typing import Any

import pika
from whatsapp_api_client_python import API


def serve(api_url: str, amqp_url: str, exchange: str, ident: str, token: str) -> threading.Thread:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()

    def on_event(type_webhook: str, body: dict[str, Any]) -> None:
        channel.basic_publish(
            exchange=exchange,
            routing_key=type_webhook,
            body=json.dumps(body).encode(),
            properties=pika.BasicProperties(
                content_type="application/json", delivery_mode=2, type=type_webhook
            ),
            mandatory=True,
        )  # raises NackError / UnroutableError: the SDK then never deletes it

    client = API.GreenAPI(ident, token, host=api_url)
    thread = threading.Thread(
        target=client.webhooks.startReceivingNotifications,
        args=(on_event,),
        name=f"instance-{ident}",
        daemon=True,
    )
    thread.start()
    return thread


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--exchange", required=True)
    parser.add_argument("--ready-file", required=True, type=Path)
    parser.add_argument("instances", nargs="+", metavar="ID:TOKEN@API_URL")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    threads = []
    for item in args.instances:
        credentials, _, api_url = item.partition("@")
        ident, _, token = credentials.partition(":")
        threads.append(serve(api_url, args.amqp_url, args.exchange, ident, token))
    args.ready_file.touch()
    for thread in threads:
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
