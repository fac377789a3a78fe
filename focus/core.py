"""The focus as a sans-IO state machine: bytes and effect results in, bytes and effects out.

Operations (each returns a list of `focus.events` outputs; `now` is wall-clock seconds,
`time.time()`, on every call that can need it: the core never reads a clock):
- `connection_made(conn)` / `connection_lost(conn_id, now)`;
- `receive_data(conn_id, data, now)`: the core owns each connection's framer (`SipFramer`;
  over WebSocket `MessageFramer`, whole messages), so framing errors (answered, then
  `Close` when the stream is lost) and CRLF keep-alives are decided here;
- `credentials_found(ticket, {algorithm: HA1} | None, now)`: the result of a
  `LookupCredentials` effect; `credentials_unavailable(ticket, now)` when the directory
  could not be read (its database is out of reach): 503, and the connection goes on;
- `admitted(ticket, admission, now)` / `admission_failed(ticket, AdmitRefused |
  AdmitUnavailable, now)`: the result of an `Admit` effect; the WCS-failure -> SIP-status
  mapping lives here;
- `expire(now)` for the orphan and BYE timers (`next_deadline()` says when);
- `end_conference(wcs_conference, now)`: the WCS ended it (docs/protocol.md §7.3): a BYE on
  each of its dialogs (focus/requests.py), each ended at the BYE's answer or timeout;
- SUBSCRIBE to a conference's roster (docs/protocol.md §9.3; focus/subscribing.py, mixed
  in): `roster_fetched(ticket, body, now)` / `roster_failed(ticket, failure, now)` answer a
  `FetchRoster` effect; `roster_changed(conference, seq, now)`, `resync(now)` and
  `participant_left(conference, participant, now)` (a BYE) take the link's notices.

Goals: every request gets exactly one final response (RFC 3261 §8.2, §12, §17.2), or the
connection is closed for a framing error; every admitted participant is revoked exactly
once (BYE, CANCEL race, lost connection after a grace period, or the INVITE's connection
gone before the WCS answered); no state grows without bound (pending transactions and
completed responses are capped per connection; dialogs die with their participation;
one credentials lookup at most per connection); no reply larger than the message cap.

Plan (docs/protocol.md §2): out-of-dialog INVITE -> Digest challenge; with credentials ->
throttle check (429 before any lookup) -> `LookupCredentials` (input paused) -> verify ->
tenant policy -> `Admit` (100 Trying first) -> 200 OK with the join body creates a dialog
(`focus/dialogs.py`: ACCEPTED -> CONFIRMED on ACK -> TERMINATED on BYE or orphan expiry).
In-dialog requests (To tag present) are matched by (Call-ID, our tag, their tag). A
dialog is bound to its INVITE's connection; a BYE or re-INVITE on another connection is
challenged and must authenticate as the dialog's user (else 403) before it ends the dialog
or gets the join body back, and then binds that connection too (agents may move: linphone
does). An ACK confirms the dialog from anywhere but binds nothing (it cannot be challenged).
Digest nonces are bound to the connection they are issued on (`Conn.nonce_scope`), and the
digest-uri must name the Request-URI (docs/protocol.md §2). Settings are fixed at
construction.

Known limits: INVITE retransmissions are recognised by top Via branch per connection
(over TLS/TCP a UAC does not retransmit, so this only guards against buggy agents). Input
fed while a lookup is out is buffered unbounded: the edge must not read meanwhile (the
server awaits the lookup before its next read). One clock serves nonces (which must be
wall time, shared by nodes) and the grace and throttle timers, so a wall-clock step moves
those timers once.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from webconf.protocol import CONFERENCE_OPAQUE, JOIN_CONTENT_TYPE, Admission, valid_id
from webconf.sip import digest
from webconf.sip.framing import FramingError, KeepAlive, NeedData
from webconf.sip.message import (
    MAX_MESSAGE_SIZE,
    Request,
    Response,
    SipParseError,
    address_facts,
    max_forwards,
    parse_auth_params,
    response_bytes,
    validate_request,
)
from webconf.sip.ws_framing import framer_for

from .addresses import bracket_addr_spec
from .dialogs import (
    AwaitingAdmission,
    AwaitingCredentials,
    ConnState,
    Dialog,
    DialogKey,
    DialogState,
)
from .events import (
    Admit,
    AdmitFailure,
    AdmitRefused,
    AdmitUnavailable,
    Close,
    Conn,
    Credentials,
    Log,
    LookupCredentials,
    Output,
    Revoke,
    Send,
)
from .memos import Memos
from .requests import ByeSender, RequestWriter, dialog_route
from .subscribing import SubscribeHandling
from .subscriptions import EVENT, Subscriptions

__all__ = [
    "ALLOW", "Admission", "Admit", "AdmitRefused", "AdmitUnavailable", "Close", "Conn",
    "Credentials", "Dialog", "DialogState", "FocusCore", "FocusSettings", "Log",
    "LookupCredentials", "Output", "Revoke", "Send", "bracket_addr_spec",
]

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, SUBSCRIBE"
SUPPORTED_METHODS = frozenset(ALLOW.replace(" ", "").split(","))
MAX_PENDING_PER_CONNECTION = 512
"""Authenticated joins of one connection waiting on the WCS. A burst queues (the WCS link
pipelines them), well past the 256 in flight `make bench` sends; only beyond this, 503."""
MAX_COMPLETED_PER_CONNECTION = 32
SERVER_HEADER = "webconf-focus"
HA1_ALGORITHMS = ("SHA-256", "MD5")


@dataclass(frozen=True)
class FocusSettings:
    """Policy fixed at construction (the edge binds its listeners first, then builds it)."""

    contact_host: str
    contact_port: int
    tcp_contact_port: int = 0
    """Port of the plain-TCP listener, for the Contact of dialogs that came over TCP."""
    wss_contact_port: int = 0
    """Port of the WebSocket listener (RFC 7118), for the Contact of dialogs over WSS."""
    algorithms: Sequence[str] = ("SHA-256", "MD5")
    md5_only_user_agents: Sequence[str] = ("baresip",)
    leave_grace_seconds: float = 30.0
    retry_after_seconds: int = 5
    """Retry-After of the 503 that answers an INVITE when the WCS or the directory is
    unavailable."""
    max_message_bytes: int = MAX_MESSAGE_SIZE
    """The framer's cap on one incoming message, and the cap on one reply (a bigger one,
    e.g. an error echoing thousands of Vias, closes the connection instead)."""
    answer_sdp: Any = None
    """callable(offer: bytes, *, session_id, version) -> bytes; None refuses offers (488)."""
    make_multipart: Any = None
    """callable(parts) -> (content_type, body)."""
    accepts: Any = None
    """callable(accept_header, media_type) -> bool."""
    requests_per_turn: int | None = None
    """Requests handled per `receive_data` call before control returns to the edge (None: all
    buffered). An asyncio edge sets 1 and calls again while `pending(conn)`, yielding to other
    connections in between: one read can hold ~100 pipelined requests of a flood."""


class FocusCore(SubscribeHandling):
    """The focus's SIP decisions for every connection; see the module docstring."""

    def __init__(self, settings: FocusSettings, nonces: digest.NonceService,
                 throttle: digest.FailureThrottle) -> None:
        self.settings = settings
        self.nonces = nonces
        self.throttle = throttle
        self._conns: dict[int, ConnState] = {}
        self._lookups: dict[int, AwaitingCredentials] = {}
        self._pending: dict[int, AwaitingAdmission] = {}
        self._dialogs: dict[DialogKey, Dialog] = {}
        self._orphans: dict[DialogKey, Dialog] = {}
        """The dialogs whose grace runs (no connection left): what the timers look at."""
        self._next_ticket = 1
        self._memos = Memos(settings, settings.algorithms, settings.md5_only_user_agents)
        self._writer = RequestWriter(settings.contact_host, settings.contact_port,
                                     settings.tcp_contact_port, settings.wss_contact_port)
        self._byes = ByeSender(self._writer)
        self._subs = Subscriptions(self._writer)
        self._fetches = {}

    # -- connections ---------------------------------------------------------------------
    def connection_made(self, conn: Conn) -> None:
        self._conns[conn.id] = ConnState(  # RFC 7118 §5: one message per WebSocket message
            conn, framer_for(conn.transport, max_message_size=self.settings.max_message_bytes))

    def connection_lost(self, conn_id: int, now: float) -> list[Output]:
        """Orphan the connection's dialogs; they end after the grace period."""
        state = self._conns.pop(conn_id, None)
        if state is None:
            return []
        if state.lookup is not None:
            self._lookups.pop(state.lookup, None)
        out = self._subs.connection_lost(conn_id, now)
        for key in state.dialogs:
            dialog = self._dialogs.get(key)
            if dialog is not None:
                dialog.unbind(conn_id, now)
                if dialog.orphaned_at is not None:
                    self._orphans[key] = dialog
        return out

    def next_deadline(self) -> float | None:
        """When the first orphaned dialog's grace ends (None: no dialog is orphaned); costs
        O(orphans), not O(dialogs): the edge asks after every lost connection."""
        grace = self.settings.leave_grace_seconds
        deadlines = [d.orphaned_at + grace for d in self._orphans.values()
                     if d.orphaned_at is not None]
        others = [self._byes.next_deadline(), self._subs.next_deadline()]
        return min(deadlines + [t for t in others if t is not None], default=None)

    def expire(self, now: float) -> list[Output]:
        grace = self.settings.leave_grace_seconds
        expired = [d for d in self._orphans.values()
                   if d.orphaned_at is not None and now >= d.orphaned_at + grace]
        if len(expired) > 1:  # in the order the dialogs were created, as always
            order = {key: i for i, key in enumerate(self._dialogs)}
            expired.sort(key=lambda d: order.get(d.key, -1))
        out: list[Output] = []
        for dialog in expired:
            out += self._terminate(dialog, "connection lost")
        for key, reason in self._byes.expired(now):  # our BYE got no answer: it ends anyway
            out += self._end_dialog(key, reason)
        return out + self._guard(self._subs.expired(now))

    def end_conference(self, wcs_conference: str, now: float) -> list[Output]:
        """BYE each dialog of the conference the WCS ended, on its newest usable
        connection; one it cannot reach (orphaned, no route) ends at once."""
        out: list[Output] = []
        for dialog in [d for d in self._dialogs.values() if d.wcs_conference == wcs_conference]:
            out += self._bye(dialog, "conference ended", now)
        return self._guard(out)

    def _bye(self, dialog: Dialog, reason: str, now: float) -> list[Output]:
        """Our BYE on the dialog's newest usable connection (none if one is out already);
        a dialog it cannot reach (orphaned, no route) ends at once."""
        if self._byes.ending(dialog.key):
            return []
        conns = [s.conn for i in sorted(dialog.conn_ids)
                 if (s := self._conns.get(i)) is not None and not s.closed]
        bye = self._byes.send(dialog, dialog.route, conns[-1], now, reason) if (
            conns and dialog.route) else None
        return [bye] if bye is not None else self._terminate(dialog, reason)

    def conferences(self) -> set[str]:
        """The WCS ids of the conferences with a dialog or a subscription here (the link's
        `watch`)."""
        return {d.wcs_conference for d in self._dialogs.values()} | self._subs.conferences()

    def _end_dialog(self, key: DialogKey, reason: str) -> list[Output]:
        dialog = self._dialogs.get(key)
        return [] if dialog is None else self._terminate(dialog, reason)

    @property
    def dialog_count(self) -> int:
        return len(self._dialogs)

    def counts(self) -> dict[str, int]:
        """Sizes of every table the core keeps (for tests and metrics)."""
        return {"connections": len(self._conns), "lookups": len(self._lookups),
                "admissions": len(self._pending), "dialogs": len(self._dialogs),
                "completed": sum(len(s.completed) for s in self._conns.values()),
                "subscriptions": len(self._subs.subs), "fetches": len(self._fetches)}

    def has_dialogs(self, conn_id: int) -> bool:
        state = self._conns.get(conn_id)
        return bool(state and (state.dialogs or state.pending or state.fetches
                               or self._subs.on_connection(conn_id)))

    def buffered(self, conn_id: int) -> int:
        """Bytes of the connection's input not yet framed (a partial message, for timeouts)."""
        state = self._conns.get(conn_id)
        return state.framer.buffered if state is not None else 0

    def pending(self, conn_id: int) -> bool:
        """True when buffered input is waiting for another `receive_data(conn, b"", now)`."""
        state = self._conns.get(conn_id)
        return state is not None and state.more and state.lookup is None and not state.closed

    def received(self, conn_id: int) -> int:
        """How many framer units (messages, pings, errors) the connection has completed."""
        state = self._conns.get(conn_id)
        return state.received if state is not None else 0

    # -- bytes in --------------------------------------------------------------------------
    def receive_data(self, conn_id: int, data: bytes, now: float) -> list[Output]:
        """Frame `data` and handle every complete message (until a lookup pauses input)."""
        state = self._conns.get(conn_id)
        if state is None or state.closed:
            return []
        state.framer.feed(data)
        return self._drain(state, now)

    def _drain(self, state: ConnState, now: float) -> list[Output]:
        out: list[Output] = []
        conn_id = state.conn.id
        budget = self.settings.requests_per_turn
        state.more = False
        while state.lookup is None and not state.closed:
            if budget is not None and budget <= 0:
                state.more = True
                break
            event = state.framer.next_event()
            if isinstance(event, NeedData):
                break
            state.received += 1
            if isinstance(event, KeepAlive):
                out.append(Send(conn_id, b"\r\n"))
            elif isinstance(event, FramingError):
                if not event.is_response and event.headers is not None and (
                        event.headers.get("Via") is not None):
                    out += self._guard([Send(conn_id, response_bytes(
                        event.headers, event.status, event.reason))])
                if event.fatal and not state.closed:
                    state.closed = True
                    out.append(Close(conn_id))
            elif isinstance(event, Request):
                out += self._guard(self._request(state, event, now))
                budget = None if budget is None else budget - 1
            elif isinstance(event, Response):  # to our NOTIFY or BYE (focus/requests.py)
                notified = self._subs.answered(event, now)
                ended = self._byes.answered(event) if notified is None else None
                out += self._guard(notified or []) + (
                    self._end_dialog(*ended) if ended is not None else [])
        return out

    def _guard(self, outputs: list[Output]) -> list[Output]:
        """Drop replies to closed connections; close instead of sending an oversized one."""
        kept: list[Output] = []
        for out in outputs:
            if isinstance(out, Send):
                state = self._conns.get(out.conn_id)
                if state is None or state.closed:
                    continue
                if len(out.data) > self.settings.max_message_bytes:
                    # e.g. an error reply echoing thousands of Vias: the peer could not
                    # take it (RFC 3261 §18.1.1 sizes); close instead of sending it.
                    state.closed = True
                    kept += [Log({"event": "connection.closed", "peer": state.conn.peer_host,
                                  "reason": "oversized reply"}), Close(out.conn_id, abort=True)]
                    continue
            kept.append(out)
        return kept

    # -- requests --------------------------------------------------------------------------
    def _request(self, state: ConnState, req: Request, now: float) -> list[Output]:
        conn = state.conn
        for name in ("From", "To"):  # echoed in every response: make them parseable
            values = req.headers.view(name)
            if len(values) == 1:
                value = values[0]
                fixed = bracket_addr_spec(value)
                if fixed != value:
                    req.headers.set(name, fixed)
        if req.method == "ACK":
            return self._ack(conn, req)
        try:
            validate_request(req)
        except SipParseError as exc:
            return [self._reply(conn, exc.headers or req.headers, exc.status, exc.reason)]
        if req.method not in SUPPORTED_METHODS:
            return [self._reply(conn, req, 405, headers=[("Allow", ALLOW)])]
        branch = self._branch(req)
        done = state.completed.get((branch, req.method))
        if done is not None:
            return [Send(conn.id, done)]
        if req.method == "CANCEL":
            return self._cancel(conn, state, req, branch)
        if max_forwards(req) == 0 and self._to_tag(req) is None:
            return [self._reply(conn, req, 483)]
        if req.method == "OPTIONS":
            return [self._reply(conn, req, 200, headers=[
                ("Allow", ALLOW), ("Accept", f"application/sdp, {JOIN_CONTENT_TYPE}"),
                ("Allow-Events", EVENT), ("Supported", "")])]
        if req.method == "SUBSCRIBE":  # focus/subscribing.py
            return self._subscribe(state, req, branch, now)
        if req.method == "BYE" or self._to_tag(req) is not None:  # BYE, re-INVITE
            dialog = self._dialog_for(req)
            if dialog is None:
                return [self._reply(conn, req, 481)]
            if conn.id not in dialog.conn_ids:  # another connection: prove the user first
                return self._challenge_in_dialog(state, req, branch, dialog, now)
            return self._in_dialog(conn, req, dialog)
        if branch in state.pending:
            return []  # retransmission of an INVITE we are still working on
        return self._invite(state, req, branch, now)

    def _invite(self, state: ConnState, req: Request, branch: str,
                now: float) -> list[Output]:
        conn = state.conn
        opaque = req.uri.params.get("opaque") or ""
        conference_id = opaque[len(CONFERENCE_OPAQUE):] if opaque.startswith(
            CONFERENCE_OPAQUE) else ""
        if not req.uri.user or not valid_id(conference_id):
            return [self._final(state, req, branch, 404, "Not a Conference URI")]
        caller = address_facts(req.headers.get("From") or "")
        if caller is None:
            return [self._final(state, req, branch, 400, "Bad From")]
        algorithms = self._memos.algorithms(req.headers.get("User-Agent") or "")
        lookup = AwaitingCredentials(self._ticket(), conn.id, req, branch, caller.host.lower(),
                                     caller.user or "", algorithms, None)
        return self._lookup(state, lookup, now)

    def _lookup(self, state: ConnState, lookup: AwaitingCredentials,
                now: float) -> list[Output]:
        """Challenge a request without credentials; else throttle check (429 before any
        lookup: a locked-out guesser costs no query), then `LookupCredentials`."""
        req, branch = lookup.request, lookup.branch
        if req.headers.get("Authorization") is None:
            return [self._challenge(state, req, branch, lookup.realm, lookup.algorithms, now)]
        claimed = self._claimed(req)
        lookup.throttle_user = f"{claimed[1]}@{claimed[0]}" if claimed else None
        wait = self.throttle.check(lookup.throttle_user, state.conn.peer_host, now)
        if wait is not None:
            retry = str(max(1, int(wait + 0.999)))
            return [self._final(state, req, branch, 429, headers=[("Retry-After", retry)])]
        if claimed is None or not _utf8(claimed[0] + claimed[1]):
            # nothing to look up (no user has a name that is not UTF-8): verify says why
            return self._authenticated(state, lookup, {}, now)
        self._lookups[lookup.ticket] = lookup
        state.lookup = lookup.ticket
        return [LookupCredentials(lookup.ticket, claimed[0], claimed[1], HA1_ALGORITHMS)]

    def _challenge_in_dialog(self, state: ConnState, req: Request, branch: str,
                             dialog: Dialog, now: float) -> list[Output]:
        """A BYE or re-INVITE on a connection its dialog is not bound to: knowing the
        Call-ID and tags is not enough to end the dialog or get its cookie back; the
        dialog's user must authenticate here (docs/protocol.md §2)."""
        algorithms = self._memos.algorithms(req.headers.get("User-Agent") or "")
        lookup = AwaitingCredentials(self._ticket(), state.conn.id, req, branch, dialog.realm,
                                     dialog.username, algorithms, None, dialog=dialog.key)
        return self._lookup(state, lookup, now)

    def credentials_found(self, ticket: int, credentials: Credentials | None,
                          now: float) -> list[Output]:
        """The HA1s a `LookupCredentials` asked for ({} or None: no such user); resumes the
        connection's input."""
        lookup = self._lookups.pop(ticket, None)
        if lookup is None:
            return []
        state = self._conns.get(lookup.conn_id)
        if state is None or state.lookup != ticket:
            return []
        state.lookup = None
        out = self._guard(self._authenticated(state, lookup, credentials or {}, now))
        return out + self._drain(state, now)

    def credentials_unavailable(self, ticket: int, now: float) -> list[Output]:
        """The directory could not answer `LookupCredentials(ticket)` (its database is out
        of reach): `503 Directory Unavailable` with Retry-After for the request that needed
        it, not counted as a failure; the connection, its dialogs and its input go on."""
        lookup = self._lookups.pop(ticket, None)
        if lookup is None:
            return []
        state = self._conns.get(lookup.conn_id)
        if state is None or state.lookup != ticket:
            return []
        state.lookup = None
        retry = str(self.settings.retry_after_seconds)
        out = self._guard([self._final(state, lookup.request, lookup.branch, 503,
                                       "Directory Unavailable",
                                       headers=[("Retry-After", retry)])])
        return out + self._drain(state, now)

    def _authenticated(self, state: ConnState, lookup: AwaitingCredentials,
                       credentials: Credentials, now: float) -> list[Output]:
        """Verify the request's Digest response with `credentials`, then apply the policy
        (a new INVITE's, or the in-dialog request's)."""
        conn, req, branch = state.conn, lookup.request, lookup.branch
        realm, algorithms, throttle_user = lookup.realm, lookup.algorithms, lookup.throttle_user
        result = digest.verify(
            req.headers.get("Authorization") or "", method=req.method,
            request_uri=req.uri_text or str(req.uri), expected_realm=realm,
            ha1_lookup=lambda _user, alg: credentials.get(alg),
            nonce_service=self.nonces, nc_tracker=state.nc_tracker,
            allowed_algorithms=algorithms, now=now, scope=conn.nonce_scope)
        if result.reason in ("stale", "other-connection"):  # right, but use a fresh nonce
            return [self._challenge(state, req, branch, realm, algorithms, now, stale=True)]
        if not result.ok:
            self.throttle.record_failure(throttle_user, conn.peer_host, now)
            failed = Log({"event": "auth.failed", "user": throttle_user,
                          "reason": result.reason, "peer": conn.peer_host})
            if result.reason == "uri-mismatch":  # RFC 7616 §3.4.6
                return [failed, self._final(state, req, branch, 400, "Digest URI Mismatch")]
            return [failed, self._challenge(state, req, branch, realm, algorithms, now)]
        self.throttle.record_success(throttle_user, conn.peer_host)
        if lookup.dialog is not None:
            return self._dialog_authenticated(state, lookup, result.username or "")
        if result.username != lookup.caller_user:
            return [self._final(state, req, branch, 403, "Credentials Do Not Match From")]
        uri = req.uri
        tenant = uri.host.lower()
        user = f"{lookup.caller_user}@{realm}"
        conference_id = (uri.params.get("opaque") or "")[len(CONFERENCE_OPAQUE):]
        if realm != tenant:
            return [
                Log({"event": "join.refused", "user": user, "conference": conference_id,
                     "reason": "another tenant"}),
                self._final(state, req, branch, 403, "Forbidden: Another Tenant")]
        if req.method == "SUBSCRIBE":
            return self._subscribe_authenticated(state, req, branch, user)
        if req.body and _media_type(req) == "application/sdp" and (
                self.settings.answer_sdp is None):
            return [self._final(state, req, branch, 488)]
        if len(state.pending) >= MAX_PENDING_PER_CONNECTION:
            return [self._final(state, req, branch, 503, headers=[("Retry-After", "1")])]
        ticket = self._ticket()
        self._pending[ticket] = AwaitingAdmission(ticket, conn, req, branch, conference_id,
                                                  uri, user, secrets.token_hex(8))
        state.pending[branch] = ticket
        return [Send(conn.id, response_bytes(req, 100)),
                Admit(ticket, conference_id, tenant, f"{uri.user}@{tenant}", user)]

    # -- WCS results -----------------------------------------------------------------------
    def admitted(self, ticket: int, admission: Admission, now: float) -> list[Output]:
        """The WCS admitted the caller of `Admit(ticket)`: answer 200 OK and start a dialog
        (or revoke at once, if the INVITE was cancelled or its connection is gone)."""
        pending = self._pending.pop(ticket, None)
        if pending is None:  # answered twice: the first answer already settled it
            return []
        state = self._conns.get(pending.conn.id)
        if state is not None:
            state.pending.pop(pending.branch, None)
        # The WCS names the conference by its public id (docs/protocol.md §2.1): the join
        # body carries it, and revocations name it.
        unjoined = Revoke(admission.conference, admission.participant, "")
        if pending.cancelled or state is None:
            reason = "cancelled" if pending.cancelled else "connection lost before answer"
            return [dataclasses.replace(unjoined, reason=reason)]
        req = pending.request
        try:
            content_type, body = self._join_body(req, pending, admission)
        except ValueError:
            return self._guard([self._final(state, req, pending.branch, 488),
                                dataclasses.replace(unjoined, reason="bad SDP offer")])
        contact = self._memos.contact(pending.conference_uri, pending.conn.transport.lower())
        headers = [("Contact", contact), ("Allow", ALLOW), ("Supported", ""),
                   ("Content-Type", content_type), ("Server", SERVER_HEADER)]
        headers += [("Record-Route", rr) for rr in req.headers.get_fields("Record-Route")]
        data = response_bytes(req, 200, to_tag=pending.to_tag, headers=headers, body=body)
        from_tag = self._from_tag(req) or ""
        dialog = Dialog(
            call_id=req.headers.get("Call-ID") or "", local_tag=pending.to_tag,
            remote_tag=from_tag, conn_ids={pending.conn.id}, conference_id=pending.conference_id,
            wcs_conference=admission.conference, participant_id=admission.participant,
            user=pending.user, role=admission.role, answer=(content_type, body), contact=contact,
            sdp_session_id=pending.sdp_session_id, route=dialog_route(req))
        self._dialogs[dialog.key] = dialog
        state.dialogs.add(dialog.key)
        self._remember(state, pending.branch, "INVITE", data)
        conn = pending.conn
        return self._guard([Send(conn.id, data), Log({
            "event": "join", "conference": pending.conference_id, "user": pending.user,
            "participant": admission.participant, "role": admission.role,
            "peer": conn.peer_host, "transport": conn.transport,
            **({"tls": conn.tls_version} if conn.tls_version else {})})])

    def admission_failed(self, ticket: int, failure: AdmitFailure,
                         now: float) -> list[Output]:
        """The WCS refused or did not answer `Admit(ticket)`: answer the INVITE with the
        matching SIP status (docs/protocol.md §2)."""
        out: list[Output] = []
        headers: list[tuple[str, str]] = []
        reason: str | None
        if isinstance(failure, AdmitUnavailable):
            out.append(Log({"event": "wcs.unavailable", "op": "admit"}, level="warning"))
            status, reason = 503, "WCS Unavailable"
            headers.append(("Retry-After", str(self.settings.retry_after_seconds)))
        else:  # 403 another tenant, 404 unknown conference; anything else is our bug
            status = failure.status if failure.status in (400, 403, 404) else 500
            reason = {404: "Conference Not Found", 403: "Forbidden"}.get(status)
        pending = self._pending.pop(ticket, None)
        if pending is None:
            return out
        state = self._conns.get(pending.conn.id)
        if state is None:
            return out
        state.pending.pop(pending.branch, None)
        if pending.cancelled:
            return out
        return out + self._guard([
            Log({"event": "join.refused", "conference": pending.conference_id,
                 "user": pending.user, "status": status}),
            self._final(state, pending.request, pending.branch, status, reason,
                        headers=headers, to_tag=pending.to_tag)])

    # -- in-dialog and other methods ----------------------------------------------------------
    def _ack(self, conn: Conn, req: Request) -> list[Output]:
        """Confirm the dialog, whichever connection the ACK came on (linphone sends it on a
        new one, to our Contact). An ACK cannot be challenged (it is never answered), so it
        binds no connection: only an authenticated BYE or re-INVITE moves a dialog."""
        dialog = self._dialog_for(req)
        if dialog is not None:
            dialog.advance(DialogState.CONFIRMED)
        return []  # ACKs are never answered

    def _dialog_authenticated(self, state: ConnState, lookup: AwaitingCredentials,
                              username: str) -> list[Output]:
        """A BYE or re-INVITE from another connection authenticated: if as the dialog's
        user, bind the dialog to this connection too and go on; else 403."""
        conn, req = state.conn, lookup.request
        dialog = self._dialogs.get(lookup.dialog) if lookup.dialog else None
        if dialog is None:  # ended while the lookup was out
            return [self._reply(conn, req, 481)]
        if username != dialog.username:
            return [Log({"event": "dialog.refused", "user": lookup.throttle_user,
                         "conference": dialog.conference_id, "peer": conn.peer_host}),
                    self._final(state, req, lookup.branch, 403,
                                "Credentials Do Not Match Dialog")]
        dialog.bind(conn.id)
        self._orphans.pop(dialog.key, None)
        state.dialogs.add(dialog.key)
        return self._in_dialog(conn, req, dialog)

    def _in_dialog(self, conn: Conn, req: Request, dialog: Dialog) -> list[Output]:
        """A BYE or re-INVITE on a connection the dialog is bound to."""
        if req.method == "BYE":
            return [self._reply(conn, req, 200), *self._terminate(dialog, "bye")]
        content_type, body = dialog.answer
        if req.body and _media_type(req) == "application/sdp" and self.settings.answer_sdp:
            dialog.sdp_version += 1
            try:
                body = self.settings.answer_sdp(req.body, session_id=dialog.sdp_session_id,
                                                version=dialog.sdp_version)
            except ValueError:
                return [self._reply(conn, req, 488)]
            content_type = "application/sdp"
        return [self._reply(conn, req, 200, headers=[
            ("Contact", dialog.contact), ("Allow", ALLOW), ("Content-Type", content_type)],
            body=body)]

    def _cancel(self, conn: Conn, state: ConnState, req: Request, branch: str) -> list[Output]:
        ticket = state.pending.get(branch)
        pending = self._pending.get(ticket) if ticket is not None else None
        if pending is None or pending.cancelled:
            return [self._reply(conn, req, 481)]
        pending.cancelled = True
        state.pending.pop(branch, None)
        data = response_bytes(pending.request, 487, to_tag=pending.to_tag)
        self._remember(state, branch, "INVITE", data)
        return [self._reply(conn, req, 200), Send(conn.id, data)]

    # -- helpers -----------------------------------------------------------------------------
    def _terminate(self, dialog: Dialog, reason: str) -> list[Output]:
        """End a dialog: the one place a joined participation is revoked."""
        if not dialog.advance(DialogState.TERMINATED):
            return []
        self._dialogs.pop(dialog.key, None)
        self._orphans.pop(dialog.key, None)
        for conn_id in dialog.conn_ids:
            state = self._conns.get(conn_id)
            if state is not None:
                state.dialogs.discard(dialog.key)
        return [Revoke(dialog.wcs_conference, dialog.participant_id, reason),
                Log({"event": "leave", "conference": dialog.conference_id,
                     "user": dialog.user, "participant": dialog.participant_id,
                     "reason": reason})]

    def _ticket(self) -> int:
        ticket = self._next_ticket
        self._next_ticket += 1
        return ticket

    def _claimed(self, req: Request) -> tuple[str, str] | None:
        """(realm, username) that the INVITE's Digest Authorization names, if readable."""
        try:
            scheme, params = parse_auth_params(req.headers.get("Authorization") or "")
        except SipParseError:
            return None
        realm, username = params.get("realm"), params.get("username")
        if scheme != "digest" or not realm or not username:
            return None
        return realm.lower(), username

    def _join_body(self, req: Request, pending: AwaitingAdmission,
                   admission: Admission) -> tuple[str, bytes]:
        join = admission.to_bytes()
        if not req.body or _media_type(req) != "application/sdp":
            return JOIN_CONTENT_TYPE, join
        answer: bytes = self.settings.answer_sdp(
            req.body, session_id=pending.sdp_session_id, version=1)
        accept = ", ".join(req.headers.get_all("Accept")) if "Accept" in req.headers else None
        if self.settings.accepts is not None and self.settings.accepts(accept, "multipart/mixed"):
            content_type, body = self.settings.make_multipart(
                [("application/sdp", answer), (JOIN_CONTENT_TYPE, join)])
            return str(content_type), bytes(body)
        return "application/sdp", answer

    def _challenge(self, state: ConnState, req: Request, branch: str, realm: str,
                   algorithms: Sequence[str], now: float, *, stale: bool = False) -> Send:
        challenges = digest.build_challenges(realm, algorithms, self.nonces, stale=stale,
                                             now=now, scope=state.conn.nonce_scope)
        return self._final(state, req, branch, 401,
                           headers=[("WWW-Authenticate", c) for c in challenges],
                           to_tag=secrets.token_hex(8))

    def _final(self, state: ConnState, req: Request, branch: str, status: int,
               reason: str | None = None, *, headers: Sequence[tuple[str, str]] = (),
               to_tag: str | None = None) -> Send:
        if to_tag is None and req.method == "INVITE":
            to_tag = secrets.token_hex(8)
        data = response_bytes(req, status, reason, to_tag=to_tag,
                              headers=[*headers, ("Server", SERVER_HEADER)])
        self._remember(state, branch, req.method, data)
        return Send(state.conn.id, data)

    def _reply(self, conn: Conn, source: Request | Any, status: int, reason: str | None = None,
               *, headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> Send:
        to_tag = None
        if isinstance(source, Request) and self._to_tag(source) is None and status > 100:
            to_tag = secrets.token_hex(8)
        return Send(conn.id, response_bytes(source, status, reason, to_tag=to_tag,
                                            headers=[*headers, ("Server", SERVER_HEADER)],
                                            body=body))

    @staticmethod
    def _remember(state: ConnState, branch: str, method: str, data: bytes) -> None:
        if not branch:
            return
        state.completed[(branch, method)] = data
        while len(state.completed) > MAX_COMPLETED_PER_CONNECTION:
            state.completed.popitem(last=False)

    @staticmethod
    def _branch(req: Request) -> str:
        via = req.headers.get("Via") or ""
        for part in via.split(";")[1:]:
            name, _, value = part.strip().partition("=")
            if name.strip().lower() == "branch":
                return value.strip()
        return ""

    @staticmethod
    def _tag(header_value: str | None) -> str | None:
        if not header_value:
            return None
        facts = address_facts(header_value)  # memoised: To and From are read often
        return None if facts is None else facts.tag

    def _to_tag(self, req: Request) -> str | None:
        return self._tag(req.headers.get("To"))

    def _from_tag(self, req: Request) -> str | None:
        return self._tag(req.headers.get("From"))

    def _dialog_for(self, req: Request) -> Dialog | None:
        to_tag = self._to_tag(req)
        if to_tag is None:
            return None
        return self._dialogs.get(
            (req.headers.get("Call-ID") or "", to_tag, self._from_tag(req) or ""))


def _media_type(req: Request) -> str:
    return (req.headers.get("Content-Type") or "").split(";")[0].strip().lower()


def _utf8(text: str) -> bool:
    """False for text holding undecodable bytes (surrogate escapes): no user has such a
    name, and the directory's database driver would raise on it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
