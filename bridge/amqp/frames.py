"""The AMQP 0-9-1 frames of one bridge publish, encoded for the hot path.

pamqp encodes any frame through generic, per-attribute dispatch; the bridge publishes one
shape of message: `basic.publish` (mandatory) to an exchange and routing key, a content header
with a fixed set of properties (DESIGN "The AMQP message") and a header table of strings,
integers, booleans and bytes, then the body cut at the connection's `frame_max`. This module
writes those bytes directly. They are the bytes pamqp writes for the same message
(`tests/unit/test_frames.py` proves it against pamqp for every shape the bridge can build); a
header value of another type is encoded by pamqp itself.

Rules copied from pamqp 4 (`pamqp.encode`, `pamqp.base.BasicProperties.marshal`):
- a property that is `None` or `""` is left out (its flag bit stays clear), `headers={}` is sent
  as an empty table;
- table keys are sorted, cut to 128 bytes of UTF-8; integers take the smallest signed type,
  then `u`/`i` for unsigned 16/32-bit ranges; strings are long strings (`S`); booleans `t`;
  bytes a byte array (`x`, pamqp's encoding of `bytearray`);
- a short string over 255 bytes is an error (`TypeError`, as pamqp's).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any, Final

from pamqp import constants
from pamqp import encode as pamqp_encode

from bridge import APP_ID
from bridge.envelope import Outbound

FRAME_END: Final = b"\xce"
#: frame type, channel, payload size (pamqp.frame._marshal)
_FRAME_HEAD: Final = struct.Struct(">BHI")
#: frame head + frame end: what a body frame adds to its payload
FRAME_OVERHEAD: Final = _FRAME_HEAD.size + len(FRAME_END)
#: Basic.Publish (class 60, method 40) and its ticket (0)
_PUBLISH_METHOD: Final = struct.pack(">IH", 0x003C0028, 0)
#: class 60, weight 0, then the body size
_HEADER_HEAD: Final = struct.Struct(">HxxQ")
_U32: Final = struct.Struct(">I").pack
_U64: Final = struct.Struct(">Q").pack
_EMPTY_TABLE: Final = b"\x00\x00\x00\x00"

_CONTENT_TYPE: Final = 0x8000
_HEADERS: Final = 0x2000
_DELIVERY_MODE: Final = 0x1000
_MESSAGE_ID: Final = 0x0080
_TIMESTAMP: Final = 0x0040
_TYPE: Final = 0x0020
_APP_ID: Final = 0x0008
#: AMQP timestamps are unsigned 64-bit seconds; pamqp takes them as datetimes, so only what
#: `datetime` can hold round-trips (bridge.envelope.MAX_TIMESTAMP).
MAX_TIMESTAMP: Final = 253_402_300_799
_MAX_KEY_BYTES: Final = 128
_MAX_SHORT: Final = 255
_CACHE_LIMIT: Final = 4096


def shortstr(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > _MAX_SHORT:
        raise TypeError(f"string exceeds maximum length of {_MAX_SHORT} bytes")
    return bytes((len(raw),)) + raw


def frame(frame_type: int, channel: int, payload: bytes) -> bytes:
    return _FRAME_HEAD.pack(frame_type, channel, len(payload)) + payload + FRAME_END


def publish_frame(channel: int, exchange: str, routing_key: str, *, mandatory: bool) -> bytes:
    """The whole `basic.publish` method frame; `ValueError` for what aiormq or pamqp refuse."""
    if len(routing_key) > _MAX_SHORT:
        raise ValueError("Routing key too long (max 255 bytes)")  # aiormq's check
    if len(exchange) > 127:
        raise ValueError("Max length exceeded for exchange")
    if not constants.DOMAIN_REGEX["exchange-name"].fullmatch(exchange):
        raise ValueError("Invalid value for exchange")
    payload = _PUBLISH_METHOD + shortstr(exchange) + shortstr(routing_key) + bytes((mandatory,))
    return frame(constants.FRAME_METHOD, channel, payload)


class PublishFrames:
    """`basic.publish` frames of one channel, encoded once per (exchange, routing key)."""

    __slots__ = ("_cache", "_channel", "_mandatory")

    def __init__(self, channel: int, *, mandatory: bool = True) -> None:
        self._channel = channel
        self._mandatory = mandatory
        self._cache: dict[tuple[str, str], bytes] = {}

    def __call__(self, exchange: str, routing_key: str) -> bytes:
        key = (exchange, routing_key)
        encoded = self._cache.get(key)
        if encoded is None:
            encoded = publish_frame(self._channel, exchange, routing_key, mandatory=self._mandatory)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = encoded
        return encoded


# -- field tables --------------------------------------------------------------------------

_keys: dict[str, bytes] = {}


def _key(name: str) -> bytes:
    encoded = _keys.get(name)
    if encoded is None:
        raw = name.encode()
        if len(raw) > _MAX_KEY_BYTES:
            # pamqp cuts the name and drops a character split at the boundary
            raw = raw[:_MAX_KEY_BYTES].decode("utf-8", "ignore").encode()
        encoded = bytes((len(raw),)) + raw
        if len(_keys) >= _CACHE_LIMIT:
            _keys.clear()
        _keys[name] = encoded
    return encoded


def _integer(value: int) -> bytes:
    if -128 <= value <= 127:
        return b"b" + struct.pack(">b", value)
    if -32768 <= value <= 32767:
        return b"s" + struct.pack(">h", value)
    if 0 <= value <= 65535:
        return b"u" + struct.pack(">H", value)
    if -2147483648 <= value <= 2147483647:
        return b"I" + struct.pack(">i", value)
    if 0 <= value <= 4294967295:
        return b"i" + struct.pack(">I", value)
    if -9223372036854775808 <= value <= 9223372036854775807:
        return b"l" + struct.pack(">q", value)
    raise TypeError(f"Unsupported numeric value: {value}")


_LONG_STRING: Final = struct.Struct(">cI").pack
_BYTE_ARRAY: Final = b"x"
#: encoded name + string value, per header name: most header values repeat (provider,
#: instance, ingest, event), so most of a table is looked up rather than encoded; a name whose
#: values keep changing (a chat id) stops being cached once it has `_VALUES_PER_NAME` of them
_fields: dict[str, dict[str, bytes]] = {}
_VARYING: Final[dict[str, bytes]] = {}  # the cache of such a name: always empty
_VALUES_PER_NAME: Final = 256
_CACHED_VALUE_MAX: Final = 128


def _value(value: Any) -> bytes:
    if isinstance(value, str):
        raw = value.encode()
        return _LONG_STRING(b"S", len(raw)) + raw
    if isinstance(value, bool):
        return b"t\x01" if value else b"t\x00"
    if isinstance(value, int):
        return _integer(value)
    if isinstance(value, bytes | bytearray):
        return _LONG_STRING(_BYTE_ARRAY, len(value)) + value
    return pamqp_encode.encode_table_value(value)


def _field(name: str, value: Any) -> bytes:
    if type(value) is str and len(value) <= _CACHED_VALUE_MAX:
        cache = _fields.get(name)
        if cache is None:
            if len(_fields) >= _CACHE_LIMIT:
                _fields.clear()
            cache = _fields[name] = {}
        encoded = cache.get(value)
        if encoded is None:
            encoded = _key(name) + _value(value)
            if cache is not _VARYING:
                if len(cache) < _VALUES_PER_NAME:
                    cache[value] = encoded
                else:
                    _fields[name] = _VARYING  # too many values: encode them each time
        return encoded
    try:
        return _key(name) + _value(value)
    except TypeError as exc:
        raise TypeError(f"{name} error: {exc}") from exc


def table(headers: Mapping[str, Any]) -> bytes:
    """A field table as pamqp encodes it (`pamqp.encode.field_table`)."""
    if not headers:
        return _EMPTY_TABLE
    encoded = b"".join([_field(name, headers[name]) for name in sorted(headers)])
    return _U32(len(encoded)) + encoded


# -- the content header and body -----------------------------------------------------------


class Content:
    """Content header and body frames for one channel and one `frame_max`, with the properties
    that are the same for every message (`content_type`, `delivery_mode`, `app_id`)."""

    __slots__ = ("_app_id", "_channel", "_chunk", "_content_type", "_fixed", "_fixed_tail")

    def __init__(
        self,
        channel: int,
        frame_max: int,
        *,
        content_type: str = "application/json",
        delivery_mode: int = 2,
        app_id: str = "",
    ) -> None:
        if delivery_mode not in (1, 2):
            raise ValueError(f"Invalid delivery_mode value: {delivery_mode}")
        self._channel = channel
        #: the largest body frame payload; aiormq's `max_content_size` (0: no limit)
        self._chunk = frame_max - FRAME_OVERHEAD if frame_max > 0 else 0
        self._fixed = _CONTENT_TYPE | _HEADERS | _DELIVERY_MODE
        self._content_type = shortstr(content_type) if content_type else b""
        if not content_type:
            self._fixed &= ~_CONTENT_TYPE
        self._app_id = shortstr(app_id) if app_id else b""
        if app_id:
            self._fixed |= _APP_ID
        self._fixed_tail = bytes((delivery_mode,))

    def header(
        self,
        body_size: int,
        *,
        message_id: str,
        timestamp: int | None,
        message_type: str,
        headers: Mapping[str, Any],
    ) -> bytes:
        """The content header frame; `timestamp` in seconds, left out outside 0..9999-12-31."""
        flags = self._fixed
        tail = [self._fixed_tail]
        if message_id:
            flags |= _MESSAGE_ID
            tail.append(shortstr(message_id))
        if timestamp is not None and 0 <= timestamp <= MAX_TIMESTAMP:
            flags |= _TIMESTAMP
            tail.append(_U64(timestamp))
        if message_type:
            flags |= _TYPE
            tail.append(shortstr(message_type))
        tail.append(self._app_id)
        payload = b"".join(
            (
                _HEADER_HEAD.pack(60, body_size),
                struct.pack(">H", flags),
                self._content_type,
                table(headers),
                *tail,
            )
        )
        return frame(constants.FRAME_HEADER, self._channel, payload)

    def body(self, body: bytes) -> bytes:
        """The body frames: none for an empty body, else cut at `frame_max` as aiormq cuts."""
        if not body:
            return b""
        chunk = self._chunk
        head = _FRAME_HEAD.pack
        channel = self._channel
        if not chunk or len(body) < chunk:
            return head(constants.FRAME_BODY, channel, len(body)) + body + FRAME_END
        parts = []
        for start in range(0, len(body), chunk):
            piece = body[start : start + chunk]
            parts.append(head(constants.FRAME_BODY, channel, len(piece)))
            parts.append(piece)
            parts.append(FRAME_END)
        return b"".join(parts)


class Encoder:
    """Every frame of one bridge publish (mandatory, persistent, the bridge's properties) on one
    channel of a connection with the given `frame_max`."""

    __slots__ = ("content", "publish")

    def __init__(self, channel: int, frame_max: int) -> None:
        self.publish = PublishFrames(channel, mandatory=True)
        self.content = Content(channel, frame_max, app_id=APP_ID)

    def into(self, parts: list[bytes], out: Outbound, exchange: str | None = None) -> None:
        """Append the frames of `out` to `parts` (joined later, once per write), published to
        `exchange` when given, else to `out.exchange`; nothing is appended when a field cannot
        be encoded."""
        body = out.body
        publish = self.publish(out.exchange if exchange is None else exchange, out.routing_key)
        header = self.content.header(
            len(body),
            message_id=out.message_id,
            timestamp=out.timestamp,
            message_type=out.event,
            headers=out.headers,
        )
        parts.append(publish)
        parts.append(header)
        if body:
            parts.append(self.content.body(body))

    def __call__(self, out: Outbound) -> bytes:
        parts: list[bytes] = []
        self.into(parts, out)
        return b"".join(parts)
