"""The focus core fuzzed in-process: no sockets, no server, thousands of streams a second.

Hypothesis writes programs of steps: open or lose a connection, send a request built from a
small grammar (INVITE with or without credentials, right or wrong, fresh, stale or
replayed; ACK, BYE and re-INVITE in a dialog seen so far, on any connection; CANCEL,
OPTIONS, CRLF pings, retransmissions), feed the bytes split at random points (and
pipelined), answer the core's effects in any order (credentials found or not, the WCS
admits, refuses or is down), and let time pass. The mutating variant also flips, drops,
duplicates and inserts bytes. After every step and at the end:

- the core never raises, and every byte it sends is a CRLF pong or a parseable response;
- in unmutated streams every request gets exactly one final response (INVITE
  retransmissions get the same bytes again, or nothing while the first is in progress);
- every participant the WCS admitted is revoked exactly once (BYE, CANCEL race, lost
  connection after the grace, connection gone before the answer), and no other is;
- its tables stay bounded while it runs, and are empty once every connection is gone.

The live-TLS fuzzers in tests/test_hostile_sip.py cover the server around it. CI runs a
few seconds' worth; WEBCONF_FUZZ_LONG=1 runs many more examples.
"""

from __future__ import annotations

import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from focus.core import MAX_COMPLETED_PER_CONNECTION, FocusCore, FocusSettings
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
from webconf.sip.framing import NeedData, SipFramer
from webconf.sip.message import Request, Response, SipParseError, parse_message

FUZZ_LONG = os.environ.get("WEBCONF_FUZZ_LONG", "") not in ("", "0")
FUZZ = settings(max_examples=3000 if FUZZ_LONG else 120, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SECRET = b"fuzz-nonce-secret-of-32-bytes!!!"
REALM = "contoso.example"
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw"}
USERS = ["alice", "bob", "mallory"]
CONF_URI = f"sip:alice@{REALM};gruu;opaque=app:conf:focus:id:K7Q2"
SLOTS = 3
T0 = 1_700_000_000.0
GRACE = 30.0
OFFER = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
         b"m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def ha1s(realm: str, user: str) -> dict[str, str]:
    password = PASSWORDS.get(user)
    if realm != REALM or password is None:
        return {}
    return {alg: digest.ha1(user, realm, password, alg) for alg in ("MD5", "SHA-256")}


def render(method: str, *, branch: str, call_id: str, from_user: str, cseq: int,
           uri: str = CONF_URI, to_tag: str | None = None, from_tag: str | None = None,
           extra: str = "", body: bytes = b"", content_type: str | None = None) -> bytes:
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/TLS 127.0.0.1:40000;branch={branch}",
        "Max-Forwards: 70",
        f"From: <sip:{from_user}@{REALM}>;tag={from_tag or 'f-' + call_id}",
        f"To: <{CONF_URI}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        f"Contact: <sip:{from_user}@127.0.0.1:40000;transport=tls>",
        "User-Agent: fuzz-agent",
    ]
    if extra:
        lines.append(extra)
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def authorization(user: str, password: str, nonce: str, nc: int = 1,
                  method: str = "INVITE") -> str:
    key = digest.ha1(user, REALM, password, "SHA-256")
    nc_text = f"{nc:08x}"
    response = digest.digest_response("SHA-256", key, nonce, nc_text, "c0ffee", method,
                                      CONF_URI)
    return (f'Authorization: Digest username="{user}", realm="{REALM}", nonce="{nonce}", '
            f'uri="{CONF_URI}", response="{response}", algorithm=SHA-256, qop=auth, '
            f'nc={nc_text}, cnonce="c0ffee"')


# -- the program --------------------------------------------------------------------------
invite_spec = st.fixed_dictionaries({
    "kind": st.just("invite"),
    "auth": st.sampled_from(["good", "good", "good", "none", "wrong", "stale", "replay",
                             "bad-nonce"]),
    "user": st.sampled_from(USERS),
    "sdp": st.booleans(),
})
message_spec = st.one_of(
    invite_spec, invite_spec,
    st.fixed_dictionaries({"kind": st.sampled_from(
        ["ack", "bye", "reinvite", "bye-auth", "reinvite-auth", "cancel", "options", "ping",
         "retransmit"]),
        "pick": st.integers(0, 7)}),
)
send = st.tuples(st.just("send"), st.integers(0, SLOTS - 1), message_spec,
                st.sampled_from([True, True, False]), st.lists(st.floats(0, 1), max_size=3),
                st.sampled_from([None, None, "lookup", "ok", "refused", "unavailable"]))
"""send(slot, message, flush now or pipeline it, cut points, settle: answer the lookups
(found), then the admissions with this outcome; None leaves them out)"""
join = st.tuples(st.just("join"), st.integers(0, SLOTS - 1), st.sampled_from(["alice", "bob"]),
                st.booleans())
"""join(slot, user, with an SDP offer): a right INVITE, its lookup and admission answered"""
race = st.tuples(st.just("race"), st.integers(0, SLOTS - 1), st.sampled_from(["cancel", "lose"]))
"""race(slot, how): a right INVITE whose caller cancels or vanishes while the WCS works"""
guess = st.tuples(st.just("guess"), st.integers(0, SLOTS - 1), st.sampled_from(USERS),
                  st.integers(1, 6))
"""guess(slot, user, n): n INVITEs with a wrong password, each answered"""
step = st.one_of(
    send, send, send, join, join, race, guess,
    st.tuples(st.just("open"), st.integers(0, SLOTS - 1)),
    st.tuples(st.just("lookup"), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("admit"), st.integers(0, 3),
              st.sampled_from(["ok", "ok", "ok", "refused", "unavailable"])),
    st.tuples(st.just("lose"), st.integers(0, SLOTS - 1)),
    st.tuples(st.just("tick"), st.sampled_from([0.5, 5.0, 31.0, 400.0])),
)
mutation = st.tuples(st.sampled_from(["flip", "drop", "dup", "insert", "cut", "none"]),
                     st.floats(0, 1), st.integers(1, 40), st.binary(min_size=1, max_size=8))


def mutate(data: bytes, how: tuple[str, float, int, bytes]) -> bytes:
    kind, where, size, junk = how
    at = int(where * len(data))
    if kind == "flip" and data:
        at = min(at, len(data) - 1)
        return data[:at] + bytes([data[at] ^ (1 << (size % 8))]) + data[at + 1:]
    if kind == "drop":
        return data[:at] + data[at + size:]
    if kind == "dup":
        return data[:at + size] + data[at:]
    if kind == "insert":
        return data[:at] + junk + data[at:]
    if kind == "cut":
        return data[:at]
    return data


# -- the harness --------------------------------------------------------------------------
@dataclass
class Slot:
    conn: Conn | None = None
    unsent: bytes = b""
    last: bytes = b""
    last_invite: dict[str, object] | None = None
    last_nonce: tuple[str, int] | None = None


@dataclass
class Harness:
    mutations: list[tuple[str, float, int, bytes]] = field(default_factory=list)
    core: FocusCore = field(init=False)
    now: float = T0
    slots: list[Slot] = field(default_factory=lambda: [Slot() for _ in range(SLOTS)])
    next_conn: int = 1
    counter: int = 0
    lookups: list[LookupCredentials] = field(default_factory=list)
    admits: list[Admit] = field(default_factory=list)
    admitted: set[str] = field(default_factory=set)
    revoked: Counter[str] = field(default_factory=Counter)
    dialogs: list[dict[str, object]] = field(default_factory=list)
    requests: dict[int, list[tuple[str, str]]] = field(
        default_factory=lambda: defaultdict(list))
    """Per connection: (branch, method) of each request fed whole and unmutated."""
    finals: dict[int, list[tuple[str, str, bytes]]] = field(
        default_factory=lambda: defaultdict(list))
    closed: set[int] = field(default_factory=set)
    lost: set[int] = field(default_factory=set)
    mutated: bool = False

    def __post_init__(self) -> None:
        self.mutated = bool(self.mutations)
        self.core = FocusCore(
            FocusSettings(contact_host="127.0.0.1", contact_port=5061,
                          leave_grace_seconds=GRACE,
                          answer_sdp=lambda offer, **kw: sdp.answer_offer(
                              offer, address="127.0.0.1", **kw),
                          make_multipart=sdp.multipart_mixed, accepts=sdp.accepts),
            digest.NonceService(SECRET),
            digest.FailureThrottle(max_failures=2, max_source_failures=4))

    # outputs ----------------------------------------------------------------------------
    def take(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, Send):
                assert out.conn_id not in self.closed and out.conn_id not in self.lost
                if out.data == b"\r\n":
                    continue
                msg = parse_message(out.data)
                assert isinstance(msg, Response) and msg.status >= 100
                if msg.status >= 200:
                    self.record_final(out.conn_id, msg, out.data)
            elif isinstance(out, Close):
                assert out.conn_id not in self.closed
                self.closed.add(out.conn_id)
            elif isinstance(out, LookupCredentials):
                self.lookups.append(out)
            elif isinstance(out, Admit):
                self.admits.append(out)
            elif isinstance(out, Revoke):
                assert out.participant_id in self.admitted, out
                self.revoked[out.participant_id] += 1
                assert self.revoked[out.participant_id] == 1, out
            else:
                assert isinstance(out, Log)
                assert "cookie" not in out.event and "secret-cookie" not in str(out.event)
        self.check_bounds()

    def record_final(self, conn_id: int, msg: Response, data: bytes) -> None:
        via = msg.headers.get("Via") or ""
        branch = via.rpartition("branch=")[2].split(";")[0]
        method = ((msg.headers.get("CSeq") or "").split() or [""])[-1]
        self.finals[conn_id].append((branch, method, data))
        to_tag = (msg.headers.get("To") or "").rpartition("tag=")[2]
        call_id = msg.headers.get("Call-ID")
        if method == "INVITE" and msg.status == 200 and not any(
                (d["call_id"], d["to_tag"]) == (call_id, to_tag) for d in self.dialogs):
            from_value = msg.headers.get("From") or ""
            self.dialogs.append({
                "call_id": call_id, "to_tag": to_tag,
                "from_tag": from_value.rpartition("tag=")[2],
                "user": from_value.split("sip:")[1].split("@")[0], "cseq": 10})

    def check_bounds(self) -> None:
        counts = self.core.counts()
        live = sum(1 for s in self.slots if s.conn is not None)
        assert counts["connections"] <= live
        assert counts["lookups"] <= live
        assert counts["admissions"] <= len(self.admits)
        assert counts["dialogs"] <= len(self.admitted) - len(self.revoked)
        assert counts["completed"] <= MAX_COMPLETED_PER_CONNECTION * live

    # steps ------------------------------------------------------------------------------
    def run(self, program: list[tuple[object, ...]]) -> None:
        for action in program:
            getattr(self, f"do_{action[0]}")(*action[1:])
        self.finish()

    def do_open(self, index: int) -> None:
        slot = self.slots[index]
        if slot.conn is None:
            slot.conn = Conn(self.next_conn, f"127.0.0.{index + 1}", 40000 + index)
            self.next_conn += 1
            self.core.connection_made(slot.conn)

    def do_send(self, index: int, spec: dict[str, object], flush: bool,
                cuts: list[float], settle: str | None = None) -> None:
        self.do_open(index)
        slot = self.slots[index]
        data = self.message(slot, spec)
        if self.mutated and data:
            data = mutate(data, self.mutations[self.counter % len(self.mutations)])
        slot.unsent += data
        slot.last = data or slot.last
        if flush:
            self.flush(slot, cuts)
        while settle and (self.lookups or (self.admits and settle != "lookup")):
            if self.lookups:  # a prompt directory, then a prompt WCS
                self.do_lookup(0, True)
            else:
                self.do_admit(0, settle)

    def do_join(self, index: int, user: str, offer: bool) -> None:
        spec = {"kind": "invite", "auth": "good", "user": user, "sdp": offer}
        self.do_send(index, spec, True, [], "ok")

    def do_race(self, index: int, how: str) -> None:
        spec = {"kind": "invite", "auth": "good", "user": "bob", "sdp": False}
        self.do_send(index, spec, True, [], "lookup")
        if how == "cancel":
            self.do_send(index, {"kind": "cancel"}, True, [])
        else:
            self.do_lose(index)
        while self.admits:
            self.do_admit(0, "ok")

    def do_guess(self, index: int, user: str, count: int) -> None:
        spec = {"kind": "invite", "auth": "wrong", "user": user, "sdp": False}
        for _ in range(count):
            self.do_send(index, spec, True, [], "lookup")

    def flush(self, slot: Slot, cuts: list[float]) -> None:
        assert slot.conn is not None
        data, slot.unsent = slot.unsent, b""
        if not data:
            return
        points = sorted({int(c * len(data)) for c in cuts} | {0, len(data)})
        for start, end in zip(points, points[1:], strict=False):
            self.take(self.core.receive_data(slot.conn.id, data[start:end], self.now))
        if not self.mutated:
            self.note_requests(slot.conn.id, data)

    def note_requests(self, conn_id: int, data: bytes) -> None:
        framer = SipFramer()
        framer.feed(data)
        while not isinstance(event := framer.next_event(), NeedData):
            if isinstance(event, Request):
                branch = (event.headers.get("Via") or "").rpartition("branch=")[2]
                in_dialog = "tag=" in (event.headers.get("To") or "")
                method = "re-INVITE" if in_dialog and event.method == "INVITE" else (
                    event.method)
                self.requests[conn_id].append((branch, method))

    def do_lookup(self, pick: int, found: bool) -> None:
        if self.lookups:
            lookup = self.lookups.pop(pick % len(self.lookups))
            credentials = ha1s(lookup.realm, lookup.username) if found else None
            self.take(self.core.credentials_found(lookup.ticket, credentials, self.now))

    def do_admit(self, pick: int, outcome: str) -> None:
        if not self.admits:
            return
        admit = self.admits.pop(pick % len(self.admits))
        if outcome == "ok":
            self.counter += 1
            participant = f"p{self.counter}"
            self.admitted.add(participant)
            self.take(self.core.admitted(admit.ticket, Admission(
                admit.conference_id, participant, "attendee", "secret-cookie", "x", "u"),
                self.now))
        elif outcome == "refused":
            self.take(self.core.admission_failed(admit.ticket, AdmitRefused(404), self.now))
        else:
            self.take(self.core.admission_failed(admit.ticket, AdmitUnavailable(), self.now))

    def do_lose(self, index: int) -> None:
        slot = self.slots[index]
        if slot.conn is not None:
            self.lost.add(slot.conn.id)
            self.take(self.core.connection_lost(slot.conn.id, self.now))
            self.slots[index] = Slot()

    def do_tick(self, seconds: float) -> None:
        self.now += seconds
        deadline = self.core.next_deadline()
        self.take(self.core.expire(self.now))
        if deadline is not None and deadline <= self.now:
            later = self.core.next_deadline()
            assert later is None or later > self.now

    # messages ---------------------------------------------------------------------------
    def message(self, slot: Slot, spec: dict[str, object]) -> bytes:
        self.counter += 1
        n, kind = self.counter, spec["kind"]
        pick = int(spec.get("pick", 0))  # type: ignore[call-overload]
        if kind == "invite":
            user = str(spec["user"])
            extra = ""
            auth = spec["auth"]
            assert slot.conn is not None
            scope = slot.conn.nonce_scope  # nonces are bound to their connection
            nonce = digest.NonceService(SECRET).make(REALM, self.now, scope)
            if auth == "good" or auth == "wrong":
                password = PASSWORDS.get(user, "x") if auth == "good" else "wrong"
                extra = authorization(user, password, nonce)
                slot.last_nonce = (nonce, 1) if auth == "good" else slot.last_nonce
            elif auth == "stale":
                old = digest.NonceService(SECRET).make(REALM, self.now - 400, scope)
                extra = authorization(user, PASSWORDS.get(user, "x"), old)
            elif auth == "replay" and slot.last_nonce is not None:
                extra = authorization(user, PASSWORDS.get(user, "x"), *slot.last_nonce)
            elif auth == "bad-nonce":
                extra = authorization(user, PASSWORDS.get(user, "x"), "A" * 43)
            invite = {"branch": f"z9hG4bK{n}", "call_id": f"call-{n}", "from_user": user,
                      "cseq": 1}
            slot.last_invite = invite
            body = OFFER if spec["sdp"] else b""
            return render("INVITE", extra=extra, body=body,
                          content_type="application/sdp" if body else None,
                          **invite)  # type: ignore[arg-type]
        if kind == "ping":
            return b"\r\n\r\n"
        if kind == "retransmit":
            return slot.last
        if kind == "options":
            return render("OPTIONS", branch=f"z9hG4bK{n}", call_id=f"opt-{n}",
                          from_user="bob", cseq=1)
        if kind == "cancel":
            if slot.last_invite is None:
                return b""
            return render("CANCEL", **slot.last_invite)  # type: ignore[arg-type]
        if not self.dialogs:
            return b""
        dialog = self.dialogs[pick % len(self.dialogs)]
        dialog["cseq"] = int(str(dialog["cseq"])) + 1
        common = {"call_id": str(dialog["call_id"]), "from_user": str(dialog["user"]),
                  "to_tag": str(dialog["to_tag"]), "from_tag": str(dialog["from_tag"]),
                  "cseq": int(str(dialog["cseq"]))}
        extra = ""
        if kind.endswith("-auth"):  # credentials on this connection: the dialog's user or not
            assert slot.conn is not None
            user = str(dialog["user"]) if pick % 2 == 0 else "bob"
            nonce = digest.NonceService(SECRET).make(REALM, self.now, slot.conn.nonce_scope)
            method = "BYE" if kind.startswith("bye") else "INVITE"
            extra = authorization(user, PASSWORDS.get(user, "x"), nonce, method=method)
        if kind == "ack":
            return render("ACK", branch=f"z9hG4bK{n}", **common)  # type: ignore[arg-type]
        if kind.startswith("bye"):
            return render("BYE", branch=f"z9hG4bK{n}", extra=extra,
                          **common)  # type: ignore[arg-type]
        return render("INVITE", branch=f"z9hG4bK{n}", body=OFFER, extra=extra,
                      content_type="application/sdp", **common)  # type: ignore[arg-type]

    # the end ----------------------------------------------------------------------------
    def finish(self) -> None:
        for slot in self.slots:
            if slot.conn is not None and slot.unsent:
                self.flush(slot, [])
        rng = random.Random(self.counter)
        while self.lookups or self.admits:  # answer every effect still out, in any order
            if self.lookups and (not self.admits or rng.random() < 0.5):
                self.do_lookup(rng.randrange(len(self.lookups)), rng.random() < 0.7)
            else:
                self.do_admit(rng.randrange(len(self.admits)), "ok")
        if not self.mutated:
            self.check_finals()
        for index in range(SLOTS):
            self.do_lose(index)
        self.take(self.core.expire(float("inf")))
        assert set(self.revoked) == self.admitted
        assert all(count == 1 for count in self.revoked.values())
        assert self.core.next_deadline() is None
        assert self.core.counts() == {"connections": 0, "lookups": 0, "admissions": 0,
                                      "dialogs": 0, "completed": 0, "subscriptions": 0,
                                      "fetches": 0}

    def check_finals(self) -> None:
        """Every request on a connection still open has exactly one final response."""
        assert not self.closed
        for slot in self.slots:
            if slot.conn is None:
                continue
            conn_id = slot.conn.id
            sent = Counter(self.requests[conn_id])
            reinvites = {branch for branch, method in sent if method == "re-INVITE"}
            answered: dict[tuple[str, str], list[bytes]] = defaultdict(list)
            for branch, method, data in self.finals[conn_id]:
                if method == "INVITE" and branch in reinvites:
                    method = "re-INVITE"  # answered afresh each time, like any request
                answered[(branch, method)].append(data)
            assert set(answered) <= set(sent), (answered.keys(), sent)
            for (branch, method), copies in sent.items():
                finals = answered.get((branch, method), [])
                if method == "ACK":
                    assert not finals
                elif method == "INVITE":
                    assert 1 <= len(finals) <= copies, (branch, finals)
                    if len(sent) < MAX_COMPLETED_PER_CONNECTION:  # none forgotten yet
                        assert len(set(finals)) == 1, (branch, finals)
                else:
                    assert len(finals) == copies, (branch, method, finals, copies)


# -- the tests ----------------------------------------------------------------------------
@FUZZ
@given(st.lists(step, max_size=40))
def test_core_fuzz_valid_streams(program: list[tuple[object, ...]]) -> None:
    Harness().run(program)


@FUZZ
@given(st.lists(step, max_size=30), st.lists(mutation, min_size=1, max_size=4))
def test_core_fuzz_mutated_streams(program: list[tuple[object, ...]],
                                   mutations: list[tuple[str, float, int, bytes]]) -> None:
    Harness(mutations).run(program)


def test_core_fuzz_harness_sees_a_whole_join() -> None:
    """The harness itself works: a scripted join, BYE and a lost dialog are all checked."""
    harness = Harness()
    good = {"kind": "invite", "auth": "good", "user": "alice", "sdp": False}
    harness.do_send(0, good, True, [0.3])
    harness.do_lookup(0, True)
    harness.do_admit(0, "ok")
    harness.do_send(1, {"kind": "bye", "pick": 0}, True, [])  # another connection: 401
    assert not harness.revoked and harness.finals[2][-1][2].startswith(b"SIP/2.0 401")
    harness.do_send(0, {"kind": "bye", "pick": 0}, True, [])
    assert sorted(harness.revoked.values()) == [1]
    harness.do_send(2, {**good, "user": "bob"}, True, [0.5, 0.9])
    harness.do_lookup(0, True)
    harness.do_admit(0, "ok")
    harness.do_lose(2)
    harness.do_tick(GRACE + 1)
    assert sorted(harness.revoked.values()) == [1, 1] and harness.revoked.keys() == (
        harness.admitted)
    harness.finish()


def test_parse_errors_are_the_only_thing_render_can_hit() -> None:
    """The grammar's messages are valid SIP: the core's parser reads every one."""
    data = render("INVITE", branch="z9hG4bKx", call_id="c", from_user="alice", cseq=1)
    try:
        parse_message(data)
    except SipParseError as exc:  # pragma: no cover - a broken grammar
        raise AssertionError(exc) from None


def test_non_ascii_digest_response_is_a_wrong_password() -> None:
    """Found by this fuzzer: a Digest `response` with non-ASCII characters made
    `hmac.compare_digest` raise TypeError (the connection died unanswered); it is now
    an ordinary failed attempt, answered with a fresh challenge."""
    harness = Harness()
    harness.do_open(0)
    conn = harness.slots[0].conn
    assert conn is not None
    nonce = digest.NonceService(SECRET).make(REALM, harness.now, conn.nonce_scope)
    auth = authorization("alice", "alice-pw", nonce).replace('response="', 'response="\u00e9')
    [lookup] = harness.core.receive_data(conn.id, render(
        "INVITE", branch="z9hG4bKna", call_id="na", from_user="alice", cseq=1, extra=auth),
        harness.now)
    assert isinstance(lookup, LookupCredentials)
    out = harness.core.credentials_found(lookup.ticket, ha1s(REALM, "alice"), harness.now)
    [challenge] = [parse_message(o.data) for o in out if isinstance(o, Send)]
    assert isinstance(challenge, Response) and challenge.status == 401
