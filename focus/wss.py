"""SIP over WebSocket (RFC 7118) for browsers: the focus's third listener, on `focus.wss_port`.

A TLS listener (the focus's certificate) serving aiohttp's WebSocket upgrade on any path.
Each WebSocket message (text or binary, RFC 7118 §5.1) is one SIP message, fed to the same
sans-IO core as the TLS listener's bytes (`FocusServer.feed`); the core frames it with
`webconf.sip.ws_framing` because the connection's transport is `WSS`, and answers on the
same connection, one response per WebSocket text message. Digest, policy and the join body
are the core's, unchanged (docs/protocol.md §10).

The upgrade is refused (the connection then closes):
- 403 when `Origin` is present and not one of the deployment's web origins (the WCS's
  `public_url`, `wcs.allowed_origins`, `focus.wss_allowed_origins`); a client without
  `Origin` is no browser page, so no other site's script (the SIP Digest still applies);
- 400 without the `sip` subprotocol among `Sec-WebSocket-Protocol` (RFC 7118 §4), or
  when it is not a valid WebSocket upgrade.

Bounds: the focus's connection caps count a connection from its accept (`reserve`), and at
most `focus.max_ws_handshakes` wait for their upgrade; the TLS handshake and then the
upgrade request's head must each arrive within `focus.header_timeout_seconds`; a message
above `focus.max_message_bytes` closes the connection (1009, aiohttp's check); without
dialogs a connection idle for `focus.idle_timeout_seconds` is closed; replies wait in a
bounded queue and a peer that does not read them within the header timeout is cut. No
permessage-deflate (a compressed message could expand past the caps' intent).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from typing import Any, Protocol, cast

from aiohttp import WSMsgType, web
from aiohttp.web_protocol import RequestHandler

from webconf.deploy.config import Config
from webconf.origins import allowed_origins, parse_origin

from .events import Conn

log = logging.getLogger("webconf.focus")
SUBPROTOCOL = "sip"
MAX_QUEUED_REPLIES = 256
"""Replies waiting to be written to one WebSocket; a peer that lets more pile up is cut."""


class Sink(Protocol):
    """Where the server writes a connection's replies (a stream writer, or a WebSocket)."""

    def write(self, data: bytes) -> None: ...
    def is_closing(self) -> bool: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class Edge(Protocol):
    """What this listener needs of `FocusServer` (focus/server.py)."""

    def reserve(self, host: str) -> bool: ...
    def unreserve(self, host: str) -> None: ...
    def attach(self, host: str, port: int, tls_version: str | None, sink: Sink) -> Conn: ...
    def detach(self, conn: Conn) -> None: ...
    async def feed(self, conn: Conn, message: bytes) -> bool: ...
    def has_dialogs(self, conn: Conn) -> bool: ...


class _WsSink:
    """A WebSocket's replies: queued (bounded), written in order by one task."""

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport | None,
                 write_timeout: float) -> None:
        self._ws = ws
        self._transport = transport
        self._write_timeout = write_timeout
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(MAX_QUEUED_REPLIES)
        self._closing = False
        self._task = asyncio.create_task(self._writer())

    def write(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self._queue.put_nowait(data)
        except asyncio.QueueFull:  # the peer reads nothing: cut it
            self.abort()

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Flush what is queued, then close the WebSocket."""
        if not self._closing:
            self._closing = True
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)

    def abort(self) -> None:
        self._closing = True
        self._task.cancel()
        if self._transport is not None:
            self._transport.abort()

    async def _writer(self) -> None:
        try:
            while (data := await self._queue.get()) is not None:
                async with asyncio.timeout(self._write_timeout):
                    try:
                        await self._ws.send_str(data.decode("utf-8"))
                    except UnicodeDecodeError:
                        await self._ws.send_bytes(data)
            async with asyncio.timeout(self._write_timeout):
                await self._ws.close()
        except TimeoutError:
            log.info(json.dumps({"event": "connection.timeout", "transport": "WSS",
                                 "reason": "write timeout"}))
            self.abort()
        except (ConnectionError, RuntimeError):
            pass  # the peer went away; the reader loop ends the connection

    async def finish(self) -> None:
        self.close()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(self._task), self._write_timeout)
        if not self._task.done():
            self.abort()


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the caps and the upgrade-head timer."""

    def __init__(self, listener: WssListener) -> None:
        self._listener = listener
        self._handler: RequestHandler | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.peer = ("?", 0)
        self.transport: asyncio.Transport | None = None
        self.attached = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername") or ("?", 0)
        self.peer = (str(peer[0]), int(peer[1]))
        self.transport = cast(asyncio.Transport, transport)
        if not self._listener.edge.reserve(self.peer[0]):
            self.transport.abort()
            return
        self._handler = self._listener.server()
        self._listener.open[self._handler] = self
        self._timer = asyncio.get_running_loop().call_later(
            self._listener.cfg.focus.header_timeout_seconds, self._head_timeout)
        self._handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.upgrade_started()
        handler, self._handler = self._handler, None
        if handler is None:
            return
        self._listener.open.pop(handler, None)
        if not self.attached:
            self._listener.edge.unreserve(self.peer[0])
        handler.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._handler is not None:
            self._handler.data_received(data)

    def eof_received(self) -> None:
        if self._handler is not None:
            self._handler.eof_received()

    def pause_writing(self) -> None:
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._handler is not None:
            self._handler.resume_writing()

    def upgrade_started(self) -> None:
        """The upgrade request's head arrived: its timer stops."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timeout(self) -> None:
        self._timer = None
        if self._handler is not None and self.transport is not None:
            log.info(json.dumps({"event": "connection.timeout", "peer": self.peer[0],
                                 "transport": "WSS", "reason": "header timeout"}))
            self.transport.abort()


class WssListener:
    """The focus's SIP-over-WebSocket listener (see the module docstring)."""

    def __init__(self, cfg: Config, edge: Edge, ssl_context: ssl.SSLContext) -> None:
        self.cfg = cfg
        self.edge = edge
        self.ssl_context = ssl_context
        self.server = web.Server(self._handle, access_log=None)
        self.open: dict[RequestHandler, _Guarded] = {}
        self.origins = allowed_origins(cfg) | {
            o for o in map(parse_origin, cfg.focus.wss_allowed_origins) if o is not None}
        self._server: asyncio.Server | None = None
        self._sockets: set[web.WebSocketResponse] = set()

    async def bind(self) -> int:
        """Listen (not serving yet); the bound port."""
        f = self.cfg.focus
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Guarded(self), self.cfg.server.host, f.wss_port, ssl=self.ssl_context,
            ssl_handshake_timeout=f.header_timeout_seconds, backlog=1024, start_serving=False)
        return int(self._server.sockets[0].getsockname()[1])

    async def start_serving(self) -> None:
        assert self._server is not None
        await self._server.start_serving()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for guarded in list(self.open.values()):
            if not guarded.attached and guarded.transport is not None:
                guarded.transport.abort()

    async def wait_closed(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.shutdown(1), 2)

    # -- one connection -------------------------------------------------------------------
    def _refuse(self, guarded: _Guarded | None, status: int, reason: str) -> web.Response:
        peer = guarded.peer[0] if guarded is not None else "?"
        log.info(json.dumps({"event": "upgrade.refused", "peer": peer, "transport": "WSS",
                             "status": status, "reason": reason}))
        resp = web.json_response({"error": {"code": "forbidden" if status == 403 else
                                            "bad_request", "message": reason}}, status=status)
        resp.force_close()
        return resp

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        guarded = self.open.get(cast(Any, request.protocol))
        if guarded is not None:
            guarded.upgrade_started()
        if guarded is None or guarded.transport is None:
            return self._refuse(guarded, 400, "connection not tracked")
        origin_header = request.headers.get("Origin")
        if origin_header is not None and parse_origin(origin_header) not in self.origins:
            return self._refuse(guarded, 403, "origin not allowed")
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "")
                   .split(",")]
        if SUBPROTOCOL not in offered:
            return self._refuse(guarded, 400, "the 'sip' WebSocket subprotocol is required")
        f = self.cfg.focus
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,), max_msg_size=f.max_message_bytes,
                                   compress=False, autoping=True, heartbeat=None,
                                   timeout=f.header_timeout_seconds)
        if not ws.can_prepare(request).ok:
            return self._refuse(guarded, 400, "not a WebSocket upgrade")
        try:
            await ws.prepare(request)
        except web.HTTPException as exc:
            return self._refuse(guarded, 400, exc.reason)
        ssl_object = guarded.transport.get_extra_info("ssl_object")
        sink = _WsSink(ws, guarded.transport, f.header_timeout_seconds)
        conn = self.edge.attach(guarded.peer[0], guarded.peer[1],
                                ssl_object.version() if ssl_object is not None else None, sink)
        guarded.attached = True
        self._sockets.add(ws)
        try:
            await self._read(ws, conn, sink)
        finally:
            self._sockets.discard(ws)
            self.edge.detach(conn)
            await sink.finish()
        return ws

    async def _read(self, ws: web.WebSocketResponse, conn: Conn, sink: _WsSink) -> None:
        f = self.cfg.focus
        while not sink.is_closing():
            idle = None if self.edge.has_dialogs(conn) else f.idle_timeout_seconds
            try:
                msg = await ws.receive(timeout=idle)
            except TimeoutError:
                log.info(json.dumps({"event": "connection.timeout", "peer": conn.peer_host,
                                     "transport": "WSS", "reason": "idle timeout"}))
                return
            if msg.type is WSMsgType.TEXT:
                data = cast(str, msg.data).encode("utf-8", "surrogateescape")
            elif msg.type is WSMsgType.BINARY:
                data = cast(bytes, msg.data)
            else:  # CLOSE, CLOSING, CLOSED, ERROR (a message over the cap: 1009 sent)
                if msg.type is WSMsgType.ERROR:
                    log.info(json.dumps({"event": "connection.closed", "peer": conn.peer_host,
                                         "transport": "WSS", "reason": str(msg.data)[:200]}))
                return
            if not await self.edge.feed(conn, data):
                return
            await asyncio.sleep(0)  # other connections run between a flood's messages


__all__ = ["SUBPROTOCOL", "Edge", "Sink", "WssListener"]
