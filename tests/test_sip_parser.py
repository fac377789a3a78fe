"""SIP message parsing, validation, serialisation and stream framing.

Messages are written here by hand, modelled on the categories of RFC 4475 §3.1.1 (valid)
and §3.1.2 (invalid, as they apply to a stream transport).
"""

import pytest

from webconf.sip.framing import FramingError, KeepAlive, NeedData, SipFramer
from webconf.sip.message import (
    Headers,
    NameAddr,
    Request,
    Response,
    SipParseError,
    SipURI,
    Via,
    make_response,
    max_forwards,
    parse_auth_params,
    parse_cseq,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
    serialize,
    validate_request,
)


def raw(*lines: str, body: bytes = b"") -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


BASIC = (
    "Via: SIP/2.0/TLS client.example.com:5061;branch=z9hG4bK74bf9",
    "Max-Forwards: 70",
    'From: "Bob" <sip:bob@contoso.example>;tag=9fxced76sl',
    "To: <sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:K7Q2>",
    "Call-ID: 3848276298220188511@client.example.com",
    "CSeq: 1 INVITE",
    "Contact: <sip:bob@192.0.2.4:5061;transport=tls>",
    "Content-Length: 0",
)
CONF = "sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:K7Q2"


def invite(*headers: str, uri: str = CONF, method: str = "INVITE", body: bytes = b"") -> bytes:
    return raw(f"{method} {uri} SIP/2.0", *headers, body=body)


def without(name: str) -> list[str]:
    return [h for h in BASIC if not h.lower().startswith(name.lower() + ":")]


def parse_request(data: bytes) -> Request:
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


def parse_error(data: bytes) -> SipParseError:
    """The error from parsing, or from validating what parsed."""
    with pytest.raises(SipParseError) as info:
        message = parse_message(data)
        assert isinstance(message, Request)
        validate_request(message)
    return info.value


# --- valid messages (RFC 4475 §3.1.1 categories) ------------------------------------------


def test_basic_invite_parses_and_validates():
    req = parse_request(invite(*BASIC))
    validate_request(req)
    assert req.method == "INVITE"
    assert req.uri == SipURI(
        user="alice",
        host="contoso.example",
        params={"gruu": None, "opaque": "app:conf:focus:id:K7Q2"},
    )
    assert req.body == b""
    assert parse_cseq(req.headers.get("CSeq")) == (1, "INVITE")
    frm = parse_name_addr(req.headers.get("From"))
    assert frm.display_name == "Bob" and frm.tag == "9fxced76sl"
    assert max_forwards(req) == 70


def test_wsinv_like_whitespace_folding_and_compact_forms():
    data = raw(
        "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0",
        "TO :",
        " sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n",
        'from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>',
        "  ;",
        "  tag = 98asjd8",
        "MaX-fOrWaRdS: 0068",
        "Call-ID: wsinv.ndaksdj@192.0.2.1",
        "Content-Length   : 150",
        "cseq: 0009",
        "  INVITE",
        "Via  : SIP  /   2.0",
        " /UDP",
        "    192.0.2.2;branch=390skdjuw",
        "s :",
        "NewFangledHeader:   newfangled value",
        " continued newfangled value",
        "UnknownHeaderWithUnusualValue: ;;,,;;,;",
        "Content-Type: application/sdp",
        "Route:",
        " <sip:services.example.com;lr;unknownwith=value;unknown-no-value>",
        "v:  SIP  / 2.0  / TCP     spindle.example.com   ;",
        "  branch  =   z9hG4bK9ikj8  ,",
        " SIP  /    2.0   / UDP  192.168.255.111   ; branch=",
        " z9hG4bK30239",
        'm:"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam =',
        "      newvalue ;",
        "  secondparam ; q = 0.33",
        body=b"v=0\r\n" + b"x" * 145,
    )
    req = parse_request(data)
    validate_request(req)
    h = req.headers
    assert req.uri.params == {"unknownparam": None}
    assert parse_cseq(h.get("CSeq")) == (9, "INVITE")
    assert max_forwards(req) == 68
    assert h.get("Subject") == ""
    assert h.get("newfangledheader") == "newfangled value continued newfangled value"
    assert h.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    to = parse_name_addr(h.get("To"))
    assert to.uri == SipURI(user="vivekg", host="chair-dnrc.example.com")
    assert to.params == {"tag": "1918181833n"} and to.display_name is None
    frm = parse_name_addr(h.get("From"))
    assert frm.display_name == 'J Rosenberg \\"' and frm.tag == "98asjd8"
    vias = [parse_via(v) for v in h.get_all("Via")]
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    contact = parse_name_addr(h.get("Contact"))
    assert contact.display_name == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    route = parse_name_addr(h.get("Route"))
    assert route.uri.params == {"lr": None, "unknownwith": "value", "unknown-no-value": None}
    assert len(req.body) == 150


def test_intmeth_like_unusual_tokens_and_characters():
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    user = "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    password = "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    data = raw(
        f"{method} sip:{user}:{password}@example.com SIP/2.0",
        "Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~",
        f'To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:{user}@example.com>',
        "From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%="
        '"\u0440\u0430\u0431\u043e\u0442\u0430\u044e\u0449\u0438\u0439";tag=_token~1\'+`*%!-.',
        "Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{",
        f"CSeq: 139122385 {method}",
        "Max-Forwards: 255",
        "extensionHeader-!.%*+_`'~:\ufeff\u5927\u505c\u96fb",
        "Content-Length: 0",
    )
    req = parse_request(data)
    validate_request(req)
    assert req.method == method
    assert req.uri.user == user and req.uri.password == password
    assert str(req.uri) == f"sip:{user}:{password}@example.com"
    assert parse_via(req.headers.get("Via")).branch == "z9hG4bK-.!%66*_+`'~"
    to = parse_name_addr(req.headers.get("To"))
    assert to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    frm = parse_name_addr(req.headers.get("From"))
    assert frm.display_name == "token1~` token2'+_ token3*%!.-"
    assert frm.tag == "_token~1'+`*%!-."
    assert (
        frm.params["fromparam''~+*_!.-%"]
        == '"\u0440\u0430\u0431\u043e\u0442\u0430\u044e\u0449\u0438\u0439"'
    )
    assert req.headers.get("EXTENSIONHEADER-!.%*+_`'~") == "\ufeff\u5927\u505c\u96fb"
    assert parse_name_addr(str(to)) == to


def test_esc01_escnull_like_escapes_in_uris_and_quoted_strings():
    data = raw(
        "INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0",
        'To: "%Z%45" <sip:resource@example.com>',
        "From: <sip:I%20have%20spaces@example.net>;tag=938",
        "Max-Forwards: 87",
        "i: esc01.239409asdfakjkn23onasd0-3234",
        "CSeq: 234234 INVITE",
        "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw",
        "C: application/sdp",
        "Contact: <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>",
        "Content-Length: 0",
    )
    req = parse_request(data)
    validate_request(req)
    assert req.uri.user == "sips:user@example.com" and req.uri.host == "example.net"
    assert str(req.uri) == "sip:sips%3Auser%40example.com@example.net"
    assert parse_name_addr(req.headers.get("To")).display_name == "%Z%45"
    assert parse_name_addr(req.headers.get("From")).uri.user == "I have spaces"
    contact = parse_name_addr(req.headers.get("Contact")).uri
    assert contact.user == "caller" and contact.params == {"lr": None, "name": "value%41"}
    assert req.headers.get("Content-Type") == "application/sdp"
    null = parse_uri("sip:null-%00-null@example.com")
    assert null.user == "null-\x00-null"
    assert parse_uri(str(null)) == null and str(null) == "sip:null-%00-null@example.com"


def test_unreason_and_noreason_responses():
    head = (
        "Via: SIP/2.0/TCP 192.0.2.198;branch=z9hG4bK1324923",
        "Call-ID: unreason.1234ksdfak3j2erwedfsASdf",
        "CSeq: 35 INVITE",
        "From: sip:user@example.com;tag=11141343",
        "To: sip:user@example.edu;tag=2229",
        "Content-Length: 0",
    )
    reason = "= 2**3 * 5**2 \u043d\u043e \u0441\u0442\u043e \u0434\u0435\u0432\u044f\u043d\u043e"
    resp = parse_message(raw(f"SIP/2.0 200 {reason}", *head))
    assert isinstance(resp, Response) and resp.status == 200 and resp.reason == reason
    for line in ("SIP/2.0 100 ", "SIP/2.0 100"):
        resp = parse_message(raw(line, *head))
        assert isinstance(resp, Response) and (resp.status, resp.reason) == (100, "")
    frm = parse_name_addr(resp.headers.get("From"))
    assert frm.uri == SipURI(user="user", host="example.com") and frm.tag == "11141343"


def test_leading_zeros_and_body_length():
    req = parse_request(
        invite(*without("Content-Length"), "l: 0004", body=b"abcdEXTRA")  # extra is ignored
    )
    validate_request(req)
    assert req.body == b"abcd"
    assert parse_cseq("00000000000000000001 INVITE") == (1, "INVITE")


def test_compact_forms_are_canonical():
    data = invite(
        "v: SIP/2.0/TCP a.example.com;branch=z9hG4bK1, SIP/2.0/TCP b.example.com;branch=z9hG4bK2",
        "f: <sip:bob@contoso.example>;tag=1",
        "t: <sip:alice@contoso.example>",
        "i: abc@host",
        "CSeq: 1 INVITE",
        "Max-Forwards: 70",
        "m: <sip:bob@192.0.2.4>",
        "k: timer, gruu",
        "s: hello",
        "e: gzip",
        "c: application/sdp",
        "o: conference",
        "u: conference",
        "l: 0",
    )
    req = parse_request(data)
    validate_request(req)
    names = [name for name, _ in req.headers]
    assert names == [
        "Via", "From", "To", "Call-ID", "CSeq", "Max-Forwards", "Contact", "Supported",
        "Subject", "Content-Encoding", "Content-Type", "Event", "Allow-Events", "Content-Length",
    ]  # fmt: skip
    assert req.headers.get_all("Supported") == ["timer", "gruu"]
    assert len(req.headers.get_all("via")) == 2 and req.headers.count("Via") == 1
    assert serialize(req).startswith(f"INVITE {CONF} SIP/2.0\r\nVia: SIP/2.0/TCP".encode())


def test_params_without_values():
    via = parse_via("SIP/2.0/TLS [2001:db8::9]:5061;branch=z9hG4bKx;rport;received=192.0.2.1")
    assert via == Via(
        transport="TLS",
        host="[2001:db8::9]",
        port=5061,
        params={"branch": "z9hG4bKx", "rport": None, "received": "192.0.2.1"},
    )
    assert parse_via(str(via)) == via
    contact = parse_name_addr(
        "<sip:alice@127.0.0.1:5061;transport=tls;gruu;opaque=app:conf:focus:id:K7Q2>;isfocus"
    )
    assert contact.params == {"isfocus": None}
    assert contact.uri.params == {
        "transport": "tls",
        "gruu": None,
        "opaque": "app:conf:focus:id:K7Q2",
    }
    assert parse_name_addr(str(contact)) == contact
    instance = parse_name_addr('<sip:b@h>;+sip.instance="<urn:uuid:00000000-0000>";expires=60')
    assert instance.params["+sip.instance"] == '"<urn:uuid:00000000-0000>"'


def test_conference_uri_sip_and_sips():
    for scheme in ("sip", "sips", "SIPS"):
        uri = parse_uri(f"{scheme}:alice@contoso.example;gruu;opaque=app:conf:focus:id:K7Q2")
        assert uri.scheme == scheme.lower() and uri.user == "alice"
        assert uri.host == "contoso.example" and uri.port is None
        assert uri.params == {"gruu": None, "opaque": "app:conf:focus:id:K7Q2"}
        assert list(uri.params) == ["gruu", "opaque"]
        assert parse_uri(str(uri)) == uri
    uri = parse_uri("sips:alice@contoso.example:5061;transport=tls?subject=a%20b&x=")
    assert uri.port == 5061 and uri.headers == {"subject": "a b", "x": ""}


def test_name_addr_forms():
    bare = parse_name_addr("sip:alice@contoso.example;tag=abc;transport=tcp")
    assert bare.uri.params == {} and bare.params == {"tag": "abc", "transport": "tcp"}
    angle = parse_name_addr("Alice  Smith <sip:alice@contoso.example;transport=tcp>;tag=abc")
    assert angle.display_name == "Alice Smith" and angle.uri.params == {"transport": "tcp"}
    assert parse_name_addr('""<sip:a@b>').display_name == ""
    assert parse_name_addr("Jos\u00e9 M. <sip:a@b>").display_name == "Jos\u00e9 M."
    assert str(NameAddr(uri=SipURI(host="h"), display_name='say "hi"\\')) == (
        '"say \\"hi\\"\\\\" <sip:h>'
    )


def test_get_all_splits_only_list_headers_at_top_level():
    h = Headers(
        [
            ("Contact", '"Doe, John" <sip:j@h;x=a,b>, <sip:k@h>'),
            ("contact", "sip:l@h"),
            ("Allow", "INVITE, ACK,BYE , ,CANCEL"),
            ("WWW-Authenticate", 'Digest realm="a", nonce="b", qop="auth"'),
            ("Date", "Sat, 13 Nov 2010 23:29:00 GMT"),
            ("Warning", '399 host "a, b", 399 host "c"'),
        ]
    )
    assert h.get_all("CONTACT") == ['"Doe, John" <sip:j@h;x=a,b>', "<sip:k@h>", "sip:l@h"]
    assert h.get_all("Allow") == ["INVITE", "ACK", "BYE", "CANCEL"]
    assert h.get_all("www-authenticate") == ['Digest realm="a", nonce="b", qop="auth"']
    assert h.get_all("Date") == ["Sat, 13 Nov 2010 23:29:00 GMT"]
    assert h.get_all("Warning") == ['399 host "a, b"', '399 host "c"']
    assert h.get("m") == '"Doe, John" <sip:j@h;x=a,b>' and "CONTACT" in h
    assert "Route" not in h and h.get("Route") is None


def test_parse_auth_params():
    scheme, params = parse_auth_params(
        'DIGEST UserName="Mufasa",realm="a \\"quoted\\" realm" , nc=00000001,'
        ' uri="sip:alice@contoso.example;gruu", algorithm=SHA-256'
    )
    assert scheme == "digest"
    assert params == {
        "username": "Mufasa",
        "realm": 'a "quoted" realm',
        "nc": "00000001",
        "uri": "sip:alice@contoso.example;gruu",
        "algorithm": "SHA-256",
    }
    for bad in ('Digest realm="unterminated', "Digest a=1, a=2", "Digest =x", "Digest a=1 b=2"):
        with pytest.raises(SipParseError):
            parse_auth_params(bad)


def test_serialize_round_trip_and_content_length():
    req = parse_request(invite(*BASIC))
    req.body = b"hello"
    wire = serialize(req)
    assert b"\r\nContent-Length: 5\r\n" in wire and wire.endswith(b"\r\n\r\nhello")
    assert b"\n" not in wire.replace(b"\r\n", b"")
    again = parse_request(wire)
    assert again.headers.get("Content-Length") == "5" and again.body == b"hello"
    assert again.uri == req.uri and again.method == req.method
    resp = Response(200, "OK", Headers([("Call-ID", "x")]))
    assert serialize(resp) == b"SIP/2.0 200 OK\r\nCall-ID: x\r\nContent-Length: 0\r\n\r\n"
    with pytest.raises(ValueError):
        serialize(Response(200, "OK", Headers([("X-Bad", "a\r\nInjected: 1")])))


def test_make_response_copies_dialog_headers():
    req = parse_request(
        invite(
            *BASIC[1:],
            "Via: SIP/2.0/TCP proxy.example.com;branch=z9hG4bK2",
            "v: SIP/2.0/TCP a.example;branch=z9hG4bK3",
        )
    )
    resp = make_response(req, 200, to_tag="f0c05", headers=[("Contact", "<sip:focus@h>;isfocus")])
    assert resp.reason == "OK"
    assert [n for n, _ in resp.headers] == [
        "Via",
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Contact",
    ]
    assert resp.headers.get_all("Via") == [
        "SIP/2.0/TCP proxy.example.com;branch=z9hG4bK2",
        "SIP/2.0/TCP a.example;branch=z9hG4bK3",
    ]
    assert resp.headers.get("To") == f"<{CONF}>;tag=f0c05"
    assert resp.headers.get("From") == req.headers.get("From")
    tagged = make_response(resp.headers, 487, to_tag="other")
    assert (
        tagged.headers.get("To") == f"<{CONF}>;tag=f0c05" and tagged.reason == "Request Terminated"
    )
    bare = make_response(Headers([("To", "sip:a@b")]), 404, "Nobody", to_tag="t1")
    assert bare.headers.get("To") == "sip:a@b;tag=t1" and bare.reason == "Nobody"
    expected = resp.headers.copy()
    expected.add("Content-Length", "0")
    assert parse_message(serialize(resp)).headers == expected


# --- invalid messages (RFC 4475 §3.1.2 categories) ----------------------------------------


@pytest.mark.parametrize("name", ["Via", "From", "To", "Call-ID", "CSeq", "Max-Forwards"])
def test_missing_mandatory_header(name):
    err = parse_error(invite(*without(name)))
    assert (err.status, err.reason) == (400, f"Missing {name}")


@pytest.mark.parametrize(
    ("lines", "status", "reason"),
    [
        (["CSeq: abc INVITE"], 400, "Bad CSeq"),
        (["CSeq: 2147483648 INVITE"], 400, "Bad CSeq"),  # must be < 2**31
        (["CSeq: -1 INVITE"], 400, "Bad CSeq"),
        (["CSeq: 1"], 400, "Bad CSeq"),
        (["CSeq: 1 OPTIONS"], 400, "CSeq Method Mismatch"),  # mismatch01
        (["CSeq: 1 INVITE", "CSeq: 2 INVITE"], 400, "Duplicate CSeq"),  # multi01
        (["Call-ID: a@b", "i: c@d"], 400, "Duplicate Call-ID"),
        (["Call-ID: a b"], 400, "Bad Call-ID"),
        (["Max-Forwards: eighty"], 400, "Bad Max-Forwards"),  # ncl-like
        (["Max-Forwards: 300"], 400, "Bad Max-Forwards"),
        (["Max-Forwards: -1"], 400, "Bad Max-Forwards"),
        (['From: "Mr. J. User <sip:j.user@example.com>;tag=1'], 400, "Bad From"),  # quotbal
        (["To: <sip:a@example.com>, <sip:b@example.com>"], 400, "Bad To"),  # multi01
        (["To: sip:a@example.com;tag=1;tag=2"], 400, "Bad To"),
        (["To: <tel:+15551234>"], 400, "Bad To"),
        (["Via: SIP/2.0/TCP"], 400, "Bad Via"),
        (["Via: ,"], 400, "Missing Via"),
        (["Via: SIP/2.0/TCP host;branch=z9hG4bK1, garbage"], 400, "Bad Via"),
        (["Via: SIP/2.0/TCP ho st"], 400, "Bad Via"),
        (["Content-Length: 0", "l: 1"], 400, "Conflicting Content-Length"),
    ],
)
def test_invalid_header_values(lines, status, reason):
    names = {line.split(":")[0].lower() for line in lines}
    aliases = {"i": "call-id", "l": "content-length", "t": "to", "f": "from", "v": "via"}
    names |= {aliases.get(n, n) for n in names}
    base = [h for h in BASIC if h.split(":")[0].lower() not in names]
    err = parse_error(invite(*base, *lines, body=b"x" if "l: 1" in lines else b""))
    assert (err.status, err.reason) == (status, reason)
    assert err.headers is not None and err.headers.get("To")  # enough to answer


def test_duplicate_identical_content_length_is_accepted():
    validate_request(parse_request(invite(*BASIC, "l: 0")))


@pytest.mark.parametrize("value", ["-999", "abc", "99999999999999999999", "4294967296", "1 2"])
def test_bad_content_length(value):  # clerr-like
    err = parse_error(invite(*without("Content-Length"), f"Content-Length: {value}"))
    assert (err.status, err.reason) == (400, "Bad Content-Length")
    framer = SipFramer()
    framer.feed(invite(*without("Content-Length"), f"Content-Length: {value}"))
    event = framer.next_event()
    assert isinstance(event, FramingError) and (event.status, event.fatal) == (400, True)
    assert event.headers is not None and event.headers.get("Call-ID")


def test_truncated_body():
    err = parse_error(invite(*without("Content-Length"), "Content-Length: 10", body=b"short"))
    assert (err.status, err.reason) == (400, "Truncated Body")


@pytest.mark.parametrize(
    ("start", "status"),
    [
        (f"INVITE {CONF} SIP/7.0", 505),  # badvers
        (f"INVITE {CONF} SIP/2.1", 505),
        (f"INVITE {CONF} sip/2.0", None),  # the SIP literal is case-insensitive
        (f"INVITE {CONF} HTTP/1.1", 400),
        (f"INVITE  {CONF} SIP/2.0", 400),  # lwsstart
        ("INVITE sip:user@example.com; lr SIP/2.0", 400),  # lwsruri
        ("INVITE <sip:user@example.com> SIP/2.0", 400),  # bracketed Request-URI
        ("INVITE sip:user@example.com", 400),
        (f"IN VITE {CONF} SIP/2.0", 400),
        (f"INV<ITE {CONF} SIP/2.0", 400),
        ("OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0", 416),  # unksm
        ("INVITE tel:+1-201-555-0123 SIP/2.0", 416),
        ("INVITE isbn:2983792873 SIP/2.0", 416),
        ("INVITE sip:user@exa mple.com SIP/2.0", 400),
        ("INVITE sip:user@example.com:99999 SIP/2.0", 400),
        ("INVITE sip:%G1@example.com SIP/2.0", 400),
        ("INVITE sip:user@ SIP/2.0", 400),
        ("INVITE sip:a@h;x;x SIP/2.0", 400),
        ("SIP/2.0 2000 OK", 400),
        ("SIP/2.0 099 Weird", 400),
        ("SIP/3.0 200 OK", 505),
    ],
)
def test_bad_start_line(start, status):
    data = raw(start, *BASIC)
    if status is None:
        assert parse_message(data)
        return
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert info.value.status == status
    # The headers survive, so the server can still answer.
    resp = make_response(info.value.headers, info.value.status)
    assert resp.headers.get("Call-ID") == "3848276298220188511@client.example.com"
    assert len(resp.headers.get_all("Via")) == 1


def test_too_many_headers():
    extra = [f"X-Header-{i}: {i}" for i in range(100 - len(BASIC) + 1)]
    err = parse_error(invite(*BASIC, *extra))
    assert (err.status, err.reason) == (400, "Too Many Headers")
    validate_request(parse_request(invite(*BASIC, *extra[:-1])))


def test_bad_header_lines_keep_the_good_ones():
    err = parse_error(invite(*BASIC, "this line has no colon", " "))
    assert err.status == 400
    assert err.headers is not None and err.headers.get("CSeq") == "1 INVITE"
    err = parse_error(invite(" folded: first", *BASIC))
    assert err.reason == "Bad Header Folding"


def test_max_forwards_zero_is_not_a_parse_error():
    req = parse_request(invite(*without("Max-Forwards"), "Max-Forwards: 0"))
    validate_request(req)
    assert max_forwards(req) == 0


# --- framing ------------------------------------------------------------------------------


def events(framer: SipFramer) -> list[object]:
    out = []
    while not isinstance(event := framer.next_event(), NeedData):
        out.append(event)
        if isinstance(event, FramingError) and event.fatal:
            break
    return out


def test_two_messages_and_pings_in_one_feed():
    first = invite(*without("Content-Length"), "Content-Length: 3", body=b"abc")
    second = invite(*BASIC, method="OPTIONS").replace(b"1 INVITE", b"2 OPTIONS")
    framer = SipFramer()
    framer.feed(b"\r\n" + first + b"\r\n\r\n" + second + b"\r\n\r\n\r\n")
    got = events(framer)
    assert [type(e) for e in got] == [Request, KeepAlive, Request, KeepAlive]
    assert got[0].body == b"abc" and got[2].method == "OPTIONS"
    assert framer.buffered == 2  # a lone CRLF might be half a ping: wait for more
    framer.feed(b"\r\n")
    assert events(framer) == [KeepAlive()]
    framer.feed(b"\r\nSIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n")  # stray CRLF skipped
    (resp,) = events(framer)
    assert isinstance(resp, Response) and resp.status == 200


def test_byte_by_byte_is_linear():
    padding = [f"X-Pad-{i}: {'p' * 180}" for i in range(80)]
    message = invite(*BASIC[:-1], *padding, "Content-Length: 1000", body=b"b" * 1000)
    framer = SipFramer()
    got = []
    for i in range(len(message)):
        framer.feed(message[i : i + 1])
        got += events(framer)
    assert len(got) == 1 and isinstance(got[0], Request) and len(got[0].body) == 1000
    assert len(message) > 15000
    # Each byte is searched about once (plus 3 bytes of overlap per feed); a rescanning
    # buffer would have examined ~len**2 / 2 bytes.
    assert framer.bytes_scanned <= 4 * len(message)


def test_message_split_across_feeds():
    message = invite(*without("Content-Length"), "Content-Length: 10", body=b"0123456789")
    framer = SipFramer()
    for cut in (5, 200, len(message) - 4):
        framer.feed(message[:cut])
        assert framer.next_event() == NeedData()
        framer.feed(message[cut:])
        (req,) = events(framer)
        assert req.body == b"0123456789"


def test_oversized_messages_are_fatal():
    head = invite(*without("Content-Length"), "Content-Length: 0")
    exact = invite(*without("Content-Length"), "Content-Length: 00000")
    body_size = 65536 - len(exact)
    ok = exact.replace(b"00000", b"%05d" % body_size) + b"x" * body_size
    assert len(ok) == 65536
    framer = SipFramer()
    framer.feed(ok)
    (req,) = events(framer)
    assert isinstance(req, Request) and len(req.body) == body_size

    framer = SipFramer()
    framer.feed(ok.replace(b"%05d" % body_size, b"%05d" % (body_size + 1)))
    (event,) = events(framer)
    assert (event.status, event.reason, event.fatal) == (513, "Message Too Large", True)
    assert event.headers.get("Call-ID")  # known from the head: the server can answer 513
    framer.feed(head)
    assert framer.closed and framer.next_event() is event and framer.buffered == 0

    framer = SipFramer()
    framer.feed(head[:-2] + b"X-Big: " + b"y" * 65536)  # a head that never ends
    (event,) = events(framer)
    assert (event.status, event.fatal) == (513, True)
    assert event.headers is not None and event.headers.get("CSeq") == "1 INVITE"
    with pytest.raises(SipParseError) as info:
        parse_message(head + b"z" * 65536)
    assert info.value.status == 513


def test_missing_content_length_on_a_stream_is_fatal_with_headers():
    framer = SipFramer()
    framer.feed(invite(*without("Content-Length")) + invite(*BASIC))
    (event,) = events(framer)
    assert isinstance(event, FramingError)
    assert (event.status, event.reason, event.fatal) == (400, "Missing Content-Length", True)
    resp = make_response(event.headers, event.status, event.reason)
    assert resp.headers.get("CSeq") == "1 INVITE" and resp.headers.get("Via")
    assert framer.next_event() is event


def test_non_fatal_errors_skip_one_message():
    bad_version = raw(f"INVITE {CONF} SIP/3.0", *without("Content-Length"), "l: 2", body=b"zz")
    too_many = invite(*BASIC, *[f"X-{i}: {i}" for i in range(100)])
    framer = SipFramer()
    framer.feed(bad_version + too_many + invite(*BASIC))
    first, second, third = events(framer)
    assert (first.status, first.fatal) == (505, False)
    assert first.headers.get("Call-ID")
    assert (second.status, second.reason, second.fatal) == (400, "Too Many Headers", False)
    assert isinstance(third, Request) and not framer.closed
    assert not first.is_response and not second.is_response
    framer.feed(raw("SIP/2.0 2000 Bad", "CSeq: 1 INVITE", "l: 0"))
    (bad_response,) = events(framer)
    assert bad_response.is_response and not bad_response.fatal  # never answer a response
