"""Stream framing for SIP over TCP/TLS (RFC 3261 §18.3), with CRLF keep-alives (RFC 5626).

Operations: `feed(bytes)` appends to a receive buffer; `next_event()` returns one parsed
message, a `KeepAlive`, a `FramingError`, or `NeedData` when the buffer holds no complete unit.
Call `next_event()` until it returns `NeedData`.

Goals: a peer that drips one byte at a time costs O(n) in total, and a peer can never make
us hold more than `max_message_size` bytes of one message.

Plan (after h11's receive buffer): at a message boundary, skip stray CRLFs and answer a
double CRLF as a keep-alive ping. Then search for the blank line, remembering how far the
previous search got, so every byte is examined once. When the head is complete, parse it
once and remember the declared Content-Length; then wait for the body without re-parsing.
Deleting consumed bytes from the front of a bytearray is amortised O(1) in CPython.

Errors: a message whose boundary is still known (bad start line, bad header line, too many
headers) is skipped and reported as a non-fatal `FramingError` with the headers we could
read, so the caller answers it and goes on. Without a usable Content-Length, or past the
size cap, the boundary is lost: the error is fatal, sticky (returned on every later call)
and further input is discarded; the caller sends the response and closes the connection.

Weaknesses: bare-LF line ends are not accepted (RFC 3261 requires CRLF). A ping is
recognised only at a message boundary, and a lone CRLF right before a ping makes the ping's
second half look like a stray CRLF (harmless: the pong is a courtesy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from .headers import Headers
from .message import (
    MAX_HEADERS,
    MAX_MESSAGE_SIZE,
    Message,
    SipParseError,
    content_length,
    parse_head,
    salvage_headers,
)

_CRLF = b"\r\n"
_PING = b"\r\n\r\n"


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """A double-CRLF ping (RFC 5626 §4.4.1): answer with a single CRLF."""


@dataclass(frozen=True, slots=True)
class NeedData:
    """Nothing complete is buffered; feed more bytes."""


@dataclass(frozen=True, slots=True)
class FramingError:
    """A message that cannot be accepted."""

    status: int
    """Status code for the error response (400, 505, 513, ...)."""
    reason: str
    """Reason phrase for the error response."""
    fatal: bool
    """True when the stream cannot be resynchronised: answer, then close."""
    headers: Headers | None = None
    """Headers read before the failure, for `make_response` (None if nothing usable)."""
    is_response: bool = False
    """The unit started with "SIP/": it was a response, which is never answered."""


FramerEvent: TypeAlias = Message | KeepAlive | NeedData | FramingError
_NEED_DATA = NeedData()
_KEEP_ALIVE = KeepAlive()
"""Both carry nothing: one instance each serves every call."""


@dataclass(slots=True)
class _Pending:
    """A parsed head waiting for its body."""

    message: Message | None
    error: SipParseError | None
    head_size: int
    body_size: int
    is_response: bool


class SipFramer:
    """Receive buffer that turns a byte stream into SIP messages."""

    def __init__(
        self, *, max_message_size: int = MAX_MESSAGE_SIZE, max_headers: int = MAX_HEADERS
    ) -> None:
        self.max_message_size = max_message_size
        self.max_headers = max_headers
        self.bytes_scanned = 0
        """Bytes examined while searching for head ends (a work counter for tests)."""
        self._buf = bytearray()
        self._searched = 0
        self._pending: _Pending | None = None
        self._fatal: FramingError | None = None

    @property
    def closed(self) -> bool:
        """True after a fatal error: input is discarded from then on."""
        return self._fatal is not None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        """Append received bytes (discarded once the framer is closed)."""
        if self._fatal is None:
            self._buf += data

    def next_event(self) -> FramerEvent:
        """The next complete unit in the buffer, or NeedData."""
        if self._fatal is not None:
            return self._fatal
        if self._pending is None:
            event = self._read_head()
            if event is not None:
                return event
        pending = self._pending
        assert pending is not None
        total = pending.head_size + pending.body_size
        if len(self._buf) < total:
            return _NEED_DATA
        body = bytes(self._buf[pending.head_size : total]) if pending.body_size else b""
        self._consume(total)
        self._pending = None
        if pending.error is not None or pending.message is None:
            error = pending.error or SipParseError("Bad Request")
            return FramingError(
                error.status, error.reason, False, error.headers, pending.is_response
            )
        pending.message.body = body
        return pending.message

    def _consume(self, count: int) -> None:
        del self._buf[:count]
        self._searched = 0

    def _fail(self, status: int, reason: str, headers: Headers | None) -> FramingError:
        is_response = self._buf[:4].upper() == b"SIP/"
        self._fatal = FramingError(status, reason, True, headers, is_response)
        self._buf = bytearray()
        return self._fatal

    def _read_head(self) -> FramerEvent | None:
        """Skip CRLFs and parse a head into `_pending`; an event if we cannot go on."""
        buf = self._buf
        while buf[:1] == b"\r":
            if len(buf) < 4 and _PING.startswith(buf):
                return _NEED_DATA
            if buf.startswith(_PING):
                self._consume(4)
                return _KEEP_ALIVE
            if not buf.startswith(_CRLF):
                break
            self._consume(2)
        if not buf:
            return _NEED_DATA
        start = max(0, self._searched - 3)
        end = buf.find(_PING, start)
        self.bytes_scanned += (len(buf) if end < 0 else end + 4) - start
        if end < 0:
            self._searched = len(buf)
            if len(buf) > self.max_message_size:
                return self._too_large(None)
            return _NEED_DATA
        head_size = end + 4
        if head_size > self.max_message_size:
            return self._too_large(None)
        message: Message | None = None
        error: SipParseError | None = None
        try:
            message = parse_head(buf[:end], max_headers=self.max_headers)
            headers: Headers | None = message.headers
        except SipParseError as exc:
            error, headers = exc, exc.headers
        if headers is None:
            return self._fail(400, "Bad Request", None)
        try:
            body_size = content_length(headers)
        except SipParseError as exc:
            return self._fail(400, exc.reason, headers)
        if body_size is None:
            return self._fail(400, "Missing Content-Length", headers)
        if head_size + body_size > self.max_message_size:
            return self._too_large(headers)
        is_response = buf[:4].upper() == b"SIP/"
        self._pending = _Pending(message, error, head_size, body_size, is_response)
        return None

    def _too_large(self, headers: Headers | None) -> FramingError:
        if headers is None:
            headers = salvage_headers(bytes(self._buf[: self.max_message_size]))
        return self._fail(513, "Message Too Large", headers)
