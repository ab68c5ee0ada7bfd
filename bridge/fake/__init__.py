"""A local stand-in for the providers, for tests, the demo and the bench.

GREEN-API: :mod:`bridge.fake.greenapi` holds the notification queue's state and pure logic
(:mod:`bridge.fake.wire` its request parsing and faults, :mod:`bridge.fake.settings` the
getSettings/setSettings logic), :mod:`bridge.fake.greenpush` pushes an instance's queue while it
has a ``webhookUrl``. Evolution API: :mod:`bridge.fake.evolution` (instances, ``webhook/set``)
and :mod:`bridge.fake.evolution_push` (envelope, concurrent delivery with retries). Chat API:
:mod:`bridge.fake.chatapi` (batched pushes). :mod:`bridge.fake.push` is what the pushers share,
:mod:`bridge.fake.control` and :mod:`bridge.fake.pushcontrol` the ``/_control`` API,
:mod:`bridge.fake.app` the ASGI app, :mod:`bridge.fake.server` the embedded uvicorn server and
the CLI entry, :mod:`bridge.fake.samples` the shipped notification samples.
"""

from bridge.fake.app import create_app
from bridge.fake.chatapi import ChatApiConfig, FakeChatApi
from bridge.fake.evolution import FakeEvolution
from bridge.fake.evolution_push import RetryPolicy
from bridge.fake.greenapi import FakeGreenApi, Fault
from bridge.fake.push import PushHub, PushStats
from bridge.fake.samples import sample_notifications
from bridge.fake.server import run_fake_provider, serve, serve_socket

__all__ = [
    "ChatApiConfig",
    "FakeChatApi",
    "FakeEvolution",
    "FakeGreenApi",
    "Fault",
    "PushHub",
    "PushStats",
    "RetryPolicy",
    "create_app",
    "run_fake_provider",
    "sample_notifications",
    "serve",
    "serve_socket",
]
