"""The GREEN-API notification samples shipped in ``bridge/data/samples/greenapi``."""

from __future__ import annotations

import functools
import importlib.resources
from typing import Final

import msgspec

from bridge.tools.simulate import renumbered

__all__ = ["numbered_notifications", "sample_notifications"]

_SAMPLES_DIR: Final = ("data", "samples", "greenapi")


class _SampleProbe(msgspec.Struct):
    typeWebhook: str | None = None
    receiptId: int | None = None
    body: msgspec.Raw = msgspec.Raw()


_SAMPLE_PROBE: Final = msgspec.json.Decoder(_SampleProbe)


@functools.cache
def _load_samples() -> tuple[bytes, ...]:
    directory = importlib.resources.files("bridge").joinpath(*_SAMPLES_DIR)
    files = sorted(
        (entry for entry in directory.iterdir() if entry.name.endswith(".json")),
        key=lambda entry: entry.name,
    )
    samples = []
    for entry in files:
        if entry.name.startswith("deleteNotification-response"):
            continue
        data = entry.read_bytes()
        probe = _SAMPLE_PROBE.decode(data)
        if probe.typeWebhook is not None:
            samples.append(data.strip())
        elif probe.receiptId is not None and bytes(probe.body):
            samples.append(bytes(probe.body))
    return tuple(samples)


def sample_notifications() -> list[bytes]:
    """Raw bytes of every shipped GREEN-API notification sample, sorted by file name."""
    return list(_load_samples())


def numbered_notifications(count: int, prefix: str = "FAKE") -> list[bytes]:
    """`count` distinct notifications: the samples with an `idMessage`, cycled and renumbered."""
    samples = [s for s in _load_samples() if b'"idMessage"' in s]
    return [renumbered(samples[n % len(samples)], f"{prefix}{n:012d}") for n in range(count)]
