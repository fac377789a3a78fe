"""Message framing for SIP over WebSocket (RFC 7118 §5): one SIP message per WebSocket message.

The WebSocket layer delimits messages, so there is no stream to resynchronise: every fed
unit is one message, and every error is about that message alone (never fatal; the
connection goes on). `MessageFramer` has the interface of `SipFramer` (framing.py), so the
focus core keeps one framer per connection whatever the transport; `framer_for` picks it.

Rules (RFC 7118 §5.1 leaves Content-Length optional; the datagram rules of RFC 3261 §18.3
apply): a body longer than Content-Length is cut to it; a shorter one is 400. A message
larger than the cap is 513 (the WebSocket layer normally refuses it first). A unit of CRLFs
only is a keep-alive ping (SIP.js sends "\\r\\n\\r\\n" over WebSocket): answered with CRLF.
"""

from __future__ import annotations

from collections import deque
from typing import TypeAlias

from .framing import FramerEvent, FramingError, KeepAlive, NeedData, SipFramer
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

MESSAGE_TRANSPORTS = frozenset({"WS", "WSS"})
"""Via transports whose connections carry one message per unit (RFC 7118)."""
MAX_QUEUED = 64
"""Units fed but not yet taken; more are dropped (the edge feeds one at a time)."""


class MessageFramer:
    """Receive queue of whole messages, with `SipFramer`'s interface."""

    def __init__(self, *, max_message_size: int = MAX_MESSAGE_SIZE,
                 max_headers: int = MAX_HEADERS) -> None:
        self.max_message_size = max_message_size
        self.max_headers = max_headers
        self._units: deque[bytes] = deque()
        self._buffered = 0

    @property
    def closed(self) -> bool:
        """Never: an error concerns one message only."""
        return False

    @property
    def buffered(self) -> int:
        """Bytes of the units fed but not yet taken (whole messages, never a partial one)."""
        return self._buffered

    def feed(self, data: bytes) -> None:
        """Queue one whole message (one WebSocket message); b"" is nothing."""
        if data and len(self._units) < MAX_QUEUED:
            self._units.append(bytes(data))
            self._buffered += len(data)

    def next_event(self) -> FramerEvent:
        """The next unit as a message, a keep-alive or a (non-fatal) error; else NeedData."""
        if not self._units:
            return NeedData()
        unit = self._units.popleft()
        self._buffered -= len(unit)
        if not unit.strip(b"\r\n"):
            return KeepAlive()
        return self._parse(unit.lstrip(b"\r\n"))

    def _parse(self, unit: bytes) -> FramerEvent:
        is_response = unit[:4].upper() == b"SIP/"
        if len(unit) > self.max_message_size:
            headers = salvage_headers(unit[: self.max_message_size])
            return FramingError(513, "Message Too Large", False, headers, is_response)
        end = unit.find(b"\r\n\r\n")
        if end < 0:
            return FramingError(400, "Incomplete Message", False, salvage_headers(unit),
                                is_response)
        try:
            message: Message = parse_head(unit[:end], max_headers=self.max_headers)
        except SipParseError as exc:
            return FramingError(exc.status, exc.reason, False, exc.headers, is_response)
        body = unit[end + 4:]
        try:
            length = content_length(message.headers)
        except SipParseError as exc:
            return self._error(exc.reason, message.headers, is_response)
        if length is not None:
            if len(body) < length:
                return self._error("Truncated Body", message.headers, is_response)
            body = body[:length]
        message.body = body
        return message

    @staticmethod
    def _error(reason: str, headers: Headers, is_response: bool) -> FramingError:
        return FramingError(400, reason, False, headers, is_response)


Framer: TypeAlias = SipFramer | MessageFramer


def framer_for(transport: str, *, max_message_size: int = MAX_MESSAGE_SIZE) -> Framer:
    """The framer of a connection over `transport` ("TLS", "TCP", "WSS", ...)."""
    if transport.upper() in MESSAGE_TRANSPORTS:
        return MessageFramer(max_message_size=max_message_size)
    return SipFramer(max_message_size=max_message_size)


__all__ = ["MESSAGE_TRANSPORTS", "Framer", "MessageFramer", "framer_for"]
