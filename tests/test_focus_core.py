"""The focus core driven with plain bytes: no sockets, no server."""

from __future__ import annotations

import json

import pytest

from focus.core import FocusCore, FocusSettings
from focus.events import (
    Admit,
    AdmitRefused,
    AdmitUnavailable,
    Close,
    Conn,
    Log,
    LookupCredentials,
    Output,
    Revoke,
    Send,
)
from webconf.protocol import Admission
from webconf.sip import digest, sdp
from webconf.sip.message import Response, parse_auth_params, parse_message

CONF_URI = "sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:K7Q2"
PASSWORDS = {("contoso.example", "alice"): "alice-pw", ("contoso.example", "bob"): "bob-pw",
             ("fabrikam.example", "eve"): "eve-pw"}


def creds(realm: str, user: str) -> dict[str, str]:
    pw = PASSWORDS.get((realm, user))
    if pw is None:
        return {}
    return {alg: digest.ha1(user, realm, pw, alg) for alg in ("MD5", "SHA-256")}


NOW = 1_700_000_000.0
"""The wall clock the tests hand the core (it never reads one)."""


def make_core(**settings) -> FocusCore:
    core = FocusCore(
        FocusSettings(contact_host="127.0.0.1", contact_port=5061,
                      answer_sdp=lambda offer, **kw: sdp.answer_offer(
                          offer, address="127.0.0.1", **kw),
                      make_multipart=sdp.multipart_mixed, accepts=sdp.accepts, **settings),
        digest.NonceService(b"k" * 32), digest.FailureThrottle())
    core.connection_made(CONN)
    return core


def feed(core: FocusCore, conn: Conn, raw: bytes, now: float = NOW) -> list[Output]:
    """`receive_data`, answering each credentials lookup from PASSWORDS as the directory
    would; the lookups themselves are left out of the result."""
    out = core.receive_data(conn.id, raw, now)
    result: list[Output] = []
    while out:
        result += [o for o in out if not isinstance(o, LookupCredentials)]
        lookups = [o for o in out if isinstance(o, LookupCredentials)]
        out = []
        for lookup in lookups:
            out += core.credentials_found(lookup.ticket, creds(lookup.realm, lookup.username),
                                          now)
    return result


def invite(*, user="alice", domain="contoso.example", uri=CONF_URI, branch="z9hG4bK1",
           cseq=1, auth: str | None = None, call_id="call-1", ua="test-agent",
           body: bytes = b"", content_type: str | None = None, accept: str | None = None,
           to_tag: str | None = None, max_forwards=70, method="INVITE") -> bytes:
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/TLS 127.0.0.1:40000;branch={branch}",
        f"Max-Forwards: {max_forwards}",
        f"From: <sip:{user}@{domain}>;tag=from-{user}",
        f"To: <{uri}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        f"Contact: <sip:{user}@127.0.0.1:40000;transport=tls>",
        f"User-Agent: {ua}",
    ]
    if auth:
        lines.append(f"Authorization: {auth}")
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    if accept:
        lines.append(f"Accept: {accept}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def responses(outputs) -> list[Response]:
    return [parse_message(o.data) for o in outputs if isinstance(o, Send) and o.data.strip()]


def answer_challenge(resp: Response, *, user: str, password: str, uri: str = CONF_URI,
                     nc: int = 1, algorithm: str | None = None) -> str:
    challenges = [parse_auth_params(v)[1] for v in resp.headers.get_fields("WWW-Authenticate")]
    chosen = challenges[0] if algorithm is None else next(
        c for c in challenges if c["algorithm"] == algorithm)
    alg = chosen["algorithm"]
    realm, nonce = chosen["realm"], chosen["nonce"]
    ha1 = digest.ha1(user, realm, password, alg)
    nc_text = f"{nc:08x}"
    response = digest.digest_response(alg, ha1, nonce, nc_text, "abcdef", "INVITE", uri)
    return (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm={alg}, qop=auth, nc={nc_text}, '
            f'cnonce="abcdef"')


CONN = Conn(1, "127.0.0.1", 40000)


def admission(participant: str, *, cookie: str = "C", expires_at: str = "x",
              webconf_url: str = "u") -> Admission:
    """What the WCS answers for K7Q2 (the organizer's conference in CONF_URI)."""
    return Admission("K7Q2", participant, "organizer", cookie, expires_at, webconf_url)


def join(core: FocusCore, *, user="alice", domain="contoso.example", conn=CONN, **kw):
    call_id = kw.get("call_id", "call-1")
    first = feed(core, conn, invite(user=user, domain=domain, branch=f"z9hG4bK1{call_id}",
                                    **kw))
    [challenge] = responses(first)
    assert challenge.status == 401
    auth = answer_challenge(challenge, user=user, password=PASSWORDS[(domain, user)])
    return feed(core, conn, invite(user=user, domain=domain, auth=auth,
                                   branch=f"z9hG4bK2{call_id}", cseq=2, **kw))


def test_challenge_has_one_header_per_algorithm_sha256_first() -> None:
    core = make_core()
    [resp] = responses(feed(core, CONN, invite()))
    assert resp.status == 401
    values = resp.headers.get_fields("WWW-Authenticate")
    assert len(values) == 2
    assert "algorithm=SHA-256" in values[0] and "algorithm=MD5" in values[1]
    assert all('qop="auth"' in v and 'realm="contoso.example"' in v for v in values)
    assert "tag=" in resp.headers.get("To")


def test_md5_only_for_baresip() -> None:
    core = make_core()
    [resp] = responses(feed(core, CONN, invite(ua="baresip v1.0.0")))
    values = resp.headers.get_fields("WWW-Authenticate")
    assert len(values) == 1 and "algorithm=MD5" in values[0]


def test_join_admit_200_ack_bye_revoke() -> None:
    core = make_core()
    out = join(core)
    [trying] = responses(out)
    assert trying.status == 100
    [admit] = [o for o in out if isinstance(o, Admit)]
    assert (admit.conference_id, admit.tenant, admit.organizer, admit.user) == (
        "K7Q2", "contoso.example", "alice@contoso.example", "alice@contoso.example")
    out = core.admitted(admit.ticket, admission(
        "pid1", cookie="COOKIE", expires_at="2030-01-01T00:00:00Z",
        webconf_url="https://127.0.0.1:8443"), NOW)
    [ok] = responses(out)
    assert ok.status == 200
    assert ok.headers.get("Contact") == (
        "<sip:alice@127.0.0.1:5061;transport=tls;gruu;opaque=app:conf:focus:id:K7Q2>;isfocus")
    assert ok.headers.get("Content-Type") == "application/vnd.webconf.join+json"
    body = json.loads(ok.body)
    assert body == {"conference": "K7Q2", "participant": "pid1", "role": "organizer",
                    "webconf_url": "https://127.0.0.1:8443", "cookie": "COOKIE",
                    "expires_at": "2030-01-01T00:00:00Z"}
    assert any(isinstance(o, Log) and o.event["event"] == "join" for o in out)
    assert all("COOKIE" not in json.dumps(o.event) for o in out if isinstance(o, Log))
    to_tag = [p.split("=")[1] for p in ok.headers.get("To").split(";") if p.startswith("tag=")][0]
    assert feed(core, CONN, invite(method="ACK", to_tag=to_tag, cseq=2)) == []
    out = feed(core, CONN, invite(method="BYE", to_tag=to_tag, cseq=3, branch="z9hG4bK3"))
    [bye_ok] = responses(out)
    assert bye_ok.status == 200
    assert [o for o in out if isinstance(o, Revoke)] == [Revoke("K7Q2", "pid1", "bye")]
    # A second BYE: the dialog is gone.
    [again] = responses(feed(core, CONN, invite(method="BYE", to_tag=to_tag, cseq=4,
                                                branch="z9hG4bK4")))
    assert again.status == 481


def test_wrong_password_rechallenges_and_is_throttled() -> None:
    core = make_core()
    for i in range(5):
        [challenge] = responses(feed(core, CONN, invite(branch=f"b{i}a")))
        auth = answer_challenge(challenge, user="alice", password="wrong")
        [resp] = responses(feed(core, CONN, invite(auth=auth, branch=f"b{i}b")))
        assert resp.status == 401
    [challenge] = responses(feed(core, CONN, invite(branch="c1")))
    auth = answer_challenge(challenge, user="alice", password="alice-pw")
    [resp] = responses(feed(core, CONN, invite(auth=auth, branch="c2")))
    assert resp.status == 429 and int(resp.headers.get("Retry-After")) >= 1
    # Another user from another source is not locked out.
    other = Conn(2, "127.0.0.2", 40001)
    core.connection_made(other)
    out = join(core, user="bob", conn=other)
    assert any(isinstance(o, Admit) for o in out)


def test_other_tenant_403_and_unknown_user() -> None:
    core = make_core()
    out = join(core, user="eve", domain="fabrikam.example")
    [resp] = responses(out)
    assert resp.status == 403
    [challenge] = responses(feed(core, CONN, invite(user="mallory")))
    auth = answer_challenge(challenge, user="mallory", password="x")
    [resp] = responses(feed(core, CONN, invite(user="mallory", auth=auth, branch="m2")))
    assert resp.status == 401


def test_admission_failures_map_to_sip_statuses() -> None:
    core = make_core()
    [admit] = [o for o in join(core) if isinstance(o, Admit)]
    [resp] = responses(core.admission_failed(admit.ticket, AdmitRefused(404, "not_found"), NOW))
    assert resp.status == 404
    [admit] = [o for o in join(core, call_id="c2") if isinstance(o, Admit)]
    [resp] = responses(core.admission_failed(admit.ticket, AdmitUnavailable(), NOW))
    assert resp.status == 503 and resp.headers.get("Retry-After") == "5"


def test_cancel_while_admitting_then_admitted_is_revoked() -> None:
    core = make_core()
    [admit] = [o for o in join(core) if isinstance(o, Admit)]
    out = feed(core, CONN, invite(method="CANCEL", branch="z9hG4bK2call-1", cseq=2))
    statuses = sorted(r.status for r in responses(out))
    assert statuses == [200, 487]
    out = core.admitted(admit.ticket, admission("p9"), NOW)
    assert [o for o in out if isinstance(o, Revoke)] == [Revoke("K7Q2", "p9", "cancelled")]
    assert responses(out) == []
    [resp] = responses(feed(core, CONN, invite(method="CANCEL", branch="nope", cseq=9)))
    assert resp.status == 481


def test_lost_connection_revokes_after_grace() -> None:
    core = make_core(leave_grace_seconds=30)
    [admit] = [o for o in join(core) if isinstance(o, Admit)]
    core.admitted(admit.ticket, admission("p1"), NOW)
    assert core.connection_lost(CONN.id, now=100.0) == []
    assert core.next_deadline() == 130.0
    assert core.expire(129.0) == []
    out = core.expire(130.0)
    assert [o for o in out if isinstance(o, Revoke)] == [Revoke("K7Q2", "p1", "connection lost")]
    assert core.dialog_count == 0


def test_sdp_offer_answered_inactive_with_multipart() -> None:
    core = make_core()
    offer = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
             b"m=audio 4000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\n"
             b"m=video 4002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n")
    out = join(core, body=offer, content_type="application/sdp",
               accept="application/sdp, multipart/mixed, application/vnd.webconf.join+json")
    [admit] = [o for o in out if isinstance(o, Admit)]
    [ok] = responses(core.admitted(admit.ticket, admission("p1"), NOW))
    assert ok.status == 200
    ctype = ok.headers.get("Content-Type")
    assert ctype.startswith("multipart/mixed")
    parts = dict(sdp.parse_multipart(ctype, ok.body))
    answer = parts["application/sdp"].decode()
    assert answer.count("m=") == 2 and "a=inactive" in answer
    assert " 0 RTP" not in answer  # no stream rejected with port 0
    assert json.loads(parts["application/vnd.webconf.join+json"])["participant"] == "p1"


@pytest.mark.parametrize("raw,status", [
    (invite(max_forwards=0), 483),
    (invite(method="PUBLISH"), 405),
    (invite(method="SUBSCRIBE"), 489),  # no Event header (focus/subscriptions.py)
    (invite(uri="sip:alice@contoso.example"), 404),
    (invite(method="BYE", to_tag="nope"), 481),
    (invite(method="INVITE", to_tag="nope"), 481),
])
def test_simple_answers(raw: bytes, status: int) -> None:
    core = make_core()
    [resp] = responses(feed(core, CONN, raw))
    assert resp.status == status
    if status == 405:
        assert "INVITE" in resp.headers.get_all("Allow")


def test_options_is_answered_without_auth() -> None:
    core = make_core()
    [resp] = responses(feed(core, CONN, invite(method="OPTIONS")))
    assert resp.status == 200 and "BYE" in resp.headers.get_all("Allow")


def test_retransmitted_final_response_is_resent() -> None:
    core = make_core()
    raw = invite()
    [first] = [o for o in feed(core, CONN, raw) if isinstance(o, Send)]
    [second] = [o for o in feed(core, CONN, raw) if isinstance(o, Send)]
    assert first.data == second.data


def test_reinvite_keeps_sdp_session_and_bumps_version() -> None:
    core = make_core()
    offer = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
             b"m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
    out = join(core, body=offer, content_type="application/sdp")
    [admit] = [o for o in out if isinstance(o, Admit)]
    [ok] = responses(core.admitted(admit.ticket, admission("p1"), NOW))
    assert ok.headers.get("Content-Type") == "application/sdp"  # no multipart in Accept
    o_line = [ln for ln in ok.body.decode().splitlines() if ln.startswith("o=")][0].split()
    to_tag = [p.split("=")[1] for p in ok.headers.get("To").split(";") if p.startswith("tag=")][0]
    reinvite = invite(to_tag=to_tag, cseq=5, branch="re1", body=offer,
                      content_type="application/sdp")
    [again] = responses(feed(core, CONN, reinvite))
    assert again.status == 200
    o2 = [ln for ln in again.body.decode().splitlines() if ln.startswith("o=")][0].split()
    assert o2[1] == o_line[1] and int(o2[2]) == int(o_line[2]) + 1


def test_a_dialog_follows_its_agent_to_a_new_connection_once_it_authenticates() -> None:
    # linphone sends ACK, re-INVITE and BYE to our Contact over a new connection. An ACK
    # binds nothing (it cannot be challenged); an authenticated request does.
    core = make_core(leave_grace_seconds=30)
    [admit] = [o for o in join(core) if isinstance(o, Admit)]
    [ok] = responses(core.admitted(admit.ticket, admission("p1"), NOW))
    to_tag = [p.split("=")[1] for p in ok.headers.get("To").split(";") if p.startswith("tag=")][0]
    second = Conn(7, "127.0.0.1", 40007)
    core.connection_made(second)
    assert feed(core, second, invite(method="ACK", to_tag=to_tag, cseq=2)) == []
    [challenge] = responses(feed(core, second, invite(to_tag=to_tag, cseq=3, branch="re1")))
    assert challenge.status == 401
    auth = answer_challenge(challenge, user="alice", password="alice-pw")
    [again] = responses(feed(core, second, invite(to_tag=to_tag, cseq=4, branch="re2",
                                                  auth=auth)))
    assert again.status == 200 and json.loads(again.body)["participant"] == "p1"
    core.connection_lost(CONN.id, now=100.0)  # the INVITE's connection goes away
    assert core.next_deadline() is None and core.expire(1000.0) == []
    out = feed(core, second, invite(method="BYE", to_tag=to_tag, cseq=5, branch="z9hG4bKbye"))
    assert [o for o in out if isinstance(o, Revoke)] == [Revoke("K7Q2", "p1", "bye")]


def test_tcp_dialogs_get_the_tcp_listener_in_contact() -> None:
    core = make_core(tcp_contact_port=5070)
    tcp = Conn(9, "127.0.0.1", 40009, "TCP")
    core.connection_made(tcp)
    [admit] = [o for o in join(core, conn=tcp) if isinstance(o, Admit)]
    [ok] = responses(core.admitted(admit.ticket, admission("p1"), NOW))
    assert ok.headers.get("Contact").startswith("<sip:alice@127.0.0.1:5070;transport=tcp;")


# -- what moved into the core from the asyncio edge ------------------------------------------
def test_framing_errors_are_answered_and_a_lost_stream_is_closed() -> None:
    core = make_core()
    no_length = invite().replace(b"Content-Length: 0\r\n", b"")
    out = core.receive_data(CONN.id, b"\r\n\r\n" + no_length + invite(branch="later"), NOW)
    assert out[0] == Send(CONN.id, b"\r\n")  # the keep-alive pong
    [resp] = responses(out)
    assert (resp.status, resp.reason) == (400, "Missing Content-Length")
    assert out[-1] == Close(CONN.id)
    assert core.receive_data(CONN.id, invite(branch="after"), NOW) == []  # input discarded


def test_an_oversized_reply_closes_the_connection_instead() -> None:
    vias = "".join(f"Via: SIP/2.0/TLS 127.0.0.1:{40000 + i};branch=z9hG4bKv{i}\r\n"
                   for i in range(20))
    raw = invite(method="OPTIONS").replace(b"Max-Forwards", vias.encode() + b"Max-Forwards")
    core = make_core(max_message_bytes=len(raw))  # the request fits, its longer answer not
    out = core.receive_data(CONN.id, raw, NOW)
    assert out[-1] == Close(CONN.id, abort=True) and responses(out) == []
    assert [o.event["reason"] for o in out if isinstance(o, Log)] == ["oversized reply"]


def test_input_waits_for_the_credentials_lookup() -> None:
    """A request pipelined behind an INVITE whose HA1s are being looked up is handled
    after the lookup's answer, in order (the throttle sees guesses one by one)."""
    core = make_core()
    [challenge] = responses(feed(core, CONN, invite()))
    auth = answer_challenge(challenge, user="alice", password="alice-pw")
    [lookup] = core.receive_data(
        CONN.id, invite(auth=auth, branch="z9hG4bK2") + invite(method="OPTIONS", branch="o"),
        NOW)
    assert lookup == LookupCredentials(lookup.ticket, "contoso.example", "alice",
                                       ("SHA-256", "MD5"))
    assert core.receive_data(CONN.id, b"", NOW) == []
    out = core.credentials_found(lookup.ticket, creds("contoso.example", "alice"), NOW)
    assert [r.status for r in responses(out)] == [100, 200]
    assert [type(o) for o in out if not isinstance(o, Send)] == [Admit]
    assert core.credentials_found(lookup.ticket, None, NOW) == []  # answered once


@pytest.mark.parametrize("failure,status,reason", [
    (AdmitRefused(404, "not_found"), 404, "Conference Not Found"),
    (AdmitRefused(403, "forbidden"), 403, "Forbidden"),
    (AdmitRefused(400, "bad_request"), 400, "Bad Request"),
    (AdmitRefused(409, "conflict"), 500, "Server Internal Error"),
    (AdmitUnavailable(502), 503, "WCS Unavailable"),
])
def test_wcs_failures_map_to_sip_statuses(failure: AdmitRefused | AdmitUnavailable,
                                          status: int, reason: str) -> None:
    core = make_core()
    [admit] = [o for o in join(core) if isinstance(o, Admit)]
    out = core.admission_failed(admit.ticket, failure, NOW)
    [resp] = responses(out)
    assert (resp.status, resp.reason) == (status, reason)
    warnings = [o.event["event"] for o in out if isinstance(o, Log) and o.level == "warning"]
    assert warnings == (["wcs.unavailable"] if status == 503 else [])
