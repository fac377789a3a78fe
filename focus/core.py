"""The focus as a sans-IO state machine: requests in, responses and effects out.

Operations: `request(conn, req, credentials)` for each parsed request,
`admitted(ticket, ...)` / `admission_failed(ticket, ...)` when the WCS answers,
`connection_lost(conn)`, and `expire(now)` for timers (`next_deadline()` says when).
Each returns a list of outputs: `Send` (bytes for one connection), `Admit` (ask the WCS
for a cookie), `Revoke` (end a participation at the WCS) and `Log` (one structured line).

Goals: every request gets the right final response (RFC 3261 §8.2, §12, §17.2), every
admitted participant is eventually revoked exactly once (BYE, CANCEL race, lost connection
after a grace period, or the INVITE's connection gone before the WCS answered), and no
state grows without bound (pending transactions and completed responses are capped per
connection; dialogs die with their participation).

Plan: out-of-dialog INVITE -> Digest challenge/verify -> tenant policy -> `Admit` effect
(with 100 Trying sent first) -> 200 OK with the join body creates a confirmed-on-ACK
dialog. In-dialog requests (To tag present) are matched by (Call-ID, our tag, their
tag). Credentials are looked up by the asyncio layer before calling `request` (I/O), and
passed in as {algorithm: HA1}.

Known limits: INVITE retransmissions are recognised by top Via branch per connection
(over TLS/TCP a UAC does not retransmit, so this only guards against buggy agents).
"""

from __future__ import annotations

import functools
import json
import re
import secrets
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from webconf.sip import digest
from webconf.sip.message import (
    Request,
    Response,
    SipParseError,
    SipURI,
    make_response,
    max_forwards,
    parse_auth_params,
    parse_name_addr,
    serialize,
    validate_request,
)
from webconf.sip.syntax import is_token

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS"
SUPPORTED_METHODS = frozenset(ALLOW.replace(" ", "").split(","))
JOIN_CONTENT_TYPE = "application/vnd.webconf.join+json"
CONFERENCE_OPAQUE = "app:conf:focus:id:"
CONF_ID_RE = re.compile(r"^[A-Za-z0-9._~-]{1,64}$")
MAX_PENDING_PER_CONNECTION = 32
MAX_COMPLETED_PER_CONNECTION = 32
SERVER_HEADER = "webconf-focus"


_TAG_CACHE_MAX_VALUE = 256
"""From/To values up to this length have their tag memoised (bounded memory)."""


def _parse_tag(header_value: str) -> str | None:
    try:
        tag = parse_name_addr(header_value).params.get("tag")
    except SipParseError:
        return None
    return tag or None


# One request's To and From are read several times (credentials, dialog key, Max-Forwards
# check), and a dialog's messages repeat them: parse each distinct value once.
_cached_tag = functools.lru_cache(maxsize=512)(_parse_tag)


# -- inputs and outputs -----------------------------------------------------------------
@dataclass(frozen=True)
class Conn:
    """One transport connection as the core sees it."""

    id: int
    peer_host: str
    peer_port: int
    transport: str = "TLS"
    """"TLS" or "TCP": used for the Contact we hand out."""
    tls_version: str | None = None
    """The negotiated protocol ("TLSv1.3", "TLSv1.2"), logged with each join; None on TCP."""


@dataclass(frozen=True)
class Send:
    conn_id: int
    data: bytes
    close_after: bool = False


@dataclass(frozen=True)
class Admit:
    """Ask the WCS to admit `user` to the conference; answer with admitted/failed."""

    ticket: int
    conference_id: str
    tenant: str
    organizer: str
    user: str
    role: str = "attendee"


@dataclass(frozen=True)
class Revoke:
    conference_id: str
    participant_id: str
    reason: str


@dataclass(frozen=True)
class Log:
    event: dict[str, Any]


Output: TypeAlias = Send | Admit | Revoke | Log


@dataclass(frozen=True)
class Admission:
    participant_id: str
    role: str
    cookie: str = field(repr=False)
    expires_at: str
    webconf_url: str


def bracket_addr_spec(value: str) -> str:
    """A From/To value in addr-spec form whose ";" parameters cannot be header parameters,
    rewritten as `<uri;params>;tag=...`; any other value unchanged.

    RFC 3261 §20.10 puts a URI containing ";" inside angle brackets, but pjsua2 (pjsip 2.15)
    dialing `sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:K7Q2` sends that To
    bare, and then cannot parse the same To echoed in our responses (`opaque=app:conf:...`
    is no token), so it never sees the 401 or the 200 and the join times out. A value like
    that can only mean URI parameters; valid values (bare or bracketed) are left alone.
    """
    text = value.strip()
    if not text or "<" in text or '"' in text:
        return value
    start = text.find("@") + 1  # a user part may hold ";" (RFC 3261 user-unreserved)
    cut = text.find(";", start)
    if cut < 0:
        return value
    uri, params = text[:cut], [p.strip() for p in text[cut + 1:].split(";")]

    def header_param(param: str) -> bool:
        name, eq, val = param.partition("=")
        return is_token(name.strip()) and (not eq or is_token(val.strip()) or (
            val.strip().startswith("[") and val.strip().endswith("]")))

    if all(header_param(p) for p in params):
        return value
    is_tag = [p.partition("=")[0].strip().lower() == "tag" for p in params]
    inside = [p for p, tag in zip(params, is_tag, strict=True) if not tag]
    outside = [p for p, tag in zip(params, is_tag, strict=True) if tag]
    return "<" + ";".join([uri, *inside]) + ">" + "".join(";" + p for p in outside)


# -- state --------------------------------------------------------------------------------
@dataclass
class _Pending:
    """An INVITE waiting for the WCS."""

    ticket: int
    conn: Conn
    request: Request
    branch: str
    conference_id: str
    conference_uri: SipURI
    user: str
    to_tag: str
    cancelled: bool = False
    sdp_session_id: int = field(default_factory=lambda: secrets.randbelow(2**62))


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    conn_id: int
    conference_id: str
    participant_id: str
    user: str
    role: str
    answer: tuple[str, bytes]
    """Content-Type and body of our 200 OK, resent for re-INVITEs."""
    contact: str
    confirmed: bool = False
    orphaned_at: float | None = None
    sdp_session_id: int = 0
    sdp_version: int = 1
    """RFC 3264 §8: later answers keep the session id and bump the version."""


@dataclass
class _ConnState:
    conn: Conn
    nc_tracker: digest.NonceCountTracker = field(default_factory=digest.NonceCountTracker)
    pending: dict[str, int] = field(default_factory=dict)
    """Top-Via branch of each pending INVITE -> ticket."""
    completed: OrderedDict[tuple[str, str], bytes] = field(default_factory=OrderedDict)
    """(branch, method) -> final response bytes, to answer retransmissions."""
    dialogs: set[tuple[str, str, str]] = field(default_factory=set)


@dataclass
class FocusSettings:
    contact_host: str
    contact_port: int
    tcp_contact_port: int = 0
    """Port of the plain-TCP listener, for the Contact of dialogs that came over TCP."""
    algorithms: Sequence[str] = ("SHA-256", "MD5")
    md5_only_user_agents: Sequence[str] = ("baresip",)
    leave_grace_seconds: float = 30.0
    retry_after_seconds: int = 5
    answer_sdp: Any = None
    """callable(offer: bytes, *, session_id, version) -> bytes; None refuses offers (488)."""
    make_multipart: Any = None
    """callable(parts) -> (content_type, body)."""
    accepts: Any = None
    """callable(accept_header, media_type) -> bool."""


Credentials: TypeAlias = Mapping[str, str]
"""HA1 hex by algorithm ("MD5", "SHA-256") for the user named in the Authorization."""


class FocusCore:
    def __init__(self, settings: FocusSettings, nonces: digest.NonceService,
                 throttle: digest.FailureThrottle) -> None:
        self.settings = settings
        self.nonces = nonces
        self.throttle = throttle
        self._conns: dict[int, _ConnState] = {}
        self._pending: dict[int, _Pending] = {}
        self._dialogs: dict[tuple[str, str, str], Dialog] = {}
        self._next_ticket = 1

    # -- connections ---------------------------------------------------------------------
    def connection_made(self, conn: Conn) -> None:
        self._conns[conn.id] = _ConnState(conn)

    def connection_lost(self, conn_id: int, now: float) -> list[Output]:
        """Orphan the connection's dialogs; they end after the grace period."""
        state = self._conns.pop(conn_id, None)
        if state is None:
            return []
        for key in state.dialogs:
            dialog = self._dialogs.get(key)
            if dialog is not None and dialog.conn_id == conn_id:
                dialog.orphaned_at = now
        return []

    def next_deadline(self) -> float | None:
        deadlines = [d.orphaned_at + self.settings.leave_grace_seconds
                     for d in self._dialogs.values() if d.orphaned_at is not None]
        return min(deadlines) if deadlines else None

    def expire(self, now: float) -> list[Output]:
        out: list[Output] = []
        for key, dialog in list(self._dialogs.items()):
            if dialog.orphaned_at is not None and (
                    now >= dialog.orphaned_at + self.settings.leave_grace_seconds):
                del self._dialogs[key]
                out += self._leave(dialog, "connection lost")
        return out

    @property
    def dialog_count(self) -> int:
        return len(self._dialogs)

    def has_dialogs(self, conn_id: int) -> bool:
        state = self._conns.get(conn_id)
        return bool(state and (state.dialogs or state.pending))

    # -- requests --------------------------------------------------------------------------
    def credentials_needed(self, req: Request) -> tuple[str, str] | None:
        """(realm, username) whose HA1s `request` will need, if it carries Digest creds."""
        if req.method != "INVITE" or self._to_tag(req) is not None:
            return None
        value = req.headers.get("Authorization")
        if value is None:
            return None
        try:
            scheme, params = parse_auth_params(value)
        except SipParseError:
            return None
        realm, username = params.get("realm"), params.get("username")
        if scheme != "digest" or not realm or not username:
            return None
        return realm.lower(), username

    @staticmethod
    def throttle_key(claimed: tuple[str, str] | None) -> str | None:
        """The failure-throttle key of (realm, username): `user@realm`."""
        return f"{claimed[1]}@{claimed[0]}" if claimed else None

    def locked_out(self, claimed: tuple[str, str] | None, source: str) -> bool:
        """Whether this user or source is throttled now (checked before any HA1 lookup)."""
        return self.throttle.check(self.throttle_key(claimed), source) is not None

    def request(self, conn: Conn, req: Request, credentials: Credentials | None = None,
                now: float = 0.0) -> list[Output]:
        state = self._conns.get(conn.id)
        if state is None:
            state = self._conns[conn.id] = _ConnState(conn)
        for name in ("From", "To"):  # echoed in every response: make them parseable
            value = req.headers.get(name)
            if value is not None and req.headers.count(name) == 1:
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
                ("Supported", "")])]
        if req.method == "BYE":
            return self._bye(conn, req)
        # INVITE
        if self._to_tag(req) is not None:
            return self._reinvite(conn, req)
        if branch in state.pending:
            return []  # retransmission of an INVITE we are still working on
        return self._invite(conn, state, req, branch, credentials or {}, now)

    def _invite(self, conn: Conn, state: _ConnState, req: Request, branch: str,
                credentials: Credentials, now: float) -> list[Output]:
        uri = req.uri
        opaque = uri.params.get("opaque") or ""
        conference_id = opaque[len(CONFERENCE_OPAQUE):] if opaque.startswith(
            CONFERENCE_OPAQUE) else ""
        if not uri.user or not CONF_ID_RE.match(conference_id):
            return [self._final(conn, state, req, branch, 404, "Not a Conference URI")]
        try:
            caller = parse_name_addr(req.headers.get("From") or "").uri
        except SipParseError:
            return [self._final(conn, state, req, branch, 400, "Bad From")]
        realm = caller.host.lower()
        caller_user = caller.user or ""
        user_agent = req.headers.get("User-Agent") or ""
        algorithms = self._algorithms_for(user_agent)
        authorization = req.headers.get("Authorization")
        if authorization is None:
            return [self._challenge(conn, state, req, branch, realm, algorithms)]
        claimed = self.credentials_needed(req)
        throttle_user = self.throttle_key(claimed)
        wait = self.throttle.check(throttle_user, conn.peer_host)
        if wait is not None:
            retry = str(max(1, int(wait + 0.999)))
            return [self._final(conn, state, req, branch, 429, headers=[("Retry-After", retry)])]
        result = digest.verify(
            authorization, method="INVITE", expected_realm=realm,
            ha1_lookup=lambda _user, alg: credentials.get(alg),
            nonce_service=self.nonces, nc_tracker=state.nc_tracker,
            allowed_algorithms=algorithms)
        if result.reason == "stale":
            return [self._challenge(conn, state, req, branch, realm, algorithms, stale=True)]
        if not result.ok:
            self.throttle.record_failure(throttle_user, conn.peer_host)
            return [
                Log({"event": "auth.failed", "user": throttle_user, "reason": result.reason,
                     "peer": conn.peer_host}),
                self._challenge(conn, state, req, branch, realm, algorithms)]
        self.throttle.record_success(throttle_user, conn.peer_host)
        if result.username != caller_user:
            return [self._final(conn, state, req, branch, 403, "Credentials Do Not Match From")]
        tenant = uri.host.lower()
        user = f"{caller_user}@{realm}"
        if realm != tenant:
            return [
                Log({"event": "join.refused", "user": user, "conference": conference_id,
                     "reason": "another tenant"}),
                self._final(conn, state, req, branch, 403, "Forbidden: Another Tenant")]
        if req.body and (req.headers.get("Content-Type") or "").split(";")[0].strip().lower() \
                == "application/sdp" and self.settings.answer_sdp is None:
            return [self._final(conn, state, req, branch, 488)]
        if len(state.pending) >= MAX_PENDING_PER_CONNECTION:
            return [self._final(conn, state, req, branch, 503,
                                headers=[("Retry-After", "1")])]
        ticket = self._next_ticket
        self._next_ticket += 1
        to_tag = secrets.token_hex(8)
        self._pending[ticket] = _Pending(ticket, conn, req, branch, conference_id, uri, user,
                                         to_tag)
        state.pending[branch] = ticket
        return [Send(conn.id, serialize(make_response(req, 100))),
                Admit(ticket, conference_id, tenant, f"{uri.user}@{tenant}", user)]

    # -- WCS results -----------------------------------------------------------------------
    def admitted(self, ticket: int, admission: Admission, now: float = 0.0) -> list[Output]:
        pending = self._pending.pop(ticket, None)
        if pending is None:  # answered twice: the first answer already settled it
            return []
        state = self._conns.get(pending.conn.id)
        if state is not None:
            state.pending.pop(pending.branch, None)
        dialog_stub = Dialog("", "", "", pending.conn.id, pending.conference_id,
                             admission.participant_id, pending.user, admission.role,
                             ("", b""), "")
        if pending.cancelled or state is None:
            reason = "cancelled" if pending.cancelled else "connection lost before answer"
            return self._leave(dialog_stub, reason, joined=False)
        req = pending.request
        try:
            content_type, body = self._join_body(req, pending, admission)
        except ValueError:
            return [self._final(pending.conn, state, req, pending.branch, 488),
                    *self._leave(dialog_stub, "bad SDP offer", joined=False)]
        contact = self._contact(pending)
        headers = [("Contact", contact), ("Allow", ALLOW), ("Supported", ""),
                   ("Content-Type", content_type), ("Server", SERVER_HEADER)]
        headers += [("Record-Route", rr) for rr in req.headers.get_fields("Record-Route")]
        response = make_response(req, 200, to_tag=pending.to_tag, headers=headers, body=body)
        from_tag = self._from_tag(req) or ""
        key = (req.headers.get("Call-ID") or "", pending.to_tag, from_tag)
        self._dialogs[key] = Dialog(
            call_id=key[0], local_tag=pending.to_tag, remote_tag=from_tag,
            conn_id=pending.conn.id, conference_id=pending.conference_id,
            participant_id=admission.participant_id, user=pending.user, role=admission.role,
            answer=(content_type, body), contact=contact,
            sdp_session_id=pending.sdp_session_id)
        state.dialogs.add(key)
        data = serialize(response)
        self._remember(state, pending.branch, "INVITE", data)
        return [Send(pending.conn.id, data), Log({
            "event": "join", "conference": pending.conference_id, "user": pending.user,
            "participant": admission.participant_id, "role": admission.role,
            "peer": pending.conn.peer_host, "transport": pending.conn.transport,
            **({"tls": pending.conn.tls_version} if pending.conn.tls_version else {})})]

    def admission_failed(self, ticket: int, status: int, reason: str | None = None,
                         retry_after: int | None = None) -> list[Output]:
        pending = self._pending.pop(ticket, None)
        if pending is None:
            return []
        state = self._conns.get(pending.conn.id)
        if state is None:
            return []
        state.pending.pop(pending.branch, None)
        if pending.cancelled:
            return []
        headers = [] if retry_after is None else [("Retry-After", str(retry_after))]
        return [
            Log({"event": "join.refused", "conference": pending.conference_id,
                 "user": pending.user, "status": status}),
            self._final(pending.conn, state, pending.request, pending.branch, status, reason,
                        headers=headers, to_tag=pending.to_tag)]

    # -- in-dialog and other methods ----------------------------------------------------------
    def _ack(self, conn: Conn, req: Request) -> list[Output]:
        dialog = self._dialog_for(req)
        if dialog is not None:
            dialog.confirmed = True
            self._rebind(dialog, conn)
        return []  # ACKs are never answered

    def _rebind(self, dialog: Dialog, conn: Conn) -> None:
        """Follow the agent to the connection its latest in-dialog request came on.

        Agents may send ACK, BYE and re-INVITEs to our Contact over a new connection
        (linphone does) and then drop the first one: the dialog must not be orphaned.
        """
        key = (dialog.call_id, dialog.local_tag, dialog.remote_tag)
        if dialog.conn_id != conn.id:
            old = self._conns.get(dialog.conn_id)
            if old is not None:
                old.dialogs.discard(key)
            dialog.conn_id = conn.id
            state = self._conns.get(conn.id)
            if state is not None:
                state.dialogs.add(key)
        dialog.orphaned_at = None

    def _bye(self, conn: Conn, req: Request) -> list[Output]:
        key = self._dialog_key(req)
        dialog = self._dialogs.pop(key, None) if key else None
        if dialog is None:
            return [self._reply(conn, req, 481)]
        state = self._conns.get(dialog.conn_id)
        if state is not None:
            state.dialogs.discard(key)
        return [self._reply(conn, req, 200), *self._leave(dialog, "bye")]

    def _reinvite(self, conn: Conn, req: Request) -> list[Output]:
        dialog = self._dialog_for(req)
        if dialog is None:
            return [self._reply(conn, req, 481)]
        self._rebind(dialog, conn)
        content_type, body = dialog.answer
        offer_type = (req.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if req.body and offer_type == "application/sdp" and self.settings.answer_sdp:
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

    def _cancel(self, conn: Conn, state: _ConnState, req: Request, branch: str) -> list[Output]:
        ticket = state.pending.get(branch)
        pending = self._pending.get(ticket) if ticket is not None else None
        if pending is None or pending.cancelled:
            return [self._reply(conn, req, 481)]
        pending.cancelled = True
        state.pending.pop(branch, None)
        terminated = make_response(pending.request, 487, to_tag=pending.to_tag)
        data = serialize(terminated)
        self._remember(state, branch, "INVITE", data)
        return [self._reply(conn, req, 200), Send(conn.id, data)]

    # -- helpers -----------------------------------------------------------------------------
    def _leave(self, dialog: Dialog, reason: str, *, joined: bool = True) -> list[Output]:
        out: list[Output] = [Revoke(dialog.conference_id, dialog.participant_id, reason)]
        if joined:
            out.append(Log({"event": "leave", "conference": dialog.conference_id,
                            "user": dialog.user, "participant": dialog.participant_id,
                            "reason": reason}))
        return out

    def _join_body(self, req: Request, pending: _Pending,
                   admission: Admission) -> tuple[str, bytes]:
        join = json.dumps({
            "conference": pending.conference_id, "participant": admission.participant_id,
            "role": admission.role, "webconf_url": admission.webconf_url,
            "cookie": admission.cookie, "expires_at": admission.expires_at,
        }).encode()
        offer_type = (req.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if not req.body or offer_type != "application/sdp":
            return JOIN_CONTENT_TYPE, join
        answer: bytes = self.settings.answer_sdp(
            req.body, session_id=pending.sdp_session_id, version=1)
        accept = ", ".join(req.headers.get_all("Accept")) if "Accept" in req.headers else None
        if self.settings.accepts is not None and self.settings.accepts(accept, "multipart/mixed"):
            content_type, body = self.settings.make_multipart(
                [("application/sdp", answer), (JOIN_CONTENT_TYPE, join)])
            return str(content_type), bytes(body)
        return "application/sdp", answer

    def _contact(self, pending: _Pending) -> str:
        uri = pending.conference_uri
        transport = pending.conn.transport.lower()
        host = self.settings.contact_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        scheme = "sips" if uri.scheme == "sips" else "sip"
        params = [f"transport={transport}"] + [
            name if value is None else f"{name}={value}"
            for name, value in uri.params.items() if name in ("gruu", "opaque")]
        port = self.settings.contact_port
        if transport == "tcp" and self.settings.tcp_contact_port:
            port = self.settings.tcp_contact_port
        contact = SipURI(host=host, scheme=scheme, user=uri.user, port=port)
        return f"<{contact};{';'.join(params)}>;isfocus"

    def _algorithms_for(self, user_agent: str) -> list[str]:
        ua = user_agent.lower()
        if any(agent.lower() in ua for agent in self.settings.md5_only_user_agents if agent):
            return ["MD5"]
        return list(self.settings.algorithms)

    def _challenge(self, conn: Conn, state: _ConnState, req: Request, branch: str, realm: str,
                   algorithms: Sequence[str], *, stale: bool = False) -> Send:
        challenges = digest.build_challenges(realm, algorithms, self.nonces, stale=stale)
        return self._final(conn, state, req, branch, 401,
                           headers=[("WWW-Authenticate", c) for c in challenges],
                           to_tag=secrets.token_hex(8))

    def _final(self, conn: Conn, state: _ConnState, req: Request, branch: str, status: int,
               reason: str | None = None, *, headers: Sequence[tuple[str, str]] = (),
               to_tag: str | None = None) -> Send:
        if to_tag is None and req.method == "INVITE":
            to_tag = secrets.token_hex(8)
        response = make_response(req, status, reason, to_tag=to_tag,
                                 headers=[*headers, ("Server", SERVER_HEADER)])
        data = serialize(response)
        self._remember(state, branch, req.method, data)
        return Send(conn.id, data)

    def _reply(self, conn: Conn, source: Request | Any, status: int, reason: str | None = None,
               *, headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> Send:
        to_tag = None
        if isinstance(source, Request) and self._to_tag(source) is None and status > 100:
            to_tag = secrets.token_hex(8)
        response: Response = make_response(source, status, reason, to_tag=to_tag,
                                           headers=[*headers, ("Server", SERVER_HEADER)],
                                           body=body)
        return Send(conn.id, serialize(response))

    def _remember(self, state: _ConnState, branch: str, method: str, data: bytes) -> None:
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
        if len(header_value) > _TAG_CACHE_MAX_VALUE:
            return _parse_tag(header_value)
        return _cached_tag(header_value)

    def _to_tag(self, req: Request) -> str | None:
        return self._tag(req.headers.get("To"))

    def _from_tag(self, req: Request) -> str | None:
        return self._tag(req.headers.get("From"))

    def _dialog_key(self, req: Request) -> tuple[str, str, str] | None:
        to_tag, from_tag = self._to_tag(req), self._from_tag(req)
        if to_tag is None:
            return None
        return (req.headers.get("Call-ID") or "", to_tag, from_tag or "")

    def _dialog_for(self, req: Request) -> Dialog | None:
        key = self._dialog_key(req)
        return self._dialogs.get(key) if key else None
