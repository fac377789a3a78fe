"""RFC 4575 subscriptions in the sans-IO focus core (focus/subscribing.py,
focus/subscriptions.py; docs/protocol.md §9.3): plain bytes in and out, no sockets. The
documents are checked against the RFC's schema in tests/test_focus_subscribe_xml.py."""

from __future__ import annotations

from lxml import etree

from focus.conference_info import CONTENT_TYPE
from focus.core import FocusCore
from focus.events import (
    AdmitRefused,
    AdmitUnavailable,
    Conn,
    FetchRoster,
    Log,
    Output,
    Revoke,
    Send,
)
from focus.subscriptions import MAX_EXPIRES, MIN_EXPIRES, NOTIFY_TIMEOUT_SECONDS
from webconf.sip import digest
from webconf.sip.message import Request, Response, parse_auth_params, parse_message, response_bytes

from .test_focus_bye import byes, joined
from .test_focus_core import CONF_URI, CONN, NOW, PASSWORDS, feed, make_core

NS = {"ci": "urn:ietf:params:xml:ns:conference-info"}


def subscribe(*, user: str = "alice", domain: str = "contoso.example", uri: str = CONF_URI,
              branch: str = "z9hG4bKs1", cseq: int = 1, call_id: str = "sub-1",
              to_tag: str | None = None, event: str | None = "conference",
              expires: int | str | None = 600, accept: str | None = None,
              auth: str | None = None) -> bytes:
    lines = [f"SUBSCRIBE {uri} SIP/2.0",
             f"Via: SIP/2.0/TLS 127.0.0.1:40000;branch={branch}",
             "Max-Forwards: 70",
             f"From: <sip:{user}@{domain}>;tag=from-{user}",
             f"To: <{CONF_URI}>" + (f";tag={to_tag}" if to_tag else ""),
             f"Call-ID: {call_id}", f"CSeq: {cseq} SUBSCRIBE",
             f"Contact: <sip:{user}@127.0.0.1:40000;transport=tls>"]
    lines += [f"Event: {event}"] if event is not None else []
    lines += [f"Expires: {expires}"] if expires is not None else []
    lines += [f"Accept: {accept}"] if accept is not None else []
    lines += [f"Authorization: {auth}"] if auth is not None else []
    return ("\r\n".join(lines + ["Content-Length: 0", "", ""])).encode()


def authorize(resp: Response, user: str, password: str, uri: str = CONF_URI) -> str:
    chosen = parse_auth_params(resp.headers.get_fields("WWW-Authenticate")[0])[1]
    alg, realm, nonce = chosen["algorithm"], chosen["realm"], chosen["nonce"]
    ha1 = digest.ha1(user, realm, password, alg)
    answer = digest.digest_response(alg, ha1, nonce, "00000001", "c0ffee", "SUBSCRIBE", uri)
    return (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{answer}", algorithm={alg}, qop=auth, nc=00000001, cnonce="c0ffee"')


def sent(outputs: list[Output]) -> list[Request | Response]:
    return [parse_message(o.data) for o in outputs if isinstance(o, Send)]


def notifies(outputs: list[Output]) -> list[Request]:
    return [m for m in sent(outputs) if isinstance(m, Request) and m.method == "NOTIFY"]


def finals(outputs: list[Output]) -> list[Response]:
    return [m for m in sent(outputs) if isinstance(m, Response) and m.status >= 200]


def roster_body(participants: list[tuple[str, str, str]], *, seq: int = 1,
                locked: bool = False) -> dict[str, object]:
    return {"conference": "K7Q2", "seq": seq, "locked": locked, "participants": [
        {"id": pid, "user": user, "role": role, "joined_at": NOW + i}
        for i, (pid, user, role) in enumerate(participants)]}


ALICE = ("p1", "alice@contoso.example", "organizer")
BOB = ("p2", "bob@contoso.example", "attendee")


def authenticated(core: FocusCore, *, user: str = "alice", conn: Conn = CONN,
                  **kw: object) -> list[Output]:
    """SUBSCRIBE, answer the 401, and return what the authenticated one gives."""
    tail = str(kw.get("call_id", ""))
    [challenge] = finals(feed(core, conn, subscribe(
        user=user, branch=f"z9hG4bKs1{tail}", **kw)))  # type: ignore[arg-type]
    assert challenge.status == 401 and "tag=" in challenge.headers.get("To")
    auth = authorize(challenge, user, PASSWORDS[("contoso.example", user)])
    return feed(core, conn, subscribe(user=user, auth=auth, branch=f"z9hG4bKs2{tail}", cseq=2,
                                      **kw))  # type: ignore[arg-type]


def subscribed(core: FocusCore, participants: list[tuple[str, str, str]],
               **kw: object) -> tuple[Response, Request]:
    """A subscription made: its 200 and its first NOTIFY."""
    [fetch] = [o for o in authenticated(core, **kw) if isinstance(o, FetchRoster)]
    assert fetch.conference is None and (fetch.tenant, fetch.organizer, fetch.uri_id) == (
        "contoso.example", "alice@contoso.example", "K7Q2")
    out = core.roster_fetched(fetch.ticket, roster_body(participants), NOW)
    [ok] = finals(out)
    [notify] = notifies(out)
    return ok, notify


def doc(notify: Request) -> etree._Element:
    assert notify.headers.get("Content-Type") == CONTENT_TYPE
    return etree.fromstring(notify.body)


def users(root: etree._Element) -> dict[str, str]:
    return {u.get("entity"): u.get("state") for u in root.iterfind(".//ci:user", NS)}


def answer(core: FocusCore, request: Request, status: int = 200,
           now: float = NOW) -> list[Output]:
    return core.receive_data(CONN.id, response_bytes(request, status), now)


def test_subscribe_full_then_partials_with_versions() -> None:
    core = make_core()
    ok, first = subscribed(core, [ALICE])
    assert ok.status == 200 and ok.headers.get("Expires") == "600"
    assert ";isfocus" in ok.headers.get("Contact") and "tag=" in ok.headers.get("To")
    assert first.headers.get("Event") == "conference"
    assert first.headers.get("Subscription-State") == "active;expires=600"
    assert first.headers.get("Call-ID") == "sub-1"
    assert first.headers.get("CSeq") == "1 NOTIFY" and first.headers.get("Contact")
    assert str(first.uri) == "sip:alice@127.0.0.1:40000;transport=tls"
    root = doc(first)
    assert (root.get("state"), root.get("version")) == ("full", "1")
    assert users(root) == {"sip:alice@contoso.example": "full"}
    assert root.findtext(".//ci:roles/ci:entry", namespaces=NS) == "organizer"
    assert core.conferences() == {"K7Q2"}
    # bob joins: the notice fetches the roster again; nothing is sent before the answer
    assert core.roster_changed("K7Q2", 1, NOW) == []  # not newer than what we have
    [fetch] = core.roster_changed("K7Q2", 2, NOW)
    assert isinstance(fetch, FetchRoster) and fetch.conference == "K7Q2"
    assert core.roster_changed("K7Q2", 3, NOW) == []  # one fetch per conference at a time
    out = core.roster_fetched(fetch.ticket, roster_body([ALICE, BOB], seq=2), NOW)
    assert notifies(out) == []  # the first NOTIFY is still out: one at a time
    [again] = [o for o in out if isinstance(o, FetchRoster)]  # seq 3 was announced
    out = answer(core, first)
    [second] = notifies(out)
    root = doc(second)
    assert (root.get("state"), root.get("version")) == ("partial", "2")
    assert users(root) == {"sip:bob@contoso.example": "full"}
    assert root.findtext(".//ci:user-count", namespaces=NS) == "2"
    assert second.headers.get("CSeq") == "2 NOTIFY"
    # bob leaves (seq 3): version 3 with him deleted
    assert notifies(core.roster_fetched(again.ticket, roster_body([ALICE], seq=3), NOW)) == []
    [third] = notifies(answer(core, second))
    root = doc(third)
    assert root.get("version") == "3" and users(root) == {"sip:bob@contoso.example": "deleted"}
    # a role change and the lock (seq 4): version 4
    [fetch] = core.roster_changed("K7Q2", 4, NOW)
    core.roster_fetched(fetch.ticket, roster_body(
        [("p1", "alice@contoso.example", "presenter")], seq=4, locked=True), NOW)
    [fourth] = notifies(answer(core, third))
    root = doc(fourth)
    assert root.get("version") == "4"
    assert root.findtext(".//ci:locked", namespaces=NS) == "true"
    assert root.findtext(".//ci:roles/ci:entry", namespaces=NS) == "presenter"


def test_refresh_and_unsubscribe() -> None:
    core = make_core()
    ok, first = subscribed(core, [ALICE])
    tag = ok.headers.get("To").split("tag=")[1]
    answer(core, first)
    out = feed(core, CONN, subscribe(to_tag=tag, cseq=3, branch="z9hG4bKs3", expires=99999))
    [refreshed] = finals(out)
    assert refreshed.status == 200 and refreshed.headers.get("Expires") == str(MAX_EXPIRES)
    [full] = notifies(out)
    assert doc(full).get("state") == "full" and doc(full).get("version") == "2"
    assert full.headers.get("Subscription-State") == f"active;expires={MAX_EXPIRES}"
    answer(core, full)
    out = feed(core, CONN, subscribe(to_tag=tag, cseq=4, branch="z9hG4bKs4", expires=0))
    assert [r.status for r in finals(out)] == [200]
    [last] = notifies(out)
    assert last.headers.get("Subscription-State") == "terminated"
    assert core.counts()["subscriptions"] == 0 and core.conferences() == set()
    # the subscription is gone: a refresh of it is 481
    [gone] = finals(feed(core, CONN, subscribe(to_tag=tag, cseq=5, branch="z9hG4bKs5")))
    assert gone.status == 481


def test_expiry_notify_timeout_and_failure_answers_end_it() -> None:
    core = make_core()
    _, first = subscribed(core, [ALICE])
    assert core.next_deadline() == NOW + NOTIFY_TIMEOUT_SECONDS
    out = core.expire(NOW + NOTIFY_TIMEOUT_SECONDS)  # no answer: it ends, no more NOTIFYs
    assert notifies(out) == []
    assert any(isinstance(o, Log) and o.event.get("reason") == "notify timeout" for o in out)
    assert core.counts()["subscriptions"] == 0
    assert answer(core, first) == []  # a late answer finds nothing
    # 481 to a NOTIFY ends it too
    core = make_core()
    _, first = subscribed(core, [ALICE])
    answer(core, first, 481)
    assert core.counts()["subscriptions"] == 0
    # expiry: a final NOTIFY with reason=timeout
    core = make_core()
    _, first = subscribed(core, [ALICE], expires=MIN_EXPIRES)
    answer(core, first)
    assert core.next_deadline() == NOW + MIN_EXPIRES
    [last] = notifies(core.expire(NOW + MIN_EXPIRES))
    assert last.headers.get("Subscription-State") == "terminated;reason=timeout"
    assert core.counts()["subscriptions"] == 0


def test_refusals() -> None:
    core = make_core()
    cases = [(subscribe(event="presence", branch="z9hG4bKr1"), 489),
             (subscribe(event=None, branch="z9hG4bKr2"), 489),
             (subscribe(accept="application/pidf+xml", branch="z9hG4bKr3"), 406),
             (subscribe(expires=5, branch="z9hG4bKr4"), 423),
             (subscribe(expires="soon", branch="z9hG4bKr5"), 400),
             (subscribe(uri="sip:alice@contoso.example", branch="z9hG4bKr6"), 404)]
    for raw, status in cases:
        [resp] = finals(feed(core, CONN, raw))
        assert resp.status == status, raw
        if status == 489:
            assert resp.headers.get("Allow-Events") == "conference"
        if status == 423:
            assert resp.headers.get("Min-Expires") == str(MIN_EXPIRES)
    # another tenant: authenticated at home, refused by policy
    [challenge] = finals(feed(core, CONN, subscribe(user="eve", domain="fabrikam.example")))
    auth = authorize(challenge, "eve", "eve-pw")
    [refused] = finals(feed(core, CONN, subscribe(user="eve", domain="fabrikam.example",
                                                  auth=auth, branch="z9hG4bKe2", cseq=2)))
    assert refused.status == 403
    # a wrong password: challenged again (and counted by the failure throttle)
    [challenge] = finals(feed(core, CONN, subscribe(user="bob", branch="z9hG4bKb1")))
    auth = authorize(challenge, "bob", "wrong")
    [again] = finals(feed(core, CONN, subscribe(user="bob", auth=auth, branch="z9hG4bKb2")))
    assert again.status == 401
    # the WCS does not know the conference, or is out of reach
    for failure, status in ((AdmitRefused(404), 404), (AdmitUnavailable(), 503)):
        [fetch] = [o for o in authenticated(core, call_id=f"c{status}")
                   if isinstance(o, FetchRoster)]
        [resp] = finals(core.roster_failed(fetch.ticket, failure, NOW))
        assert resp.status == status


def test_subscribe_in_the_join_dialog_shares_its_cseq() -> None:
    core = make_core()
    joined(core, "p1")  # alice's join dialog, call-1
    [dialog] = core._dialogs.values()
    out = feed(core, CONN, subscribe(call_id="call-1", to_tag=dialog.local_tag))
    [fetch] = [o for o in out if isinstance(o, FetchRoster)]  # no new challenge
    assert fetch.conference == "K7Q2" and fetch.tenant == "contoso.example"
    out = core.roster_fetched(fetch.ticket, roster_body([ALICE]), NOW)
    [ok] = finals(out)
    [notify] = notifies(out)
    assert ok.status == 200 and notify.headers.get("CSeq") == "1 NOTIFY"
    answer(core, notify)
    # the focus's BYE in that dialog then takes the next CSeq
    [bye] = byes(core.participant_left("K7Q2", "p1", NOW))
    assert bye.method == "BYE" and bye.headers.get("CSeq") == "2 BYE"


def test_participant_left_elsewhere_gets_a_bye() -> None:
    core = make_core()
    joined(core, "p1")
    assert core.participant_left("K7Q2", "other", NOW) == []
    out = core.participant_left("K7Q2", "p1", NOW)
    [bye] = byes(out)
    assert not [o for o in out if isinstance(o, Revoke)]  # at the answer
    assert core.participant_left("K7Q2", "p1", NOW) == []  # one BYE
    done = core.receive_data(CONN.id, response_bytes(bye, 200), NOW)
    assert [(o.participant_id, o.reason) for o in done if isinstance(o, Revoke)] == [
        ("p1", "revoked")]
    assert core.dialog_count == 0


def test_bounds_and_lost_connection() -> None:
    from focus import subscriptions
    core = make_core()
    for i in range(subscriptions.MAX_PER_CONNECTION):
        subscribed(core, [ALICE], call_id=f"s{i}")
    [fetchless] = finals(authenticated(core, call_id="one-more"))
    assert fetchless.status == 503 and fetchless.headers.get("Retry-After")
    assert core.has_dialogs(CONN.id)  # no idle timeout while it has subscriptions
    core.connection_lost(CONN.id, NOW)
    assert core.counts()["subscriptions"] == 0 and core.next_deadline() is None



def test_resync_reads_every_subscribed_roster_once() -> None:
    core = make_core()
    _, first = subscribed(core, [ALICE])
    answer(core, first)
    [fetch] = core.resync(NOW)
    assert isinstance(fetch, FetchRoster) and fetch.conference == "K7Q2"
    assert core.resync(NOW) == []  # already out
    out = core.roster_fetched(fetch.ticket, roster_body([ALICE, BOB], seq=5), NOW)
    assert [doc(n).get("version") for n in notifies(out)] == ["2"]
    assert not [o for o in out if isinstance(o, FetchRoster)]  # no loop


def test_subscribe_guessing_counts_under_the_per_source_throttle() -> None:
    """Failed SUBSCRIBE authentications count like INVITE ones (docs/protocol.md §2.4):
    once the source is locked out, its SUBSCRIBEs and INVITEs get 429 before any lookup."""
    from .test_focus_core import invite

    core = make_core()
    statuses = []
    for i in range(60):
        [challenge] = finals(feed(core, CONN, subscribe(
            user=f"u{i}", branch=f"z9hG4bKg{i}a", call_id=f"g{i}")))
        if challenge.status != 401:
            statuses.append(challenge.status)
            break
        auth = authorize(challenge, f"u{i}", "guess")
        [resp] = finals(feed(core, CONN, subscribe(user=f"u{i}", auth=auth,
                                                   branch=f"z9hG4bKg{i}b", call_id=f"g{i}")))
        statuses.append(resp.status)
        if resp.status == 429:
            break
    assert statuses[-1] == 429 and statuses.count(401) >= 5
    auth = 'Digest username="alice", realm="contoso.example", nonce="x", uri="u", response="r"'
    [locked] = finals(feed(core, CONN, invite(auth=auth, branch="z9hG4bKlocked")))
    assert locked.status == 429 and locked.headers.get("Retry-After")
