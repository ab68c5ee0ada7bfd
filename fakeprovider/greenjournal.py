"""The fake GREEN-API's message journals (`lastIncomingMessages`, `lastOutgoingMessages`).

GREEN-API keeps a journal of an instance's messages apart from its notification queue: every
message notification added to the fake (`incomingMessageReceived`, `outgoingMessageReceived`,
`outgoingAPIMessageReceived`) is journaled with the fields the real journal answers
(`type`, `idMessage`, `timestamp`, `typeMessage`, `chatId`, …). `GET …/lastIncomingMessages/
{token}?minutes=N` answers the entries of the last N minutes (default 1440), newest first, as
GREEN-API does.

Losing notifications: `lose(n)` makes the next `n` message notifications journaled but never
delivered (neither queued for `receiveNotification` nor pushed) — what users report of the
real service, and what `bridge audit` is meant to find. The lost ones are listed in `lost`.
"""

from __future__ import annotations

import time
from typing import Final, Literal
from urllib.parse import parse_qs

import msgspec

__all__ = ["JOURNALS", "Journal", "JournalEntry", "minutes_from_query"]

Kind = Literal["incoming", "outgoing"]
#: The journal's routes and what each lists.
JOURNALS: Final[dict[str, Kind]] = {
    "lastIncomingMessages": "incoming",
    "lastOutgoingMessages": "outgoing",
}
_KINDS: Final[dict[str, Kind]] = {
    "incomingMessageReceived": "incoming",
    "outgoingMessageReceived": "outgoing",
    "outgoingAPIMessageReceived": "outgoing",
}
DEFAULT_MINUTES: Final = 1440


class _Sender(msgspec.Struct):
    chatId: str = ""
    senderName: str = ""


class _Data(msgspec.Struct):
    typeMessage: str = ""


class _Notification(msgspec.Struct):
    typeWebhook: str = ""
    idMessage: str = ""
    timestamp: int = 0
    senderData: _Sender = msgspec.field(default_factory=_Sender)
    messageData: _Data = msgspec.field(default_factory=_Data)


class JournalEntry(msgspec.Struct, omit_defaults=True):
    type: Kind
    idMessage: str
    timestamp: int
    typeMessage: str
    chatId: str
    senderName: str = ""
    statusMessage: str = ""  # outgoing: the last status (`sent` until one arrives)


_DECODE: Final = msgspec.json.Decoder(_Notification)
_ENCODE: Final = msgspec.json.Encoder()


class Journal:
    """One instance's journals and its "lose the next n" switch."""

    __slots__ = ("entries", "lose_next", "lost")

    def __init__(self) -> None:
        self.entries: list[JournalEntry] = []
        self.lose_next = 0
        self.lost: list[str] = []

    def record(self, raw: bytes) -> bool:
        """Journal a message notification; False when it is to be lost (not delivered)."""
        try:
            note = _DECODE.decode(raw)
        except msgspec.DecodeError:
            return True
        kind = _KINDS.get(note.typeWebhook)
        if kind is None or not note.idMessage:
            return True
        self.entries.append(
            JournalEntry(
                type=kind,
                idMessage=note.idMessage,
                timestamp=note.timestamp or int(time.time()),
                typeMessage=note.messageData.typeMessage,
                chatId=note.senderData.chatId,
                senderName=note.senderData.senderName if kind == "incoming" else "",
                statusMessage="sent" if kind == "outgoing" else "",
            )
        )
        if self.lose_next > 0:
            self.lose_next -= 1
            self.lost.append(note.idMessage)
            return False
        return True

    def answer(self, route: str, minutes: int, now: float | None = None) -> bytes:
        """The JSON array `route` answers: that journal's last `minutes`, newest first."""
        kind = JOURNALS[route]
        since = (time.time() if now is None else now) - minutes * 60
        chosen = [e for e in self.entries if e.type == kind and e.timestamp >= since]
        return _ENCODE.encode(sorted(chosen, key=lambda e: e.timestamp, reverse=True))

    def reset(self) -> None:
        self.entries.clear()
        self.lost.clear()
        self.lose_next = 0


def minutes_from_query(query: bytes) -> int:
    """`minutes=N` from a query string; the default when absent; ValueError when malformed."""
    values = parse_qs(query.decode("latin-1")).get("minutes")
    if not values:
        return DEFAULT_MINUTES
    minutes = int(values[0])
    if minutes < 1:
        raise ValueError("minutes must be a positive integer")
    return minutes
