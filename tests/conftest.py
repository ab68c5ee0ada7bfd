"""Shared fixtures: sample payloads, the shared RabbitMQ, retry delays off."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge import retry

# the one copy of the samples: `bridge simulate` and the fake provider ship them too
SAMPLES = Path(__file__).parents[1] / "bridge" / "data" / "samples"
#: The secrets the default bridge.toml names (scripts/run-demo.sh sets the same defaults).
DEMO_ENV = {
    "GREENAPI_TOKEN_1101000001": "demo-token-1101000001",
    "GREENAPI_TOKEN_1101000002": "demo-token-1101000002",
    "GREENAPI_WEBHOOK_TOKEN": "demo-greenapi-webhook-token",
    "EVOLUTION_WEBHOOK_TOKEN": "demo-evolution-webhook-token",
    "CHATAPI_WEBHOOK_TOKEN": "demo-chatapi-webhook-token",
    "WAHA_HMAC_KEY": "demo-waha-hmac-key",
    "META_APP_SECRET": "demo-meta-app-secret",
    "META_VERIFY_TOKEN": "demo-meta-verify-token",
}
AMQP_URL = os.environ.get("BRIDGE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def greenapi_samples() -> list[tuple[str, bytes]]:
    """(file name, exact notification bytes) for every GREEN-API notification sample."""
    out: list[tuple[str, bytes]] = []
    for path in sorted((SAMPLES / "greenapi").glob("*.json")):
        data = path.read_bytes()
        obj = json.loads(data)
        if "typeWebhook" in obj:
            out.append((path.name, data.rstrip()))
    return out


@pytest.fixture(autouse=True)
def _fast_retries() -> Iterator[None]:
    retry.set_testing(True)
    yield
    retry.set_testing(False)
