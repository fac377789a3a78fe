"""SIP header-value grammar (RFC 3261 §25): URIs, name-addr, Via, CSeq, Digest params.

Operations: `parse_uri`, `parse_name_addr`, `parse_via`, `parse_cseq`, `parse_auth_params`,
and `str()` of the three dataclasses, which re-parses to an equal object.

Plan: a tiny cursor (`_Scanner`) over one already-unfolded header value (the message layer
joins folded lines with a space and rejects bare CR/LF), so only SP/HT count as whitespace.
URIs contain no whitespace and are split on their delimiters instead. Every failure is a
`SipParseError`, never another exception, so a server can always answer (usually 400).

Normalisation, so that equality means "same on the wire" for our purposes:
- URI scheme, Via transport and protocol, and every parameter *name* are lower/upper-cased
  (they are case-insensitive); hosts and values keep their case.
- URI components are stored %-decoded (`sip:%61lice@x` has user "alice") and re-escaped by
  `str()`; bytes that are not UTF-8 survive as surrogate escapes.
- Header parameter values (tag, +sip.instance, ...) are kept as written, quotes included:
  `unquote()` them when the quoted form matters. Display names are stored unquoted.
- A parameter given twice is an error (400), as is any trailing garbage.
"""

from __future__ import annotations

import functools
import re
import string
from dataclasses import dataclass, field
from urllib.parse import quote as _pct_quote
from urllib.parse import unquote as _pct_unquote

from .headers import Headers

TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "-.!%*_+`'~")
_WS = " \t"
_UNRESERVED = "-_.!~*'()"
_USER_SAFE = _UNRESERVED + "&=+$,;?/"
_PASSWORD_SAFE = _UNRESERVED + "&=+$,"
_PARAM_SAFE = _UNRESERVED + "[]/:&+$"
_HEADER_SAFE = _UNRESERVED + "[]/?:+$"
_URI_FORBIDDEN = frozenset(' \t\r\n<>"') | frozenset(chr(c) for c in range(0x20)) | {"\x7f"}
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?")
_IPV6_REF = re.compile(r"\[[0-9A-Fa-f:.]+\]")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
# Stop characters for an unquoted parameter value (token / host / IPv6 reference).
_VALUE_STOP = frozenset(_WS + ';,"<>=\\')
_PLAIN_QUOTABLE = re.compile(r'[^"\\\x00-\x1f\x7f]*')
"""Text `quote()` copies as it is: no quote, backslash or control character."""
# Fast paths: each parser below first tries one precompiled regex for the common, simple
# form of its input, and falls back to the exact `_Scanner` grammar whenever that regex
# does not match (so errors, and every rarer spelling, are decided by the slow path alone).
_TOK = r"[A-Za-z0-9.!%*_+`'~-]+"
_SIMPLE_PARAMS = rf"(?:;{_TOK}(?:=[^ \t;,\"<>=\\]+)?)*"
"""Header parameters without whitespace or quoted values."""
_VIA_FAST = re.compile(
    rf"({_TOK})/({_TOK})/({_TOK}) ([^ \t:;,\[]+|\[[^\]]*\])(?::([0-9]+))?({_SIMPLE_PARAMS})")
_NAME_ADDR_FAST = re.compile(
    rf'[ \t]*(?:("(?:[^"\\\r\n]|\\[^\r\n])*")[ \t]*)?<([^>]*)>({_SIMPLE_PARAMS})')
_CSEQ_FAST = re.compile(rf"[ \t]*([0-9]{{1,10}})[ \t]+({_TOK})[ \t]*")
_AUTH_SCHEME_FAST = re.compile(rf"[ \t]*({_TOK})(?:[ \t]+|\Z)")
_AUTH_PARAM_FAST = re.compile(
    rf'[ \t,]*({_TOK})[ \t]*=[ \t]*(?:("(?:[^"\\\r\n]|\\[^\r\n])*")|([^ \t,"]+))'
    r"[ \t]*(?=,|\Z)")
_AUTH_END_FAST = re.compile(r"[ \t,]*\Z")
MAX_CSEQ = 2**31 - 1


class SipParseError(Exception):
    """A message or header value that cannot be accepted.

    Reasons never quote the offending input, so they are safe to use as reason phrases.

    `status` is the response to send (400 unless stated), `reason` its reason phrase, and
    `headers` the header fields read before the failure (or None), so that `make_response`
    can still copy Via/From/To/Call-ID/CSeq.
    """

    def __init__(self, reason: str, status: int = 400, headers: Headers | None = None) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers


def is_token(text: str) -> bool:
    """True if `text` is a non-empty RFC 3261 token."""
    return bool(text) and TOKEN_CHARS.issuperset(text)  # the loop runs in C


def quote(text: str) -> str:
    """Render `text` as a quoted-string, backslash-escaping `"`, `\\` and controls."""
    if _PLAIN_QUOTABLE.fullmatch(text):  # nothing to escape (realms, nonces, URIs)
        return f'"{text}"'
    out = ['"']
    for c in text:
        if c in "\r\n":
            raise ValueError("CR and LF cannot appear in a quoted-string")
        if c in '"\\' or (ord(c) < 0x20 and c != "\t") or c == "\x7f":
            out.append("\\")
        out.append(c)
    out.append('"')
    return "".join(out)


def unquote(text: str) -> str:
    """Undo `quote()`; text that is not a quoted-string is returned unchanged."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        sc = _Scanner(text)
        value = sc.quoted()
        if sc.eof():
            return _unescape_quoted(value)
    return text


def _unescape_quoted(raw: str) -> str:
    """`raw` is a validated quoted-string including its quotes."""
    out: list[str] = []
    i, end = 1, len(raw) - 1
    while i < end:
        if raw[i] == "\\":
            i += 1
        out.append(raw[i])
        i += 1
    return "".join(out)


class _Scanner:
    """Cursor over one header value; every method raises SipParseError on bad input."""

    __slots__ = ("s", "i", "what")

    def __init__(self, s: str, what: str = "Header") -> None:
        self.s = s
        self.i = 0
        self.what = what

    def fail(self, detail: str) -> SipParseError:
        return SipParseError(f"Bad {self.what}: {detail}")

    def eof(self) -> bool:
        return self.i >= len(self.s)

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def ws(self) -> bool:
        start = self.i
        while self.i < len(self.s) and self.s[self.i] in _WS:
            self.i += 1
        return self.i > start

    def take(self, ch: str) -> bool:
        if self.peek() == ch:
            self.i += 1
            return True
        return False

    def expect(self, ch: str) -> None:
        if not self.take(ch):
            raise self.fail(f"expected {ch!r}")

    def token(self) -> str:
        start = self.i
        while self.i < len(self.s) and self.s[self.i] in TOKEN_CHARS:
            self.i += 1
        if self.i == start:
            raise self.fail("expected a token")
        return self.s[start : self.i]

    def until(self, stop: frozenset[str]) -> str:
        start = self.i
        while self.i < len(self.s) and self.s[self.i] not in stop:
            self.i += 1
        return self.s[start : self.i]

    def quoted(self) -> str:
        """A quoted-string, returned raw (quotes and escapes included)."""
        start = self.i
        self.expect('"')
        while self.i < len(self.s):
            c = self.s[self.i]
            if c == '"':
                self.i += 1
                return self.s[start : self.i]
            if c == "\\":
                if self.i + 1 >= len(self.s) or self.s[self.i + 1] in "\r\n":
                    break
                self.i += 1
            elif c in "\r\n":
                break
            self.i += 1
        raise self.fail("unterminated quoted-string")

    def params(self) -> dict[str, str | None]:
        """`*(SEMI name [EQUAL value])`, names lower-cased, values kept as written."""
        out: dict[str, str | None] = {}
        while True:
            self.ws()
            if self.eof():
                return out
            self.expect(";")
            self.ws()
            name = self.token().lower()
            self.ws()
            value: str | None = None
            if self.take("="):
                self.ws()
                value = self.quoted() if self.peek() == '"' else self.until(_VALUE_STOP)
                if not value:
                    raise self.fail("empty parameter value")
            if name in out:
                raise self.fail("duplicate parameter")
            out[name] = value


def _simple_params(text: str) -> dict[str, str | None] | None:
    """`;name[=value]...` already matched by `_SIMPLE_PARAMS`: names lower-cased; None for
    a duplicate name (the scanner decides that error)."""
    out: dict[str, str | None] = {}
    if not text:
        return out
    for item in text[1:].split(";"):
        name, eq, value = item.partition("=")
        name = name.lower()
        if name in out:
            return None
        out[name] = value if eq else None
    return out


def _params_str(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


# --- SIP URIs -----------------------------------------------------------------------------


def _decode(raw: str, what: str) -> str:
    if "%" not in raw:  # nothing escaped: unquote would return it unchanged
        return raw
    if _BAD_ESCAPE.search(raw):
        raise SipParseError(f"Bad URI: invalid escape in {what}")
    return _pct_unquote(raw, encoding="utf-8", errors="surrogateescape")


def _encode(text: str, safe: str) -> str:
    return _pct_quote(text, safe=safe, encoding="utf-8", errors="surrogateescape")


def _check_host(host: str, what: str = "URI") -> str:
    if not (_HOSTNAME.fullmatch(host) or _IPV6_REF.fullmatch(host)):
        raise SipParseError(f"Bad {what}: bad host")
    return host


def _parse_port(text: str, what: str = "URI") -> int:
    if not text.isascii() or not text.isdigit() or len(text.lstrip("0")) > 5:
        raise SipParseError(f"Bad {what}: bad port")
    port = int(text)
    if port > 65535:
        raise SipParseError(f"Bad {what}: bad port")
    return port


@dataclass(kw_only=True, slots=True)
class SipURI:
    """A `sip:` or `sips:` URI (RFC 3261 §19.1), components %-decoded."""

    host: str
    """Host name, IPv4 address or bracketed IPv6 reference, case preserved."""
    scheme: str = "sip"
    """Scheme: "sip" or "sips" (lower case)."""
    user: str | None = None
    """User part, decoded (`alice` for the conference URI of an organizer)."""
    password: str | None = None
    """Password part (deprecated by RFC 3261, kept for round-tripping)."""
    port: int | None = None
    """Explicit port, or None."""
    params: dict[str, str | None] = field(default_factory=dict)
    """URI parameters in order, names lower-cased; `gruu` and `lr` have the value None."""
    headers: dict[str, str] = field(default_factory=dict)
    """URI headers (`?name=value&...`), decoded, names as written."""

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(_encode(self.user, _USER_SAFE))
            if self.password is not None:
                out += [":", _encode(self.password, _PASSWORD_SAFE)]
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        for name, value in self.params.items():
            out += [";", _encode(name, _PARAM_SAFE)]
            if value is not None:
                out += ["=", _encode(value, _PARAM_SAFE)]
        sep = "?"
        for name, hvalue in self.headers.items():
            out += [sep, _encode(name, _HEADER_SAFE), "=", _encode(hvalue, _HEADER_SAFE)]
            sep = "&"
        return "".join(out)


def parse_uri(text: str) -> SipURI:
    """Parse a SIP/SIPS URI; other schemes raise SipParseError with status 416."""
    colon = text.find(":")
    scheme = text[:colon] if colon > 0 else ""
    if not _SCHEME.fullmatch(scheme):
        raise SipParseError("Bad URI: no scheme")
    scheme = scheme.lower()
    if scheme not in ("sip", "sips"):
        raise SipParseError("Unsupported URI Scheme", status=416)
    rest = text[colon + 1 :]
    if not _URI_FORBIDDEN.isdisjoint(rest):  # the loop runs in C
        raise SipParseError("Bad URI: forbidden character")
    user = password = None
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        raw_user, sep, raw_password = userinfo.partition(":")
        if not raw_user:
            raise SipParseError("Bad URI: empty user")
        user = _decode(raw_user, "user")
        password = _decode(raw_password, "password") if sep else None
    rest, qmark, raw_headers = rest.partition("?")
    hostport, *raw_params = rest.split(";")
    if hostport.startswith("["):
        close = hostport.find("]")
        host, port_text = hostport[: close + 1], hostport[close + 1 :]
        if close < 0 or (port_text and not port_text.startswith(":")):
            raise SipParseError("Bad URI: bad IPv6 reference")
    else:
        colon = hostport.find(":")
        host, port_text = (hostport, "") if colon < 0 else (hostport[:colon], hostport[colon:])
    uri = SipURI(scheme=scheme, user=user, password=password, host=_check_host(host))
    if port_text:
        uri.port = _parse_port(port_text[1:])
    for item in raw_params:
        raw_name, eq, raw_value = item.partition("=")
        if not raw_name:
            raise SipParseError("Bad URI: empty parameter")
        name = _decode(raw_name, "parameter").lower()
        if name in uri.params:
            raise SipParseError("Bad URI: duplicate parameter")
        uri.params[name] = _decode(raw_value, "parameter") if eq else None
    if qmark:
        for item in raw_headers.split("&"):
            raw_name, eq, raw_value = item.partition("=")
            if not raw_name or not eq:
                raise SipParseError("Bad URI: bad header")
            name = _decode(raw_name, "header")
            if name in uri.headers:
                raise SipParseError("Bad URI: duplicate header")
            uri.headers[name] = _decode(raw_value, "header")
    return uri


# --- name-addr (From, To, Contact, Route, Refer-To, ...) ---------------------------------


@dataclass(kw_only=True, slots=True)
class NameAddr:
    """`["Display" ]<uri>;params` or bare `uri;params` (RFC 3261 §20.10)."""

    uri: SipURI
    """The address; in bare form it never has parameters (they belong to the header)."""
    display_name: str | None = None
    """Display name, unquoted and unescaped; None if absent ("" if given as `""`)."""
    params: dict[str, str | None] = field(default_factory=dict)
    """Header parameters (`tag`, `+sip.instance`, `isfocus` -> None), values as written."""

    @property
    def tag(self) -> str | None:
        """The `tag` parameter, if any."""
        return self.params.get("tag")

    def __str__(self) -> str:
        prefix = "" if self.display_name is None else quote(self.display_name) + " "
        return f"{prefix}<{self.uri}>{_params_str(self.params)}"


def parse_name_addr(text: str) -> NameAddr:
    """Parse one From/To/Contact-style value (a single one: no top-level commas)."""
    fast = _NAME_ADDR_FAST.fullmatch(text)
    if fast is not None:
        params = _simple_params(fast.group(3))
        if params is not None:
            raw_display = fast.group(1)
            display = None if raw_display is None else _unescape_quoted(raw_display)
            return NameAddr(uri=parse_uri(fast.group(2)), display_name=display, params=params)
    return _scan_name_addr(text)


def _scan_name_addr(text: str) -> NameAddr:
    """`parse_name_addr` by the full grammar."""
    sc = _Scanner(text, "address")
    sc.ws()
    display: str | None = None
    angle = True
    if sc.peek() == '"':
        display = _unescape_quoted(sc.quoted())
        sc.ws()
    elif sc.peek() != "<":
        start = sc.i
        words: list[str] = []
        while True:  # tokens, plus (leniently) unquoted UTF-8
            word_start = sc.i
            while sc.peek() and (sc.peek() in TOKEN_CHARS or sc.peek() > "\x7f"):
                sc.i += 1
            if sc.i == word_start:
                break
            words.append(sc.s[word_start : sc.i])
            sc.ws()
        if sc.peek() == "<":
            display = " ".join(words)
        else:
            sc.i = start
            angle = False
    if angle:
        sc.expect("<")
        close = sc.s.find(">", sc.i)
        if close < 0:
            raise sc.fail("missing '>'")
        uri = parse_uri(sc.s[sc.i : close])
        sc.i = close + 1
    else:
        uri = parse_uri(sc.until(frozenset(_WS + ";,")))
    params = sc.params()
    return NameAddr(uri=uri, display_name=display, params=params)


# --- Via ----------------------------------------------------------------------------------


@dataclass(kw_only=True, slots=True)
class Via:
    """One Via value: `SIP/2.0/TLS host:port;branch=...;rport;received=...`."""

    host: str
    """sent-by host (name, IPv4 or bracketed IPv6)."""
    transport: str = "UDP"
    """Transport, upper-cased (UDP, TCP, TLS, SCTP, WS, WSS, ...)."""
    protocol: str = "SIP/2.0"
    """protocol-name/version, upper-cased."""
    port: int | None = None
    """sent-by port, or None."""
    params: dict[str, str | None] = field(default_factory=dict)
    """Parameters in order, names lower-cased (`branch`, `received`, `rport` -> None)."""

    @property
    def branch(self) -> str | None:
        """The branch parameter (RFC 3261 transactions start with "z9hG4bK")."""
        return self.params.get("branch")

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"{self.protocol}/{self.transport} {self.host}{port}{_params_str(self.params)}"


def parse_via(text: str) -> Via:
    """Parse a single Via value (split the header with `Headers.get_all("Via")` first)."""
    fast = _VIA_FAST.fullmatch(text)
    if fast is not None:
        via = _fast_via(fast)
        if via is not None:
            return via
    return _scan_via(text)


def _scan_via(text: str) -> Via:
    """`parse_via` by the full grammar."""
    sc = _Scanner(text, "Via")
    sc.ws()
    parts = [sc.token()]
    for _ in range(2):
        sc.ws()
        sc.expect("/")
        sc.ws()
        parts.append(sc.token())
    if not sc.ws():
        raise sc.fail("expected whitespace after the protocol")
    if sc.peek() == "[":
        close = sc.s.find("]", sc.i)
        if close < 0:
            raise sc.fail("bad IPv6 reference")
        host = sc.s[sc.i : close + 1]
        sc.i = close + 1
    else:
        host = sc.until(frozenset(_WS + ":;,"))
    via = Via(host=_check_host(host, "Via"), protocol=f"{parts[0]}/{parts[1]}".upper())
    via.transport = parts[2].upper()
    sc.ws()
    if sc.take(":"):
        sc.ws()
        via.port = _parse_port(sc.until(frozenset(_WS + ";,")), "Via")
    via.params = sc.params()
    return via


def _fast_via(fast: re.Match[str]) -> Via | None:
    """The Via of a `_VIA_FAST` match, or None to let the scanner decide."""
    name, version, transport, host, port_text, raw_params = fast.groups()
    if not (_HOSTNAME.fullmatch(host) or _IPV6_REF.fullmatch(host)):
        return None
    port = None
    if port_text is not None:
        if len(port_text.lstrip("0")) > 5 or int(port_text) > 65535:
            return None
        port = int(port_text)
    params = _simple_params(raw_params)
    if params is None:
        return None
    return Via(host=host, transport=transport.upper(), protocol=f"{name}/{version}".upper(),
               port=port, params=params)


# --- CSeq and Digest credentials ----------------------------------------------------------


def parse_cseq(text: str) -> tuple[int, str]:
    """`CSeq: 0009 INVITE` -> (9, "INVITE"); the number must be below 2**31."""
    fast = _CSEQ_FAST.fullmatch(text)
    if fast is not None and int(fast.group(1)) <= MAX_CSEQ:
        return int(fast.group(1)), fast.group(2)
    return _scan_cseq(text)


def _scan_cseq(text: str) -> tuple[int, str]:
    """`parse_cseq` by the full grammar."""
    sc = _Scanner(text, "CSeq")
    sc.ws()
    digits = sc.until(frozenset(_WS))
    if not digits.isascii() or not digits.isdigit() or len(digits.lstrip("0")) > 10:
        raise sc.fail("bad sequence number")
    number = int(digits)
    if number > MAX_CSEQ or not sc.ws():
        raise sc.fail("bad sequence number")
    method = sc.token()
    sc.ws()
    if not sc.eof():
        raise sc.fail("trailing characters")
    return number, method


def parse_auth_params(text: str) -> tuple[str, dict[str, str]]:
    """`Digest username="a", nc=00000001, ...` -> ("digest", {"username": "a", ...}).

    The scheme and parameter names are lower-cased; quoted values are unescaped. A parameter
    given twice is an error.
    """
    if len(text) > _AUTH_CACHE_MAX_TEXT:
        return _parse_auth_params(text)
    scheme, params = _cached_auth_params(text)
    return scheme, dict(params)  # a copy: the cached dict is never handed out


_AUTH_CACHE_MAX_TEXT = 2048
"""Longer credentials are parsed every time (bounds the memo's memory)."""


def _parse_auth_params(text: str) -> tuple[str, dict[str, str]]:
    fast = _fast_auth_params(text)
    if fast is not None:
        return fast
    return _scan_auth_params(text)


def _scan_auth_params(text: str) -> tuple[str, dict[str, str]]:
    """`parse_auth_params` by the full grammar."""
    sc = _Scanner(text, "credentials")
    sc.ws()
    scheme = sc.token().lower()
    params: dict[str, str] = {}
    if not sc.ws() and not sc.eof():
        raise sc.fail("expected whitespace after the scheme")
    while True:
        sc.ws()
        while sc.take(","):
            sc.ws()
        if sc.eof():
            return scheme, params
        name = sc.token().lower()
        sc.ws()
        sc.expect("=")
        sc.ws()
        if sc.peek() == '"':
            value = _unescape_quoted(sc.quoted())
        else:
            value = sc.until(frozenset(_WS + ',"'))
            if not value:
                raise sc.fail("empty parameter value")
        if name in params:
            raise sc.fail("duplicate parameter")
        params[name] = value
        sc.ws()
        if not sc.eof() and sc.peek() != ",":
            raise sc.fail("expected ','")


def _fast_auth_params(text: str) -> tuple[str, dict[str, str]] | None:
    """`_parse_auth_params` by regex, or None to let the scanner decide (errors included)."""
    match = _AUTH_SCHEME_FAST.match(text)
    if match is None:
        return None
    scheme = match.group(1).lower()
    params: dict[str, str] = {}
    pos, end, item, tail = match.end(), len(text), _AUTH_PARAM_FAST.match, _AUTH_END_FAST.match
    while tail(text, pos) is None:
        match = item(text, pos)
        if match is None:
            return None
        name, quoted, plain = match.groups()
        name = name.lower()
        if name in params:
            return None
        if quoted is None:
            params[name] = plain
        else:
            params[name] = quoted[1:-1] if "\\" not in quoted else _unescape_quoted(quoted)
        pos = match.end()
        if pos >= end:
            break
    return scheme, params


# The focus reads one Authorization three times (whose HA1s to fetch, then the core, then
# Digest verification): parse each distinct value once. Parse errors are not memoised.
_cached_auth_params = functools.lru_cache(maxsize=256)(_parse_auth_params)
