"""SDP answers for plain SIP phones, multipart bodies and Accept matching (focus/sdp.py).

The offers are modeled on what baresip, pjsua and linphone send, plus a WebRTC-style
DTLS-SRTP offer; every answer is checked line by line and re-parsed.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import json

import pytest

from webconf.sip.sdp import (
    DUMMY_FINGERPRINT,
    MultipartError,
    SdpError,
    accepts,
    answer_offer,
    multipart_mixed,
    parse_multipart,
)


def crlf(text: str) -> bytes:
    return "\r\n".join(text.strip().splitlines()).encode() + b"\r\n"


FP = ("D2:FA:0E:C3:22:59:5E:14:95:69:92:3D:13:B4:84:24:"
      "2C:C2:A2:C0:3E:FD:34:8E:5E:EA:6F:AF:52:CE:E6:0F")
KEY256 = "dGhpcyBpcyBub3QgYSByZWFsIGtleSwganVzdCBhIHRlc3QgYnl0ZXMgZm9yIGl0"

BARESIP = crlf("""
v=0
o=- 1876510723 2637162946 IN IP4 192.168.1.10
s=-
c=IN IP4 192.168.1.10
t=0 0
m=audio 10000 RTP/AVP 96 0 8 101
b=AS:64
a=rtpmap:96 opus/48000/2
a=fmtp:96 stereo=1;sprop-stereo=1
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=sendrecv
a=label:1
a=ssrc:2903617010 cname:6b3f1f0e-6c13-4f4d-a8bc-52c5d5b3c2fb
a=rtcp-rsize
""")

BARESIP_PCMU = crlf("""
v=0
o=- 1 2 IN IP4 10.1.1.1
s=-
c=IN IP4 10.1.1.1
t=0 0
m=audio 10002 RTP/AVP 0 8 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=sendrecv
""")

PJSUA = crlf("""
v=0
o=- 3869212345 3869212345 IN IP4 10.0.0.5
s=pjmedia
b=AS:117
t=0 0
a=X-nat:0
m=audio 4000 RTP/AVP 96 97 98 99 3 0 8 9 120 121 122
c=IN IP4 10.0.0.5
b=TIAS:96000
a=rtcp:4001 IN IP4 10.0.0.5
a=sendrecv
a=rtpmap:96 speex/16000
a=rtpmap:97 speex/8000
a=rtpmap:98 speex/32000
a=rtpmap:99 iLBC/8000
a=fmtp:99 mode=30
a=rtpmap:3 GSM/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:9 G722/8000
a=rtpmap:120 telephone-event/16000
a=fmtp:120 0-16
a=rtpmap:121 telephone-event/8000
a=fmtp:121 0-16
a=rtpmap:122 telephone-event/32000
a=ssrc:1289112456 cname:7e8c4a1d2c3b4a5f
m=video 4002 RTP/AVP 97 98
c=IN IP4 10.0.0.5
b=TIAS:256000
a=rtcp:4003 IN IP4 10.0.0.5
a=sendrecv
a=rtpmap:97 H264/90000
a=fmtp:97 profile-level-id=42e01e; packetization-mode=1
a=rtpmap:98 H264/90000
a=fmtp:98 profile-level-id=42e01e
a=rtcp-fb:* nack pli
""")

LINPHONE = crlf("""
v=0
o=alice 2207 1804 IN IP4 192.168.0.2
s=Talk
c=IN IP4 192.168.0.2
t=0 0
a=ice-pwd:31ec21eb38b2ec6d36e8dc7b
a=ice-ufrag:e56e0d36
a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics
m=audio 7078 RTP/AVP 96 97 98 0 8 18 101 99 100
a=rtpmap:96 opus/48000/2
a=fmtp:96 useinbandfec=1
a=rtpmap:97 SILK/16000
a=rtpmap:98 speex/16000
a=fmtp:98 vbr=on
a=fmtp:18 annexb=yes
a=rtpmap:101 telephone-event/48000
a=rtpmap:99 telephone-event/16000
a=rtpmap:100 telephone-event/8000
a=rtcp:7079
a=candidate:1 1 UDP 2130706431 192.168.0.2 7078 typ host
a=rtcp-fb:* trr-int 1000
a=rtcp-fb:* ccm tmmbr
""")

LINPHONE_SRTP = crlf(f"""
v=0
o=bob 1394 3232 IN IP4 192.168.0.3
s=Talk
c=IN IP4 192.168.0.3
t=0 0
m=audio 7078 RTP/SAVP 0 8 101
a=rtpmap:101 telephone-event/8000
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4
a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj|2^20|1:32
a=crypto:3 AES_256_CM_HMAC_SHA1_80 inline:{KEY256}
m=video 9078 RTP/SAVPF 96
a=rtpmap:96 VP8/90000
a=crypto:7 AES_256_CM_HMAC_SHA1_32 inline:{KEY256}
a=crypto:8 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz
""")

DTLS_ONLY = crlf(f"""
v=0
o=- 4611731400430051336 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1
a=fingerprint:sha-256 {FP}
m=audio 9 UDP/TLS/RTP/SAVPF 111 0
c=IN IP4 0.0.0.0
a=setup:actpass
a=mid:0
a=rtpmap:111 opus/48000/2
a=fmtp:111 minptime=10;useinbandfec=1
a=rtcp-mux
m=video 9 UDP/TLS/RTP/SAVPF 96
c=IN IP4 0.0.0.0
a=setup:actpass
a=mid:1
a=rtpmap:96 VP8/90000
""")

MIXED_DTLS = crlf(f"""
v=0
o=- 77 1 IN IP4 10.0.0.9
s=-
c=IN IP4 10.0.0.9
t=0 0
m=audio 5004 RTP/AVP 0
a=rtpmap:0 PCMU/8000
m=video 5006 UDP/TLS/RTP/SAVP 96
a=fingerprint:sha-256 {FP}
a=setup:actpass
a=rtpmap:96 VP8/90000
""")

WITH_PORT_ZERO = crlf("""
v=0
o=- 5 5 IN IP4 10.0.0.7
s=-
c=IN IP4 10.0.0.7
t=0 0
m=audio 6000 RTP/AVP 8 0
a=rtpmap:8 PCMA/8000
m=video 0 RTP/AVP 96
a=rtpmap:96 H264/90000
m=application 0 UDP/BFCP *
""")


def sections(answer: bytes) -> tuple[list[str], list[list[str]]]:
    """Session lines and, per m-line, [m-line, attribute lines...]."""
    text = answer.decode()
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")
    session: list[str] = []
    media: list[list[str]] = []
    for line in text.split("\r\n")[:-1]:
        if line.startswith("m="):
            media.append([line])
        elif media:
            media[-1].append(line)
        else:
            session.append(line)
    return session, media


def m_lines(sdp: bytes) -> list[list[str]]:
    return [line.split() for line in sdp.decode().splitlines() if line.startswith("m=")]


def check_common(offer: bytes, answer: bytes) -> list[list[str]]:
    session, media = sections(answer)
    assert session[0] == "v=0"
    assert session[1].startswith("o=webconf ") and session[1].endswith(" IN IP4 192.0.2.10")
    assert session[2:] == ["s=webconf focus", "c=IN IP4 192.0.2.10", "t=0 0"]
    offered = m_lines(offer)
    answered = [section[0].split() for section in media]
    assert len(answered) == len(offered)
    for o, a in zip(offered, answered, strict=True):
        assert a[0] == o[0]            # media type
        assert a[2] == o[2]            # transport proto
        assert len(a) == 4 and a[3] == o[3]  # exactly the first offered format
        if o[1] == "0":
            assert a[1] == "0"
    for section in media:
        if section[0].split()[1] != "0":
            assert section[0].split()[1] == "9"
            assert "a=inactive" in section
            assert not {"a=sendrecv", "a=sendonly", "a=recvonly"} & set(section)
    assert answer_offer(answer, address="198.51.100.1")  # the answer is itself valid SDP
    return media


def test_baresip_opus_first() -> None:
    answer = answer_offer(BARESIP, address="192.0.2.10", session_id=42)
    media = check_common(BARESIP, answer)
    assert media == [["m=audio 9 RTP/AVP 96", "a=rtpmap:96 opus/48000/2",
                      "a=fmtp:96 stereo=1;sprop-stereo=1", "a=inactive"]]
    assert b"o=webconf 42 42 IN IP4 192.0.2.10\r\n" in answer


def test_baresip_pcmu_with_lf_only() -> None:
    offer = BARESIP_PCMU.replace(b"\r\n", b"\n")
    media = check_common(offer, answer_offer(offer, address="192.0.2.10"))
    assert media == [["m=audio 9 RTP/AVP 0", "a=rtpmap:0 PCMU/8000", "a=inactive"]]


def test_pjsua_audio_and_video() -> None:
    media = check_common(PJSUA, answer_offer(PJSUA, address="192.0.2.10"))
    assert media[0] == ["m=audio 9 RTP/AVP 96", "a=rtpmap:96 speex/16000", "a=inactive"]
    assert media[1] == ["m=video 9 RTP/AVP 97", "a=rtpmap:97 H264/90000",
                        "a=fmtp:97 profile-level-id=42e01e; packetization-mode=1",
                        "a=inactive"]


def test_linphone_many_codecs() -> None:
    media = check_common(LINPHONE, answer_offer(LINPHONE, address="192.0.2.10"))
    assert media == [["m=audio 9 RTP/AVP 96", "a=rtpmap:96 opus/48000/2",
                      "a=fmtp:96 useinbandfec=1", "a=inactive"]]


def test_linphone_sdes_srtp() -> None:
    answer = answer_offer(LINPHONE_SRTP, address="192.0.2.10")
    media = check_common(LINPHONE_SRTP, answer)
    audio, video = media
    assert audio[0] == "m=audio 9 RTP/SAVP 0"
    cryptos = [line for line in audio if line.startswith("a=crypto:")]
    assert len(cryptos) == 1
    tag, suite, key = cryptos[0][len("a=crypto:"):].split(" ")
    assert (tag, suite) == ("1", "AES_CM_128_HMAC_SHA1_80")
    assert key.startswith("inline:") and len(base64.b64decode(key[7:])) == 30
    assert b"WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz" not in answer  # never echo their key
    (video_crypto,) = [line for line in video if line.startswith("a=crypto:")]
    tag, suite, key = video_crypto[len("a=crypto:"):].split(" ")
    assert (tag, suite) == ("7", "AES_256_CM_HMAC_SHA1_32")
    assert len(base64.b64decode(key[7:])) == 46
    # a fresh key every time
    assert answer_offer(LINPHONE_SRTP, address="192.0.2.10") != answer


def test_unknown_sdes_suite_rejects_that_stream() -> None:
    offer = PJSUA.replace(b"m=video 4002 RTP/AVP 97 98", b"m=video 4002 RTP/SAVP 97 98")
    offer = offer.replace(b"a=rtcp-fb:* nack pli", b"a=crypto:1 F8_128_HMAC_SHA1_80 inline:"
                          b"WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz")
    media = check_common(offer, answer_offer(offer, address="192.0.2.10"))
    assert media[0][0] == "m=audio 9 RTP/AVP 96"
    assert media[1] == ["m=video 0 RTP/SAVP 97"]


def test_dtls_only_offer_keeps_one_stream_inactive() -> None:
    media = check_common(DTLS_ONLY, answer_offer(DTLS_ONLY, address="192.0.2.10"))
    audio, video = media
    assert audio == ["m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=rtpmap:111 opus/48000/2",
                     "a=fmtp:111 minptime=10;useinbandfec=1", "a=setup:active",
                     f"a=fingerprint:{DUMMY_FINGERPRINT}", "a=inactive"]
    assert video == ["m=video 0 UDP/TLS/RTP/SAVPF 96"]


def test_dtls_offerer_insisting_on_active_gets_passive() -> None:
    offer = DTLS_ONLY.replace(b"a=setup:actpass", b"a=setup:active")
    media = check_common(offer, answer_offer(offer, address="192.0.2.10"))
    assert "a=setup:passive" in media[0]


def test_dtls_stream_beside_plain_rtp_is_rejected() -> None:
    media = check_common(MIXED_DTLS, answer_offer(MIXED_DTLS, address="192.0.2.10"))
    assert media == [["m=audio 9 RTP/AVP 0", "a=rtpmap:0 PCMU/8000", "a=inactive"],
                     ["m=video 0 UDP/TLS/RTP/SAVP 96"]]


def test_port_zero_streams_stay_port_zero() -> None:
    media = check_common(WITH_PORT_ZERO, answer_offer(WITH_PORT_ZERO, address="192.0.2.10"))
    assert media == [["m=audio 9 RTP/AVP 8", "a=rtpmap:8 PCMA/8000", "a=inactive"],
                     ["m=video 0 RTP/AVP 96"], ["m=application 0 UDP/BFCP *"]]


def test_all_port_zero_offer_answers_all_port_zero() -> None:
    offer = WITH_PORT_ZERO.replace(b"m=audio 6000", b"m=audio 0")
    media = check_common(offer, answer_offer(offer, address="192.0.2.10"))
    assert [section[0].split()[1] for section in media] == ["0", "0", "0"]


def test_non_rtp_stream_is_answered_inactive() -> None:
    offer = WITH_PORT_ZERO.replace(b"m=application 0 UDP/BFCP *", b"m=application 5070 "
                                   b"TCP/BFCP *\r\na=floorctrl:c-only")
    media = check_common(offer, answer_offer(offer, address="192.0.2.10"))
    assert media[2] == ["m=application 9 TCP/BFCP *", "a=inactive"]


def test_ipv6_address_and_version() -> None:
    answer = answer_offer(BARESIP, address="2001:db8::10", session_id=7, version=8)
    session, _ = sections(answer)
    assert session[1] == "o=webconf 7 8 IN IP6 2001:db8::10"
    assert session[3] == "c=IN IP6 2001:db8::10"


def test_random_session_id() -> None:
    first = sections(answer_offer(BARESIP, address="192.0.2.10"))[0][1].split()[1]
    second = sections(answer_offer(BARESIP, address="192.0.2.10"))[0][1].split()[1]
    assert first != second and first.isdigit()


def test_bad_address_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        answer_offer(BARESIP, address="1.2.3.4\r\nm=audio")


@pytest.mark.parametrize("garbage", [
    b"",
    b"hello world",
    b"\x00\x01\x02",
    b"<html><body>not sdp</body></html>",
    b"v=1\r\no=- 1 1 IN IP4 1.1.1.1\r\ns=-\r\nt=0 0\r\n",
    b"o=- 1 1 IN IP4 1.1.1.1\r\nv=0\r\n",
    b"v=0\r\ns=-\r\nt=0 0\r\nm=audio 1 RTP/AVP 0\r\n",          # no o=
    b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\ns=-\r\nm=audio RTP/AVP 0\r\n",
    b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\ns=-\r\nm=audio 5004 RTP/AVP\r\n",
    b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\ns=-\r\nm=audio 99999 RTP/AVP 0\r\n",
    b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\ns=-\r\nthis is not a line\r\n",
    b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\ns=-\r\nX=upper-case type\r\n",
    b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\ns=-\r\n" + b"m=audio 1 RTP/AVP 0\r\n" * 65,
])
def test_garbage_raises_sdp_error(garbage: bytes) -> None:
    with pytest.raises(SdpError):
        answer_offer(garbage, address="192.0.2.10")


def test_offer_without_media_gets_session_only_answer() -> None:
    answer = answer_offer(b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\ns=-\r\nt=0 0\r\n",
                          address="192.0.2.10")
    assert b"m=" not in answer and answer.startswith(b"v=0\r\n")


# -- multipart ------------------------------------------------------------------------------

JOIN = json.dumps({"conference": "K7Q2", "participant": "p1", "role": "attendee",
                   "webconf_url": "https://127.0.0.1:8443", "cookie": "eyJ.x.y",
                   "expires_at": "2030-01-01T00:00:00Z"}).encode()


def test_multipart_round_trip() -> None:
    sdp = answer_offer(BARESIP, address="192.0.2.10")
    parts = [("application/sdp", sdp), ("application/vnd.webconf.join+json", JOIN)]
    content_type, body = multipart_mixed(parts)
    assert content_type.startswith("multipart/mixed;boundary=")
    boundary = content_type.split("=", 1)[1]
    assert body.startswith(f"--{boundary}\r\n".encode())
    assert body.endswith(f"\r\n--{boundary}--\r\n".encode())
    assert parse_multipart(content_type, body) == parts
    # an independent MIME parser agrees
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    got = [(p.get_content_type(), p.get_payload(decode=True)) for p in message.iter_parts()]
    assert got == parts


def test_multipart_boundaries_are_fresh() -> None:
    first, _ = multipart_mixed([("text/plain", b"x")])
    second, _ = multipart_mixed([("text/plain", b"x")])
    assert first != second


def test_multipart_empty_and_binary_parts() -> None:
    parts = [("application/octet-stream", bytes(range(256)) + b"\r\n--\r\n"),
             ("text/plain", b"")]
    assert parse_multipart(*multipart_mixed(parts)) == parts


def test_parse_multipart_tolerates_lf_quoted_boundary_and_preamble() -> None:
    body = (b"preamble\n--b 1\nContent-Type: application/sdp\n\nv=0\n\n--b 1\n\nplain"
            b"\n--b 1--\nepilogue")
    parts = parse_multipart('Multipart/Mixed; Boundary="b 1"', body)
    assert parts == [("application/sdp", b"v=0\n"), ("text/plain", b"plain")]


@pytest.mark.parametrize("content_type,body", [
    ("application/sdp", b"v=0\r\n"),
    ("multipart/mixed", b"--x\r\n\r\nA\r\n--x--\r\n"),
    ("multipart/mixed;boundary=x", b"--x\r\nContent-Type: a/b\r\n\r\nA\r\n"),
    ("multipart/mixed;boundary=x", b"no delimiters at all"),
    ("multipart/mixed;boundary=x", b"--x\r\nContent-Type: a/b\r\nA\r\n--x--\r\n"),
])
def test_parse_multipart_errors(content_type: str, body: bytes) -> None:
    with pytest.raises(MultipartError):
        parse_multipart(content_type, body)


# -- Accept ----------------------------------------------------------------------------------

JOIN_TYPE = "application/vnd.webconf.join+json"


@pytest.mark.parametrize("header,media_type,expected", [
    (None, "application/sdp", True),
    (None, "multipart/mixed", False),
    (None, JOIN_TYPE, False),
    ("", "application/sdp", False),
    ("application/sdp", "application/sdp", True),
    ("application/sdp", "multipart/mixed", False),
    ("application/sdp, multipart/mixed", "multipart/mixed", True),
    ("application/sdp,multipart/mixed," + JOIN_TYPE, JOIN_TYPE, True),
    ("APPLICATION/SDP", "application/sdp", True),
    ("application/sdp", "Application/SDP", True),
    ("*/*", JOIN_TYPE, True),
    ("*/*", "multipart/mixed", True),
    ("multipart/*", "multipart/mixed", True),
    ("multipart/*", "application/sdp", False),
    ("application/*;q=0.5", JOIN_TYPE, True),
    ("application/*", "multipart/mixed", False),
    ("*/*, multipart/mixed;q=0", "multipart/mixed", False),
    ("*/*, multipart/mixed;q=0", "application/sdp", True),
    ("multipart/*;q=0, multipart/mixed", "multipart/mixed", True),
    ("application/sdp;q=0", "application/sdp", False),
    ("application/sdp; q=0.000", "application/sdp", False),
    ("application/sdp; q=0.001", "application/sdp", True),
    ("application/sdp;level=1", "application/sdp", True),
    ("application/sdp;q=0.5;ext=1", "application/sdp", True),
    ("text/plain;charset=utf-8", "text/plain;charset=latin1", False),
    ("text/plain;charset=UTF-8", "text/plain;charset=utf-8", True),
    ('application/x-foo;note="a,b", application/sdp', "application/sdp", True),
    ("  application/sdp  ,  ", "application/sdp", True),
])
def test_accepts(header: str | None, media_type: str, expected: bool) -> None:
    assert accepts(header, media_type) is expected
