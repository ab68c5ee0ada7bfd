"""bridge: WhatsApp-gateway notifications into RabbitMQ, acknowledged only after confirm."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bridge")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

APP_ID = f"bridge/{__version__}"
