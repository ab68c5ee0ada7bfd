"""docs/configuration.md documents every configuration key, with its environment name."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from bridge.config import (
    AmqpConfig,
    ArchiveConfig,
    HttpConfig,
    LeaseConfig,
    LogConfig,
    MonitorConfig,
    PollConfig,
    Source,
)

DOC = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
SECTIONS = {
    "amqp": AmqpConfig,
    "http": HttpConfig,
    "poll": PollConfig,
    "lease": LeaseConfig,
    "monitor": MonitorConfig,
    "log": LogConfig,
    "archive": ArchiveConfig,
}


@pytest.mark.parametrize(
    ("section", "key"),
    [(s, f.name) for s, t in SECTIONS.items() for f in msgspec.structs.fields(t)],
)
def test_every_section_key_is_documented_with_its_env_name(section: str, key: str) -> None:
    assert f"| `{key}` |" in DOC
    assert f"`BRIDGE_{section.upper()}__{key.upper()}`" in DOC


@pytest.mark.parametrize("key", [f.name for f in msgspec.structs.fields(Source)])
def test_every_source_key_is_documented(key: str) -> None:
    assert f"`{key}`" in DOC
