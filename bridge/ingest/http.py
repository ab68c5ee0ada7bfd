"""The HTTP client the poller talks to the provider through.

`ProviderHttp` is the seam: the service uses `AiohttpProviderHttp` (one aiohttp connection pool
for every source); tests hand the poller `HttpxProviderHttp` around an `httpx.AsyncClient` with
`httpx.MockTransport`, or point either at the fake provider.

Why aiohttp here: at 200 polling instances, httpx's own pool scans every connection on each
request, and its request/response layers cost ~400 µs of CPU per request against ~100 µs for
plain aiohttp in the same workload (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

import aiohttp
import httpx
from yarl import URL

#: A provider answer larger than this is refused (a notification is a few KB).
MAX_ANSWER_BYTES = 64 * 1024 * 1024


class AnswerTooLarge(Exception):
    """The provider's answer exceeded MAX_ANSWER_BYTES."""


#: What a provider call can raise besides an HTTP answer.
HTTP_ERRORS = (httpx.HTTPError, aiohttp.ClientError, OSError, TimeoutError, AnswerTooLarge)


class ProviderHttp(Protocol):
    async def request(
        self,
        method: str,
        url: str,
        *,
        read_timeout: float,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """Send a request without a body (`headers` added to the client's); return
        (status, body)."""
        ...

    async def aclose(self) -> None: ...


class AiohttpProviderHttp:
    """One aiohttp session and connection pool shared by every polling source."""

    def __init__(self, *, max_connections: int, connect_timeout: float = 10.0) -> None:
        self._max_connections = max_connections
        self._connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            keepalive_timeout=30,
            ttl_dns_cache=300,
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            headers={"User-Agent": "bridge", "Accept": "application/json"},
            auto_decompress=False,
            trust_env=False,
        )
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        read_timeout: float,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:
        session = self._session or self._open()
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._connect_timeout, sock_read=read_timeout
        )
        async with session.request(
            method,
            URL(url, encoded=True),
            timeout=timeout,
            allow_redirects=False,
            headers=headers,
        ) as response:
            length = response.content_length
            if length is not None:
                if length > MAX_ANSWER_BYTES:
                    raise AnswerTooLarge(f"answer of {length} bytes")
                return response.status, await response.read()
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_any():
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    raise AnswerTooLarge("answer over the size limit")
                chunks.append(chunk)
            return response.status, b"".join(chunks)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            await asyncio.sleep(0)


class HttpxProviderHttp:
    """The same seam over an `httpx.AsyncClient` (tests: `httpx.MockTransport`)."""

    def __init__(self, client: httpx.AsyncClient, *, connect_timeout: float = 10.0) -> None:
        self._client = client
        self._connect_timeout = connect_timeout

    async def request(
        self,
        method: str,
        url: str,
        *,
        read_timeout: float,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:
        timeout = httpx.Timeout(self._connect_timeout, read=read_timeout, pool=None)
        response = await self._client.request(method, url, timeout=timeout, headers=headers)
        return response.status_code, response.content

    async def aclose(self) -> None:
        await self._client.aclose()
