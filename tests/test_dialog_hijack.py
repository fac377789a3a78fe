"""Issue 15, finding 7: knowing a dialog's Call-ID and tags is not enough, from another
connection, to get its cookie back (re-INVITE) or to end it (BYE); the dialog's user must
authenticate there first. An ACK binds nothing. (The focus core, driven with plain bytes.)"""

from __future__ import annotations

import json

from focus.core import FocusCore
from focus.events import Admit, Conn, Output, Revoke
from webconf.sip import digest
from webconf.sip.message import Response, parse_auth_params

from .test_focus_core import (
    CONF_URI,
    CONN,
    admission,
    feed,
    invite,
    join,
    make_core,
    responses,
)

ELSEWHERE = Conn(5, "192.0.2.66", 50000)


def joined(core: FocusCore) -> str:
    """alice joins on CONN (cookie "COOKIE"); our To tag."""
    [admit] = [o for o in join(core) if isinstance(o, Admit)]
    [ok] = responses(core.admitted(admit.ticket, admission("p1", cookie="COOKIE"), 0.0))
    assert ok.status == 200
    core.connection_made(ELSEWHERE)
    return next(p.split("=")[1] for p in ok.headers.get("To").split(";")
                if p.startswith("tag="))


def credentials(challenge: Response, *, user: str, password: str, method: str) -> str:
    params = parse_auth_params(challenge.headers.get_fields("WWW-Authenticate")[0])[1]
    alg, realm, nonce = params["algorithm"], params["realm"], params["nonce"]
    ha1 = digest.ha1(user, realm, password, alg)
    response = digest.digest_response(alg, ha1, nonce, "00000001", "abc", method, CONF_URI)
    return (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{CONF_URI}", '
            f'response="{response}", algorithm={alg}, qop=auth, nc=00000001, cnonce="abc"')


def revokes(out: list[Output]) -> list[Revoke]:
    return [o for o in out if isinstance(o, Revoke)]


def leaked(out: list[Output]) -> bool:
    return any(b"COOKIE" in r.body for r in responses(out))


def test_a_reinvite_from_elsewhere_without_credentials_gets_401_and_no_cookie() -> None:
    core = make_core()
    tag = joined(core)
    assert feed(core, ELSEWHERE, invite(method="ACK", to_tag=tag, cseq=2)) == []  # binds nothing
    out = feed(core, ELSEWHERE, invite(to_tag=tag, cseq=3, branch="h1"))
    [resp] = responses(out)
    assert resp.status == 401 and resp.headers.get_fields("WWW-Authenticate")
    assert not leaked(out)
    assert core.dialog_count == 1


def test_a_bye_from_elsewhere_without_credentials_gets_401_and_the_dialog_lives() -> None:
    core = make_core()
    tag = joined(core)
    feed(core, ELSEWHERE, invite(method="ACK", to_tag=tag, cseq=2))
    out = feed(core, ELSEWHERE, invite(method="BYE", to_tag=tag, cseq=3, branch="h2"))
    assert [r.status for r in responses(out)] == [401]
    assert revokes(out) == [] and core.dialog_count == 1
    # closing that connection does not orphan the dialog either: the ACK did not move it
    assert core.connection_lost(ELSEWHERE.id, 10.0) == []
    assert core.next_deadline() is None


def test_the_dialogs_user_authenticating_elsewhere_may_reinvite_and_bye() -> None:
    core = make_core()
    tag = joined(core)
    [challenge] = responses(feed(core, ELSEWHERE, invite(to_tag=tag, cseq=3, branch="r1")))
    auth = credentials(challenge, user="alice", password="alice-pw", method="INVITE")
    out = feed(core, ELSEWHERE, invite(to_tag=tag, cseq=4, branch="r2", auth=auth))
    [ok] = responses(out)
    assert ok.status == 200 and json.loads(ok.body)["cookie"] == "COOKIE"

    third = Conn(6, "192.0.2.67", 50001)
    core.connection_made(third)
    [challenge] = responses(feed(core, third, invite(method="BYE", to_tag=tag, cseq=5,
                                                     branch="b1")))
    assert challenge.status == 401
    auth = credentials(challenge, user="alice", password="alice-pw", method="BYE")
    out = feed(core, third, invite(method="BYE", to_tag=tag, cseq=6, branch="b2", auth=auth))
    assert [r.status for r in responses(out)] == [200]
    assert revokes(out) == [Revoke("K7Q2", "p1", "bye")] and core.dialog_count == 0


def test_another_users_credentials_elsewhere_get_403() -> None:
    core = make_core()
    tag = joined(core)
    for method, branch in (("INVITE", "x"), ("BYE", "y")):
        [challenge] = responses(feed(core, ELSEWHERE, invite(
            method=method, to_tag=tag, cseq=3, branch=branch + "1")))
        auth = credentials(challenge, user="bob", password="bob-pw", method=method)
        out = feed(core, ELSEWHERE, invite(method=method, to_tag=tag, cseq=4,
                                           branch=branch + "2", auth=auth))
        [resp] = responses(out)
        assert resp.status == 403, method
        assert not leaked(out) and revokes(out) == []
    assert core.dialog_count == 1


def test_wrong_password_elsewhere_is_challenged_again() -> None:
    core = make_core()
    tag = joined(core)
    [challenge] = responses(feed(core, ELSEWHERE, invite(method="BYE", to_tag=tag, cseq=3,
                                                         branch="w1")))
    auth = credentials(challenge, user="alice", password="guess", method="BYE")
    out = feed(core, ELSEWHERE, invite(method="BYE", to_tag=tag, cseq=4, branch="w2",
                                       auth=auth))
    assert [r.status for r in responses(out)] == [401]
    assert revokes(out) == [] and core.dialog_count == 1


def test_the_dialogs_own_connection_needs_no_credentials() -> None:
    core = make_core()
    tag = joined(core)
    [ok] = responses(feed(core, CONN, invite(to_tag=tag, cseq=3, branch="o1")))
    assert ok.status == 200 and json.loads(ok.body)["cookie"] == "COOKIE"
    out = feed(core, CONN, invite(method="BYE", to_tag=tag, cseq=4, branch="o2"))
    assert revokes(out) == [Revoke("K7Q2", "p1", "bye")]
