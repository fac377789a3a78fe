"""The WCS's TLS listeners, with the connection limits aiohttp's server lacks.

aiohttp's server bounds neither the TLS handshake nor the time a client takes to send a
request's head, and it has no connection cap (docs/protocol.md §4). `GuardedSite` is a
`TCPSite` that adds them around aiohttp's own protocol, without touching its internals:

- handshake: `wcs.tls_handshake_timeout_seconds`, asyncio's `ssl_handshake_timeout`;
- cap: at most `wcs.max_connections` established connections per listener; one more is
  closed as soon as its handshake completes, before aiohttp sees it;
- head: `wcs.header_timeout_seconds` from the handshake to the end of the first request's
  head, and from the first byte after a response to the end of the next head. asyncio
  hands every byte to `_Connection`, which wraps aiohttp's `RequestHandler` and arms the
  timer; `ConnectionGuard.middleware`, which runs once aiohttp has parsed a head and
  dispatches the request, disarms it until the response is done. Drip-feeding a head
  therefore never extends it (the focus's rule, docs/protocol.md §2);
- idle: aiohttp's own `keepalive_timeout` (`wcs.keepalive_timeout_seconds`) closes a
  connection that waits for its next request. A connection whose handler runs (an upload,
  a data channel) is never idle, so data channels are not cut.

With `reuse_port` (`wcs.reuse_port`, set by `webconf serve --workers N`) the listening
socket takes SO_REUSEPORT: the N worker processes each bind the same port and the kernel
spreads new connections over them; one that dies drops out of the group, so the others
take every new connection while the supervisor restarts it. The cap is per process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("webconf.wcs.listener")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


class ConnectionGuard:
    """One listener's connection cap and head timer, with the connections it tracks."""

    def __init__(self, listener: str, *, max_connections: int,
                 header_timeout_seconds: float) -> None:
        self.listener = listener
        self.max_connections = max_connections
        self.header_timeout_seconds = header_timeout_seconds
        self.open: dict[RequestHandler, _Connection] = {}
        """aiohttp's handler of each established connection -> our wrapper of it."""
        self.refused = 0
        """Connections closed because the listener was at its cap."""

    def middleware(self) -> Middleware:
        """The app middleware that tells the connection its request's head has arrived."""

        @web.middleware
        async def head_received(request: web.Request, handler: Handler) -> web.StreamResponse:
            conn = self.open.get(request.protocol)
            if conn is not None:
                conn.request_started()
            try:
                return await handler(request)
            finally:
                if conn is not None:
                    conn.request_done()

        return head_received


class _Connection(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the cap and the head timer."""

    def __init__(self, guard: ConnectionGuard, server: web.Server) -> None:
        self._guard = guard
        self._server = server
        self._handler: RequestHandler | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._awaiting_head = True
        self._peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if peer else "?"
        guard = self._guard
        if len(guard.open) >= guard.max_connections:
            guard.refused += 1
            log.warning(json.dumps({"event": "connection.refused", "listener": guard.listener,
                                    "peer": self._peer, "reason": "connection cap"}))
            # At once, without waiting on the peer for a TLS close_notify exchange.
            cast(asyncio.Transport, transport).abort()
            return
        self._handler = self._server()
        guard.open[self._handler] = self
        self._arm()
        self._handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        handler, self._handler = self._handler, None
        if handler is not None:
            self._guard.open.pop(handler, None)
            handler.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._handler is None:
            return
        if self._awaiting_head and self._timer is None:
            self._arm()  # the first byte of the next request
        self._handler.data_received(data)

    def eof_received(self) -> None:
        if self._handler is not None:  # it returns None: the transport then closes
            self._handler.eof_received()

    def pause_writing(self) -> None:
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._handler is not None:
            self._handler.resume_writing()

    # -- the head timer -----------------------------------------------------------------
    def request_started(self) -> None:
        self._awaiting_head = False
        self._disarm()

    def request_done(self) -> None:
        self._awaiting_head = True  # armed by the next byte; aiohttp's keep-alive till then

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._guard.header_timeout_seconds, self._head_timeout)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timeout(self) -> None:
        self._timer = None
        if self._handler is None:
            return
        log.info(json.dumps({"event": "connection.timeout", "listener": self._guard.listener,
                             "peer": self._peer, "reason": "header timeout"}))
        self._handler.force_close()


class GuardedSite(web.BaseSite):
    """A TLS `TCPSite` whose connections pass through a `ConnectionGuard`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *,
                 ssl_context: ssl.SSLContext, guard: ConnectionGuard,
                 handshake_timeout_seconds: float, backlog: int = 1024,
                 reuse_port: bool = False) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._guard = guard
        self._handshake_timeout = handshake_timeout_seconds
        self._reuse_port = reuse_port

    @property
    def name(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"https://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert isinstance(server, web.Server)
        guard = self._guard
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(guard, server), self._host, self._port,
            ssl=self._ssl_context, backlog=self._backlog,
            ssl_handshake_timeout=self._handshake_timeout, reuse_port=self._reuse_port or None)
