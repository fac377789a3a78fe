"""The SIP parser's fast paths agree with the full grammar they short-cut.

Each fast path (a precompiled regex for the common spelling, a memo, a direct bytes writer)
must give exactly what the slow path gives, or hand over to it: the same value, or the
same SipParseError reason, or the same bytes.
"""

import hmac
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_sip_props import line_texts, mutated, name_addrs, sip_uris, tokens, vias
from webconf.sip import headers as headers_mod
from webconf.sip import message, syntax
from webconf.sip.digest import NonceService
from webconf.sip.digest_client import Challenge, authorization
from webconf.sip.message import (
    Headers,
    Request,
    SipParseError,
    make_response,
    response_bytes,
    serialize,
)

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Texts that stress the fast paths' edges: separators, quotes, escapes, whitespace, CR/LF.
tricky = st.text(st.sampled_from(list(' \t\r\n"\\<>;,=:/@%[]') + list("aZ09.-_+~'`!*")),
                 max_size=40)


def outcome(parse, text):
    try:
        return ("ok", parse(text))
    except SipParseError as exc:
        return ("error", exc.reason, exc.status)


def mutate(draw, text: str) -> str:
    """`text` with a few characters inserted, deleted or replaced."""
    chars = list(text)
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(chars)))
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.sampled_from(list(' \t"\\<>;,=:%') + ["\r\n", "ä", "\x7f"]))
        if kind == "insert":
            chars[at:at] = [piece]
        elif chars and at < len(chars):
            chars[at:at + 1] = [] if kind == "delete" else [piece]
    return "".join(chars)


@st.composite
def via_texts(draw):
    text = str(draw(vias))
    return mutate(draw, text) if draw(st.booleans()) else text


@st.composite
def name_addr_texts(draw):
    text = str(draw(name_addrs))
    return mutate(draw, text) if draw(st.booleans()) else text


@st.composite
def auth_texts(draw):
    challenge = Challenge(realm=draw(line_texts), nonce=draw(tokens),
                          algorithm=draw(st.sampled_from(["MD5", "SHA-256"])),
                          opaque=draw(st.none() | line_texts))
    text = authorization(challenge, username=draw(line_texts), method="INVITE",
                         uri=str(draw(sip_uris())), ha1_hex="0" * 32,
                         cnonce=draw(st.text(string.ascii_letters, min_size=1, max_size=8)))
    return mutate(draw, text) if draw(st.booleans()) else text


@st.composite
def cseq_texts(draw):
    text = f"{draw(st.integers(0, 2**32))} {draw(tokens)}"
    return mutate(draw, text) if draw(st.booleans()) else text


@SETTINGS
@given(via_texts() | tricky)
def test_via_fast_path_matches_the_grammar(text):
    assert outcome(syntax.parse_via, text) == outcome(syntax._scan_via, text)


@SETTINGS
@given(name_addr_texts() | tricky)
def test_name_addr_fast_path_matches_the_grammar(text):
    assert outcome(syntax.parse_name_addr, text) == outcome(syntax._scan_name_addr, text)


@SETTINGS
@given(cseq_texts() | tricky)
def test_cseq_fast_path_matches_the_grammar(text):
    assert outcome(syntax.parse_cseq, text) == outcome(syntax._scan_cseq, text)


@SETTINGS
@given(auth_texts() | tricky.map(lambda t: "Digest " + t) | tricky)
def test_auth_params_fast_path_matches_the_grammar(text):
    assert outcome(syntax._parse_auth_params, text) == outcome(syntax._scan_auth_params, text)
    assert outcome(syntax.parse_auth_params, text) == outcome(syntax._scan_auth_params, text)


def reference_quote(text: str) -> str:
    """`quote` as it was written first: character by character."""
    out = ['"']
    for c in text:
        if c in "\r\n":
            raise ValueError("CR and LF cannot appear in a quoted-string")
        if c in '"\\' or (ord(c) < 0x20 and c != "\t") or c == "\x7f":
            out.append("\\")
        out.append(c)
    out.append('"')
    return "".join(out)


@SETTINGS
@given(st.text(max_size=30) | tricky)
def test_quote_fast_path_matches_the_loop(text):
    try:
        expected = reference_quote(text)
    except ValueError:
        with pytest.raises(ValueError):
            syntax.quote(text)
        return
    assert syntax.quote(text) == expected


@SETTINGS
@given(st.lists(name_addrs.map(str) | tricky, max_size=4).map(", ".join) | tricky)
def test_split_list_fast_paths_match_the_scan(text):
    assert headers_mod.split_list(text) == headers_mod._scan_list(text)


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["Via", "v", "To", "Contact", "X-A", "Allow"]),
                          tricky), max_size=6),
       st.sampled_from(["Via", "v", "VIA", "To", "t", "Contact", "x-a", "Allow", "Absent"]))
def test_header_lookups_agree_with_each_other(fields, name):
    h = Headers(fields)
    values = [v for n, v in fields if headers_mod.canonical_name(n).lower()
              == headers_mod.canonical_name(name).lower()]
    assert h.get_fields(name) == values == list(h.view(name))
    assert h.count(name) == len(values) and (name in h) == bool(values)
    items = h.get_all(name)
    assert h.get(name) == (items[0] if items else ("" if values else None))


@SETTINGS
@given(mutated() | st.binary(max_size=200)
       | st.lists(st.sampled_from([b"INVITE sip:a@b SIP/2.0", b"Via: SIP/2.0/TLS h;branch=z",
                                   b" folded", b"\tfolded", b"To:  <sip:a@b> \t", b"X : y",
                                   b"Bad Line", b"", b"a:", b":b", b"\r", b"\n", b"CSeq: 1 A"]),
                  min_size=1, max_size=8).map(b"\r\n".join))
def test_head_fast_path_matches_the_line_loop(data):
    text = data.split(b"\r\n\r\n")[0].decode("utf-8", "surrogateescape")
    lines = text.split("\r\n")
    if not text.count("\r") == text.count("\n") == len(lines) - 1:
        return  # the fast path is for heads without bare CR or LF only
    fast = message._match_fields(lines)
    if fast is not None:
        assert (fast, None) == message._scan_fields(lines, True)


requests = st.builds(
    Request, method=tokens, uri=sip_uris(),
    headers=st.lists(st.tuples(st.sampled_from(["Via", "v", "From", "To", "t", "Call-ID",
                                                "CSeq", "Contact", "Content-Length"]),
                               st.text(max_size=20) | name_addrs.map(str)),
                     max_size=10).map(Headers))
extra_headers = st.lists(st.tuples(st.sampled_from(["Server", "content-length", "Contact",
                                                    "WWW-Authenticate", "Bad Name", "k"]),
                                   st.text(max_size=12)), max_size=4)


@SETTINGS
@given(requests, st.integers(0, 800), st.none() | st.text(max_size=10),
       st.none() | tokens | st.text(max_size=4), extra_headers, st.binary(max_size=20),
       st.booleans())
def test_response_bytes_is_serialize_of_make_response(req, status, reason, to_tag, extra,
                                                      body, from_headers):
    source = req.headers if from_headers else req

    def build(how):
        try:
            return ("ok", how())
        except ValueError as exc:
            return ("error", str(exc))

    expected = build(lambda: serialize(make_response(source, status, reason, to_tag=to_tag,
                                                     headers=extra, body=body)))
    got = build(lambda: response_bytes(source, status, reason, to_tag=to_tag, headers=extra,
                                       body=body))
    assert got == expected


def test_memoised_request_uris_are_copies():
    head = b"INVITE sip:alice@contoso.example;opaque=x SIP/2.0\r\nVia: SIP/2.0/TLS h"
    first = message.parse_head(head)
    first.uri.params["opaque"] = "changed"
    first.uri.user = "mallory"
    second = message.parse_head(head)
    assert second.uri.params == {"opaque": "x"} and second.uri.user == "alice"
    assert isinstance(second, Request) and second.uri_text == "sip:alice@contoso.example;opaque=x"


@SETTINGS
@given(st.binary(min_size=16, max_size=150), st.sampled_from([0, 1]),
       st.lists(st.binary(max_size=80), max_size=3))
def test_nonce_macs_are_hmac_sha256(secret, label, parts):
    data = bytes([label]) + b"".join(len(p).to_bytes(2, "big") + p for p in parts)
    expected = hmac.digest(secret, data, "sha256")[:10]
    assert NonceService(secret)._mac(label, *parts) == expected
