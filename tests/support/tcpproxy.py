"""A small asyncio TCP proxy for cutting the network between a client and a server.

::

    proxy = TcpProxy(target=("127.0.0.1", node.port))
    await proxy.start()                      # listens on 127.0.0.1:<proxy.port>
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
    proxy.cut()        # RST every live connection; new ones are reset right after accept
    proxy.cut(hold_new=True)  # ... or new ones are accepted but parked until restore()
    proxy.blackhole()  # partition without RST: live connections stay open, no byte moves
    proxy.restore()    # forward again (parked connections now reach the target)
    await proxy.stop()

Both directions are pumped independently; an EOF on one side is passed on as a half-close
(``write_eof``) while the other direction keeps flowing; an error on either side aborts both.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Literal

__all__ = ["TcpProxy"]

_CHUNK = 64 * 1024
_Mode = Literal["open", "reset", "hold"]


def _reset(writer: asyncio.StreamWriter | None) -> None:
    """Close abruptly with an RST (SO_LINGER 0), like a dropped connection."""
    if writer is None or writer.transport.is_closing():
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    __slots__ = ("client", "upstream")

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None

    def reset(self) -> None:
        _reset(self.client)
        _reset(self.upstream)

    def close(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.close()


class TcpProxy:
    def __init__(
        self,
        listen_port: int = 0,
        *,
        target: tuple[str, int],
        listen_host: str = "127.0.0.1",
    ) -> None:
        self.target = target
        self.listen_host = listen_host
        self._listen_port = listen_port
        self._server: asyncio.Server | None = None
        self._mode: _Mode = "open"
        self._forwarding = asyncio.Event()
        self._forwarding.set()
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: connections accepted so far (including reset / parked ones)
        self.accepted = 0

    # -- control ------------------------------------------------------------------------------

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(
            self._handle, self.listen_host, self._listen_port, reuse_address=True
        )
        self._listen_port = self.port
        return self

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self._listen_port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        """Client connections currently open through the proxy."""
        return len(self._links)

    @property
    def is_cut(self) -> bool:
        return self._mode != "open"

    def cut(self, *, hold_new: bool = False) -> None:
        """Close every live connection with an RST; then reset new connections right after
        accepting them, or (``hold_new=True``) accept and park them until :meth:`restore`."""
        self._mode = "hold" if hold_new else "reset"
        self._forwarding.clear()
        for link in tuple(self._links):
            link.reset()

    def blackhole(self) -> None:
        """Network partition without any RST/FIN: live connections stay open but no data is
        forwarded (it is held, and delivered on :meth:`restore` if both ends are still there);
        new connections are accepted and parked."""
        self._mode = "hold"
        self._forwarding.clear()

    def restore(self) -> None:
        self._mode = "open"
        self._forwarding.set()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in tuple(self._links):
            link.reset()
        for task in tuple(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- data path ----------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        link = _Link(writer)
        self._links.add(link)
        try:
            await self._serve(link, reader)
        except asyncio.CancelledError:
            link.reset()
            raise
        except Exception:
            link.reset()
        finally:
            link.close()
            self._links.discard(link)
            self._tasks.discard(task)

    async def _serve(self, link: _Link, client_reader: asyncio.StreamReader) -> None:
        while self._mode != "open":
            if self._mode == "reset":
                link.reset()
                return
            await self._forwarding.wait()  # parked until restore()
        if link.client.transport.is_closing():
            return  # cut (or client gone) while parked
        try:
            up_reader, link.upstream = await asyncio.open_connection(*self.target)
        except OSError:
            link.reset()  # target down: the client sees its connection dropped
            return
        if link.client.transport.is_closing() or self._mode == "reset":
            link.reset()  # cut() ran while we were connecting
            return
        pumps = (
            asyncio.create_task(self._pump(client_reader, link.upstream)),
            asyncio.create_task(self._pump(up_reader, link.client)),
        )
        try:
            for finished in asyncio.as_completed(pumps):
                if not await finished:
                    link.reset()  # one side failed: drop both
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> bool:
        """Copy src to dst until EOF (then half-close dst). False if either side failed."""
        try:
            while data := await src.read(_CHUNK):
                if not self._forwarding.is_set():
                    await self._forwarding.wait()
                if dst.transport.is_closing():
                    return False
                dst.write(data)
                await dst.drain()
            if dst.transport.is_closing():
                return False
            if dst.can_write_eof():
                dst.write_eof()
        except (ConnectionError, OSError):
            return False
        return True
