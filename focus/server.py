"""The focus's asyncio edge: TLS (and optional plain TCP) listeners around `FocusCore`.

This module owns sockets, timers and I/O; every SIP decision is made by the sans-IO core
in `focus/sip/`. Per connection it runs one reader loop: bytes -> `SipFramer` -> requests
-> (HA1 lookup) -> `FocusCore.request` -> outputs. Effects that wait on the WCS (`Admit`,
`Revoke`) run as tasks so a slow WCS never stalls a connection, and CANCEL/BYE can arrive
while a join is in flight.

Bounds: total and per-source connection caps (over them, the connection is closed at
once); a header timeout from the first byte of a message to its complete head (slowloris);
an idle timeout for connections without dialogs; the framer's 64 KiB message cap; the TLS
handshake timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from webconf.deploy.config import Config
from webconf.sip import digest, sdp
from webconf.sip.framing import FramingError, KeepAlive, NeedData, SipFramer
from webconf.sip.message import Headers, Request, make_response, serialize

from .core import (
    Admission,
    Admit,
    Conn,
    FocusCore,
    FocusSettings,
    Log,
    Output,
    Revoke,
    Send,
)
from .directory import Directory
from .wcs_client import WcsClient, WcsRefused, WcsUnavailable

log = logging.getLogger("webconf.focus")
READ_SIZE = 65536
RETRY_AFTER_SECONDS = 5
REVOKE_WORKERS = 16
"""Concurrent revocations in flight to the WCS (the rest wait in a queue)."""
REVOKE_ATTEMPTS = 40
"""About ten minutes of retries with backoff before a revocation is logged as failed."""


@dataclass(eq=False)
class _Connection:
    conn: Conn
    writer: asyncio.StreamWriter
    closing: bool = False


@dataclass
class FocusServer:
    cfg: Config
    directory: Directory
    wcs: WcsClient
    nonce_secret: bytes = field(repr=False)
    servers: list[asyncio.Server] = field(default_factory=list)
    sip_port: int = 0
    tcp_port: int = 0

    def __post_init__(self) -> None:
        f = self.cfg.focus
        self.core = FocusCore(
            FocusSettings(
                contact_host=self.cfg.public_host, contact_port=f.sip_port,
                algorithms=f.digest_algorithms, md5_only_user_agents=f.md5_only_user_agents,
                leave_grace_seconds=f.leave_grace_seconds,
                retry_after_seconds=RETRY_AFTER_SECONDS,
                answer_sdp=lambda offer, **kw: sdp.answer_offer(
                    offer, address=self.cfg.public_host, **kw),
                make_multipart=sdp.multipart_mixed, accepts=sdp.accepts),
            digest.NonceService(self.nonce_secret, lifetime=f.nonce_lifetime_seconds),
            digest.FailureThrottle(max_failures=f.auth_failures_per_user,
                                   max_source_failures=f.auth_failures_per_source))
        self._connections: dict[int, _Connection] = {}
        self._per_source: Counter[str] = Counter()
        self._next_id = 1
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer_wakeup = asyncio.Event()
        self._timer_task: asyncio.Task[None] | None = None
        self._revokes: asyncio.Queue[Revoke] = asyncio.Queue()
        """Revocations not yet confirmed by the WCS (at most one per dialog ever admitted
        and not yet revoked, so bounded by the connection caps)."""
        self._revoke_workers: list[asyncio.Task[None]] = []

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        from webconf.deploy import tls

        f = self.cfg.focus
        ssl_ctx = tls.server_context(self.cfg, "focus")
        tls_server = await asyncio.start_server(
            lambda r, w: self._serve(r, w, "TLS"), self.cfg.server.host, f.sip_port,
            ssl=ssl_ctx, ssl_handshake_timeout=f.header_timeout_seconds, backlog=1024,
            limit=READ_SIZE)
        self.servers.append(tls_server)
        self.sip_port = tls_server.sockets[0].getsockname()[1]
        if f.sip_port == 0:
            f.sip_port = self.sip_port
            self.core.settings.contact_port = self.sip_port
        if f.tcp_port:
            tcp_server = await asyncio.start_server(
                lambda r, w: self._serve(r, w, "TCP"), f.tcp_host, f.tcp_port, backlog=1024,
                limit=READ_SIZE)
            self.servers.append(tcp_server)
            self.tcp_port = tcp_server.sockets[0].getsockname()[1]
            self.core.settings.tcp_contact_port = self.tcp_port
        self._timer_task = asyncio.create_task(self._timers())
        self._revoke_workers = [asyncio.create_task(self._revoke_worker())
                                for _ in range(REVOKE_WORKERS)]

    async def stop(self) -> None:
        """Stop accepting, end every participation at the WCS, close connections."""
        for server in self.servers:
            server.close()
        for conn in list(self._connections.values()):
            conn.writer.close()
        outputs: list[Output] = []
        for conn_id in list(self._connections):
            outputs += self.core.connection_lost(conn_id, time.monotonic())
        outputs += self.core.expire(float("inf"))
        for revoke in (o for o in outputs if isinstance(o, Revoke)):
            self._revokes.put_nowait(revoke)
        try:  # every participation ends at the WCS before we exit, within reason
            async with asyncio.timeout(self.cfg.focus.wcs_timeout_seconds * 4):
                await self._revokes.join()
        except TimeoutError:
            log.error(json.dumps({"event": "revoke.unfinished",
                                  "pending": self._revokes.qsize()}))
        for worker in self._revoke_workers:
            worker.cancel()
        if self._timer_task is not None:
            self._timer_task.cancel()
        for task in list(self._tasks):
            task.cancel()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)

    # -- connections ------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     transport: str) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        host, port = str(peer[0]), int(peer[1])
        f = self.cfg.focus
        if (len(self._connections) >= f.max_connections
                or self._per_source[host] >= f.max_connections_per_source):
            log.warning(json.dumps({"event": "connection.refused", "peer": host,
                                    "reason": "connection cap"}))
            writer.close()
            return
        ssl_object = writer.get_extra_info("ssl_object")
        conn = Conn(self._next_id, host, port, transport,
                    tls_version=ssl_object.version() if ssl_object is not None else None)
        self._next_id += 1
        entry = _Connection(conn, writer)
        self._connections[conn.id] = entry
        self._per_source[host] += 1
        self.core.connection_made(conn)
        framer = SipFramer(max_message_size=f.max_message_bytes)
        partial_since: float | None = None
        try:
            while not entry.closing:
                now = time.monotonic()
                if framer.buffered:
                    partial_since = partial_since or now
                    timeout: float | None = max(0.0, partial_since + f.header_timeout_seconds - now)
                else:
                    partial_since = None
                    timeout = None if self.core.has_dialogs(conn.id) else f.idle_timeout_seconds
                try:
                    async with asyncio.timeout(timeout):  # no Task per read, unlike wait_for
                        data = await reader.read(READ_SIZE)
                except TimeoutError:
                    reason = "header timeout" if framer.buffered else "idle timeout"
                    log.info(json.dumps({"event": "connection.timeout", "peer": host,
                                         "reason": reason}))
                    break
                if not data:
                    break
                framer.feed(data)
                keep_open, progressed = await self._drain_framer(entry, framer)
                if progressed:
                    partial_since = None  # the slowloris clock runs per message
                if not keep_open:
                    break
                try:  # a peer that sends but never reads must not park us here forever
                    async with asyncio.timeout(f.header_timeout_seconds):
                        await writer.drain()
                except TimeoutError:
                    log.info(json.dumps({"event": "connection.timeout", "peer": host,
                                         "reason": "write timeout"}))
                    writer.transport.abort()  # its unread responses can never be flushed
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            self._connections.pop(conn.id, None)
            self._per_source[host] -= 1
            if self._per_source[host] <= 0:
                del self._per_source[host]
            self._run(self.core.connection_lost(conn.id, time.monotonic()))
            self._timer_wakeup.set()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _drain_framer(self, entry: _Connection, framer: SipFramer) -> tuple[bool, bool]:
        """Handle every complete event: (keep the connection open, any message completed)."""
        progressed = False
        while True:
            event = framer.next_event()
            if isinstance(event, NeedData):
                return True, progressed
            if isinstance(event, KeepAlive):
                entry.writer.write(b"\r\n")
                progressed = True
                continue
            if progressed:  # one read can hold ~100 pipelined requests: let the other
                await asyncio.sleep(0)  # connections run between them (fairness in floods)
            progressed = True
            if isinstance(event, FramingError):
                if not event.is_response and event.headers is not None and (
                        event.headers.get("Via") is not None):
                    self._run([Send(entry.conn.id, serialize(make_response(
                        event.headers or Headers(), event.status, event.reason)))])
                if event.fatal or entry.closing:
                    return False, progressed
                continue
            if not isinstance(event, Request):
                continue  # a response: the focus sends no requests, so it matches nothing
            credentials = None
            wanted = self.core.credentials_needed(event)
            # A locked-out user or source gets 429 before any Digest check: spare the
            # directory a query per guess.
            if wanted is not None and not self.core.locked_out(wanted, entry.conn.peer_host):
                credentials = await self._credentials(*wanted)
            self._run(self.core.request(entry.conn, event, credentials, time.monotonic()))
            if entry.closing:
                return False, progressed

    async def _credentials(self, realm: str, username: str) -> dict[str, str]:
        found: dict[str, str] = {}
        try:
            (realm + username).encode("utf-8")
        except UnicodeEncodeError:  # bytes that were not UTF-8: no user has such a name,
            return found  # and the database driver would raise on them
        for algorithm in ("SHA-256", "MD5"):
            value = await self.directory.lookup_ha1(realm, username, algorithm)
            if value is not None:
                found[algorithm] = value
        return found

    # -- outputs ------------------------------------------------------------------------------
    def _run(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, Send):
                entry = self._connections.get(out.conn_id)
                if entry is None or entry.writer.is_closing():
                    continue
                if len(out.data) > self.cfg.focus.max_message_bytes:
                    # e.g. an error reply echoing thousands of Vias: the peer could not
                    # take it (RFC 3261 §18.1.1 sizes); close instead of sending it.
                    log.info(json.dumps({"event": "connection.closed", "peer":
                                         entry.conn.peer_host, "reason": "oversized reply"}))
                    entry.closing = True
                    entry.writer.transport.abort()
                    continue
                entry.writer.write(out.data)
                if out.close_after:
                    entry.closing = True
            elif isinstance(out, Admit):
                self._spawn(self._admit(out))
            elif isinstance(out, Revoke):
                self._revokes.put_nowait(out)
            elif isinstance(out, Log):
                log.info(json.dumps(out.event))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _admit(self, effect: Admit) -> None:
        try:
            result = await self.wcs.admit(effect.conference_id, tenant=effect.tenant,
                                          organizer=effect.organizer, user=effect.user,
                                          role=effect.role)
        except WcsRefused as exc:
            status = exc.status if exc.status in (400, 403, 404) else 500
            reason = {404: "Conference Not Found", 403: "Forbidden"}.get(status)
            outputs = self.core.admission_failed(effect.ticket, status, reason)
        except WcsUnavailable:
            log.warning(json.dumps({"event": "wcs.unavailable", "op": "admit"}))
            outputs = self.core.admission_failed(effect.ticket, 503, "WCS Unavailable",
                                                 retry_after=RETRY_AFTER_SECONDS)
        else:
            outputs = self.core.admitted(effect.ticket, Admission(
                participant_id=result.participant, role=result.role, cookie=result.cookie,
                expires_at=result.expires_at, webconf_url=result.webconf_url))
        self._run(outputs)

    async def _revoke_worker(self) -> None:
        """Revoke at the WCS until it confirms: a leave must never leave a live cookie.

        A WCS that is slow or briefly down (a mass leave, a restart) gets retried with
        backoff; only a definite answer (204, or 404 for an unknown participant) ends it.
        """
        while True:
            effect = await self._revokes.get()
            delay = 0.2
            try:
                for attempt in range(REVOKE_ATTEMPTS):
                    try:
                        await self.wcs.revoke(effect.conference_id, effect.participant_id)
                        break
                    except WcsRefused as exc:
                        log.error(json.dumps({"event": "revoke.refused", "status": exc.status,
                                              "conference": effect.conference_id,
                                              "participant": effect.participant_id}))
                        break
                    except WcsUnavailable:
                        if attempt == REVOKE_ATTEMPTS - 1:
                            log.error(json.dumps({
                                "event": "revoke.failed", "conference": effect.conference_id,
                                "participant": effect.participant_id, "attempts": attempt + 1}))
                            break
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 10.0)
            finally:
                self._revokes.task_done()

    async def _timers(self) -> None:
        while True:
            deadline = self.core.next_deadline()
            delay = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._timer_wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timer_wakeup.wait(), delay)
            self._run(self.core.expire(time.monotonic()))

    @property
    def connection_count(self) -> int:
        return len(self._connections)
