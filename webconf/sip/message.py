"""SIP messages: parse one complete message, validate a request, serialise, build responses.

`parse_message` reads a datagram-like unit (head + body); the stream framer in `framing.py`
finds message boundaries and calls `parse_head` itself. Parsing is split in two so that a
server can always answer: `parse_head` reads every well-formed header line even when some
line or the start line is bad, and the `SipParseError` it raises carries those headers;
`make_response(error.headers, error.status)` then echoes Via/From/To/Call-ID/CSeq.
`validate_request` adds the RFC 3261 §8.2 checks (mandatory headers, CSeq method, ...) that
are about meaning rather than syntax.

Values stay strings in `Headers`; the typed views (`parse_uri`, `parse_name_addr`,
`parse_via`, `parse_cseq`) live in `syntax.py` and are re-exported here.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeAlias

from .headers import Headers, _canonical_memo, canonical_name, split_list
from .syntax import (
    TOKEN_CHARS,
    NameAddr,
    SipParseError,
    SipURI,
    Via,
    is_token,
    parse_auth_params,
    parse_cseq,
    parse_name_addr,
    parse_uri,
    parse_via,
    quote,
    unquote,
)

__all__ = [
    "MAX_HEADERS",
    "AddressFacts",
    "MAX_MESSAGE_SIZE",
    "Headers",
    "Message",
    "NameAddr",
    "Request",
    "Response",
    "SipParseError",
    "SipURI",
    "Via",
    "address_facts",
    "canonical_name",
    "content_length",
    "is_token",
    "make_response",
    "max_forwards",
    "parse_auth_params",
    "parse_content_length",
    "parse_cseq",
    "parse_head",
    "parse_message",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
    "quote",
    "reason_phrase",
    "response_bytes",
    "salvage_headers",
    "serialize",
    "split_list",
    "unquote",
    "validate_request",
]

MAX_MESSAGE_SIZE = 65536
MAX_HEADERS = 100
MAX_CONTENT_LENGTH = 2**31 - 1
SIP_VERSION = "SIP/2.0"
_VERSION = re.compile(r"SIP/[0-9]+\.[0-9]+", re.IGNORECASE)
MANDATORY_REQUEST_HEADERS = ("Via", "From", "To", "Call-ID", "CSeq", "Max-Forwards")
SINGLE_VALUED = ("From", "To", "Call-ID", "CSeq", "Max-Forwards")


@dataclass
class Request:
    """A SIP request; `headers` hold every field as received (Content-Length included)."""

    method: str
    """Method token, case-sensitive ("INVITE")."""
    uri: SipURI
    """Request-URI (only sip:/sips: are accepted; others give 416)."""
    headers: Headers = field(default_factory=Headers)
    """Header fields in order."""
    body: bytes = b""
    """Body, exactly Content-Length bytes."""
    uri_text: str = field(default="", compare=False, repr=False)
    """The Request-URI as received ("" for a request built here): `str(uri)` without
    re-encoding it (Digest compares it with the digest-uri). Stale if `uri` is replaced."""


@dataclass
class Response:
    """A SIP response."""

    status: int
    """Status code, 100-699."""
    reason: str
    """Reason phrase (may be empty)."""
    headers: Headers = field(default_factory=Headers)
    """Header fields in order."""
    body: bytes = b""
    """Body."""


Message: TypeAlias = Request | Response

REASON_PHRASES = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 204: "No Notification",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Moved Temporarily",
    305: "Use Proxy", 380: "Alternative Service", 400: "Bad Request", 401: "Unauthorized",
    402: "Payment Required", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    406: "Not Acceptable", 407: "Proxy Authentication Required", 408: "Request Timeout",
    410: "Gone", 413: "Request Entity Too Large", 414: "Request-URI Too Long",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme", 420: "Bad Extension",
    421: "Extension Required", 422: "Session Interval Too Small", 423: "Interval Too Brief",
    429: "Too Many Requests", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 489: "Bad Event", 491: "Request Pending",
    493: "Undecipherable", 500: "Server Internal Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Server Time-out",
    505: "Version Not Supported", 513: "Message Too Large", 580: "Precondition Failure",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}  # fmt: skip


def reason_phrase(status: int) -> str:
    """The standard reason phrase for `status` ("Unknown" if none)."""
    return REASON_PHRASES.get(status, "Unknown")


_MEMO_MAX_VALUE = 256
"""Header values up to this length have their parse outcome memoised (bounded memory)."""


# --- parsing ------------------------------------------------------------------------------


def _check_version(version: str, headers: Headers) -> None:
    if version == SIP_VERSION:
        return
    if not _VERSION.fullmatch(version):
        raise SipParseError("Bad SIP Version", headers=headers)
    if version.upper() != SIP_VERSION:
        raise SipParseError("Version Not Supported", status=505, headers=headers)


def parse_head(head: bytes | bytearray, *, max_headers: int = MAX_HEADERS) -> Message:
    """Parse a start line and header block (without the blank line); body left empty.

    Raises SipParseError whose `headers` hold every well-formed header field.
    """
    text = head.decode("utf-8", "surrogateescape")
    lines = text.split("\r\n")
    # No CR or LF outside the CRLFs split on (the rule): no line needs checking for them.
    clean = text.count("\r") == text.count("\n") == len(lines) - 1
    fields = _match_fields(lines) if clean else None
    error: str | None = None
    if fields is None:
        fields, error = _scan_fields(lines, clean)
    headers = Headers.from_canonical(fields)
    if len(headers) > max_headers:
        error = "Too Many Headers"
    return _parse_start(lines[0], headers, error)


def _match_fields(lines: list[str]) -> list[tuple[str, str]] | None:
    """The header fields of a head without bare CR or LF when every line after the start
    line is a plain `token: value`, else None (folding, a bad or empty line: the exact
    loop of `_scan_fields` decides). One partition per line, no per-character work."""
    fields: list[tuple[str, str]] = []
    append, is_name, memo = fields.append, TOKEN_CHARS.issuperset, _canonical_memo
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if name[-1:] in (" ", "\t"):
            name = name.rstrip(" \t")
        if not colon or not name or not is_name(name):
            return None
        append((memo.get(name) or canonical_name(name), value.strip(" \t")))
    return fields


def _scan_fields(lines: list[str], clean: bool) -> tuple[list[tuple[str, str]], str | None]:
    """The well-formed header fields among `lines` (after the start line), folded lines
    joined, and the first problem met; `clean`: no line holds a bare CR or LF."""
    fields: list[tuple[str, str]] = []
    error: str | None = None
    open_field = False
    """The last line was a header line (or its continuation): a folded line extends it."""
    parts: list[str] | None = None
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and (clean or ("\r" not in line and "\n" not in line)):
            if not open_field:
                error = error or "Bad Header Folding"
            else:
                if parts is None:
                    parts = [fields[-1][1]]
                parts.append(line.strip(" \t"))
                fields[-1] = (fields[-1][0], " ".join(parts).strip(" \t"))
            continue
        open_field = False
        if not line:
            continue
        colon = line.find(":")
        candidate = line[:colon].rstrip(" \t") if colon > 0 else ""
        if not is_token(candidate) or (not clean and ("\r" in line or "\n" in line)):
            error = error or "Bad Header Line"
            continue
        fields.append((canonical_name(candidate), line[colon + 1 :].strip(" \t")))
        open_field, parts = True, None
    return fields, error


_uri_memo: dict[str, SipURI] = {}
_URI_MEMO_MAX = 1024


def _request_uri(text: str) -> SipURI:
    """`parse_uri(text)`, memoised: the Request-URIs a focus sees are few (the conference
    URIs, and its own Contacts for in-dialog requests). Each call returns its own copy."""
    if len(text) > _MEMO_MAX_VALUE:
        return parse_uri(text)
    uri = _uri_memo.get(text)
    if uri is None:
        uri = parse_uri(text)  # errors are not memoised
        if len(_uri_memo) >= _URI_MEMO_MAX:
            _uri_memo.clear()
        _uri_memo[text] = uri
    return SipURI(host=uri.host, scheme=uri.scheme, user=uri.user, password=uri.password,
                  port=uri.port, params=dict(uri.params), headers=dict(uri.headers))


def _parse_start(start: str, headers: Headers, error: str | None) -> Message:
    """The message of a start line over its parsed `headers`; `error`: the first header
    line problem (raised once the start line is known to be good)."""
    message: Message
    if start[:4].upper() == "SIP/":
        fields = start.split(" ", 2)
        _check_version(fields[0], headers)
        code = fields[1] if len(fields) > 1 else ""
        if len(code) != 3 or not code.isascii() or not code.isdigit() or code[0] not in "123456":
            raise SipParseError("Bad Status-Line", headers=headers)
        reason = fields[2] if len(fields) > 2 else ""
        if "\r" in reason or "\n" in reason:
            raise SipParseError("Bad Status-Line", headers=headers)
        message = Response(int(code), reason, headers)
    else:
        fields = start.split(" ")
        if len(fields) != 3 or not is_token(fields[0]):
            raise SipParseError("Bad Request-Line", headers=headers)
        _check_version(fields[2], headers)
        try:
            uri = _request_uri(fields[1])
        except SipParseError as exc:
            exc.headers = headers
            raise
        message = Request(fields[0], uri, headers, uri_text=fields[1])
    if error is not None:
        raise SipParseError(error, headers=headers)
    return message


def parse_content_length(value: str) -> int:
    """A Content-Length value: digits (leading zeros allowed), below 2**31."""
    digits = value.strip(" \t")
    if not digits.isascii() or not digits.isdigit() or len(digits.lstrip("0")) > 10:
        raise SipParseError("Bad Content-Length")
    length = int(digits)
    if length > MAX_CONTENT_LENGTH:
        raise SipParseError("Bad Content-Length")
    return length


def content_length(headers: Headers) -> int | None:
    """The declared body length, None if absent; conflicting duplicates are an error."""
    try:
        lengths = {parse_content_length(v) for v in headers.view("Content-Length")}
    except SipParseError as exc:
        exc.headers = headers
        raise
    if len(lengths) > 1:
        raise SipParseError("Conflicting Content-Length", headers=headers)
    return lengths.pop() if lengths else None


def parse_message(data: bytes, *, max_size: int = MAX_MESSAGE_SIZE) -> Message:
    """Parse one complete message. Bytes beyond Content-Length are ignored (RFC 3261 §18.3);
    without Content-Length the rest is the body (datagram rule; streams require it)."""
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2
    if len(data) - start > max_size:
        headers = salvage_headers(data[start : start + max_size])
        raise SipParseError("Message Too Large", status=513, headers=headers)
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        raise SipParseError("Incomplete Message")
    message = parse_head(data[start:end])
    body = data[end + 4 :]
    length = content_length(message.headers)
    if length is not None:
        if len(body) < length:
            raise SipParseError("Truncated Body", headers=message.headers)
        body = body[:length]
    message.body = body
    return message


def salvage_headers(data: bytes) -> Headers | None:
    """Best-effort headers from the start of a message we refuse (e.g. too large): the
    complete header lines before the blank line or the cut, for the error response."""
    cut = data.find(b"\r\n\r\n")
    head = data[:cut] if cut >= 0 else data[: max(data.rfind(b"\r\n"), 0)]
    try:
        return parse_head(head).headers
    except SipParseError as exc:
        return exc.headers


# --- validation ---------------------------------------------------------------------------


def max_forwards(message: Message) -> int:
    """The Max-Forwards value (0-255). A proxy answers 0 with 483 Too Many Hops."""
    value = (message.headers.get("Max-Forwards") or "").strip(" \t")
    if not value.isascii() or not value.isdigit() or len(value.lstrip("0")) > 3:
        raise SipParseError("Bad Max-Forwards", headers=message.headers)
    hops = int(value)
    if hops > 255:
        raise SipParseError("Bad Max-Forwards", headers=message.headers)
    return hops


@dataclass(frozen=True, slots=True)
class AddressFacts:
    """What a server reads from a From or To value, once per distinct value."""

    has_tag: bool
    """A `tag` parameter is present (even without a value)."""
    tag: str | None
    """The tag as written; None if absent or empty."""
    host: str
    """The URI's host, case preserved."""
    user: str | None
    """The URI's user part, decoded."""


def _address_facts(value: str) -> AddressFacts | None:
    try:
        addr = parse_name_addr(value)
    except SipParseError:
        return None
    tag = addr.params.get("tag")
    return AddressFacts("tag" in addr.params, tag or None, addr.uri.host, addr.uri.user)


_address_memo = functools.lru_cache(maxsize=2048)(_address_facts)


def address_facts(value: str) -> AddressFacts | None:
    """`AddressFacts` of a From/To value, None if `parse_name_addr` refuses it; memoised
    for values up to 256 characters: a request's From and To are read several times
    (validation, the To tag of a response, the dialog key), a dialog repeats them and
    every INVITE to a conference has the same To."""
    if len(value) > _MEMO_MAX_VALUE:
        return _address_facts(value)
    return _address_memo(value)


def validate_request(request: Request, *, max_headers: int = MAX_HEADERS) -> None:
    """RFC 3261 §8.2 checks on a parsed request; raises SipParseError (400)."""
    headers = request.headers

    def fail(reason: str) -> SipParseError:
        return SipParseError(reason, headers=headers)

    if len(headers) > max_headers:
        raise fail("Too Many Headers")
    view = headers.view
    for name in MANDATORY_REQUEST_HEADERS:
        if not view(name):
            raise fail(f"Missing {name}")
    for name in SINGLE_VALUED:
        if len(view(name)) > 1:
            raise fail(f"Duplicate {name}")
    content_length(headers)
    vias = headers.get_all("Via")
    if not vias:
        raise fail("Missing Via")
    try:
        for value in vias:
            parse_via(value)
    except SipParseError as exc:
        raise fail("Bad Via") from exc
    for name in ("From", "To"):
        value = view(name)[0]  # present (checked above), and not a list header
        if address_facts(value) is not None:
            continue
        try:
            parse_name_addr(value)
        except SipParseError as exc:
            raise fail(f"Bad {name}") from exc
    call_id = view("Call-ID")[0]
    if not call_id or " " in call_id or "\t" in call_id:
        raise fail("Bad Call-ID")
    try:
        _, method = parse_cseq(view("CSeq")[0])
    except SipParseError as exc:
        raise fail("Bad CSeq") from exc
    if method != request.method:
        raise fail("CSeq Method Mismatch")
    max_forwards(request)


# --- output -------------------------------------------------------------------------------


def serialize(message: Message) -> bytes:
    """Wire form with CRLF line ends and one correct Content-Length (placed where the first
    one was, else last). Raises ValueError for values that would break the framing."""
    if isinstance(message, Request):
        if not is_token(message.method):
            raise ValueError(f"bad method {message.method!r}")
        lines = [f"{message.method} {message.uri} {SIP_VERSION}"]
    else:
        if not 100 <= message.status <= 699 or "\r" in message.reason or "\n" in message.reason:
            raise ValueError("bad status line")
        lines = [f"{SIP_VERSION} {message.status} {message.reason}"]
    return _finish(lines, message.headers, message.body)


def _with_tag(to_value: str, tag: str) -> str:
    facts = address_facts(to_value)  # unreadable, or tagged already: left as it is
    return to_value if facts is None or facts.has_tag else f"{to_value};tag={tag}"


def make_response(
    source: Request | Headers,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """A response copying Via (all, in order), From, To, Call-ID and CSeq (RFC 3261 §8.2.6).

    `source` is the request, or the partial `SipParseError.headers` of one that failed to
    parse. `to_tag` is appended to To unless it already has a tag. `headers` follow the
    copied ones; Content-Length is written by `serialize`.
    """
    if to_tag is not None and not is_token(to_tag):
        raise ValueError(f"bad tag {to_tag!r}")
    src = source.headers if isinstance(source, Request) else source
    out = Headers()
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        for value in src.get_fields(name):
            if name == "To" and to_tag is not None:
                value = _with_tag(value, to_tag)
            out.add(name, value)
    for name, value in headers:
        out.add(name, value)
    return Response(status, reason_phrase(status) if reason is None else reason, out, body)


def _finish(lines: list[str], headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    """The start line(s) in `lines`, then `headers` (canonical names) with one correct
    Content-Length where the first one was, else last, then `body`: the wire form. Raises
    ValueError for a header that would break the framing."""
    length_line = f"Content-Length: {len(body)}"
    for name, value in headers:
        if not is_token(name) or "\r" in value or "\n" in value:
            raise ValueError(f"bad header field {name!r}")
        if name == "Content-Length":
            if length_line:
                lines.append(length_line)
                length_line = ""
            continue
        lines.append(f"{name}: {value}")
    if length_line:
        lines.append(length_line)
    lines += ["", ""]
    return "\r\n".join(lines).encode("utf-8", "surrogateescape") + body


_ECHOED = (("Via", "via"), ("From", "from"), ("To", "to"), ("Call-ID", "call-id"),
           ("CSeq", "cseq"))


def response_bytes(
    source: Request | Headers,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> bytes:
    """`serialize(make_response(...))` with the same arguments, byte for byte and with the
    same ValueErrors, written straight to bytes: no `Headers` or `Response` in between (a
    server answers every request; this is its hot path)."""
    if to_tag is not None and not is_token(to_tag):
        raise ValueError(f"bad tag {to_tag!r}")
    src = source.headers if isinstance(source, Request) else source
    if reason is None:
        reason = reason_phrase(status)
    if not 100 <= status <= 699 or "\r" in reason or "\n" in reason:
        raise ValueError("bad status line")
    lines = [f"{SIP_VERSION} {status} {reason}"]
    for name, key in _ECHOED:
        for value in src.view(key):
            if to_tag is not None and key == "to":
                value = _with_tag(value, to_tag)
            if "\r" in value or "\n" in value:
                raise ValueError(f"bad header field {name!r}")
            lines.append(f"{name}: {value}")
    return _finish(lines, ((canonical_name(name), value) for name, value in headers), body)
