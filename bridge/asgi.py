"""Raw ASGI, as the webhook app and the fake provider speak it: the types, one answer, lifespan.

Both apps are plain ASGI callables (no framework: their hot paths are dict lookups), served by
the embedded uvicorn of :mod:`bridge.httpserver`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

__all__ = [
    "JSON",
    "ASGIApp",
    "Headers",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "answer",
    "lifespan",
]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

#: The headers of an answer that names none: a JSON body.
JSON: Final[Headers] = [(b"content-type", b"application/json")]


async def answer(send: Send, status: int, body: bytes, headers: Headers | None = None) -> None:
    """The whole response in one body message: ``headers`` (JSON's content type when None)
    and its ``content-length``."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*(headers or JSON), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def lifespan(receive: Receive, send: Send) -> None:
    """Answer an ASGI lifespan scope: nothing to start or stop."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
