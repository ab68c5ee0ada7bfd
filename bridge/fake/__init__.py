"""A local stand-in for GREEN-API's HTTP notification queue, for tests, the demo and the bench.

:mod:`bridge.fake.greenapi` holds the state and pure logic, :mod:`bridge.fake.control` the
``/_control`` API, :mod:`bridge.fake.app` the ASGI app, :mod:`bridge.fake.server` the embedded
uvicorn server and the CLI entry, :mod:`bridge.fake.samples` the shipped notification samples.
"""

from bridge.fake.app import create_app
from bridge.fake.greenapi import FakeGreenApi, Fault
from bridge.fake.samples import sample_notifications
from bridge.fake.server import run_fake_provider, serve, serve_socket

__all__ = [
    "FakeGreenApi",
    "Fault",
    "create_app",
    "run_fake_provider",
    "sample_notifications",
    "serve",
    "serve_socket",
]
