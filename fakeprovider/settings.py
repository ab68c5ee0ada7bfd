"""GREEN-API instance settings (``getSettings`` / ``setSettings``) of the fake: pure logic.

A new instance has every setting off, as a real one does. ``setSettings`` takes any non-empty
subset, ignores keys it does not know, and answers 400 when a toggle is not ``"yes"``/``"no"``
or the body is not a JSON object. A non-empty ``webhookUrl`` switches the instance to push.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

from bridge.providers.greenapi import TOGGLES

__all__ = [
    "GreenSettings",
    "SettingsError",
    "apply_settings",
    "default_settings",
    "encode_settings",
]

YesNo = Literal["yes", "no"]

_Delay = Annotated[int, msgspec.Meta(ge=500, le=600_000)]


class GreenSettings(msgspec.Struct, frozen=True):
    """The getSettings body, in the documented key order."""

    wid: str
    countryInstance: str = ""
    typeAccount: str = ""
    webhookUrl: str = ""
    webhookUrlToken: str = ""
    delaySendMessagesMilliseconds: int = 5000
    markIncomingMessagesReaded: YesNo = "no"
    markIncomingMessagesReadedOnReply: YesNo = "no"
    outgoingWebhook: YesNo = "no"
    outgoingMessageWebhook: YesNo = "no"
    outgoingAPIMessageWebhook: YesNo = "no"
    incomingWebhook: YesNo = "no"
    deviceWebhook: YesNo = "no"
    statusInstanceWebhook: YesNo = "no"
    stateWebhook: YesNo = "no"
    enableMessagesHistory: YesNo = "no"
    keepOnlineStatus: YesNo = "no"
    pollMessageWebhook: YesNo = "no"
    incomingBlockWebhook: YesNo = "no"
    incomingCallWebhook: YesNo = "no"
    editedMessageWebhook: YesNo = "no"
    deletedMessageWebhook: YesNo = "no"

    @property
    def pushing(self) -> bool:
        return bool(self.webhookUrl)


_UNSET = msgspec.UNSET


class _Patch(msgspec.Struct, frozen=True):
    """A setSettings body; unknown keys are ignored like the real API does."""

    webhookUrl: str | msgspec.UnsetType = _UNSET
    webhookUrlToken: str | msgspec.UnsetType = _UNSET
    delaySendMessagesMilliseconds: _Delay | msgspec.UnsetType = _UNSET
    markIncomingMessagesReaded: YesNo | msgspec.UnsetType = _UNSET
    markIncomingMessagesReadedOnReply: YesNo | msgspec.UnsetType = _UNSET
    outgoingWebhook: YesNo | msgspec.UnsetType = _UNSET
    outgoingMessageWebhook: YesNo | msgspec.UnsetType = _UNSET
    outgoingAPIMessageWebhook: YesNo | msgspec.UnsetType = _UNSET
    incomingWebhook: YesNo | msgspec.UnsetType = _UNSET
    deviceWebhook: YesNo | msgspec.UnsetType = _UNSET
    statusInstanceWebhook: YesNo | msgspec.UnsetType = _UNSET
    stateWebhook: YesNo | msgspec.UnsetType = _UNSET
    enableMessagesHistory: YesNo | msgspec.UnsetType = _UNSET
    keepOnlineStatus: YesNo | msgspec.UnsetType = _UNSET
    pollMessageWebhook: YesNo | msgspec.UnsetType = _UNSET
    incomingBlockWebhook: YesNo | msgspec.UnsetType = _UNSET
    incomingCallWebhook: YesNo | msgspec.UnsetType = _UNSET
    editedMessageWebhook: YesNo | msgspec.UnsetType = _UNSET
    deletedMessageWebhook: YesNo | msgspec.UnsetType = _UNSET


_KEYS: Final = msgspec.json.Decoder(dict[str, msgspec.Raw])
_PATCH: Final = msgspec.json.Decoder(_Patch)
_ENCODER: Final = msgspec.json.Encoder()


class SettingsError(ValueError):
    """The setSettings body is unusable; the message is the 400 body's ``message``."""


def default_settings(id: str) -> GreenSettings:
    """A new instance's settings: everything off, no webhook (polling)."""
    return GreenSettings(wid=f"7{id[-10:]}@c.us")


def apply_settings(current: GreenSettings, body: bytes) -> GreenSettings:
    """The settings after one setSettings ``body``; SettingsError when it is unusable."""
    try:
        keys = _KEYS.decode(body)
    except msgspec.DecodeError:  # ValidationError included: not an object
        raise SettingsError("Request body must be a JSON object with settings") from None
    if not keys:
        raise SettingsError("Request body must contain at least one setting")
    try:
        patch = _PATCH.decode(body)
    except msgspec.ValidationError as exc:
        raise SettingsError(_validation_message(exc)) from None
    changes = {
        name: value
        for name, value in msgspec.structs.asdict(patch).items()
        if value is not msgspec.UNSET
    }
    return msgspec.structs.replace(current, **changes) if changes else current


def _validation_message(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    path = text.rpartition("at `$.")[2].rstrip("`")
    if "at `$." not in text:
        return f"Invalid settings: {text}"
    if path in TOGGLES:
        return f"Parameter {path} must be 'yes' or 'no'"
    if path == "delaySendMessagesMilliseconds":
        return "Parameter delaySendMessagesMilliseconds must be an integer from 500 to 600000"
    return f"Parameter {path} must be a string"


def encode_settings(settings: GreenSettings) -> bytes:
    return _ENCODER.encode(settings)
