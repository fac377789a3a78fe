"""A TCP relay between a server under test and PostgreSQL, to lose the database on demand.

`TcpRelay(target_host, target_port)` listens on a free loopback port and forwards each
connection to the target. `cut()` aborts every relayed connection (both sides, RST) and
stops listening, so new connections are refused: what a crashed or unreachable database
looks like to its clients. `reopen()` listens again on the same port. The relay runs on an
event loop of its own in a daemon thread, so it serves a server in this process (whatever
loop the test runs) as well as a subprocess, and its calls are plain synchronous ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from sqlalchemy.engine import make_url

from webconf.deploy.local import free_port

T = TypeVar("T")


class _Pipe(asyncio.Protocol):
    """One direction's receiving end: what arrives is written to the peer transport."""

    def __init__(self, relay: TcpRelay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self._pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.relay._transports.add(transport)

    def data_received(self, data: bytes) -> None:
        peer = self.peer.transport if self.peer is not None else None
        if peer is None:
            self._pending.append(data)  # the upstream connection is not up yet
        elif not peer.is_closing():
            peer.write(data)

    def flush_to(self, transport: asyncio.Transport) -> None:
        for data in self._pending:
            transport.write(data)
        self._pending.clear()

    def eof_received(self) -> bool:
        if self.peer is not None and self.peer.transport is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self.peer.transport.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.relay._transports.discard(self.transport)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class TcpRelay:
    """A forwarder on 127.0.0.1 to `target`; see the module docstring."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.accepted = 0
        """Connections accepted so far (all of them, cut or not)."""
        self._transports: set[asyncio.Transport] = set()
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-relay",
                                        daemon=True)
        self._thread.start()
        self._call(self._listen())

    def url_for(self, url: str) -> str:
        """`url` (a database URL of the target) redirected through this relay."""
        return make_url(url).set(host="127.0.0.1", port=self.port).render_as_string(
            hide_password=False)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    async def _listen(self) -> None:
        self._server = await self._loop.create_server(self._accepted, "127.0.0.1", self.port)

    def _accepted(self) -> _Pipe:
        self.accepted += 1
        downstream = _Pipe(self)
        self._loop.create_task(self._connect_upstream(downstream))
        return downstream

    async def _connect_upstream(self, downstream: _Pipe) -> None:
        try:
            _, upstream = await self._loop.create_connection(lambda: _Pipe(self), *self.target)
        except OSError:
            if downstream.transport is not None:
                downstream.transport.abort()
            return
        assert isinstance(upstream, _Pipe) and upstream.transport is not None
        if downstream.transport is None or downstream.transport.is_closing():
            upstream.transport.abort()
            return
        upstream.peer, downstream.peer = downstream, upstream
        downstream.flush_to(upstream.transport)

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # no new connections: they are refused from now on
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()
        if server is not None:
            await server.wait_closed()  # (it waits for the aborted connections too)

    def cut(self) -> None:
        """Abort every relayed connection and refuse new ones."""
        self._call(self._cut())

    def reopen(self) -> None:
        """Accept and relay connections again, on the same port."""
        if self._server is None:
            self._call(self._listen())

    @property
    def open_connections(self) -> int:
        return len(self._transports)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> TcpRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
