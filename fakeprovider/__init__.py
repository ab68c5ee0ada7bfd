"""A local stand-in for the providers, for tests, the demo and the benchmarks.

It imports the service (provider facts, config, logging, the embedded server) and the service
never imports it, apart from the ``bridge fake-provider`` command inside its handler. Nothing is
imported here: ``import fakeprovider.server`` (or the module you need) loads what it uses.

GREEN-API: :mod:`fakeprovider.greenapi` holds the notification queue's state and pure logic
(:mod:`fakeprovider.greeninstance` one instance, :mod:`fakeprovider.wire` request parsing and
faults, :mod:`fakeprovider.settings` the getSettings/setSettings logic),
:mod:`fakeprovider.greenpush` pushes an instance's queue while it has a ``webhookUrl``.
Evolution API: :mod:`fakeprovider.evolution` (instances, ``webhook/set``) and
:mod:`fakeprovider.evolution_push` (envelope, concurrent delivery with retries). Chat API:
:mod:`fakeprovider.chatapi` (batched pushes). WAHA: :mod:`fakeprovider.waha` (sessions and
their ``config.webhooks``, the sessions API) and :mod:`fakeprovider.waha_push` (envelope,
signed concurrent delivery with the webhook's retry policy). Meta's Cloud API:
:mod:`fakeprovider.meta` (apps with their WABAs, queues and batches),
:mod:`fakeprovider.meta_push` (the body, the verification GET, signed delivery with back-off)
and :mod:`fakeprovider.meta_control` (its control routes). :mod:`fakeprovider.push` is what
the pushers share, :mod:`fakeprovider.control` and :mod:`fakeprovider.pushcontrol` the
``/_control`` API, :mod:`fakeprovider.app` the ASGI app (:mod:`fakeprovider.waiting` its
request plumbing), :mod:`fakeprovider.server` the
embedded uvicorn server and the CLI entry, :mod:`fakeprovider.samples` the shipped
notification samples.
"""
