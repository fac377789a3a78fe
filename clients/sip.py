"""A SIP user agent client for joining conferences over TLS (RFC 3261, Digest RFC 8760).

Only what a meeting client needs: one connection to the focus, INVITE with a Digest
retry, ACK, BYE, OPTIONS, and CRLF keep-alives; a BYE from the focus (the conference
ended, docs/protocol.md §8.6) is answered 200 and ends its dialog (`ConferenceDialog.ended`).
It reuses the pure message, framing and digest code of `webconf.sip` (a sans-IO SIP
library), so parsing is written once.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from webconf.protocol import (
    JOIN_CONTENT_TYPE,
    REASON_BAD_CREDENTIALS,
    Admission,
    JoinBodyError,
)
from webconf.sip.digest_client import DigestClient
from webconf.sip.framing import FramingError, KeepAlive, NeedData, SipFramer
from webconf.sip.message import (
    Headers,
    Request,
    Response,
    SipURI,
    parse_name_addr,
    parse_uri,
    response_bytes,
    serialize,
)
from webconf.sip.sdp import parse_multipart

USER_AGENT = "webconf-client/0.1"

SipErrorKind: TypeAlias = Literal["transport", "credentials", "forbidden", "not-found",
                                  "unavailable", "refused"]


def sip_error_kind(status: int, reason: str) -> SipErrorKind:
    """What a failed join means for its caller, from the status and, for a 403, the reason
    phrase the focus sends for credentials that do not match (docs/protocol.md §2)."""
    if status == 0:
        return "transport"
    if status == 401 or (status == 403 and reason == REASON_BAD_CREDENTIALS):
        return "credentials"
    if status == 403:
        return "forbidden"
    if status == 404:
        return "not-found"
    if status in (408, 503) or status >= 500:
        return "unavailable"
    return "refused"


class SipError(Exception):
    """The focus refused or failed a request; `status` is the SIP status (0 = transport)."""

    def __init__(self, status: int, reason: str, retry_after: int | None = None) -> None:
        super().__init__(f"{status} {reason}" if status else reason)
        self.status = status
        """The SIP status; 0 when the connection failed before an answer."""
        self.reason = reason
        """The reason phrase (or the transport error), for messages."""
        self.retry_after = retry_after
        """Seconds from Retry-After, when the focus sent one."""
        self.kind: SipErrorKind = sip_error_kind(status, reason)
        """What the failure means: decide on this, not on the reason's text."""


@dataclass
class JoinResult:
    """A successful join: the focus's join body (docs/protocol.md §2) and its Contact."""

    conference: str
    participant: str
    role: str
    webconf_url: str
    cookie: str = field(repr=False)
    expires_at: str
    contact: str
    """The focus's Contact: where in-dialog requests go."""

    @classmethod
    def from_admission(cls, admission: Admission, contact: str) -> JoinResult:
        return cls(conference=admission.conference, participant=admission.participant,
                   role=admission.role, webconf_url=admission.webconf_url,
                   cookie=admission.cookie, expires_at=admission.expires_at, contact=contact)


def _split_address(address: str) -> tuple[str, str]:
    user, sep, domain = address.partition("@")
    if not sep or not user or not domain:
        raise ValueError(f"not a user@domain address: {address!r}")
    return user, domain.lower()


class SipConnection:
    """One TLS (or TCP) connection to a focus, with request/response matching by CSeq."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 *, transport: str = "TLS", timeout: float = 10.0) -> None:
        self.reader = reader
        self.writer = writer
        self.transport = transport
        self.timeout = timeout
        self.framer = SipFramer()
        sock = writer.get_extra_info("sockname") or ("127.0.0.1", 0)
        self.local_host, self.local_port = str(sock[0]), int(sock[1])
        self._responses: dict[str, asyncio.Queue[Response]] = {}
        self._ended: dict[str, asyncio.Event] = {}
        """Set when the focus sent BYE on the dialog of this Call-ID."""
        self._error: Exception | None = None
        self._reader_task = asyncio.create_task(self._read_loop())

    @classmethod
    async def open(cls, host: str, port: int, *, ssl_context: ssl.SSLContext | None,
                   server_hostname: str | None = None, timeout: float = 10.0,
                   local_addr: tuple[str, int] | None = None) -> SipConnection:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            host, port, ssl=ssl_context, local_addr=local_addr,
            server_hostname=server_hostname if ssl_context else None), timeout)
        return cls(reader, writer, transport="TLS" if ssl_context else "TCP", timeout=timeout)

    @property
    def tls_version(self) -> str | None:
        obj = self.writer.get_extra_info("ssl_object")
        return None if obj is None else str(obj.version())

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionResetError("connection closed by the focus")
                self.framer.feed(data)
                while True:
                    event = self.framer.next_event()
                    if isinstance(event, NeedData):
                        break
                    if isinstance(event, Response):
                        queue = self._responses.get(event.headers.get("Call-ID") or "")
                        if queue is not None:
                            queue.put_nowait(event)
                    elif isinstance(event, Request):
                        self._request(event)
                    elif isinstance(event, FramingError):
                        raise ConnectionError(f"unparseable data from focus: {event.reason}")
                    elif isinstance(event, KeepAlive):
                        continue
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
            self._error = exc
            for queue in self._responses.values():
                queue.put_nowait(Response(0, str(exc) or type(exc).__name__))

    def _request(self, req: Request) -> None:
        """A request from the focus: BYE ends its dialog (200, or 481 for one we do not
        know); we serve nothing else (501)."""
        if req.method == "ACK":
            return
        status = 501
        if req.method == "BYE":
            ended = self._ended.get(req.headers.get("Call-ID") or "")
            status = 481 if ended is None else 200
            if ended is not None:
                ended.set()
        self.send(response_bytes(req, status, headers=[("User-Agent", USER_AGENT)]))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def register(self, call_id: str) -> asyncio.Event:
        """Route responses with this Call-ID to `response(call_id)`; the event is set when
        the focus ends the dialog with a BYE."""
        self._responses.setdefault(call_id, asyncio.Queue())
        return self._ended.setdefault(call_id, asyncio.Event())

    def unregister(self, call_id: str) -> None:
        self._responses.pop(call_id, None)
        self._ended.pop(call_id, None)

    async def response(self, call_id: str, *, final: bool = True) -> Response:
        """The next response of this call (skipping provisional ones when `final`)."""
        if self._error is not None:
            raise SipError(0, str(self._error) or type(self._error).__name__)
        queue = self._responses[call_id]
        while True:
            item = await asyncio.wait_for(queue.get(), self.timeout)
            if item.status == 0:
                raise SipError(0, item.reason)
            if final and item.status < 200:
                continue
            return item

    def via(self, branch: str) -> str:
        return (f"SIP/2.0/{self.transport} {self.local_host}:{self.local_port}"
                f";branch={branch};rport")

    async def close(self) -> None:
        self._reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader_task
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


class ConferenceDialog:
    """A join dialog: INVITE (with Digest), ACK, then BYE to leave."""

    def __init__(self, conn: SipConnection, conference_uri: str, address: str,
                 password: str, *, user_agent: str = USER_AGENT) -> None:
        self.conn = conn
        self.uri: SipURI = parse_uri(conference_uri)
        self.conference_uri = conference_uri
        self.user, self.domain = _split_address(address)
        self.password = password
        self.user_agent = user_agent
        self.call_id = secrets.token_hex(12)
        self.ended = conn.register(self.call_id)
        """Set once the focus ended the dialog with a BYE (its conference ended)."""
        self.local_tag = secrets.token_hex(6)
        self.remote_tag: str | None = None
        self.cseq = 0
        self.remote_target: str = conference_uri
        self.result: JoinResult | None = None
        self._digest = DigestClient(self.user, password)

    def _request(self, method: str, *, uri: str | None = None, cseq: int | None = None,
                 extra: list[tuple[str, str]] | None = None, body: bytes = b"",
                 branch: str | None = None) -> tuple[bytes, str]:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        branch = branch or "z9hG4bK" + secrets.token_hex(8)
        to = f"<{self.conference_uri}>" + (f";tag={self.remote_tag}" if self.remote_tag else "")
        headers = [
            ("Via", self.conn.via(branch)),
            ("Max-Forwards", "70"),
            ("From", f"<sip:{self.user}@{self.domain}>;tag={self.local_tag}"),
            ("To", to),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} {method}"),
            ("Contact", f"<sip:{self.user}@{self.conn.local_host}:{self.conn.local_port};"
                        f"transport={self.conn.transport.lower()}>"),
            ("User-Agent", self.user_agent),
            *(extra or []),
        ]
        req = Request(method, parse_uri(uri or self.conference_uri), Headers(headers), body)
        return serialize(req), branch

    async def join(self, *, sdp_offer: bytes | None = None) -> JoinResult:
        """INVITE; answer one Digest challenge; ACK the 200. Raises SipError otherwise."""
        accept = f"{JOIN_CONTENT_TYPE}, application/sdp, multipart/mixed"
        extra = [("Accept", accept)]
        body = b""
        if sdp_offer is not None:
            extra.append(("Content-Type", "application/sdp"))
            body = sdp_offer
        data, _ = self._request("INVITE", extra=extra, body=body)
        self.conn.send(data)
        resp = await self.conn.response(self.call_id)
        attempts = 0
        while resp.status == 401 and attempts < 2:
            await self._ack_failure(resp)
            attempts += 1
            auth = self._digest.answer(resp.headers.get_fields("WWW-Authenticate"),
                                       method="INVITE", uri=self.conference_uri)
            if auth is None:
                raise SipError(401, "no supported Digest challenge")
            data, _ = self._request("INVITE", extra=[*extra, ("Authorization", auth)],
                                    body=body)
            self.conn.send(data)
            resp = await self.conn.response(self.call_id)
        if resp.status != 200:
            await self._ack_failure(resp)
            self.conn.unregister(self.call_id)
            retry = resp.headers.get("Retry-After")
            raise SipError(resp.status, resp.reason,
                           int(retry) if retry and retry.isdigit() else None)
        to = parse_name_addr(resp.headers.get("To") or "")
        self.remote_tag = to.params.get("tag")
        contact = resp.headers.get("Contact") or ""
        try:
            self.remote_target = str(parse_name_addr(contact).uri)
        except Exception:  # noqa: BLE001 - keep the conference URI as target
            self.remote_target = self.conference_uri
        self.conn.send(self._request("ACK", uri=self.remote_target, cseq=self.cseq)[0])
        self.result = JoinResult.from_admission(self._join_body(resp), contact)
        return self.result

    def _join_body(self, resp: Response) -> Admission:
        ctype = (resp.headers.get("Content-Type") or "").strip()
        body = resp.body
        if ctype.lower().startswith("multipart/"):
            parts = dict(parse_multipart(ctype, body))
            body = parts.get(JOIN_CONTENT_TYPE, b"")
        elif not ctype.lower().startswith(JOIN_CONTENT_TYPE):
            raise SipError(200, f"200 OK without a join body ({ctype or 'no body'})")
        try:
            return Admission.from_bytes(body)
        except JoinBodyError as exc:
            raise SipError(200, str(exc)) from None

    async def _ack_failure(self, resp: Response) -> None:
        """ACK a non-2xx final response (same branch; RFC 3261 §17.1.1.3)."""
        via = resp.headers.get("Via") or ""
        branch = next((p.split("=", 1)[1] for p in via.split(";")
                       if p.strip().startswith("branch=")), None)
        to = resp.headers.get("To") or f"<{self.conference_uri}>"
        saved = self.remote_tag
        self.remote_tag = parse_name_addr(to).params.get("tag")
        self.conn.send(self._request("ACK", cseq=self.cseq, branch=branch)[0])
        self.remote_tag = saved

    async def leave(self) -> int:
        """BYE; returns the status (200 normally, 481 if the focus forgot us; 200 without
        a request when the focus already ended the dialog)."""
        if self.ended.is_set():
            self.conn.unregister(self.call_id)
            return 200
        data, _ = self._request("BYE", uri=self.remote_target)
        self.conn.send(data)
        try:
            resp = await self.conn.response(self.call_id)
        finally:
            self.conn.unregister(self.call_id)
        return resp.status

    async def options(self) -> Response:
        data, _ = self._request("OPTIONS")
        self.conn.send(data)
        return await self.conn.response(self.call_id)
