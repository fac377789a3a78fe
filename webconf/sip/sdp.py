"""SDP answers (RFC 3264/4566) for plain SIP phones, and the multipart bodies they ride in.

Operations: `answer_offer` (an offer's bytes -> an answer's bytes, or `SdpError` -> 488),
`multipart_mixed` / `parse_multipart` (RFC 2046 bodies), `accepts` (RFC 3261 `Accept`).

The focus carries no media: it answers so that a phone's call *succeeds* while no media
flows. Every stream keeps its place (the answer has as many m-lines as the offer, in
order); a stream offered on port 0 stays port 0; every other one is answered on port 9
(discard) with `a=inactive`, the offered transport and the first offered format (with its
`a=rtpmap`/`a=fmtp`). Port 9 rather than 0 because pjsua2 treats an answer whose streams
are all port 0 as a failed call (docs/protocol.md §2).

Secure RTP:
- SDES (`RTP/SAVP(F)` + `a=crypto`): one `a=crypto` with the offer's tag and first suite we
  know, keyed with fresh random bytes (nothing is ever sent under it).
- DTLS-SRTP (`UDP/TLS/RTP/SAVP(F)`, or SAVP with only `a=fingerprint`) we cannot do, so that
  stream is rejected with port 0. Compromise: if that would leave *every* stream at port 0
  while the offer had a live one, the first such stream is instead answered port 9
  `a=inactive` with `a=setup:active` (passive if the offerer insisted on active) and a dummy
  all-zero sha-256 fingerprint. No DTLS handshake ever starts on an inactive stream at a
  discard port, so the fingerprint is never checked; a strict agent may still reject it,
  which is no worse than the all-port-0 answer it replaces. An SAVP stream with no crypto
  we know is handled the same way, without `a=crypto`.
"""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass, field

MAX_MEDIA = 64
"""More m-lines than this is not a phone's offer."""
CRYPTO_KEY_BYTES = {
    # master key || master salt, RFC 4568 §6.2 / RFC 6188 / RFC 7714
    "AES_CM_128_HMAC_SHA1_80": 30,
    "AES_CM_128_HMAC_SHA1_32": 30,
    "AES_192_CM_HMAC_SHA1_80": 38,
    "AES_192_CM_HMAC_SHA1_32": 38,
    "AES_256_CM_HMAC_SHA1_80": 46,
    "AES_256_CM_HMAC_SHA1_32": 46,
    "AEAD_AES_128_GCM": 28,
    "AEAD_AES_256_GCM": 44,
}
DUMMY_FINGERPRINT = "sha-256 " + ":".join(["00"] * 32)
DISCARD_PORT = 9

_LINE_RE = re.compile(r"[a-z]=[^\x00\r\n]*")
_MEDIA_RE = re.compile(r"m=([A-Za-z0-9_.-]+) ([0-9]{1,5})(/[0-9]{1,5})? (\S+)((?: \S+)+) *")
_CRYPTO_RE = re.compile(r"a=crypto:([0-9]{1,9}) ([A-Za-z0-9_]+) inline:\S+.*")
_ADDRESS_RE = re.compile(r"[A-Za-z0-9.:_%-]+")


class SdpError(ValueError):
    """An offer we cannot read: answer 488 Not Acceptable Here."""


class MultipartError(ValueError):
    """A multipart body that cannot be split."""


@dataclass
class _Media:
    media: str
    port: int
    proto: str
    formats: list[str]
    lines: list[str] = field(default_factory=list)
    """The section's lines after its m-line."""

    def attributes(self, name: str) -> list[str]:
        """Values of `a=<name>:...` (or bare `a=<name>`) lines, in order."""
        prefix, bare = f"a={name}:", f"a={name}"
        return [line[len(prefix):] if line.startswith(prefix) else "" for line in self.lines
                if line.startswith(prefix) or line == bare]


def _parse(offer: bytes) -> tuple[list[str], list[_Media]]:
    if not isinstance(offer, bytes | bytearray):
        raise SdpError("the offer is not bytes")
    text = bytes(offer).decode("utf-8", "surrogateescape")
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    lines = [line for line in lines if line.strip()]  # tolerate blank (trailing) lines
    if not lines or lines[0].rstrip() != "v=0":
        raise SdpError("the body does not start with v=0")
    session: list[str] = []
    media: list[_Media] = []
    for line in lines:
        if not _LINE_RE.fullmatch(line):
            raise SdpError("a line is not <type>=<value>")
        if line.startswith("m="):
            m = _MEDIA_RE.fullmatch(line)
            if m is None:
                raise SdpError("malformed m-line")
            port = int(m.group(2))
            if port > 65535:
                raise SdpError("m-line port out of range")
            media.append(_Media(m.group(1), port, m.group(4), m.group(5).split()))
            if len(media) > MAX_MEDIA:
                raise SdpError("too many m-lines")
        elif media:
            media[-1].lines.append(line)
        else:
            session.append(line)
    if not any(line.startswith("o=") for line in session):
        raise SdpError("no o= line")
    return session, media


def _crypto_line(stream: _Media) -> str | None:
    """Our `a=crypto` for the offer's first suite we know, or None."""
    for line in stream.lines:
        m = _CRYPTO_RE.fullmatch(line)
        if m is not None and m.group(2) in CRYPTO_KEY_BYTES:
            key = secrets.token_bytes(CRYPTO_KEY_BYTES[m.group(2)])
            return f"a=crypto:{m.group(1)} {m.group(2)} inline:{base64.b64encode(key).decode()}"
    return None


def _format_lines(stream: _Media, fmt: str) -> list[str]:
    if "RTP" not in stream.proto.upper():
        return []
    out: list[str] = []
    for name in ("rtpmap", "fmtp"):
        prefix = f"a={name}:{fmt} "
        out.extend(line for line in stream.lines if line.startswith(prefix))
    return out


def _is_dtls(stream: _Media, session: list[str]) -> bool:
    proto = stream.proto.upper()
    if "/TLS/" in f"/{proto}" or "DTLS" in proto:
        return True
    return bool(stream.attributes("fingerprint")) or any(
        line.startswith("a=fingerprint:") for line in session)


def _answer_stream(stream: _Media, session: list[str], *, fallback: bool) -> list[str] | None:
    """The answer section for a live stream; None means reject it (port 0).

    With `fallback`, a stream we would reject is answered port 9 inactive anyway.
    """
    fmt = stream.formats[0]
    head = f"m={stream.media} {DISCARD_PORT} {stream.proto} {fmt}"
    body = _format_lines(stream, fmt)
    proto = stream.proto.upper()
    dtls_proto = "/TLS/" in f"/{proto}" or "DTLS" in proto
    if not dtls_proto and not (proto.endswith("/SAVP") or proto.endswith("/SAVPF")):
        return [head, *body, "a=inactive"]
    if not dtls_proto:  # SDES keys ride only on plain RTP/SAVP(F)
        crypto = _crypto_line(stream)
        if crypto is not None:
            return [head, *body, crypto, "a=inactive"]
    if not fallback:
        return None
    extra = []
    if _is_dtls(stream, session):
        offered = [v.strip().lower() for v in stream.attributes("setup")] + [
            line[len("a=setup:"):].strip().lower() for line in session
            if line.startswith("a=setup:")]
        setup = "passive" if offered and offered[0] == "active" else "active"
        extra = [f"a=setup:{setup}", f"a=fingerprint:{DUMMY_FINGERPRINT}"]
    return [head, *body, *extra, "a=inactive"]


def answer_offer(offer: bytes, *, address: str, session_id: int | None = None,
                 version: int | None = None) -> bytes:
    """An RFC 3264 answer to `offer` that accepts what it can, inactive, at `address`.

    `session_id` defaults to a random one; `version` to `session_id` (increase it for
    each new answer in the same dialog). Raises `SdpError` for an unreadable offer.
    """
    if not _ADDRESS_RE.fullmatch(address):
        raise ValueError("address must be an IP address or host name")
    session, media = _parse(offer)
    sid = secrets.randbits(62) if session_id is None else session_id
    family = "IP6" if ":" in address else "IP4"
    out = [
        "v=0",
        f"o=webconf {sid} {sid if version is None else version} IN {family} {address}",
        "s=webconf focus",
        f"c=IN {family} {address}",
        "t=0 0",
    ]
    sections: list[list[str] | None] = [
        None if s.port == 0 else _answer_stream(s, session, fallback=False) for s in media]
    if media and all(s is None for s in sections):
        for i, stream in enumerate(media):
            if stream.port != 0:
                sections[i] = _answer_stream(stream, session, fallback=True)
                break
    for stream, section in zip(media, sections, strict=True):
        if section is None:
            out.append(f"m={stream.media} 0 {stream.proto} {stream.formats[0]}")
        else:
            out.extend(section)
    return ("\r\n".join(out) + "\r\n").encode("utf-8", "surrogateescape")


# -- multipart/mixed (RFC 2046 §5.1) -------------------------------------------------------

def multipart_mixed(parts: list[tuple[str, bytes]]) -> tuple[str, bytes]:
    """(Content-Type value, body) of a multipart/mixed body holding `parts` in order."""
    for content_type, _ in parts:
        if "\r" in content_type or "\n" in content_type:
            raise ValueError("a content type cannot hold CR or LF")
    while True:
        boundary = "webconf-" + secrets.token_hex(16)
        marker = boundary.encode("ascii")
        if not any(marker in content for _, content in parts):
            break
    chunks = [b"--%s\r\nContent-Type: %s\r\n\r\n%s\r\n" % (marker, ct.encode("utf-8"), content)
              for ct, content in parts]
    return f"multipart/mixed;boundary={boundary}", b"".join(chunks) + b"--%s--\r\n" % marker


def _media_params(value: str) -> tuple[str, dict[str, str]]:
    """`type/subtype;a=b;c="d"` -> ("type/subtype" lower-cased, {name lower: value})."""
    media_type, *raw_params = _split_unquoted(value, ";")
    params: dict[str, str] = {}
    for raw in raw_params:
        name, eq, param_value = raw.partition("=")
        if not eq:
            continue
        param_value = param_value.strip()
        if len(param_value) >= 2 and param_value[0] == param_value[-1] == '"':
            param_value = re.sub(r"\\(.)", r"\1", param_value[1:-1])
        params[name.strip().lower()] = param_value
    return media_type.strip().lower(), params


def _split_unquoted(text: str, sep: str) -> list[str]:
    out: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for c in text:
        if escaped:
            escaped = False
        elif quoted and c == "\\":
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == sep and not quoted:
            out.append("".join(current))
            current = []
            continue
        current.append(c)
    out.append("".join(current))
    return out


def parse_multipart(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """The (Content-Type, content) parts of a multipart body; `MultipartError` if broken.

    A part without Content-Type is text/plain (RFC 2046 §5.1.1). CRLF line ends are
    expected; bare LF is tolerated.
    """
    media_type, params = _media_params(content_type)
    boundary = params.get("boundary", "")
    if not media_type.startswith("multipart/") or not 1 <= len(boundary) <= 70:
        raise MultipartError("not a multipart content type with a boundary")
    delimiter = re.compile(rb"(?:^|\r?\n)--" + re.escape(boundary.encode("utf-8"))
                           + rb"(--)?[ \t]*(?:\r?\n|$)")
    matches = list(delimiter.finditer(body))
    closing = [i for i, m in enumerate(matches) if m.group(1)]
    if not closing or closing[0] == 0:
        raise MultipartError("no closing boundary")
    parts = []
    for opening, following in zip(matches[: closing[0]], matches[1: closing[0] + 1],
                                  strict=True):
        raw = body[opening.end():following.start()]
        if raw.startswith(b"\r\n") or raw.startswith(b"\n"):  # no header fields at all
            head, content = b"", raw[2 if raw.startswith(b"\r\n") else 1:]
        else:
            head, sep, content = raw.partition(b"\r\n\r\n")
            if not sep:
                head, sep, content = raw.partition(b"\n\n")
            if not sep:
                raise MultipartError("a part has no blank line after its headers")
        part_type = "text/plain"
        for line in head.decode("utf-8", "replace").replace("\r\n", "\n").split("\n"):
            name, colon, value = line.partition(":")
            if colon and name.strip().lower() == "content-type":
                part_type = value.strip()
        parts.append((part_type, content))
    return parts


# -- Accept (RFC 3261 §20.1) ---------------------------------------------------------------

def accepts(accept_header: str | None, media_type: str) -> bool:
    """Whether a UA that sent `accept_header` accepts a body of `media_type`.

    No Accept header means application/sdp only; an empty one means nothing. The most
    specific matching range decides (exact > type/* > */*, then more matching
    parameters), and a range with q=0 excludes what it matches. A range's parameter
    excludes only a `media_type` carrying that parameter with another value (so
    `application/sdp;level=1` accepts plain application/sdp). Case-insensitive.
    """
    wanted, wanted_params = _media_params(media_type)
    if accept_header is None:
        return wanted == "application/sdp"
    wanted_main = wanted.split("/", 1)[0]
    best: tuple[int, int] | None = None
    best_q = 0.0
    for entry in _split_unquoted(accept_header, ","):
        if not entry.strip():
            continue
        range_type, all_params = _media_params(entry)
        params: dict[str, str] = {}
        for name, value in all_params.items():  # media parameters end at q
            if name == "q":
                break
            params[name] = value
        q_text = all_params.get("q", "1")
        try:
            q = float(q_text)
        except ValueError:
            q = 1.0
        if range_type == "*/*":
            level = 0
        elif range_type.endswith("/*") and range_type[:-2] == wanted_main:
            level = 1
        elif range_type == wanted:
            level = 2
        else:
            continue
        shared = [k for k in params if k in wanted_params]
        if any(wanted_params[k].lower() != params[k].lower() for k in shared):
            continue
        rank = (level, len(shared))
        if best is None or rank > best:
            best, best_q = rank, q
    return best is not None and best_q > 0
