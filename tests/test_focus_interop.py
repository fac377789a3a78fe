"""Focus changes that real SIP agents called for (see tests/test_real_agents.py).

- pjsua2 (pjsip 2.15) dialing a conference URI sends it bare in To
  (`To: sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:K7Q2`) and then drops every
  response echoing that To as unparseable; the focus now echoes such a To (or From) bracketed.
- The join log line says which TLS version the agent negotiated.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl

import pytest

from clients.sip import ConferenceDialog, SipConnection
from focus.core import (
    Admission,
    Admit,
    Conn,
    FocusCore,
    FocusSettings,
    Log,
    LookupCredentials,
    Revoke,
    Send,
    bracket_addr_spec,
)
from focus.directory import Directory
from webconf.deploy import keys, tls
from webconf.deploy.config import Config
from webconf.sip import digest, sdp
from webconf.sip.message import Response, parse_auth_params, parse_message, parse_name_addr

CONF = "sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:K7Q2"
NOW = 1_700_000_000.0


@pytest.mark.parametrize("value,expected", [
    # pjsip's bare conference URI: params that cannot be header params -> URI params
    (CONF, f"<{CONF}>"),
    (f"{CONF};tag=abc", f"<{CONF}>;tag=abc"),
    ("sip:a@b;tag=x;o=a:b", "<sip:a@b;o=a:b>;tag=x"),
    # valid values are left alone, byte for byte
    (f"<{CONF}>;tag=q", f"<{CONF}>;tag=q"),
    ("sip:bob@example.com;tag=1;foo=bar", "sip:bob@example.com;tag=1;foo=bar"),
    ("sip:bob@example.com", "sip:bob@example.com"),
    ('"Alice" <sip:a@b;o=a:b>', '"Alice" <sip:a@b;o=a:b>'),
    ("sip:bob@example.com;maddr=[::1]", "sip:bob@example.com;maddr=[::1]"),
    # a ";" in the user part (RFC 3261 user-unreserved) is not a parameter
    ("sip:+1234;phone-context=x@example.com", "sip:+1234;phone-context=x@example.com"),
])
def test_bracket_addr_spec(value: str, expected: str) -> None:
    assert bracket_addr_spec(value) == expected


def make_core() -> FocusCore:
    return FocusCore(
        FocusSettings(contact_host="127.0.0.1", contact_port=5061,
                      answer_sdp=lambda offer, **kw: sdp.answer_offer(
                          offer, address="127.0.0.1", **kw),
                      make_multipart=sdp.multipart_mixed, accepts=sdp.accepts),
        digest.NonceService(b"k" * 32), digest.FailureThrottle())


def pjsip_request(method: str, *, branch: str, cseq: int, uri: str = CONF,
                  to_tag: str | None = None, auth: str | None = None) -> bytes:
    """A request shaped like pjsua2's: From and To without angle brackets."""
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/TLS 127.0.0.1:40000;rport;branch={branch};alias",
        "Max-Forwards: 70",
        "From: sip:alice@contoso.example;tag=pj-from",
        f"To: {CONF}" + (f";tag={to_tag}" if to_tag else ""),
        "Contact: <sip:alice@127.0.0.1:40000;transport=TLS>",
        "Call-ID: pj-call",
        f"CSeq: {cseq} {method}",
        "User-Agent: PJSUA v2.15.1 Linux",
    ]
    if auth:
        lines.append(f"Authorization: {auth}")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def responses(outputs: list) -> list[Response]:
    return [parse_message(o.data) for o in outputs if isinstance(o, Send)]


def strict_to(resp: Response) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """(URI params, header params) of a response's To, which must be bracketed."""
    value = resp.headers.get("To") or ""
    assert value.startswith("<"), value
    addr = parse_name_addr(value)
    return addr.uri.params, addr.params


def test_pjsip_bare_to_is_echoed_bracketed_through_join_and_bye() -> None:
    core = make_core()
    conn = Conn(1, "127.0.0.1", 40000, tls_version="TLSv1.2")
    core.connection_made(conn)
    [challenge] = responses(core.receive_data(
        conn.id, pjsip_request("INVITE", branch="z9hG4bKpj1", cseq=1), NOW))
    assert challenge.status == 401
    uri_params, params = strict_to(challenge)
    assert uri_params.get("opaque") == "app:conf:focus:id:K7Q2" and "gruu" in uri_params
    assert params.get("tag")
    assert challenge.headers.get("From") == "sip:alice@contoso.example;tag=pj-from"  # valid

    chosen = parse_auth_params(challenge.headers.get_fields("WWW-Authenticate")[0])[1]
    ha1 = digest.ha1("alice", chosen["realm"], "alice-pw", chosen["algorithm"])
    response = digest.digest_response(chosen["algorithm"], ha1, chosen["nonce"], "00000001",
                                      "c0ffee", "INVITE", CONF)
    auth = (f'Digest username="alice", realm="{chosen["realm"]}", nonce="{chosen["nonce"]}", '
            f'uri="{CONF}", response="{response}", algorithm={chosen["algorithm"]}, '
            'qop=auth, nc=00000001, cnonce="c0ffee"')
    [lookup] = core.receive_data(
        conn.id, pjsip_request("INVITE", branch="z9hG4bKpj2", cseq=2, auth=auth), NOW)
    assert isinstance(lookup, LookupCredentials)
    wanted = (lookup.realm, lookup.username)
    assert wanted == ("contoso.example", "alice")
    out = core.credentials_found(lookup.ticket, {
        alg: digest.ha1("alice", "contoso.example", "alice-pw", alg)
        for alg in ("MD5", "SHA-256")}, NOW)
    [trying] = responses(out)
    assert trying.status == 100 and strict_to(trying)[0].get("opaque")
    [admit] = [o for o in out if isinstance(o, Admit)]
    out = core.admitted(admit.ticket, Admission(
        "K7Q2", "p1", "organizer", "cookie", "2030-01-01T00:00Z", "https://127.0.0.1:8443"), NOW)
    [ok] = responses(out)
    assert ok.status == 200
    to_tag = strict_to(ok)[1]["tag"]
    assert isinstance(to_tag, str)
    [joined] = [o.event for o in out if isinstance(o, Log)]
    assert joined["event"] == "join" and joined["tls"] == "TLSv1.2"

    contact_uri = "sip:alice@127.0.0.1:5061;transport=tls;gruu;opaque=app:conf:focus:id:K7Q2"
    assert responses(core.receive_data(conn.id, pjsip_request(
        "ACK", branch="z9hG4bKpj3", cseq=2, uri=contact_uri, to_tag=to_tag), NOW)) == []
    out = core.receive_data(conn.id, pjsip_request(
        "BYE", branch="z9hG4bKpj4", cseq=3, uri=contact_uri, to_tag=to_tag), NOW)
    [bye_ok] = responses(out)
    assert bye_ok.status == 200 and strict_to(bye_ok)[1]["tag"] == to_tag
    assert [o.reason for o in out if isinstance(o, Revoke)] == ["bye"]
    assert [o.event["reason"] for o in out if isinstance(o, Log)] == ["bye"]


def test_join_log_has_no_tls_field_without_tls() -> None:
    core = make_core()
    conn = Conn(2, "127.0.0.1", 40001, "TCP")
    core.connection_made(conn)
    [challenge] = responses(core.receive_data(
        conn.id, pjsip_request("INVITE", branch="z9hG4bKt1", cseq=1), NOW))
    chosen = parse_auth_params(challenge.headers.get_fields("WWW-Authenticate")[0])[1]
    ha1 = digest.ha1("alice", "contoso.example", "alice-pw", chosen["algorithm"])
    response = digest.digest_response(chosen["algorithm"], ha1, chosen["nonce"], "00000001",
                                      "c0ffee", "INVITE", CONF)
    auth = (f'Digest username="alice", realm="contoso.example", nonce="{chosen["nonce"]}", '
            f'uri="{CONF}", response="{response}", algorithm={chosen["algorithm"]}, '
            'qop=auth, nc=00000001, cnonce="c0ffee"')
    [lookup] = core.receive_data(conn.id, pjsip_request(
        "INVITE", branch="z9hG4bKt2", cseq=2, auth=auth), NOW)
    assert isinstance(lookup, LookupCredentials)
    out = core.credentials_found(lookup.ticket, {chosen["algorithm"]: ha1}, NOW)
    [admit] = [o for o in out if isinstance(o, Admit)]
    out = core.admitted(admit.ticket, Admission(
        "K7Q2", "p2", "organizer", "c", "2030-01-01T00:00Z", "https://127.0.0.1:8443"), NOW)
    [joined] = [o.event for o in out if isinstance(o, Log)]
    assert joined["event"] == "join" and "tls" not in joined


class StubWcs:
    """Admits everyone; the focus's server loop is what is under test."""

    async def admit(self, conference_id: str, *, tenant: str, organizer: str, user: str,
                    role: str = "attendee") -> object:
        from focus.wcs_client import Admission as WcsAdmission

        return WcsAdmission(conference_id, "pid-" + user.split("@")[0], "organizer", "cookie",
                            "2030-01-01T00:00:00Z", "https://127.0.0.1:8443")

    async def revoke(self, conference_id: str, participant_id: str) -> bool:
        return True

    async def close(self) -> None:
        return None


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_server_logs_negotiated_tls_version_with_join(
        deployment: Config, caplog: pytest.LogCaptureFixture, version: str) -> None:
    from focus.server import FocusServer

    directory = await Directory.for_deployment(deployment)
    await directory.add_user("alice@contoso.example", "alice-pw")
    deployment.focus.sip_port = 0
    server = FocusServer(deployment, directory, StubWcs(),  # type: ignore[arg-type]
                         keys.load_nonce_secret(deployment))
    await server.start()
    ctx = tls.client_context(deployment)
    if version == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        with caplog.at_level(logging.INFO, logger="webconf.focus"):
            conn = await SipConnection.open("127.0.0.1", server.sip_port, ssl_context=ctx,
                                            server_hostname="contoso.example")
            dialog = ConferenceDialog(conn, CONF, "alice@contoso.example", "alice-pw")
            await asyncio.wait_for(dialog.join(), 10)
            await conn.close()
        joins = [json.loads(r.getMessage()) for r in caplog.records
                 if r.name == "webconf.focus" and '"event": "join"' in r.getMessage()]
        assert [j["tls"] for j in joins] == [f"TLSv{version}"]
    finally:
        await server.stop()
        await directory.close()
