"""Logging: one `bridge` root, stable event names with fields, JSON or text, tokens redacted.

Configured only by the CLI (`setup()`). Code logs through `log = get_logger(__name__)` with
`log.warning("poll.failed", instance=…, error=…)`; the formatter renders `event key=value …` on
a terminal and one JSON object per line otherwise. Logger names are module paths.
`Redactor` removes every configured secret and every GREEN-API token-bearing URL path from
messages, fields and tracebacks before anything is written.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

import msgspec

FIELDS_ATTR = "bridge_fields"
_TOKEN_PATH = re.compile(r"(/waInstance[^/\s]*/[A-Za-z]+/)[^/?\s\"']+")
_json = msgspec.json.Encoder()


class Logger:
    """A stdlib logger that takes an event name and its fields as keyword arguments.

    `log = get_logger(__name__)`, then `log.warning("publish.nacked", provider=…, instance=…)`;
    `exc_info=` attaches an exception. The fields travel on the record (`FIELDS_ATTR`) for the
    formatters; the message is the event name alone.
    """

    __slots__ = ("logger",)

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    @property
    def name(self) -> str:
        return self.logger.name

    def is_enabled_for(self, level: int) -> bool:
        return self.logger.isEnabledFor(level)

    def log(self, level: int, event: str, /, **fields: Any) -> None:
        self._at(level, event, fields)

    def debug(self, event: str, /, **fields: Any) -> None:
        self._at(logging.DEBUG, event, fields)

    def info(self, event: str, /, **fields: Any) -> None:
        self._at(logging.INFO, event, fields)

    def warning(self, event: str, /, **fields: Any) -> None:
        self._at(logging.WARNING, event, fields)

    def error(self, event: str, /, **fields: Any) -> None:
        self._at(logging.ERROR, event, fields)

    def _at(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if self.logger.isEnabledFor(level):
            exc_info = fields.pop("exc_info", None)
            self.logger.log(
                level, event, extra={FIELDS_ATTR: fields}, exc_info=exc_info, stacklevel=3
            )


def get_logger(name: str) -> Logger:
    """The logger of a module: `get_logger(__name__)`, under the `bridge` root."""
    return Logger(logging.getLogger(name))


def redact_url(text: str) -> str:
    """Hide the token segment of GREEN-API URLs: `/waInstance1/receiveNotification/***`."""
    return _TOKEN_PATH.sub(r"\1***", text)


class Redactor(logging.Filter):
    """Scrubs secrets from a record's message, fields and exception text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        new = {s for s in secrets if len(s) >= 4}
        self._secrets = sorted(set(self._secrets) | new, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return redact_url(text)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.scrub(record.getMessage())
        record.args = None
        fields = getattr(record, FIELDS_ATTR, None)
        if fields:
            setattr(
                record,
                FIELDS_ATTR,
                {k: self.scrub(v) if isinstance(v, str) else v for k, v in fields.items()},
            )
        if record.exc_info:
            formatter = logging.Formatter()
            record.exc_text = self.scrub(formatter.formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        data.update(getattr(record, FIELDS_ATTR, None) or {})
        if record.exc_text:
            data["exception"] = record.exc_text
        return _json.encode(data).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, FIELDS_ATTR, None) or {}
        parts = [_iso(record.created), f"{record.levelname:<7}", record.getMessage()]
        parts.extend(f"{k}={_text(v)}" for k, v in fields.items())
        line = " ".join(parts)
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


def _iso(created: float) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        + f".{int(created % 1 * 1000):03d}Z"
    )


def _text(value: object) -> str:
    text = str(value)
    return repr(text) if (" " in text or not text) else text


def setup(
    level: str = "info",
    fmt: str = "auto",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> Redactor:
    """Install one handler (stderr) on the root logger; return its redactor."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "text" if stream.isatty() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    redactor = Redactor(secrets)
    handler.addFilter(redactor)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    # The service's loggers, and the fake provider's (`bridge fake-provider`): module paths.
    for name in ("bridge", "fakeprovider"):
        logging.getLogger(name).setLevel(level.upper())
    # httpx logs every request URL at INFO, and GREEN-API URLs carry the token.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # aiorun announces every signal at WARNING; the bridge logs its own service.stopping.
    logging.getLogger("aiorun").setLevel(logging.ERROR)
    return redactor
