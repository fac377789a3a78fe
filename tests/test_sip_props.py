"""Property tests: serialise/parse round trips, and garbage in -> only SipParseError out."""

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webconf.sip.digest import AuthResult, NonceCountTracker, NonceService, verify
from webconf.sip.framing import FramingError, KeepAlive, NeedData, SipFramer
from webconf.sip.message import (
    Headers,
    NameAddr,
    Request,
    Response,
    SipParseError,
    SipURI,
    Via,
    canonical_name,
    parse_auth_params,
    parse_cseq,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
    quote,
    serialize,
    validate_request,
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOKEN = string.ascii_letters + string.digits + "-.!%*_+`'~"
ALNUM = string.ascii_letters + string.digits

tokens = st.text(TOKEN, min_size=1, max_size=12)
lower_tokens = tokens.map(str.lower)
texts = st.text(max_size=12)  # any Unicode except surrogates
line_texts = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=20
)

labels = st.text(ALNUM, min_size=1, max_size=8)
hostnames = st.lists(labels, min_size=1, max_size=4).map(".".join)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a}]")
hosts = st.one_of(hostnames, ipv4, ipv6)
ports = st.none() | st.integers(0, 65535)
uri_param_names = st.text(min_size=1, max_size=8).filter(lambda s: s == s.lower())


@st.composite
def sip_uris(draw):
    user = draw(st.none() | st.text(min_size=1, max_size=12))
    return SipURI(
        scheme=draw(st.sampled_from(["sip", "sips"])),
        user=user,
        password=None if user is None else draw(st.none() | texts),
        host=draw(hosts),
        port=draw(ports),
        params=draw(st.dictionaries(uri_param_names, st.none() | texts, max_size=4)),
        headers=draw(st.dictionaries(st.text(min_size=1, max_size=8), texts, max_size=3)),
    )


header_param_values = st.none() | tokens | line_texts.map(quote)
header_params = st.dictionaries(lower_tokens, header_param_values, max_size=4)
name_addrs = st.builds(
    NameAddr, uri=sip_uris(), display_name=st.none() | line_texts, params=header_params
)
vias = st.builds(
    Via,
    host=hosts,
    transport=st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS", "WSS"]),
    port=ports,
    params=st.dictionaries(lower_tokens, st.none() | tokens, max_size=4),
)

header_names = st.one_of(
    st.sampled_from(["Via", "From", "To", "Call-ID", "CSeq", "Contact", "Subject", "Allow"]),
    tokens,
).filter(lambda n: canonical_name(n) != "Content-Length")
header_values = line_texts.map(lambda v: v.strip(" \t"))
field_lists = st.lists(st.tuples(header_names, header_values), max_size=12)
bodies = st.binary(max_size=64)

requests = st.builds(
    Request, method=tokens, uri=sip_uris(), headers=field_lists.map(Headers), body=bodies
)
responses = st.builds(
    Response,
    status=st.integers(100, 699),
    reason=line_texts,
    headers=field_lists.map(Headers),
    body=bodies,
)
messages = st.one_of(requests, responses)


def with_length(message):
    """What the parser returns: the fields plus the Content-Length that serialize adds."""
    headers = message.headers.copy()
    headers.add("Content-Length", str(len(message.body)))
    if isinstance(message, Request):
        return Request(message.method, message.uri, headers, message.body)
    return Response(message.status, message.reason, headers, message.body)


# --- round trips --------------------------------------------------------------------------


@SETTINGS
@given(sip_uris())
def test_uri_round_trip(uri):
    assert parse_uri(str(uri)) == uri


@SETTINGS
@given(name_addrs)
def test_name_addr_round_trip(addr):
    assert parse_name_addr(str(addr)) == addr


@SETTINGS
@given(vias)
def test_via_round_trip(via):
    assert parse_via(str(via)) == via


@SETTINGS
@given(messages)
def test_message_round_trip(message):
    assert parse_message(serialize(message)) == with_length(message)


@SETTINGS
@given(st.lists(messages, min_size=1, max_size=4), st.data())
def test_framer_round_trip_with_random_chunks(batch, data):
    wire = b"".join(serialize(m) for m in batch)
    framer = SipFramer()
    got = []
    position = 0
    while position < len(wire):
        size = data.draw(st.integers(1, 64))
        framer.feed(wire[position : position + size])
        position += size
        while not isinstance(event := framer.next_event(), NeedData):
            got.append(event)
    assert got == [with_length(m) for m in batch]
    assert framer.buffered == 0


@SETTINGS
@given(st.lists(name_addrs, min_size=1, max_size=4), st.sampled_from(["Contact", "Route", "m"]))
def test_get_all_splits_joined_addresses(addrs, name):
    items = [str(a) for a in addrs]
    headers = Headers([(name, ", ".join(items))])
    assert headers.get_all(name) == items
    assert [parse_name_addr(v) for v in headers.get_all(name)] == addrs
    assert headers.get(name) == items[0]


# --- garbage in, SipParseError out --------------------------------------------------------

VALID = (
    b"INVITE sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:K7Q2 SIP/2.0\r\n"
    b"Via: SIP/2.0/TLS client.example.com:5061;branch=z9hG4bK74bf9;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Bob \\"B\\"" <sip:bob@contoso.example>;tag=9fxced76sl\r\n'
    b"To: <sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:K7Q2>\r\n"
    b"Call-ID: 3848276298220188511@client.example.com\r\n"
    b"CSeq: 1 INVITE\r\n"
    b'Contact: <sip:bob@192.0.2.4:5061;transport=tls>;+sip.instance="<urn:uuid:1>"\r\n'
    b'Authorization: Digest username="bob", realm="contoso.example", nonce="n", nc=00000001\r\n'
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


@st.composite
def mutated(draw):
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "duplicate"]))
        at = draw(st.integers(0, len(data)))
        if kind == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(
                st.sampled_from([b"\r\n", b" ", b"\t", b'"', b"<", b">", b";", b",", b":", b"%"])
                | st.binary(max_size=4)
            )
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            line_end = data.find(b"\r\n", at)
            start = data.rfind(b"\r\n", 0, at) + 2
            if line_end > 0:
                data[line_end:line_end] = data[start - 2 : line_end]
    return bytes(data)


def parse_and_validate(data):
    try:
        message = parse_message(data)
    except SipParseError as exc:
        assert 400 <= exc.status <= 599
        return
    if isinstance(message, Request):
        try:
            validate_request(message)
        except SipParseError as exc:
            assert exc.status == 400 and exc.headers is message.headers
        serialize(message)  # whatever parsed can be written back


@SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_parse_errors(data):
    parse_and_validate(data)
    parse_and_validate(VALID[:60] + data)


@SETTINGS
@given(mutated())
def test_mutated_messages_only_raise_parse_errors(data):
    parse_and_validate(data)


@SETTINGS
@given(st.one_of(mutated(), st.binary(max_size=300)), st.data())
def test_framer_only_produces_framing_errors(data, draw):
    framer = SipFramer(max_message_size=1024)
    position = 0
    while position < len(data) * 2:
        size = draw.draw(st.integers(1, 100))
        framer.feed((data + data)[position : position + size])
        position += size
        while not isinstance(event := framer.next_event(), NeedData):
            assert isinstance(event, Request | Response | KeepAlive | FramingError)
            if isinstance(event, FramingError):
                assert 400 <= event.status <= 599
                if event.fatal:
                    assert framer.closed
                    break
        if framer.closed:
            break


@SETTINGS
@given(st.text(max_size=80) | mutated().map(lambda b: b.decode("latin-1")))
def test_value_parsers_only_raise_parse_errors(text):
    for parse in (parse_uri, parse_name_addr, parse_via, parse_cseq, parse_auth_params):
        try:
            parse(text)
        except SipParseError:
            pass
    result = verify(
        text,
        method="INVITE",
        request_uri="sip:alice@contoso.example",
        expected_realm="contoso.example",
        ha1_lookup=lambda user, alg: "0" * 32,
        nonce_service=NonceService(b"k" * 32),
        nc_tracker=NonceCountTracker(),
        now=0.0,
    )
    assert isinstance(result, AuthResult) and not result.ok
