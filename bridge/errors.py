"""The bridge's error tree, grouped by what the caller does next.

    BridgeError
    ├── ConfigError                 exit at start, naming the key
    │   ├── TopologyError           the broker holds a conflicting object (PRECONDITION_FAILED)
    │   └── QueueNotFound           (bridge.consumer) the consumer's queue was never declared
    ├── PayloadError                quarantine the raw body, then acknowledge it
    ├── ProviderError               a provider call failed
    │   ├── TransientProviderError  back off with jitter and retry (429, 5xx, network)
    │   ├── SuspendedProviderError  long back-off, alert (466 quota, not authorized, starting)
    │   └── PermanentProviderError  stop the source loudly (401, 403, instance deleted)
    └── PublishError                never acknowledge the provider
        ├── BrokerUnavailable       no connection or channel right now
        ├── PublishNacked           basic.nack from the broker
        ├── PublishReturned         basic.return: nothing could route it
        └── PublishTimeout          no confirm within the deadline

Third-party exceptions are mapped to this tree in one place each: aio-pika's in
`bridge.amqp.publisher`, httpx's in `bridge.ingest.poller`.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """The configuration cannot work; the process exits non-zero."""


class TopologyError(ConfigError):
    """The broker already holds an object declared differently."""


class PayloadError(BridgeError):
    """A notification body does not decode or lacks its event type."""


class ProviderError(BridgeError):
    """A provider call failed; `error_class` is a short stable label for logs and metrics."""

    error_class = "provider"

    def __init__(self, message: str, *, error_class: str | None = None) -> None:
        super().__init__(message)
        if error_class is not None:
            self.error_class = error_class


class TransientProviderError(ProviderError):
    """Retry soon with exponential back-off."""


class SuspendedProviderError(ProviderError):
    """Retry after a long pause; a person probably has to act."""


class PermanentProviderError(ProviderError):
    """Retrying cannot help; the source stops."""


class PublishError(BridgeError):
    """RabbitMQ did not confirm the message: do not acknowledge the provider."""


class BrokerUnavailable(PublishError):
    """No usable connection or channel to RabbitMQ."""


class PublishNacked(PublishError):
    """The broker answered basic.nack."""


class PublishReturned(PublishError):
    """The broker returned the message as unroutable."""


class PublishTimeout(PublishError):
    """No confirm arrived within the configured deadline."""
