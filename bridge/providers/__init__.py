"""Every provider the bridge speaks: one adapter module each, listed once (pure).

Adding a provider is a module implementing `bridge.providers.base.Adapter` and one line in
`REGISTRY`; the ingest layer, the pipeline and the envelope have no provider-specific branch.
"""

from __future__ import annotations

from bridge.providers import chatapi, evolution, greenapi, meta, waha
from bridge.providers.base import DECODE_ERRORS, Adapter, Item, Parsed

REGISTRY: dict[str, Adapter] = {
    adapter.name: adapter
    for adapter in (
        greenapi.ADAPTER,
        evolution.ADAPTER,
        chatapi.ADAPTER,
        waha.ADAPTER,
        meta.ADAPTER,
    )
}

#: Events that get their own metric label: every documented one of every provider.
KNOWN_EVENTS: frozenset[str] = frozenset().union(*(a.known_events for a in REGISTRY.values()))

__all__ = ["DECODE_ERRORS", "KNOWN_EVENTS", "REGISTRY", "Adapter", "Item", "Parsed"]
