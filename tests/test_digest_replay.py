"""Issue 15, finding 5: a captured Authorization works only for its own Request-URI and on
its own connection (the focus core, driven with plain bytes)."""

from __future__ import annotations

from focus.core import FocusCore
from focus.events import Admit, Conn, Log, Send
from webconf.sip.message import parse_auth_params

from .test_focus_core import (
    CONF_URI,
    CONN,
    admission,
    answer_challenge,
    feed,
    invite,
    make_core,
    responses,
)

OTHER_URI = "sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:ZZ99"


def captured_join(core: FocusCore) -> bytes:
    """alice joins on CONN; what an eavesdropper would have recorded: her second INVITE."""
    [challenge] = responses(feed(core, CONN, invite(branch="z9hG4bKa")))
    auth = answer_challenge(challenge, user="alice", password="alice-pw")
    raw = invite(auth=auth, branch="z9hG4bKb", cseq=2)
    out = feed(core, CONN, raw)
    [admit] = [o for o in out if isinstance(o, Admit)]
    [ok] = responses(core.admitted(admit.ticket, admission("p1"), 0.0))
    assert ok.status == 200  # the legitimate flow still joins
    return raw


def test_a_replay_on_a_new_connection_is_challenged_and_admits_no_one() -> None:
    core = make_core()
    raw = captured_join(core)
    thief = Conn(2, "192.0.2.66", 50000)
    core.connection_made(thief)
    out = feed(core, thief, raw.replace(b"z9hG4bKb", b"z9hG4bKthief"))
    [resp] = responses(out)
    assert resp.status == 401
    assert not any(isinstance(o, Admit) for o in out)
    # stale=true: the nonce is genuine, but was issued to another connection; a real agent
    # that moved retries with the fresh nonce without asking its user, a replayer cannot
    params = [parse_auth_params(v)[1] for v in resp.headers.get_fields("WWW-Authenticate")]
    assert all(p.get("stale") == "true" for p in params)
    # and the fresh nonce is bound to the thief's connection, not to alice's
    out = feed(core, CONN, invite(auth=answer_challenge(resp, user="alice", password="x"),
                                  branch="z9hG4bKc", cseq=3, call_id="call-2"))
    assert [r.status for r in responses(out)] == [401]


def test_a_replay_with_another_request_uri_is_refused() -> None:
    core = make_core()
    raw = captured_join(core)
    # the same credentials (a higher nc, so not a plain replay) for another conference
    forged = raw.replace(f"INVITE {CONF_URI} ".encode(), f"INVITE {OTHER_URI} ".encode())
    forged = forged.replace(b"nc=00000001", b"nc=00000002").replace(b"z9hG4bKb", b"z9hG4bKx")
    out = feed(core, CONN, forged)
    [resp] = responses(out)
    assert resp.status == 400 and resp.reason == "Digest URI Mismatch"
    assert not any(isinstance(o, Admit) for o in out)
    assert any(isinstance(o, Log) and o.event.get("reason") == "uri-mismatch" for o in out)
    # on a new connection too
    thief = Conn(3, "192.0.2.66", 50001)
    core.connection_made(thief)
    out = feed(core, thief, forged.replace(b"z9hG4bKx", b"z9hG4bKy"))
    assert [r.status for r in responses(out)] == [400]
    assert not any(isinstance(o, Admit) for o in out)


def test_a_replay_on_the_same_connection_is_refused() -> None:
    core = make_core()
    raw = captured_join(core)
    out = feed(core, CONN, raw.replace(b"z9hG4bKb", b"z9hG4bKagain").replace(
        b"call-1", b"call-9"))
    assert [r.status for r in responses(out)] == [401]
    assert not any(isinstance(o, Admit) for o in out)


def test_the_digest_uri_may_spell_the_request_uri_differently() -> None:
    core = make_core()
    [challenge] = responses(feed(core, CONN, invite(branch="z9hG4bKa")))
    spelled = "SIP:alice@CONTOSO.example;opaque=app:conf:focus:id:K7Q2;gruu"
    auth = answer_challenge(challenge, user="alice", password="alice-pw", uri=spelled)
    out = feed(core, CONN, invite(auth=auth, branch="z9hG4bKb", cseq=2))
    assert any(isinstance(o, Admit) for o in out)
    assert [o for o in out if isinstance(o, Send)]  # 100 Trying
