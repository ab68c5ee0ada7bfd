"""The fake provider's raw ASGI app (no framework; the hot path is str.split and dict lookups).

Provider calls (real GREEN-API URL shapes)::

    GET    /waInstance{id}/receiveNotification/{token}?receiveTimeout=N
    DELETE /waInstance{id}/deleteNotification/{token}/{receiptId}
    GET    /waInstance{id}/getSettings/{token}          (when ``settings_api`` is on)
    POST   /waInstance{id}/setSettings/{token}
    GET    /waInstance{id}/lastIncomingMessages/{token}?minutes=N
    GET    /waInstance{id}/lastOutgoingMessages/{token}?minutes=N
                                   (the journals: :mod:`fakeprovider.greenjournal`)

Each call is checked in this order: route (404), idInstance (400/403), token (401), rate limit
per instance and method (429), parameters (400), then the next queued fault, the injected
latency, and finally the real answer. While an instance has a ``webhookUrl`` its queue is
pushed and ``receiveNotification`` answers ``null``. Evolution's ``/webhook/set/{name}`` and
``/webhook/find/{name}`` are served on the same port (:mod:`fakeprovider.evolution`), and so
are WAHA's ``/api/sessions...`` (:mod:`fakeprovider.waha`), and the instance state calls
(:mod:`fakeprovider.states`: ``getStateInstance``, ``/instance/connectionState/{name}``);
Meta only pushes (:mod:`fakeprovider.meta`). Control
calls live under ``/_control`` (see :mod:`fakeprovider.control` and
:mod:`fakeprovider.pushcontrol`).
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Final

from bridge.asgi import JSON, ASGIApp, Receive, Scope, Send, answer, lifespan
from fakeprovider.chatapi import FakeChatApi
from fakeprovider.control import handle_control
from fakeprovider.evolution import FakeEvolution
from fakeprovider.greenapi import (
    BadRequestError,
    FakeGreenApi,
    Fault,
    Instance,
    notification_response,
    parse_receipt_id,
    parse_receive_timeout,
)
from fakeprovider.greenjournal import JOURNALS, minutes_from_query
from fakeprovider.meta import FakeMeta
from fakeprovider.pushcontrol import handle_push_control
from fakeprovider.settings import SettingsError, encode_settings
from fakeprovider.states import FakeStates, is_state_call
from fakeprovider.waha import FakeWaha
from fakeprovider.waiting import (
    connected_check,
    header,
    read_body,
    sleep_unless_gone,
    wait_for_enqueue,
)

__all__ = ["DROP_LOG_MESSAGE", "ASGIApp", "create_app"]

_TEXT: Final = [(b"content-type", b"text/plain; charset=utf-8")]
_NULL: Final = b"null"
_RESULT_TRUE: Final = b'{"result":true}'
_RESULT_FALSE: Final = b'{"result":false}'
_SAVED: Final = b'{"saveSettings":true}'
_SETTINGS_ROUTES: Final = {"getSettings": "GET", "setSettings": "POST"}
_QUOTA_BODY: Final = (
    b'{"invokeStatus":{"status":"QUOTE_EXCEEDED","description":"Monthly quota has been'
    b' exceeded. Please go to your personal account and change the tariff to business"},'
    b'"correspondentsStatus":{"status":"CORRESPONDENTS_QUOTE_EXCEEDED","description":'
    b'"Monthly quota has been exceeded. You can only send or receive messages from'
    b' 3 chats"}}'
)
_DROP_PREFIX: Final = b'{"receiptId":'
_DROP_LENGTH: Final = b"512"
DROP_LOG_MESSAGE: Final = "ASGI callable returned without completing response."
_PREFIX_LEN: Final = len("waInstance")
_STATE_PREFIXES: Final = ("/waInstance", "/instance/")


def _bad_request(message: str) -> bytes:
    return b'{"message":"%b"}' % message.encode()


async def _drop(send: Send) -> None:
    """Promise a body, send a piece of it and stop: uvicorn then closes the connection."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [*JSON, (b"content-length", _DROP_LENGTH)],
        }
    )
    await send({"type": "http.response.body", "body": _DROP_PREFIX, "more_body": True})


async def _answer_fault(send: Send, fault: Fault) -> None:
    if fault.kind == "status":
        body = (fault.body or _reason(fault.status)).encode()
        json = body[:1] in (b"{", b"[")
        await answer(send, fault.status, body, JSON if json else _TEXT)
    elif fault.kind == "quota":
        await answer(send, 466, _QUOTA_BODY)
    elif fault.kind == "drop":
        await _drop(send)
    else:  # empty
        await answer(send, 200, b"")


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"Error {status}"


class _FakeProvider:
    __slots__ = ("chatapi", "evolution", "meta", "state", "states", "waha")

    def __init__(
        self,
        state: FakeGreenApi,
        evolution: FakeEvolution,
        chatapi: FakeChatApi,
        waha: FakeWaha,
        meta: FakeMeta,
    ) -> None:
        self.state = state
        self.evolution = evolution
        self.chatapi = chatapi
        self.waha = waha
        self.meta = meta
        self.states = FakeStates(state, evolution, waha)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            if path.startswith("/waInstance") and not is_state_call(path):
                await self._provider(scope, receive, send)
            elif path.startswith(("/_control", "/webhook/", "/api/sessions", *_STATE_PREFIXES)):
                body = await read_body(receive)
                if body is not None:
                    status, reply = self._buffered(scope, path, body)
                    await answer(send, status, reply)
            else:
                await answer(send, 404, b"Not Found", _TEXT)
        elif kind == "lifespan":
            await lifespan(receive, send)

    def _buffered(self, scope: Scope, path: str, body: bytes) -> tuple[int, bytes]:
        method: str = scope["method"]
        states = self._states(scope, method, path, body)
        if states is not None:
            return states
        if path.startswith("/webhook/"):
            apikey = header(scope, b"apikey")
            return self.evolution.handle_api(method, path, apikey, body)
        if path.startswith("/api/sessions"):
            return self.waha.handle_api(method, path, header(scope, b"x-api-key"), body)
        answer = handle_push_control(
            method,
            path,
            body,
            green=self.state,
            evolution=self.evolution,
            chatapi=self.chatapi,
            waha=self.waha,
            meta=self.meta,
        )
        if answer is not None:
            return answer
        status, result = handle_control(self.state, method, path, body)
        if status == 200 and method == "POST" and path.rstrip("/") == "/_control/reset":
            self.evolution.reset()
            self.chatapi.reset()
            self.waha.reset()
            self.meta.reset()
            self.states.reset()
        return status, result

    def _states(
        self, scope: Scope, method: str, path: str, body: bytes
    ) -> tuple[int, bytes] | None:
        """The instance state calls and their control (:mod:`fakeprovider.states`)."""
        if path.startswith("/_control"):
            return self.states.control(method, path, body)
        key = header(scope, b"x-api-key" if path.startswith("/api/") else b"apikey")
        return self.states.handle(method, path, key)

    async def _provider(self, scope: Scope, receive: Receive, send: Send) -> None:
        parts: list[str] = scope["path"].split("/")
        count = len(parts)
        method = scope["method"]
        settings = journal = False
        if count == 4 and parts[2] == "receiveNotification" and method == "GET":
            receiving = True
        elif count == 5 and parts[2] == "deleteNotification" and method == "DELETE":
            receiving = False
        elif count == 4 and self.state.settings_api and _SETTINGS_ROUTES.get(parts[2]) == method:
            receiving, settings = False, True
        elif count == 4 and parts[2] in JOURNALS and method == "GET":
            receiving, journal = False, True
        else:
            await answer(send, 404, b"Not Found", _TEXT)
            return
        id = parts[1][_PREFIX_LEN:]
        instance = self.state.instances.get(id)
        if instance is None:
            if id.isascii() and id.isdigit():
                await answer(send, 403, b"Forbidden", _TEXT)
            else:
                await answer(send, 400, _bad_request("Parameter idInstance not an integer"))
            return
        token = parts[3]
        if token != instance.token:
            if token:
                await answer(send, 401, b"Unauthorized", _TEXT)
            else:
                await answer(send, 400, _bad_request("Parameter apiTokenInstance not define"))
            return
        if journal:
            await _journal(instance, parts[2], scope["query_string"], send)
        elif settings:
            await self._settings(instance, parts[2] == "setSettings", receive, send)
        elif receiving:
            handle = instance.begin_receive(connected_check(receive))
            try:
                await self._receive(instance, scope, receive, send)
            finally:
                instance.end_receive(handle)
        else:
            await self._delete(instance, parts[4], send)

    async def _receive(
        self, instance: Instance, scope: Scope, receive: Receive, send: Send
    ) -> None:
        loop = asyncio.get_running_loop()
        if not instance.receive_window.admit(loop.time()):
            await answer(send, 429, b"Too Many Requests", _TEXT)
            return
        try:
            timeout = parse_receive_timeout(scope["query_string"])
        except BadRequestError as exc:
            await answer(send, 400, _bad_request(str(exc)))
            return
        fault = instance.take_fault("receive") if instance.faults else None
        latency = self.state.latency_for(instance)
        if fault is not None and await _faulted(fault, latency, receive, send):
            return
        deadline = loop.time() + timeout * self.state.timeout_scale
        await self._long_poll(instance, deadline, latency, receive, send)

    async def _long_poll(
        self, instance: Instance, deadline: float, latency: float, receive: Receive, send: Send
    ) -> None:
        """Answer the head once there is one; ``null`` at the deadline or while draining."""
        loop = asyncio.get_running_loop()
        while True:
            head = instance.poll_head()
            if head is not None:
                if latency > 0.0:
                    await asyncio.sleep(latency)
                    head = instance.poll_head()
                    if head is None:  # taken by an overlapping consumer meanwhile
                        continue
                instance.delivered += 1
                await answer(send, 200, notification_response(*head))
                return
            remaining = deadline - loop.time()
            if remaining <= 0.0 or instance.closed or self.state.draining:
                break
            if not await wait_for_enqueue(loop, instance, remaining, receive):
                return  # the client went away: nobody to answer
        await answer(send, 200, _NULL)

    async def _delete(self, instance: Instance, segment: str, send: Send) -> None:
        if not instance.delete_window.admit(asyncio.get_running_loop().time()):
            await answer(send, 429, b"Too Many Requests", _TEXT)
            return
        try:
            receipt_id = parse_receipt_id(segment)
        except BadRequestError as exc:
            await answer(send, 400, _bad_request(str(exc)))
            return
        fault = instance.take_fault("delete") if instance.faults else None
        latency = self.state.latency_for(instance)
        if latency > 0.0:
            await asyncio.sleep(latency)
        if fault is not None:
            if fault.kind != "slow":
                await _answer_fault(send, fault)
                return
            await asyncio.sleep(fault.delay)
        await answer(send, 200, _RESULT_TRUE if instance.delete(receipt_id) else _RESULT_FALSE)

    async def _settings(
        self, instance: Instance, setting: bool, receive: Receive, send: Send
    ) -> None:
        body = await read_body(receive) if setting else b""
        if body is None:
            return
        window = instance.set_settings_window if setting else instance.get_settings_window
        if not window.admit(asyncio.get_running_loop().time()):
            await answer(send, 429, b"Too Many Requests", _TEXT)
            return
        latency = self.state.latency_for(instance)
        if latency > 0.0:
            await asyncio.sleep(latency)
        if not setting:
            await answer(send, 200, encode_settings(instance.settings))
            return
        try:
            self.state.set_settings(instance.id, body)
        except SettingsError as exc:
            await answer(send, 400, _bad_request(str(exc)))
            return
        await answer(send, 200, _SAVED)


async def _journal(instance: Instance, route: str, query: bytes, send: Send) -> None:
    """`lastIncomingMessages` / `lastOutgoingMessages`: the instance's journal."""
    try:
        minutes = minutes_from_query(query)
    except ValueError:
        await answer(send, 400, _bad_request("Parameter minutes not an integer"))
        return
    await answer(send, 200, instance.journal.answer(route, minutes))


async def _faulted(fault: Fault, latency: float, receive: Receive, send: Send) -> bool:
    """Play a receive's fault; True when that ends the receive (the fault answered, or the
    client gave up during a ``slow`` one: its read timeout), False to go on polling."""
    if fault.kind != "slow":
        if latency > 0.0:
            await asyncio.sleep(latency)
        await _answer_fault(send, fault)
        return True
    return not await sleep_unless_gone(fault.delay, receive)


def create_app(
    state: FakeGreenApi,
    *,
    evolution: FakeEvolution | None = None,
    chatapi: FakeChatApi | None = None,
    waha: FakeWaha | None = None,
    meta: FakeMeta | None = None,
) -> ASGIApp:
    """The raw ASGI app serving the provider APIs and ``/_control`` over the states (an
    Evolution, Chat API, WAHA or Meta state left out is a new, empty one)."""
    return _FakeProvider(
        state,
        evolution or FakeEvolution(),
        chatapi or FakeChatApi(),
        waha or FakeWaha(),
        meta or FakeMeta(),
    )
