"""Test helpers shared by the bridge test suites.

``tests`` itself is not a package: this directory is imported as ``tests.support`` with the
repository root on ``sys.path`` (pytest ``pythonpath = ["."]`` or a conftest that inserts it).

- :mod:`tests.support.rabbitnode`: a private, throw-away RabbitMQ node (``RabbitNode``) and
  the session fixture ``own_rabbit``, for tests that stop, kill or restart a broker.
- :mod:`tests.support.tcpproxy`: ``TcpProxy``, an asyncio TCP proxy that can cut the network
  between a client and the broker.

Nothing is imported here so that using one helper does not pull in the other.
"""
