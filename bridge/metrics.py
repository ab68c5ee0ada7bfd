"""Prometheus metrics. Labels carry provider, instance, event and outcome — never a token."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import accumulate

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

REGISTRY = CollectorRegistry(auto_describe=True)

#: how prometheus_client writes a bucket bound ("0.5", "1.0", "+Inf"); untyped there
_bound_label: Callable[[float], str] = floatToGoString

RECEIVED = Counter(
    "bridge_received",
    "Notifications taken from a provider (polled or pushed)",
    ["provider", "instance", "ingest"],
    registry=REGISTRY,
)
PUBLISHED = Counter(
    "bridge_published",
    "Publish attempts by outcome (confirmed, duplicate, nacked, returned, timeout, unavailable)",
    ["provider", "event", "outcome"],
    registry=REGISTRY,
)
QUARANTINED = Counter(
    "bridge_quarantined",
    "Bodies published raw to the invalid exchange",
    ["provider", "instance"],
    registry=REGISTRY,
)
ACKNOWLEDGED = Counter(
    "bridge_acknowledged",
    "Notifications acknowledged to the provider (deleteNotification or HTTP 200), by outcome",
    ["provider", "instance", "outcome"],
    registry=REGISTRY,
)
POLL_ERRORS = Counter(
    "bridge_poll_errors",
    "Failed provider calls while polling, by error class",
    ["provider", "instance", "method", "error_class"],
    registry=REGISTRY,
)


class LoopHistogram(Collector):
    """A histogram only the event loop's thread observes and scrapes (`/metrics` is served on
    that loop): plain counts without prometheus_client's per-call locks, read at scrape time."""

    def __init__(
        self,
        name: str,
        documentation: str,
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = (*sorted(float(b) for b in buckets), float("inf"))
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        registry.register(self)

    def observe(self, amount: float) -> None:
        self._sum += amount
        self._counts[bisect_left(self._bounds, amount)] += 1

    def collect(self) -> Iterator[Metric]:
        cumulative: Iterable[int] = accumulate(self._counts)
        yield HistogramMetricFamily(
            self._name,
            self._documentation,
            buckets=[(_bound_label(b), n) for b, n in zip(self._bounds, cumulative, strict=True)],
            sum_value=self._sum,
        )

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._name, self._documentation)


CONFIRM_LATENCY = LoopHistogram(
    "bridge_confirm_latency_seconds",
    "Time from publish to broker confirm",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
#: read at scrape time from the publisher (`set_function`): nothing per publish
IN_FLIGHT = Gauge(
    "bridge_publish_in_flight", "Publishes awaiting a broker confirm", registry=REGISTRY
)
BROKER_UP = Gauge(
    "bridge_broker_ready", "1 while connected to RabbitMQ with topology declared", registry=REGISTRY
)
SOURCE_UP = Gauge(
    "bridge_source_running",
    "1 while a polling source runs, 0 once it stopped on a permanent error",
    ["provider", "instance"],
    registry=REGISTRY,
)
LEASE_HELD = Gauge(
    "bridge_lease_held",
    "1 while this process holds the instance's polling lease",
    ["provider", "instance"],
    registry=REGISTRY,
)
LEASE_MEMBERS = Gauge(
    "bridge_lease_members",
    "Bridge processes this one hears on the members exchange, itself included",
    registry=REGISTRY,
)
LEASE_CHANGES = Counter(
    "bridge_lease_changes",
    "Polling leases acquired, released (handed over), lost (connection gone), suspended, "
    "locked (held by something that is not a live bridge)",
    ["change"],
    registry=REGISTRY,
)
WEBHOOK_RESPONSES = Counter(
    "bridge_webhook_responses",
    "Webhook requests answered, by provider and HTTP status",
    ["provider", "status"],
    registry=REGISTRY,
)
SILENT_AFTER = Gauge(
    "bridge_instance_silent_after_seconds",
    "monitor.silent_after: BridgeInstanceSilent fires after this long without a notification",
    ["provider", "instance"],
    registry=REGISTRY,
)
INSTANCE_STATE = Gauge(
    "bridge_instance_state",
    "1 for the instance's state as its provider last answered (provider's word), 0 for the "
    "others seen",
    ["provider", "instance", "state"],
    registry=REGISTRY,
)
INSTANCE_AUTHORIZED = Gauge(
    "bridge_instance_authorized",
    "1 while the last state probe said authorized (GREEN-API authorized, Evolution open, "
    "WAHA WORKING), 0 for any other state",
    ["provider", "instance"],
    registry=REGISTRY,
)
STATE_CHECKED = Gauge(
    "bridge_instance_state_checked_timestamp_seconds",
    "When the instance's state was last read from its provider",
    ["provider", "instance"],
    registry=REGISTRY,
)
STATE_PROBE_ERRORS = Counter(
    "bridge_instance_state_probe_errors",
    "Failed instance state probes, by error class",
    ["provider", "instance", "error_class"],
    registry=REGISTRY,
)


class Children:
    """Label children of one metric, looked up once: `.labels()` costs more than `.inc()`."""

    def __init__(self, metric: Counter) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Counter] = {}

    def __call__(self, *labels: str) -> Counter:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._metric.labels(*labels)
        return child


published = Children(PUBLISHED)
received = Children(RECEIVED)
acknowledged = Children(ACKNOWLEDGED)
webhook_responses = Children(WEBHOOK_RESPONSES)


class Stamps:
    """A wall-clock time per (provider, instance), exported as a gauge when scraped.

    `stamp()` is on the hot path: it stores a float in a dict, about a tenth of what a
    `Gauge.set()` costs (which takes a lock).
    """

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self.times: dict[tuple[str, str], float] = {}
        registry.register(self)

    def stamp(self, provider: str, instance: str) -> None:
        self.times[provider, instance] = time.time()

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self._name, self._documentation, labels=["provider", "instance"])

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        for (provider, instance), at in list(self.times.items()):
            family.add_metric([provider, instance], at)
        yield family


LAST_NOTIFICATION = Stamps(
    "bridge_last_notification_timestamp_seconds",
    "When the instance's last notification was confirmed by RabbitMQ (polled or pushed), "
    "or when this process began watching it",
    REGISTRY,
)
