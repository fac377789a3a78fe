"""The focus's asyncio edge: TLS (and optional plain TCP) listeners around `FocusCore`.

The SIP-over-WebSocket listener (focus/wss.py, docs/protocol.md §10.1) feeds the same core
through `reserve`/`attach`/`feed`/`detach`: its connections count in the same caps, and
their replies go out through the same `_run` (each connection's `Sink`).

This module owns sockets, timers, clocks and I/O; every SIP decision (framing errors and
the WCS-failure -> SIP-status mapping included) is made by the sans-IO `FocusCore` in
`focus/core.py`. Per connection it runs one reader loop: bytes -> `core.receive_data(...,
time.time())` -> outputs. A `LookupCredentials` effect is awaited in that loop before the
next read (the core pauses the connection's input meanwhile, and so does TCP), and its
answer fed back with `credentials_found`. Effects that wait on the WCS (`Admit`, `Revoke`)
run as tasks so a slow WCS never stalls a connection, and CANCEL/BYE can arrive while a
join is in flight. A lookup that fails because the database is out of reach
(`webconf.deploy.db.is_unavailable`) is fed back with `credentials_unavailable`: that
request gets a 503, the connection and its dialogs stay (the database layer logs the
outage once, when it starts, and once when it ends).

The lease (DESIGN §8): `start` renews this process's focus lease at the WCS once before it
returns (so a lease exists before the first admission, which names it) and then every
`focus.heartbeat_seconds`; a WCS node revokes the participants of a lease left stale for
`focus.node_timeout_seconds`, so a focus killed with its dialogs leaves no live cookie. A
failed renewal is logged once per outage and retried at the next beat. A clean `stop`
releases the lease once every participation it held was revoked (else it lets it go stale).

Bounds: total and per-source connection caps (over them, the connection is closed at
once); a header timeout from the first byte of a message to its complete head (slowloris);
an idle timeout for connections without dialogs; the framer's 64 KiB message cap; the TLS
handshake timeout; a write timeout for peers that never read.
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
from webconf.deploy.db import is_unavailable
from webconf.deploy.logs import Event
from webconf.retry import Backoff
from webconf.sip import digest, sdp

from .core import FocusCore, FocusSettings
from .directory import Directory
from .events import (
    Admit,
    AdmitFailure,
    AdmitRefused,
    AdmitUnavailable,
    Close,
    Conn,
    FetchRoster,
    Log,
    LookupCredentials,
    Output,
    Revoke,
    Send,
)
from .wcs_client import WcsClient, WcsRefused, WcsUnavailable
from .wss import Sink, WssListener

log = logging.getLogger("webconf.focus")
READ_SIZE = 65536
REQUESTS_PER_TURN = 8
"""Pipelined requests of one connection handled before the others get a turn: their
answers leave in one write (`_StreamSink`), and a flood's turn stays well under 1 ms."""
RETRY_AFTER_SECONDS = 5
REVOKE_WORKERS = 16
"""Concurrent revocations in flight to the WCS (the rest wait in a queue)."""
REVOKE_ATTEMPTS = 40
"""About ten minutes of retries with backoff before a revocation is logged as failed."""


@dataclass(eq=False)
class _Connection:
    conn: Conn
    sink: Sink
    closing: bool = False


class _StreamSink:
    """A TLS/TCP connection's writer as a `Sink`, writing once per loop turn.

    Every response of one turn (a read's requests, a link frame's admissions) leaves in one
    `write`: one TLS record and one send instead of one each, which was a quarter of the
    focus's CPU per join. The bytes wait at most until the end of the turn; the reader
    loop's `drain` still bounds what a peer that does not read can make us hold."""

    __slots__ = ("writer", "_loop", "_pending")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        """Write what this turn produced (nothing once the connection is closing)."""
        if self._pending:
            data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending.clear()
            if not self.writer.is_closing():
                self.writer.write(data)

    def is_closing(self) -> bool:
        return self.writer.is_closing()

    def close(self) -> None:
        self.flush()
        self.writer.close()

    def abort(self) -> None:
        self._pending.clear()
        self.writer.transport.abort()


@dataclass
class FocusServer:
    cfg: Config
    directory: Directory
    wcs: WcsClient
    nonce_secret: bytes = field(repr=False)
    servers: list[asyncio.Server] = field(default_factory=list)
    sip_port: int = 0
    tcp_port: int = 0
    wss_port: int = 0

    def __post_init__(self) -> None:
        self._core: FocusCore | None = None
        self._connections: dict[int, _Connection] = {}
        self._per_source: Counter[str] = Counter()
        self._reserved = 0
        """WebSocket connections counted in the caps before their upgrade (focus/wss.py)."""
        self._wss: WssListener | None = None
        self._next_id = 1
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer_wakeup = asyncio.Event()
        self._timer_task: asyncio.Task[None] | None = None
        self._revokes: asyncio.Queue[Revoke] = asyncio.Queue()
        """Revocations not yet confirmed by the WCS (at most one per dialog ever admitted
        and not yet revoked, so bounded by the connection caps)."""
        self._revoke_workers: list[asyncio.Task[None]] = []
        self.lease_name: str | None = getattr(self.wcs, "lease_name", None)
        """This process's focus lease (`WcsClient.lease_name`); None for a stand-in WCS
        client without leases (some tests), which then gets no heartbeats."""
        self._lease_task: asyncio.Task[None] | None = None
        self._lease_down_since: float | None = None
        """Monotonic start of the current renewal outage (None: the last renewal worked)."""

    @property
    def core(self) -> FocusCore:
        """The SIP state machine (built by `start`, once the listening ports are known)."""
        if self._core is None:
            raise RuntimeError("FocusServer.start() has not run")
        return self._core

    def _make_core(self) -> FocusCore:
        f = self.cfg.focus
        return FocusCore(
            FocusSettings(
                contact_host=self.cfg.public_host, contact_port=self.sip_port,
                tcp_contact_port=self.tcp_port, wss_contact_port=self.wss_port,
                algorithms=f.digest_algorithms, md5_only_user_agents=f.md5_only_user_agents,
                leave_grace_seconds=f.leave_grace_seconds,
                retry_after_seconds=RETRY_AFTER_SECONDS, max_message_bytes=f.max_message_bytes,
                answer_sdp=lambda offer, **kw: sdp.answer_offer(
                    offer, address=self.cfg.public_host, **kw),
                make_multipart=sdp.multipart_mixed, accepts=sdp.accepts,
                requests_per_turn=REQUESTS_PER_TURN),
            digest.NonceService(self.nonce_secret, lifetime=f.nonce_lifetime_seconds),
            digest.FailureThrottle(max_failures=f.auth_failures_per_user,
                                   max_source_failures=f.auth_failures_per_source))

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind the listeners, build the core with their ports, then accept connections."""
        from webconf.deploy import tls

        f = self.cfg.focus
        ssl_ctx = tls.server_context(self.cfg, "focus")
        tls_server = await asyncio.start_server(
            lambda r, w: self._serve(r, w, "TLS"), self.cfg.server.host, f.sip_port,
            ssl=ssl_ctx, ssl_handshake_timeout=f.header_timeout_seconds, backlog=1024,
            limit=READ_SIZE, start_serving=False)
        self.servers.append(tls_server)
        self.sip_port = tls_server.sockets[0].getsockname()[1]
        if f.sip_port == 0:
            f.sip_port = self.sip_port
        if f.tcp_port:
            tcp_server = await asyncio.start_server(
                lambda r, w: self._serve(r, w, "TCP"), f.tcp_host, f.tcp_port, backlog=1024,
                limit=READ_SIZE, start_serving=False)
            self.servers.append(tcp_server)
            self.tcp_port = tcp_server.sockets[0].getsockname()[1]
        if f.wss_port:  # SIP over WebSocket for browsers (docs/protocol.md §10)
            self._wss = WssListener(self.cfg, self, ssl_ctx)
            self.wss_port = await self._wss.bind()
        self._core = self._make_core()
        for server in self.servers:
            await server.start_serving()
        if self._wss is not None:
            await self._wss.start_serving()
        self._timer_task = asyncio.create_task(self._timers())
        self._revoke_workers = [asyncio.create_task(self._revoke_worker())
                                for _ in range(REVOKE_WORKERS)]
        start_link = getattr(self.wcs, "start_link", None)  # a stand-in client has none
        if start_link is not None:
            self.wcs.on_ended = self._conference_ended  # BYEs (docs/protocol.md §7.3)
            self.wcs.on_roster = self._roster_changed  # NOTIFYs (§9.3)
            self.wcs.on_left = self._participant_left  # BYE on an eject, say (§7.3)
            self.wcs.on_link_up = lambda: self._spawn(self._watch())
            # the persistent link to the WCS (docs/protocol.md §7.3); until it is up, and
            await start_link()  # whenever it is down: HTTP
        if self.lease_name is not None:
            renewed = await self._renew_lease()
            log.info(json.dumps({"event": "lease.start", "lease": self.lease_name,
                                 "renewed": renewed}))
            self._lease_task = asyncio.create_task(self._keep_lease(), name="focus-lease")

    @property
    def revoke_budget_seconds(self) -> float:
        """How long `stop` waits for the WCS to confirm the open dialogs' revocations.

        `webconf serve` stops the focus before the WCS, and the whole node within
        `wcs.shutdown_grace_seconds`: the focus takes at most half of it (one DELETE per
        dialog, `REVOKE_WORKERS` at a time, normally milliseconds), the WCS drains in the rest.
        """
        return min(self.cfg.focus.wcs_timeout_seconds * 4,
                   self.cfg.wcs.shutdown_grace_seconds / 2)

    async def stop(self) -> None:
        """Stop accepting, end every participation at the WCS, close connections."""
        for server in self.servers:
            server.close()
        if self._wss is not None:
            self._wss.close()
        for conn in list(self._connections.values()):
            conn.sink.close()
        outputs: list[Output] = []
        if self._core is not None:
            for conn_id in list(self._connections):
                outputs += self._core.connection_lost(conn_id, time.time())
            outputs += self._core.expire(float("inf"))
        for revoke in (o for o in outputs if isinstance(o, Revoke)):
            self._revokes.put_nowait(revoke)
        revoked_all = True
        try:  # every participation ends at the WCS before we exit, within our half of
            async with asyncio.timeout(self.revoke_budget_seconds):  # the node's grace
                await self._revokes.join()
        except TimeoutError:
            revoked_all = False
            log.error(json.dumps({"event": "revoke.unfinished",
                                  "pending": self._revokes.qsize()}))
        for worker in self._revoke_workers:
            worker.cancel()
        if self._timer_task is not None:
            self._timer_task.cancel()
        admitting = any(not task.done() for task in self._tasks)  # may have reached the WCS
        for task in list(self._tasks):
            task.cancel()
        await self._end_lease(release=revoked_all and not admitting)
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)
        if self._wss is not None:
            await self._wss.wait_closed()

    # -- connections ------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     transport: str) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        host, port = str(peer[0]), int(peer[1])
        f = self.cfg.focus
        if (len(self._connections) + self._reserved >= f.max_connections
                or self._per_source[host] >= f.max_connections_per_source):
            log.warning(json.dumps({"event": "connection.refused", "peer": host,
                                    "reason": "connection cap"}))
            writer.close()
            return
        ssl_object = writer.get_extra_info("ssl_object")
        conn = Conn(self._next_id, host, port, transport,
                    tls_version=ssl_object.version() if ssl_object is not None else None)
        self._next_id += 1
        sink = _StreamSink(writer)
        entry = _Connection(conn, sink)
        self._connections[conn.id] = entry
        self._per_source[host] += 1
        self.core.connection_made(conn)
        partial_since: float | None = None
        # Above this much unsent the transport pauses us: only then is `drain` worth a timer.
        _, write_high = writer.transport.get_write_buffer_limits()
        try:
            while not entry.closing:
                now = time.monotonic()
                if self.core.buffered(conn.id):
                    partial_since = partial_since or now
                    timeout: float | None = max(0.0, partial_since + f.header_timeout_seconds - now)
                else:
                    partial_since = None
                    timeout = None if self.core.has_dialogs(conn.id) else f.idle_timeout_seconds
                try:
                    if timeout is None:  # a connection with dialogs: no timer at all
                        data = await reader.read(READ_SIZE)
                    else:
                        async with asyncio.timeout(timeout):  # no Task, unlike wait_for
                            data = await reader.read(READ_SIZE)
                except TimeoutError:
                    reason = "header timeout" if self.core.buffered(conn.id) else "idle timeout"
                    log.info(json.dumps({"event": "connection.timeout", "peer": host,
                                         "reason": reason}))
                    break
                if not data:
                    break
                received = self.core.received(conn.id)
                await self._perform(self.core.receive_data(conn.id, data, time.time()))
                while self.core.pending(conn.id) and not entry.closing:
                    await asyncio.sleep(0)  # let other connections run between pipelined
                    await self._perform(  # requests (fairness in floods)
                        self.core.receive_data(conn.id, b"", time.time()))
                if self.core.received(conn.id) != received:
                    partial_since = None  # the slowloris clock runs per message
                if entry.closing:
                    break
                sink.flush()  # this read's answers count in the drain below
                if writer.transport.get_write_buffer_size() <= write_high:
                    continue  # nothing to wait for: a timer per read costs ~14 us
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
            self._release_source(host)
            self._run(self.core.connection_lost(conn.id, time.time()))
            self._timer_wakeup.set()
            sink.close()  # what the last turn answered (a final error) leaves first
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _perform(self, outputs: list[Output]) -> None:
        """Run the outputs of `receive_data`; answer each credentials lookup in turn (the
        core reads no further input of that connection until it has the answer)."""
        while outputs:
            self._run(outputs)
            lookups = [o for o in outputs if isinstance(o, LookupCredentials)]
            outputs = []
            for lookup in lookups:
                try:
                    found = await self._credentials(lookup)
                except Exception as exc:
                    if not is_unavailable(exc):
                        raise  # a bug: its traceback is worth having
                    # The database is out of reach (refused, or lost mid-query): 503 for
                    # this request only; `webconf.deploy.db` logs the outage once.
                    outputs += self.core.credentials_unavailable(lookup.ticket, time.time())
                    continue
                outputs += self.core.credentials_found(lookup.ticket, found, time.time())

    async def _credentials(self, lookup: LookupCredentials) -> dict[str, str]:
        found: dict[str, str] = {}
        for algorithm in lookup.algorithms:
            value = await self.directory.lookup_ha1(lookup.realm, lookup.username, algorithm)
            if value is not None:
                found[algorithm] = value
        return found

    # -- the WebSocket listener's connections (focus/wss.py) --------------------------------
    def reserve(self, host: str) -> bool:
        """Count a new WebSocket connection from `host` in the caps before its upgrade (False:
        over a cap, or too many upgrades pending: close it). `unreserve` or `attach` follows."""
        f = self.cfg.focus
        if (len(self._connections) + self._reserved >= f.max_connections
                or self._reserved >= f.max_ws_handshakes
                or self._per_source[host] >= f.max_connections_per_source):
            log.warning(json.dumps({"event": "connection.refused", "peer": host,
                                    "reason": "connection cap", "transport": "WSS"}))
            return False
        self._reserved += 1
        self._per_source[host] += 1
        return True

    def unreserve(self, host: str) -> None:
        """A reserved connection closed before its upgrade."""
        self._reserved -= 1
        self._release_source(host)

    def attach(self, host: str, port: int, tls_version: str | None, sink: Sink) -> Conn:
        """A reserved connection completed its upgrade: a connection of the core from now
        on (its transport `WSS`), until `detach`."""
        self._reserved -= 1
        conn = Conn(self._next_id, host, port, "WSS", tls_version=tls_version)
        self._next_id += 1
        self._connections[conn.id] = _Connection(conn, sink)
        self.core.connection_made(conn)
        return conn

    def detach(self, conn: Conn) -> None:
        """An attached connection closed."""
        self._connections.pop(conn.id, None)
        self._release_source(conn.peer_host)
        self._run(self.core.connection_lost(conn.id, time.time()))
        self._timer_wakeup.set()

    def _release_source(self, host: str) -> None:
        self._per_source[host] -= 1
        if self._per_source[host] <= 0:
            del self._per_source[host]

    async def feed(self, conn: Conn, message: bytes) -> bool:
        """One SIP message of a WebSocket connection into the core (RFC 7118 §5); False
        when the connection is to close."""
        entry = self._connections.get(conn.id)
        if entry is None:
            return False
        await self._perform(self.core.receive_data(conn.id, message, time.time()))
        while self.core.pending(conn.id) and not entry.closing:
            await asyncio.sleep(0)
            await self._perform(self.core.receive_data(conn.id, b"", time.time()))
        return not entry.closing

    def has_dialogs(self, conn: Conn) -> bool:
        return self.core.has_dialogs(conn.id)

    # -- outputs ------------------------------------------------------------------------------
    def _run(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, Send):
                entry = self._connections.get(out.conn_id)
                if entry is None or entry.sink.is_closing():
                    continue
                entry.sink.write(out.data)
                if out.data.startswith(b"NOTIFY "):  # a new NOTIFY timeout to watch
                    self._timer_wakeup.set()
            elif isinstance(out, Close):
                entry = self._connections.get(out.conn_id)
                if entry is None:
                    continue
                entry.closing = True  # its reader loop ends and closes the writer
                if out.abort:
                    entry.sink.abort()
            elif isinstance(out, Admit):
                self._spawn(self._admit(out))
            elif isinstance(out, FetchRoster):
                self._spawn(self._fetch_roster(out))
            elif isinstance(out, Revoke):
                self._revokes.put_nowait(out)
            elif isinstance(out, Log):
                if out.level == "warning":
                    log.warning(Event(out.event))
                else:
                    log.info(Event(out.event))
            # LookupCredentials: answered by the connection's reader loop (`_perform`)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _admit(self, effect: Admit) -> None:
        failure: AdmitFailure
        try:
            admission = await self.wcs.admit(effect.conference_id, tenant=effect.tenant,
                                             organizer=effect.organizer, user=effect.user,
                                             role=effect.role)
        except WcsRefused as exc:
            failure = AdmitRefused(exc.status, exc.code)
        except WcsUnavailable as exc:
            failure = AdmitUnavailable(exc.status)
        else:
            self._run(self.core.admitted(effect.ticket, admission, time.time()))
            return
        self._run(self.core.admission_failed(effect.ticket, failure, time.time()))

    async def _fetch_roster(self, effect: FetchRoster) -> None:
        """The roster for a subscription (docs/protocol.md §9.3), over the link."""
        failure: AdmitFailure
        try:
            body = await self.wcs.roster(tenant=effect.tenant, conference=effect.conference,
                                         organizer=effect.organizer, uri_id=effect.uri_id)
        except WcsRefused as exc:
            failure = AdmitRefused(exc.status, exc.code)
        except WcsUnavailable as exc:
            failure = AdmitUnavailable(exc.status)
        else:
            self._run(self.core.roster_fetched(effect.ticket, body, time.time()))
            self._timer_wakeup.set()  # the NOTIFY's timeout, the subscription's expiry
            return
        self._run(self.core.roster_failed(effect.ticket, failure, time.time()))

    def _roster_changed(self, conference: str, seq: int) -> None:
        if self._core is not None:
            self._run(self.core.roster_changed(conference, seq, time.time()))

    def _participant_left(self, conference: str, participant: str) -> None:
        """A participation ended elsewhere (an eject, a lease revocation): BYE its dialog
        if it is held here (focus/requests.py)."""
        if self._core is not None:
            self._run(self.core.participant_left(conference, participant, time.time()))
            self._timer_wakeup.set()

    async def _revoke_worker(self) -> None:
        """Revoke at the WCS until it confirms: a leave must never leave a live cookie.

        A WCS that is slow or briefly down (a mass leave, a restart) gets retried with
        backoff; only a definite answer (204, or 404 for an unknown participant) ends it.
        """
        while True:
            effect = await self._revokes.get()
            backoff = Backoff(initial=0.2, maximum=10.0)
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
                        await asyncio.sleep(backoff.next_delay())
            finally:
                self._revokes.task_done()

    def _conference_ended(self, wcs_conference: str) -> None:
        """The WCS ended the conference: BYE its dialogs here (focus/requests.py)."""
        if self._core is not None:
            self._run(self.core.end_conference(wcs_conference, time.time()))
            self._timer_wakeup.set()  # the BYEs' timeout

    async def _watch(self) -> None:
        """The link came up: follow the ends of the conferences we have dialogs or
        subscriptions in (an end while the link was down is told at once), and read the
        subscribed conferences' rosters again."""
        if self._core is None:
            return
        try:
            await self.wcs.watch(sorted(self.core.conferences()))
        except (WcsUnavailable, WcsRefused) as exc:
            log.warning(json.dumps({"event": "watch.failed", "error": _failure(exc)}))
            return
        self._run(self.core.resync(time.time()))  # roster changes while it was down

    async def _timers(self) -> None:
        while True:
            deadline = self.core.next_deadline()
            delay = None if deadline is None else max(0.0, deadline - time.time())
            self._timer_wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timer_wakeup.wait(), delay)
            self._run(self.core.expire(time.time()))

    # -- the lease ----------------------------------------------------------------------------
    @property
    def _lease_call_timeout(self) -> float:
        """A renewal that takes longer than half the lease timeout is as good as lost."""
        f = self.cfg.focus
        return min(f.wcs_timeout_seconds, f.node_timeout_seconds / 2)

    async def _keep_lease(self) -> None:
        """Renew the lease every `focus.heartbeat_seconds`, start to start."""
        interval = self.cfg.focus.heartbeat_seconds
        due = time.monotonic() + interval
        while True:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            due = max(due + interval, time.monotonic())  # no burst after a stall
            await self._renew_lease()

    async def _renew_lease(self) -> bool:
        """One renewal: True if the WCS confirmed it. Logs the start and the end of an
        outage, never each failed beat."""
        try:
            await self.wcs.heartbeat(timeout=self._lease_call_timeout)
        except Exception as exc:  # noqa: BLE001 - whatever fails, the lease loop goes on
            if self._lease_down_since is None:
                self._lease_down_since = time.monotonic()
                log.warning(json.dumps({"event": "lease.renew_failed", "lease": self.lease_name,
                                        "error": _failure(exc)}))
            return False
        if self._lease_down_since is not None:
            outage = time.monotonic() - self._lease_down_since
            self._lease_down_since = None
            # Longer than the timeout: a WCS may have revoked our participants meanwhile.
            level = (logging.WARNING if outage >= self.cfg.focus.node_timeout_seconds
                     else logging.INFO)
            log.log(level, json.dumps({"event": "lease.renewed", "lease": self.lease_name,
                                       "outage_seconds": round(outage, 3)}))
        return True

    async def _end_lease(self, *, release: bool) -> None:
        """Stop renewing; release the lease only when none of its participants can be left
        (otherwise it goes stale and a WCS node revokes them)."""
        if self._lease_task is not None:
            self._lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_task
            self._lease_task = None
        if self.lease_name is None or not release:
            return
        try:
            await self.wcs.release(timeout=min(self.cfg.focus.wcs_timeout_seconds, 1.0))
        except Exception as exc:  # noqa: BLE001 - best effort: it goes stale instead
            log.warning(json.dumps({"event": "lease.release_failed", "lease": self.lease_name,
                                    "error": _failure(exc)}))
        else:
            log.info(json.dumps({"event": "lease.released", "lease": self.lease_name}))

    @property
    def connection_count(self) -> int:
        return len(self._connections)


def _failure(exc: BaseException) -> str:
    """A log-safe account of a failed lease call: the WCS client's own reasons carry no
    secrets (no body is ever quoted); anything else is named by its type only."""
    if isinstance(exc, WcsUnavailable):
        return exc.reason
    if isinstance(exc, WcsRefused):
        return f"{exc.status} {exc.code}"
    return type(exc).__name__
