"""A minimal GREEN-API webhook bridge on FastAPI and FastStream.

What `bridge bench compare` measures our webhook path against: `POST
/webhooks/greenapi/{instance}` checks the bearer token, reads the event type from the body and
publishes the body unchanged to a topic exchange through FastStream's `RabbitBroker` (one
connection, publisher confirms on — FastStream's default — persistent, mandatory, a return
raising), and answers 200 only after RabbitMQ's ack; a nack or a return answers 503. Served by
uvicorn with uvloop and httptools, access log off, as the bridge serves its webhooks.

    BENCH_HOOK_TOKEN=… python fastapi_faststream.py --amqp-url URL --exchange NAME --port N

`GET /healthz` answers 200 once the broker is connected. Needs `fastapi`, `faststream[rabbit]`
and `uvicorn` (the bridge's dev dependencies).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from aio_pika.exceptions import DeliveryError
from fastapi import FastAPI, Request, Response
from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange
from faststream.rabbit.schemas import Channel
from pamqp.commands import Basic


def build(amqp_url: str, exchange_name: str, token: str) -> FastAPI:
    broker = RabbitBroker(amqp_url, default_channel=Channel(on_return_raises=True), logger=None)
    # declare=False: the exchange exists (the bench declares it); FastStream binds it once.
    exchange = RabbitExchange(exchange_name, type=ExchangeType.TOPIC, declare=False)
    expected = f"Bearer {token}"

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await broker.start()
        yield
        await broker.stop()

    app = FastAPI(lifespan=lifespan)

    @app.post("/webhooks/greenapi/{instance}")
    async def greenapi(instance: str, request: Request) -> Response:
        if request.headers.get("authorization") != expected:
            return Response(status_code=401)
        body = await request.body()
        try:
            event = json.loads(body)["typeWebhook"]
        except (ValueError, KeyError, TypeError):
            return Response(status_code=400)
        try:
            confirm = await broker.publish(
                body,
                exchange=exchange,
                routing_key=event,
                persist=True,
                mandatory=True,
                content_type="application/json",
                headers={"x-instance": instance},
            )
        except DeliveryError:
            return Response(status_code=503)
        if not isinstance(confirm, Basic.Ack):
            return Response(status_code=503)
        return Response(status_code=200)

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(status_code=200)

    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--exchange", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = build(args.amqp_url, args.exchange, os.environ["BENCH_HOOK_TOKEN"])
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
