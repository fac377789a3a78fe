"""Hostile input against the real focus (`webconf serve`, real processes) over real TLS.

Every case checks the focus's answer, and the autouse `focus_stays_up` fixture then checks
that the focus is still up: the serve process is alive, a fresh connection's OPTIONS gets
200, and its log holds no unhandled exception. Cases where a user's join matters join a
real user (clients.sip) too.

Sources: the whole 127/8 is loopback, so each attacker binds its own source address and
the focus's per-source throttles and caps hit only it:
    127.0.0.1 health checks and ordinary users    127.0.0.5 fuzzers
    127.0.0.2 "another source" for the cap test   127.0.0.6/7 slowloris, dead handshakes
    127.0.0.3 the user who joins during a flood   127.0.0.8 a peer that never reads
    127.0.0.4 password guesser                    127.0.0.9, 127.0.1.x credential junk
    127.0.0.10 SUBSCRIBE flood

The fuzz tests are bounded (examples and a time budget) for CI; WEBCONF_FUZZ_LONG=1 runs
them for minutes (`WEBCONF_FUZZ_LONG=1 .venv/bin/pytest tests/test_hostile_sip.py -k fuzz`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import secrets
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients.sip import ConferenceDialog, SipConnection
from focus.directory import Directory
from webconf.deploy import tls
from webconf.deploy.config import Config
from webconf.deploy.init import init_deployment
from webconf.protocol import valid_id
from webconf.sip import digest, digest_client
from webconf.sip.digest_client import Challenge
from webconf.sip.framing import FramingError, KeepAlive, NeedData, SipFramer
from webconf.sip.message import Headers, Request, Response, make_response, serialize

from .conftest import TENANTS, ServeProcess, free_port

HEADER_TIMEOUT = 2.0
"""WEBCONF_FOCUS_HEADER_TIMEOUT_SECONDS for every focus in this file."""
SLACK = 2.0
"""How late a timeout may fire on a loaded 2-core machine."""
FUZZ_LONG = os.environ.get("WEBCONF_FUZZ_LONG", "") not in ("", "0")
USERS = {"alice@contoso.example": "alice-pw", "bob@contoso.example": "bob-pw",
         "victim@contoso.example": "correct horse battery staple"}
HOST = "127.0.0.1"
SNI = "contoso.example"
MAX_MESSAGE = 65536


# -- the focus under attack -------------------------------------------------------------------
def raise_fd_limit(wanted: int = 8192) -> None:
    """1,000 connections need ~1,000 fds on each side; children inherit the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def add_users(cfg: Config) -> None:
    directory = await Directory.for_deployment(cfg)
    try:
        for address, password in USERS.items():
            await directory.add_user(address, password)
    finally:
        await directory.close()


@dataclass
class Stack:
    cfg: Config
    proc: ServeProcess
    ctx: ssl.SSLContext = field(init=False)

    def __post_init__(self) -> None:
        self.ctx = tls.client_context(self.cfg)

    @property
    def port(self) -> int:
        return self.cfg.focus.sip_port

    @property
    def log(self) -> Path:
        return self.cfg.log_dir / "focus.log"

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def log_events(self, since: int = 0) -> list[dict[str, object]]:
        with self.log.open("rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", "replace")
        events = []
        for line in text.splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                events.append({"level": "raw", "msg": line})
        return events


def start_stack(base: Path, env: dict[str, str]) -> Stack:
    raise_fd_limit()
    cfg = init_deployment(base, https_port=free_port(), internal_port=free_port(),
                          sip_port=free_port(), tenants=TENANTS)
    asyncio.run(add_users(cfg))
    proc = ServeProcess(cfg.base_dir, {
        "WEBCONF_FOCUS_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "WEBCONF_FOCUS_LEAVE_GRACE_SECONDS": "1", **env})
    proc.start()
    return Stack(cfg, proc)


def stop_stack(stack: Stack) -> None:
    if stack.proc.proc is not None and stack.proc.proc.poll() is None:
        try:
            stack.proc.terminate(20)
        except Exception:  # noqa: BLE001 - a hung focus must not hang the test run
            stack.proc.kill9()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One focus + WCS for the module (header timeout 2 s, default caps)."""
    running = start_stack(tmp_path_factory.mktemp("hostile") / "dep", {})
    try:
        yield running
    finally:
        stop_stack(running)


def crashes(events: list[dict[str, object]]) -> list[dict[str, object]]:
    """Log lines that show an unhandled exception (a handler that died)."""
    return [e for e in events if "exc" in e or e.get("level") in ("critical", "raw")
            or "Traceback" in str(e.get("msg", ""))
            or "exception" in str(e.get("msg", "")).lower()]


def assert_focus_up(stack: Stack, since: int) -> None:
    assert stack.proc.proc is not None and stack.proc.proc.poll() is None, "serve exited"
    with RawTls(stack) as conn:
        conn.send(request("OPTIONS", call_id="health-" + secrets.token_hex(4)))
        [resp] = conn.responses(1)
        assert resp.status == 200
    bad = [f"{e.get('msg')} / {str(e.get('exc', '')).strip().splitlines()[-1:]}"
           for e in crashes(stack.log_events(since))]
    assert not bad, f"the focus logged {len(bad)} unhandled exceptions: {bad[:3]}"


@pytest.fixture(autouse=True)
def focus_stays_up(request: pytest.FixtureRequest) -> Iterator[None]:
    if "stack" not in request.fixturenames:
        yield
        return
    running: Stack = request.getfixturevalue("stack")
    since = running.log_size()
    yield
    assert_focus_up(running, since)


# -- SIP bytes ----------------------------------------------------------------------------------
def conference_uri(conf: str) -> str:
    return f"sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:{conf}"


def request(method: str, *, call_id: str | None = None, branch: str | None = None,
            uri: str = "sip:focus@contoso.example", from_user: str = "bob",
            to_tag: str | None = None, cseq: int = 1, extra: str = "", body: bytes = b"",
            content_length: str | None = None) -> bytes:
    branch = branch or "z9hG4bK" + secrets.token_hex(8)
    call_id = call_id or secrets.token_hex(8)
    length = str(len(body)) if content_length is None else content_length
    to = f"<{uri}>" + (f";tag={to_tag}" if to_tag else "")
    return (f"{method} {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/TLS 127.0.0.1:5999;branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:{from_user}@contoso.example>;tag={secrets.token_hex(4)}\r\n"
            f"To: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
            f"Contact: <sip:{from_user}@127.0.0.1:5999;transport=tls>\r\n"
            f"{extra}Content-Length: {length}\r\n\r\n").encode() + body


def authorization(user: str, password: str, nonce: str, uri: str, nc: int = 1,
                  realm: str = "contoso.example", algorithm: str = "SHA-256") -> str:
    challenge = Challenge(realm=realm, nonce=nonce, algorithm=algorithm)
    return digest_client.authorization(challenge, username=user, password=password,
                                       method="INVITE", uri=uri, nc=nc)


def nonce_of(challenge: Response) -> str:
    from webconf.sip.message import parse_auth_params

    return parse_auth_params(challenge.headers.get_fields("WWW-Authenticate")[0])[1]["nonce"]


# -- a blocking TLS client (for hypothesis) -----------------------------------------------------
class RawTls:
    """One TLS connection to the focus from `source`, reading with a SipFramer."""

    def __init__(self, stack: Stack, source: str = HOST, timeout: float = 5.0,
                 rcvbuf: int | None = None) -> None:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(timeout)
        try:
            raw.bind((source, 0))
            raw.connect((HOST, stack.port))
            self.sock = stack.ctx.wrap_socket(raw, server_hostname=SNI)
        except BaseException:
            raw.close()
            raise
        # The focus copies every Via of a refused request (RFC 3261 §8.2.6.2), so its
        # answer to a request with too many headers has as many, and compact `v:` lines
        # come back as longer `Via:` ones (over 64 KiB at most 1.6x): read leniently.
        self.framer = SipFramer(max_headers=100_000, max_message_size=1 << 20)
        self.eof = False
        self.sent_at = 0.0

    def __enter__(self) -> RawTls:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def send(self, data: bytes) -> None:
        self.sent_at = time.monotonic()
        self.sock.sendall(data)

    def _recv(self, deadline: float) -> bool:
        """Read once into the framer; False on timeout (EOF sets `eof`)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except (ConnectionError, ssl.SSLError):
            data = b""
        if not data:
            self.eof = True
        else:
            self.framer.feed(data)
        return True

    def responses(self, count: int, timeout: float = 5.0) -> list[Response]:
        """Up to `count` responses (fewer on EOF or timeout); anything else fails."""
        out: list[Response] = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            event = self.framer.next_event()
            if isinstance(event, NeedData):
                if self.eof or not self._recv(deadline):
                    break
                continue
            if isinstance(event, KeepAlive):
                continue
            assert isinstance(event, Response), f"the focus sent a non-response: {event!r}"
            out.append(event)
        return out

    def until_closed(self, timeout: float) -> tuple[list[Response], bool]:
        """Every response until the focus closes; (responses, closed before `timeout`)."""
        out: list[Response] = []
        deadline = time.monotonic() + timeout
        while True:
            out += self.responses(1_000_000, max(0.0, deadline - time.monotonic()))
            if self.eof:
                return out, True
            if time.monotonic() >= deadline:
                return out, False


# -- hypothesis: random and mutated messages ---------------------------------------------------
FUZZ_SOURCE = "127.0.0.5"
FAKE_NONCE = digest.NonceService(b"not-the-focus-secret-32-bytes!!!").make(
    "contoso.example", time.time())
SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       b"m=audio 4000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\n")
FUZZ_AUTH = (f'Authorization: Digest username="fuzzer", realm="contoso.example", '
             f'nonce="{FAKE_NONCE}", uri="{conference_uri("FUZZ")}", response="'
             + "0" * 64 + '", algorithm=SHA-256, qop=auth, nc=00000001, cnonce="c0ffee"\r\n')
TEMPLATES = [
    request("INVITE", uri=conference_uri("FUZZ"), from_user="fuzzer", body=SDP,
            extra=FUZZ_AUTH + "Content-Type: application/sdp\r\nAccept: application/sdp, "
            "multipart/mixed\r\n"),
    request("INVITE", uri=conference_uri("FUZZ"), from_user="fuzzer"),
    request("OPTIONS"),
    request("BYE", to_tag="deadbeef"),
    request("CANCEL", uri=conference_uri("FUZZ")),
    request("ACK", to_tag="deadbeef"),
]
NASTY = [b"\x00", b"\xff", b"\xfe", b"\xc3", b"\xc3(", b"\xed\xa0\x80", b"\xef\xbb\xbf",
         b"\x80", b"\r", b"\n", b"\r\n", b"\r\n\r\n", b"\t", b" ", b'"', b"\\", b"<", b">",
         b";", b",", b"=", b"@", b":", b"%", b"%zz", b"\x7f", b"\x1b[2J", b"\xf0\x9f\x92\xa9",
         b"-1", b"99999999999", b"0" * 40, b"A" * 300]
nasty_bytes = st.lists(st.one_of(st.sampled_from(NASTY), st.binary(max_size=6)),
                       min_size=1, max_size=4).map(b"".join)
INJECTED = [b"Content-Length: 5", b"Content-Length: -1", b"Content-Length: 70000",
            b"l: 0", b"Via: SIP/2.0/TLS evil;branch=z9hG4bKx", b"v: garbage",
            b"To: <sip:focus@contoso.example>;tag=1", b"Call-ID: dup", b"CSeq: 1 BYE",
            b"Max-Forwards: 0", b"Max-Forwards: 99999", b" folded continuation",
            b"Authorization: Digest", b"Authorization: Basic Zm9vOmJhcg==",
            FUZZ_AUTH.rstrip().encode(), b"From: <tel:+123>", b"Content-Type: multipart/mixed",
            b"X-Empty:", b": no name", b"No-Colon", b"\x00: nul"]


@st.composite
def header_lines(draw: st.DrawFn) -> bytes:
    choice = draw(st.integers(0, 2))
    if choice == 0:
        return draw(st.sampled_from(INJECTED))
    name = draw(st.one_of(st.sampled_from([b"Via", b"From", b"To", b"Call-ID", b"CSeq",
                                           b"Authorization", b"Content-Length", b"X-A"]),
                          st.binary(max_size=10)))
    return name + draw(st.sampled_from([b": ", b":", b" : ", b""])) + draw(nasty_bytes)


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    """A valid INVITE/OPTIONS/BYE/CANCEL/ACK, then flips, insertions, deletions,
    duplications, injected headers, huge header counts, garbage start lines."""
    data = bytearray(draw(st.sampled_from(TEMPLATES)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "duplicate", "header",
                                   "many-headers", "start-line", "in-line", "append"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(nasty_bytes)
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 40))]
        elif op == "duplicate":
            start = draw(st.integers(0, len(data)))
            chunk = data[start:start + draw(st.integers(1, 200))]
            data[pos:pos] = chunk * draw(st.integers(1, 3))
        elif op in ("header", "many-headers"):
            line_end = data.find(b"\r\n", pos)
            at = line_end + 2 if line_end >= 0 else len(data)
            line = draw(header_lines()) + b"\r\n"
            count = 1 if op == "header" else draw(st.sampled_from([99, 101, 500, 3000, 9000]))
            data[at:at] = line * count
        elif op == "start-line":
            end = data.find(b"\r\n")
            data[:max(end, 0)] = draw(st.one_of(
                nasty_bytes, st.sampled_from([
                    b"", b"INVITE", b"INVITE  sip:a@b SIP/2.0", b"INVITE sip:a@b SIP/3.0",
                    b"INVITE sip:a@b HTTP/1.1", b"SIP/2.0 200 OK", b"SIP/2.0 999 No",
                    b"GET / HTTP/1.1", b"INVITE tel:+1234 SIP/2.0", b"\x16\x03\x01\x02\x00",
                    b"INVITE sip:a@b SIP/2.0 trailing", b"IN\x00VITE sip:a@b SIP/2.0"])))
        elif op == "in-line":  # corrupt inside one header value (Authorization included)
            lines = bytes(data).split(b"\r\n")
            index = draw(st.integers(0, len(lines) - 1))
            line = lines[index]
            at = draw(st.integers(0, len(line)))
            lines[index] = line[:at] + draw(nasty_bytes) + line[at + draw(st.integers(0, 8)):]
            data = bytearray(b"\r\n".join(lines))
        elif op == "append":  # pipelining: another message right behind
            data += draw(st.sampled_from(TEMPLATES))
    return bytes(data)


def auth_value(draw: st.DrawFn, damaged: bool = True) -> bytes:
    params = {b"username": b'"fuzzer"', b"realm": b'"contoso.example"',
              b"nonce": f'"{FAKE_NONCE}"'.encode(), b"uri": b'"sip:x@contoso.example"',
              b"response": b'"' + b"0" * 64 + b'"', b"algorithm": b"SHA-256", b"qop": b"auth",
              b"nc": b"00000001", b"cnonce": b'"abc"'}
    if not damaged:
        return b"Digest " + b", ".join(k + b"=" + v for k, v in params.items())
    names = st.sampled_from([b"username", b"realm", *sorted(params)])
    for name in draw(st.lists(names, max_size=4, unique=True)):
        value = draw(nasty_bytes)
        params[name] = b'"' + value + b'"' if draw(st.booleans()) else value
    items = [k + b"=" + v for k, v in params.items()]
    items = draw(st.permutations(items))[: draw(st.integers(0, len(items)))] if draw(
        st.integers(0, 4)) == 0 else items
    scheme = draw(st.sampled_from([b"Digest", b"digest", b"Basic", b"", b"Digest\x00"]))
    return scheme + b" " + b", ".join(items)


PARTS = ["method", "uri", "separator", "version", "line-end", "cseq-method", "Via",
         "Max-Forwards", "From", "To", "Call-ID", "CSeq", "Authorization", "Content-Type",
         "missing", "extra-headers", "order", "Content-Length"]


@st.composite
def generated_messages(draw: st.DrawFn) -> bytes:
    """A request assembled from parts; a few chosen parts are damaged (garbage, NULs, bad
    UTF-8, missing, duplicated, reordered, too many), the others stay valid."""
    damaged = draw(st.sets(st.sampled_from(PARTS), max_size=3))

    def part(name: str, valid: bytes) -> bytes:
        if name not in damaged:
            return valid
        cut = draw(st.integers(0, len(valid)))
        return draw(st.one_of(nasty_bytes, st.just(valid[:cut] + draw(nasty_bytes)
                                                   + valid[cut + draw(st.integers(0, 4)):])))

    method = part("method", draw(st.sampled_from([b"INVITE"] * 8 + [
        b"OPTIONS", b"BYE", b"CANCEL", b"ACK", b"REGISTER", b"MESSAGE", b"invite"])))
    uri = part("uri", conference_uri("GEN").encode())
    sep = draw(st.sampled_from([b"  ", b"\t", b""])) if "separator" in damaged else b" "
    version = part("version", b"SIP/2.0")
    eol = draw(st.sampled_from([b"\n", b"\r", b"\n\r"])) if "line-end" in damaged else b"\r\n"
    cseq_method = b"INVITE" if "cseq-method" in damaged else method
    headers = [
        (b"Via", part("Via", b"SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bK"
                      + secrets.token_hex(4).encode())),
        (b"Max-Forwards", part("Max-Forwards", b"70")),
        (b"From", part("From", b'"Fuzz" <sip:fuzzer@contoso.example>;tag=ff')),
        (b"To", part("To", b"<" + conference_uri("GEN").encode() + b">")),
        (b"Call-ID", part("Call-ID", b"gen-" + secrets.token_hex(4).encode())),
        (b"CSeq", part("CSeq", b"1 " + cseq_method)),
    ]
    if draw(st.integers(0, 3)) or "Authorization" in damaged:  # credentials: fuzzed most
        headers.append((b"Authorization", auth_value(
            draw, "Authorization" in damaged or draw(st.integers(0, 2)) == 0)))
    if draw(st.integers(0, 3)) == 0 or "Content-Type" in damaged:
        headers.append((b"Content-Type", part("Content-Type", b"application/sdp")))
    if "missing" in damaged:
        del headers[draw(st.integers(0, len(headers) - 1))]
    if "extra-headers" in damaged:
        count = draw(st.sampled_from([1, 2, 3, 50, 100, 101, 2000]))
        line = draw(header_lines())
        headers += [(line, b"")] * count if count > 3 else [
            (draw(header_lines()), b"") for _ in range(count)]
    if "order" in damaged:
        headers = draw(st.permutations(headers))
    body = draw(st.sampled_from([b"", SDP, b"\x00\xff" * 20]))
    length: bytes | None = str(len(body)).encode()
    if "Content-Length" in damaged:
        length = draw(st.one_of(st.none(), nasty_bytes,
                                st.integers(0, 500).map(lambda n: str(n).encode())))
    lines = [method + sep + uri + sep + version]
    for name, value in headers:
        lines.append(name + b": " + value if value else name)
    if length is not None:
        lines.append(b"Content-Length: " + length)
    return eol.join(lines) + eol + eol + body


class Ambiguous(Exception):
    """The focus's reply would be within a few hundred bytes of the 64 KiB cap: whether it
    is sent or the connection closed depends on details (tags, reason phrase) the oracle
    does not model, so the example is not judged."""


def _reply_too_big(headers: Headers) -> bool:
    """A reply echoing these Via/From/To/Call-ID/CSeq would pass the 64 KiB cap: the focus
    closes the connection instead of sending it (and anything after it)."""
    size = len(serialize(make_response(headers, 400)))
    if abs(size - MAX_MESSAGE) < 512:
        raise Ambiguous
    return size > MAX_MESSAGE


def expected_answers(data: bytes) -> tuple[int, bool, bool]:
    """What the focus must do with `data` (the same framing rules it runs, RFC 3261 §18.3):
    (responses it sends, whether it then closes at once, whether a message is left
    incomplete - the focus must then close within the header timeout)."""
    framer = SipFramer(max_message_size=MAX_MESSAGE)
    framer.feed(data)
    answers = 0
    while True:
        event = framer.next_event()
        if isinstance(event, NeedData):
            return answers, False, framer.buffered > 0
        if isinstance(event, KeepAlive | Response):
            continue
        if isinstance(event, FramingError):
            if (not event.is_response and event.headers is not None
                    and event.headers.get("Via") is not None):
                if _reply_too_big(event.headers):
                    return answers, True, False  # the focus closes rather than send it
                answers += 1  # a framing error of a request that names its Via: 400/505/513
            if event.fatal:
                return answers, True, False
            continue
        assert isinstance(event, Request)
        if event.method != "ACK" and _reply_too_big(event.headers):
            return answers, True, False
        answers += event.method != "ACK"  # every request but ACK gets one final response


@dataclass
class FuzzRun:
    """Sends each example on a fresh connection and checks the focus's behaviour:
    - exactly the expected number of SIP responses (CRLF pongs allowed), nothing else;
    - after a fatal framing error, the focus closes at once;
    - after complete messages, the connection still works (an OPTIONS gets 200);
    - with an incomplete message left, the focus closes within the header timeout (these
      connections are parked and checked together, so the waits overlap)."""

    stack: Stack
    budget: float
    started: float = field(default_factory=time.monotonic)
    examples: int = 0
    failing: bool = False
    parked: list[tuple[RawTls, bytes, int]] = field(default_factory=list)
    late: list[str] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)

    def over_budget(self) -> bool:
        return not self.failing and time.monotonic() - self.started > self.budget

    def one(self, data: bytes) -> None:
        if self.over_budget():
            return
        self.examples += 1
        try:
            self._check(data)
        except BaseException:
            self.failing = True  # shrinking must replay examples even past the budget
            raise

    def _check(self, data: bytes) -> None:
        try:
            answers, fatal, partial = expected_answers(data)
        except Ambiguous:
            self.kinds["ambiguous"] += 1
            return
        conn = RawTls(self.stack, FUZZ_SOURCE)
        parked = False
        try:
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                conn.send(data)  # after a fatal error the focus may close while we send
            got = conn.responses(answers)
            assert len(got) == answers, (
                f"{len(got)} responses, expected {answers} for {data!r} (eof={conn.eof})")
            if fatal:
                self.kinds["fatal"] += 1
                more, closed = conn.until_closed(SLACK + 1)
                assert closed and not more, f"not closed after a fatal error: {data!r}"
            elif partial:
                self.kinds["partial"] += 1
                self.parked.append((conn, data, answers))
                parked = True
                self.reap()
            else:
                self.kinds["complete"] += 1
                sentinel = "sentinel-" + secrets.token_hex(4)
                conn.send(request("OPTIONS", call_id=sentinel))
                [resp] = conn.responses(1)
                assert resp.status == 200 and resp.headers.get("Call-ID") == sentinel, (
                    f"out of sync after {data!r}: {resp.status} {resp.headers!r}")
        finally:
            if not parked:
                conn.close()

    def reap(self, *, wait: bool = False) -> None:
        """Check parked connections whose header timeout (plus slack) has passed."""
        keep = []
        for conn, data, _answers in self.parked:
            due = conn.sent_at + HEADER_TIMEOUT + SLACK
            if not wait and time.monotonic() < due and len(self.parked) < 200:
                keep.append((conn, data, _answers))
                continue
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                more, closed = conn.until_closed(0.05)
            except AssertionError as exc:  # not SIP: reported with the others at the end
                more, closed = [], False
                self.late.append(f"{exc} after {data!r}")
            finally:
                conn.close()
            if not closed:
                self.late.append(f"not closed after the header timeout: {data!r}")
            elif more:
                self.late.append(f"unexpected {[r.status for r in more]} after {data!r}")
        self.parked = keep

    def finish(self) -> None:
        """Check the parked connections; their failures are not any one example's."""
        try:
            self.reap(wait=True)
        finally:
            for conn, _, _ in self.parked:
                conn.close()
        assert not self.late, f"{len(self.late)} incomplete examples misbehaved: {self.late[:3]}"


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples * (50 if FUZZ_LONG else 1), deadline=None,
                    database=None, suppress_health_check=list(HealthCheck))


FUZZ_BUDGET = 300.0 if FUZZ_LONG else 6.0
"""Seconds of examples per fuzz test (then the parked connections and a health check)."""
fuzz_timeout = pytest.mark.timeout(FUZZ_BUDGET + 300)


def healthy_after_fuzz(stack: Stack, run: FuzzRun) -> None:
    assert run.examples >= 20, f"only {run.examples} examples ran"
    assert_focus_up(stack, 0)
    asyncio.run(join_once(stack.cfg, "alice@contoso.example", "AFTERFUZZ" + secrets.token_hex(2)))


@fuzz_timeout
def test_fuzz_mutated_messages(stack: Stack) -> None:
    """Valid INVITE/OPTIONS/BYE/CANCEL/ACK with byte flips, insertions, deletions,
    duplications, injected headers, huge header counts, garbage start lines, NULs and bad
    UTF-8, each on a fresh TLS connection (see FuzzRun for what is checked)."""
    run = FuzzRun(stack, FUZZ_BUDGET)

    @fuzz_settings(400)
    @given(mutated_messages())
    def example(data: bytes) -> None:
        run.one(data)

    try:
        example()
    finally:
        run.finish()
    print(f"mutated: {run.examples} examples {dict(run.kinds)}")
    healthy_after_fuzz(stack, run)


@fuzz_timeout
def test_fuzz_generated_messages(stack: Stack) -> None:
    """Requests assembled from damaged parts (credentials above all), and random bytes."""
    run = FuzzRun(stack, FUZZ_BUDGET)

    @fuzz_settings(400)
    @given(st.one_of(generated_messages(), generated_messages(), generated_messages(),
                     st.binary(min_size=1, max_size=3000)))
    def example(data: bytes) -> None:
        run.one(data)

    try:
        example()
    finally:
        run.finish()
    print(f"generated: {run.examples} examples {dict(run.kinds)}")
    healthy_after_fuzz(stack, run)


# -- async helpers ----------------------------------------------------------------------------
async def open_conn(cfg: Config, source: str = HOST, timeout: float = 10.0) -> SipConnection:
    return await SipConnection.open(HOST, cfg.focus.sip_port, ssl_context=tls.client_context(cfg),
                                    server_hostname=SNI, local_addr=(source, 0),
                                    timeout=timeout)


async def join_once(cfg: Config, address: str, conf: str, source: str = HOST) -> float:
    """A real user joins (INVITE, 401, INVITE with Digest, 200, ACK), then leaves (BYE).
    Returns the join's duration."""
    conn = await open_conn(cfg, source)
    try:
        dialog = ConferenceDialog(conn, conference_uri(conf), address, USERS[address])
        started = time.monotonic()
        result = await dialog.join()
        elapsed = time.monotonic() - started
        assert valid_id(result.conference)  # the WCS's public id (docs/protocol.md §2.1)
        assert await dialog.leave() == 200
        return elapsed
    finally:
        await conn.close()


async def raw_open(cfg: Config, source: str = HOST,
                   ctx: ssl.SSLContext | None = None) -> tuple[asyncio.StreamReader,
                                                               asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(
        HOST, cfg.focus.sip_port, ssl=ctx or tls.client_context(cfg), server_hostname=SNI,
        local_addr=(source, 0)), 10)


async def read_response(reader: asyncio.StreamReader, framer: SipFramer,
                        timeout: float = 5.0) -> Response:
    while True:
        event = framer.next_event()
        if isinstance(event, Response):
            return event
        if not isinstance(event, NeedData | KeepAlive):
            raise AssertionError(f"not a response: {event!r}")
        if isinstance(event, NeedData):
            data = await asyncio.wait_for(reader.read(65536), timeout)
            assert data, "connection closed"
            framer.feed(data)


async def closed_after(reader: asyncio.StreamReader, timeout: float) -> tuple[float, bytes]:
    """Read until the focus closes: (seconds it took, bytes received)."""
    started = time.monotonic()
    received = b""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while True:
            data = await asyncio.wait_for(reader.read(65536), timeout)
            if not data:
                break
            received += data
    return time.monotonic() - started, received


async def options_ok(cfg: Config, source: str = HOST) -> float:
    started = time.monotonic()
    reader, writer = await raw_open(cfg, source)
    writer.write(request("OPTIONS"))
    assert (await read_response(reader, SipFramer())).status == 200
    writer.close()
    return time.monotonic() - started


# -- slowloris and dead handshakes -------------------------------------------------------------
async def test_slowloris_is_closed_after_header_timeout(stack: Stack) -> None:
    """Connections that drip one header byte per second are closed 2 s (the configured
    header timeout) after their first byte; meanwhile other users are served normally."""
    message = request("OPTIONS")

    async def drip() -> float:
        reader, writer = await raw_open(stack.cfg, "127.0.0.6")
        started = time.monotonic()

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError, ssl.SSLError, RuntimeError):
                for byte in message:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(1.0)

        task = asyncio.create_task(trickle())
        try:
            _, data = await closed_after(reader, HEADER_TIMEOUT + SLACK + 2)
        finally:
            task.cancel()
            writer.close()
        assert b"SIP/2.0" not in data  # closed without an answer
        return time.monotonic() - started

    drips = [asyncio.create_task(drip()) for _ in range(10)]
    await asyncio.sleep(0.5)
    assert await options_ok(stack.cfg) < 1.0
    assert await join_once(stack.cfg, "alice@contoso.example", "SLOW1") < 2.0
    durations = await asyncio.gather(*drips)
    assert all(HEADER_TIMEOUT - 0.1 <= d <= HEADER_TIMEOUT + SLACK for d in durations), durations
    events = stack.log_events()
    assert any(e.get("event") == "connection.timeout" and e.get("reason") == "header timeout"
               for e in events)


async def test_tls_handshakes_that_never_complete_are_closed(stack: Stack) -> None:
    """Raw TCP that sends nothing, or half a ClientHello: closed after the handshake timeout
    (the header timeout). 300 such connections at once do not stop a user from joining.
    The cases run side by side, so their waits overlap."""
    async def one(first_bytes: bytes) -> float:
        started = time.monotonic()  # the focus's clock starts when it accepts
        reader, writer = await asyncio.open_connection(HOST, stack.port,
                                                       local_addr=("127.0.0.7", 0))
        writer.write(first_bytes)
        try:
            _, data = await closed_after(reader, HEADER_TIMEOUT + SLACK + 2)
        finally:
            writer.close()
        assert b"SIP/2.0" not in data
        return time.monotonic() - started

    half_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
    stalls = [asyncio.create_task(one(half_hello if n % 2 else b"")) for n in range(300)]
    await asyncio.sleep(0.3)
    assert await join_once(stack.cfg, "alice@contoso.example", "STALL1") < 2.0
    durations = await asyncio.gather(*stalls)
    assert all(HEADER_TIMEOUT - 0.1 <= d <= HEADER_TIMEOUT + SLACK + 0.5 for d in durations), (
        min(durations), max(durations))
    assert await options_ok(stack.cfg) < 1.0


# -- many connections ---------------------------------------------------------------------------
async def test_thousand_idle_connections_do_not_block_joins(stack: Stack) -> None:
    raise_fd_limit()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 1200:
        pytest.skip(f"the fd limit ({soft}) is too low for 1,000 connections")
    ctx = tls.client_context(stack.cfg)
    gate = asyncio.Semaphore(32)
    writers: list[asyncio.StreamWriter] = []

    async def one() -> None:
        async with gate:
            _, writer = await asyncio.wait_for(asyncio.open_connection(
                HOST, stack.port, ssl=ctx, server_hostname=SNI), 30)
            writers.append(writer)

    started = time.monotonic()
    try:
        await asyncio.gather(*(one() for _ in range(1000)))
        opened = time.monotonic() - started
        assert len(writers) == 1000
        join_time = await join_once(stack.cfg, "alice@contoso.example", "IDLE1000")
        assert join_time < 2.0, join_time
        options_time = await options_ok(stack.cfg)
        assert options_time < 1.0
        print(f"1000 TLS connections opened in {opened:.1f}s; join {join_time * 1000:.0f} ms")
        assert all(not w.is_closing() for w in writers)  # nothing idle was dropped early
    finally:
        for writer in writers:
            writer.close()
        for writer in writers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5)


@pytest.fixture
def capped_stack(tmp_path: Path) -> Iterator[Stack]:
    running = start_stack(tmp_path / "capped", {"WEBCONF_FOCUS_MAX_CONNECTIONS_PER_SOURCE": "20"})
    try:
        yield running
    finally:
        stop_stack(running)


async def test_per_source_connection_cap(capped_stack: Stack) -> None:
    stack = capped_stack
    since = stack.log_size()
    conns = [await raw_open(stack.cfg) for _ in range(20)]
    for reader, writer in conns:  # below the cap: every connection works
        writer.write(request("OPTIONS"))
        assert (await read_response(reader, SipFramer())).status == 200
    reader, writer = await raw_open(stack.cfg)  # the 21st from 127.0.0.1
    elapsed, data = await closed_after(reader, 5)
    writer.close()
    assert elapsed < 1.0 and data == b"", (elapsed, data)
    assert await options_ok(stack.cfg, "127.0.0.2") < 1.0  # another source is not capped
    assert await join_once(stack.cfg, "alice@contoso.example", "CAP1", "127.0.0.2") < 2.0
    for reader, writer in conns:  # the 20 still work
        writer.write(request("OPTIONS"))
        assert (await read_response(reader, SipFramer())).status == 200
    conns.pop()[1].close()  # a slot freed is a slot reusable
    deadline = time.monotonic() + 5
    while True:
        reader, writer = await raw_open(stack.cfg)
        writer.write(request("OPTIONS"))
        try:
            assert (await read_response(reader, SipFramer())).status == 200
            break
        except (AssertionError, ConnectionError, ssl.SSLError):
            assert time.monotonic() < deadline, "a freed slot was never reusable"
            await asyncio.sleep(0.1)
        finally:
            writer.close()
    for _, w in conns:
        w.close()
    events = stack.log_events(since)
    assert any(e.get("event") == "connection.refused" for e in events)
    assert not crashes(events)
    assert stack.proc.proc is not None and stack.proc.proc.poll() is None


# -- password guessing ------------------------------------------------------------------------
async def test_password_guessing_is_throttled_while_others_join(stack: Stack) -> None:
    """12,000 INVITEs with wrong Digest credentials, pipelined over 4 connections from one
    source: two connections guess the victim's password, two spray user names. After the
    first few 401s (the per-user, then the per-source failure limit) the focus answers
    429 + Retry-After, and a user from another source joins with normal latency meanwhile
    (the join starts once a tenth of the flood is answered, whatever the focus's speed)."""
    cfg = stack.cfg
    attacker = "127.0.0.4"
    uri = conference_uri("GUESS")
    reader, writer = await raw_open(cfg, attacker)
    writer.write(request("INVITE", uri=uri, from_user="victim"))
    challenge = await read_response(reader, SipFramer())
    assert challenge.status == 401
    nonce = nonce_of(challenge)
    writer.close()

    total, per_conn = 12000, 3000
    statuses: Counter[int] = Counter()
    under_way = threading.Event()
    retry_after: set[str | None] = set()

    def guess(index: int, n: int) -> bytes:
        user = "victim" if index < 2 else f"spray{index}x{n}"
        auth = authorization(user, f"guess-{index}-{n}", nonce, uri, nc=n + 1)
        return request("INVITE", uri=uri, from_user=user,
                       extra=f"Authorization: {auth}\r\n")

    async def guesser(index: int) -> None:
        reader, writer = await raw_open(cfg, attacker)
        framer = SipFramer()
        writer.write(b"".join(guess(index, n) for n in range(per_conn)))
        sender = asyncio.create_task(writer.drain())
        for _ in range(per_conn):
            resp = await read_response(reader, framer, timeout=30)
            statuses[resp.status] += 1
            if statuses.total() >= total // 10:
                under_way.set()
            if resp.status == 429:
                retry_after.add(resp.headers.get("Retry-After"))
        await sender
        writer.close()

    async def flood() -> None:
        await asyncio.gather(*(guesser(i) for i in range(4)))

    # The attacker runs on its own thread and event loop, as it would on its own machine:
    # its Python work must not slow the joining user's client down.
    started = time.monotonic()
    attack = asyncio.create_task(asyncio.to_thread(asyncio.run, flood()))
    assert await asyncio.to_thread(under_way.wait, 60)  # the flood is under way
    join_time = await join_once(cfg, "alice@contoso.example", "GUESS2", "127.0.0.3")
    assert not attack.done(), "the flood ended before the join: make it bigger"
    await attack
    elapsed = time.monotonic() - started
    print(f"{total} guesses in {elapsed:.1f}s: {dict(statuses)}; join during the flood "
          f"{join_time * 1000:.0f} ms")
    assert sum(statuses.values()) == total
    assert set(statuses) <= {401, 403, 429}, statuses
    first_few = cfg.focus.auth_failures_per_source + cfg.focus.auth_failures_per_user
    assert statuses[401] + statuses[403] <= first_few, statuses
    assert statuses[429] >= total - first_few, statuses
    assert None not in retry_after and all(int(v or 0) >= 1 for v in retry_after), retry_after
    assert join_time < 1.0, join_time
    # the guessing source stays locked out for a while, even with someone's right password
    reader, writer = await raw_open(cfg, attacker)
    writer.write(request("INVITE", uri=uri, from_user="bob", extra="Authorization: "
                         + authorization("bob", "bob-pw", nonce, uri) + "\r\n"))
    assert (await read_response(reader, SipFramer())).status == 429
    writer.close()


async def test_subscribe_flood_counts_under_the_per_source_limits(stack: Stack) -> None:
    """1,200 pipelined SUBSCRIBEs from one source (docs/protocol.md §9.3): bad event
    packages get 489, no credentials 401, wrong credentials count as failures like an
    INVITE's, so the source is locked out (429) after the per-source limit; a user from
    another source joins meanwhile, and the source's INVITEs are locked out too."""
    cfg = stack.cfg
    source = "127.0.0.10"
    uri = conference_uri("SUBFLOOD")
    reader, writer = await raw_open(cfg, source)
    framer = SipFramer()
    writer.write(request("SUBSCRIBE", uri=uri, extra="Event: conference\r\n"))
    challenge = await read_response(reader, framer)
    assert challenge.status == 401
    nonce = nonce_of(challenge)
    batches = [
        [request("SUBSCRIBE", uri=uri, extra="Event: presence\r\n") for _ in range(200)],
        [request("SUBSCRIBE", uri=uri, extra="Event: conference\r\n") for _ in range(200)],
        [request("SUBSCRIBE", uri=uri, from_user=f"sub{n}", extra=(
            "Event: conference\r\nAuthorization: "
            f"{authorization(f'sub{n}', 'guess', nonce, uri)}\r\n")) for n in range(800)]]
    statuses: list[Counter[int]] = []
    for batch in batches:
        writer.write(b"".join(batch))
        statuses.append(Counter([(await read_response(reader, framer, timeout=30)).status
                                 for _ in batch]))
        if len(statuses) == 2:
            assert await join_once(cfg, "alice@contoso.example", "SUBFLOOD", "127.0.0.3") < 5
    assert statuses[0] == {489: 200} and statuses[1] == {401: 200}
    limit = cfg.focus.auth_failures_per_source
    assert statuses[2] == {401: limit, 429: 800 - limit}, statuses[2]
    writer.write(request("INVITE", uri=uri, from_user="bob", extra="Authorization: "
                         + authorization("bob", "bob-pw", nonce, uri) + "\r\n"))
    assert (await read_response(reader, framer)).status == 429
    writer.close()


async def test_locked_out_source_costs_no_directory_queries(stack: Stack) -> None:
    """Once a source is locked out, its guesses are refused (429) before the directory is
    asked for anything: spraying user names must not buy a database query per guess.
    (An in-process focus on the module's deployment, to count the directory's queries.)"""
    from focus.server import FocusServer
    from focus.wcs_client import WcsClient
    from webconf.deploy import keys
    from webconf.deploy.config import load_config

    cfg = load_config(stack.cfg.base_dir)
    cfg.focus.sip_port = 0
    directory = await Directory.for_deployment(cfg)
    wcs = WcsClient(cfg)
    server = FocusServer(cfg, directory, wcs, keys.load_nonce_secret(cfg))
    await server.start()
    try:
        uri = conference_uri("SPRAY")
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            HOST, server.sip_port, ssl=tls.client_context(cfg), server_hostname=SNI,
            local_addr=("127.0.0.9", 0)), 10)
        framer = SipFramer()
        writer.write(request("INVITE", uri=uri))
        nonce = nonce_of(await read_response(reader, framer))
        queries = directory.queries
        sprays = 300
        writer.write(b"".join(request("INVITE", uri=uri, from_user=f"sprayed{n}", extra=(
            f"Authorization: {authorization(f'sprayed{n}', 'pw', nonce, uri)}\r\n"))
            for n in range(sprays)))
        statuses = Counter([(await read_response(reader, framer)).status
                            for _ in range(sprays)])
        writer.close()
        limit = cfg.focus.auth_failures_per_source
        assert statuses == {401: limit, 429: sprays - limit}, statuses
        assert directory.queries - queries <= limit, directory.queries - queries
    finally:
        await server.stop()
        await wcs.close()
        await directory.close()


# -- plaintext and old TLS ----------------------------------------------------------------------
async def test_plaintext_on_the_tls_port_is_refused(stack: Stack) -> None:
    """Plain SIP, HTTP, a CRLF ping or binary junk on the TLS port: no SIP answer (a TLS
    alert at most), the connection is closed, and the focus carries on."""
    payloads = [request("OPTIONS"), b"GET / HTTP/1.1\r\nHost: contoso.example\r\n\r\n",
                b"\r\n\r\n", bytes(range(256)) * 8]

    async def one(payload: bytes) -> tuple[float, bytes]:
        reader, writer = await asyncio.open_connection(HOST, stack.port)
        writer.write(payload)
        try:
            return await closed_after(reader, HEADER_TIMEOUT + SLACK)
        finally:
            writer.close()

    for payload, (elapsed, data) in zip(payloads, await asyncio.gather(
            *(one(p) for p in payloads)), strict=True):
        assert b"SIP/2.0" not in data, payload[:20]
        assert data[:1] in (b"", b"\x15"), (payload[:20], data[:20])  # nothing, or an alert
        assert elapsed < HEADER_TIMEOUT + SLACK, (payload[:20], elapsed)


def old_tls_client(version: ssl.TLSVersion) -> ssl.SSLContext | None:
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = version
        ctx.maximum_version = version
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        return None
    return ctx


async def old_tls_works_locally(cfg: Config, client: ssl.SSLContext,
                                version: ssl.TLSVersion) -> bool:
    """Whether this OpenSSL can speak `version` at all (against a server allowing it)."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        server_ctx.minimum_version = version
        server_ctx.maximum_version = version
        server_ctx.set_ciphers("ALL:@SECLEVEL=0")
        server_ctx.load_cert_chain(cfg.certs_dir / "focus.pem", cfg.certs_dir / "focus.key")
    except (ValueError, ssl.SSLError):
        return False
    server = await asyncio.start_server(lambda r, w: w.close(), HOST, 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port, ssl=client), 5)
        writer.close()
        return True
    except (ssl.SSLError, ConnectionError, TimeoutError):
        return False
    finally:
        server.close()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1],
                         ids=["TLSv1.0", "TLSv1.1"])
async def test_old_tls_versions_are_refused(stack: Stack, version: ssl.TLSVersion) -> None:
    client = old_tls_client(version)
    if client is None or not await old_tls_works_locally(stack.cfg, client, version):
        pytest.skip(f"this OpenSSL cannot build a {version.name} client")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _, writer = await asyncio.wait_for(asyncio.open_connection(
            HOST, stack.port, ssl=client), 5)
        writer.close()


# -- transactions and dialogs that do not exist ------------------------------------------------
async def test_bye_and_cancel_for_unknown_dialogs_get_481(stack: Stack) -> None:
    cfg = stack.cfg
    reader, writer = await raw_open(cfg)
    framer = SipFramer()
    uri = conference_uri("GHOST")
    cases = [
        request("BYE", uri=uri, to_tag="nosuchdialog"),  # unknown dialog
        request("BYE", uri=uri),  # no To tag: cannot be in a dialog
        request("CANCEL", uri=uri),  # unknown transaction
        request("CANCEL", uri=uri, to_tag="x", branch="z9hG4bKnever"),
    ]
    for raw in cases:
        writer.write(raw)
        resp = await read_response(reader, framer)
        assert resp.status == 481, (raw, resp.status)
    # CANCEL of an INVITE that is already answered (401): no pending transaction
    branch = "z9hG4bK" + secrets.token_hex(6)
    writer.write(request("INVITE", uri=uri, branch=branch, call_id="c-answered"))
    assert (await read_response(reader, framer)).status == 401
    writer.write(request("CANCEL", uri=uri, branch=branch, call_id="c-answered"))
    assert (await read_response(reader, framer)).status == 481
    writer.close()
    # a real dialog's second BYE: the dialog is gone
    conn = await open_conn(cfg)
    try:
        dialog = ConferenceDialog(conn, conference_uri("GHOST2"), "alice@contoso.example",
                                  USERS["alice@contoso.example"])
        await dialog.join()
        assert await dialog.leave() == 200
        conn.register(dialog.call_id)
        assert await dialog.leave() == 481
    finally:
        await conn.close()


# -- Content-Length abuse -----------------------------------------------------------------------
@pytest.mark.parametrize("value,status", [
    ("99999999999", 400), ("2147483648", 400), ("1" + "0" * 40, 400), ("-5", 400),
    ("abc", 400), ("", 400), ("0x10", 400), ("1.5", 400), ("+5", 400), ("5 5", 400),
    ("\u0665", 400),  # an Arabic-Indic five: isdigit() but not ASCII
    ("0\r\nContent-Length: 7", 400),  # conflicting duplicates
    ("70000", 513), ("2147483647", 513),  # representable, but over the 64 KiB message cap
    (None, 400),  # missing: streams require it (RFC 3261 §18.3)
])
async def test_bad_content_length_is_answered_and_closed(stack: Stack, value: str | None,
                                                         status: int) -> None:
    raw = request("OPTIONS", content_length=value if value is not None else "0")
    if value is None:
        raw = raw.replace(b"Content-Length: 0\r\n", b"")
    reader, writer = await raw_open(stack.cfg)
    writer.write(raw)
    framer = SipFramer()
    resp = await read_response(reader, framer)
    assert resp.status == status
    elapsed, rest = await closed_after(reader, 5)  # the message boundary is lost: close
    writer.close()
    assert elapsed < 1.0 and rest == b""


async def test_body_that_never_arrives_is_closed_after_header_timeout(stack: Stack) -> None:
    """A Content-Length larger than the body sent: the focus waits for the rest only until
    the header timeout (counted from the message's first byte), then closes unanswered."""
    async def one(declared: int, sent: int) -> float:
        reader, writer = await raw_open(stack.cfg, "127.0.0.6")
        started = time.monotonic()
        writer.write(request("OPTIONS", body=b"x" * sent, content_length=str(declared)))
        try:
            _, data = await closed_after(reader, HEADER_TIMEOUT + SLACK + 2)
        finally:
            writer.close()
        assert b"SIP/2.0" not in data
        return time.monotonic() - started

    durations = await asyncio.gather(one(500, 10), one(60000, 0), one(1, 0))
    for elapsed in durations:
        assert HEADER_TIMEOUT - 0.1 <= elapsed <= HEADER_TIMEOUT + SLACK, durations


def test_huge_header_counts(stack: Stack) -> None:
    """3,000 headers within 64 KiB: 400 and the connection goes on; 9,000 (over 64 KiB):
    513 and close (the message boundary is lost); one 70 KB header line: 513 and close."""
    with RawTls(stack) as conn:
        conn.send(request("OPTIONS", extra="X-H: v\r\n" * 3000))
        [resp] = conn.responses(1)
        assert (resp.status, resp.reason) == (400, "Too Many Headers")
        conn.send(request("OPTIONS"))
        assert [r.status for r in conn.responses(1)] == [200]
    for extra in ("X-H: v\r\n" * 9000, "X-Long: " + "a" * 70_000 + "\r\n"):
        with RawTls(stack) as conn:
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                conn.send(request("OPTIONS", extra=extra))
            responses, closed = conn.until_closed(SLACK + 1)
            assert [r.status for r in responses] == [513] and closed


# -- other hostile patterns ---------------------------------------------------------------------
@pytest.mark.parametrize("field_name", ["username", "realm"])
@pytest.mark.parametrize("bad", [b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\x00", b"\x80abc"],
                         ids=["ff", "truncated", "surrogate", "nul", "continuation"])
def test_bad_utf8_and_nul_in_credentials_are_answered(stack: Stack, field_name: str,
                                                     bad: bytes) -> None:
    """Digest parameters that are not UTF-8 cannot name a user: 401 (or 429), not a crash."""
    uri = conference_uri("UTF8")
    auth = authorization("bob", "bob-pw", FAKE_NONCE, uri).encode()
    good = {"username": b'username="bob"', "realm": b'realm="contoso.example"'}[field_name]
    auth = auth.replace(good, good[:-1] + bad + b'"')
    raw = request("INVITE", uri=uri, extra="Authorization: X\r\n").replace(
        b"Authorization: X", b"Authorization: " + auth)
    source = f"127.0.1.{1 + secrets.randbelow(250)}"  # failures throttle the source
    with RawTls(stack, source) as conn:
        conn.send(raw)
        [resp] = conn.responses(1)
        assert resp.status in (401, 429), resp.status
        conn.send(request("OPTIONS"))
        assert [r.status for r in conn.responses(1)] == [200]


def test_client_that_never_reads_is_disconnected(stack: Stack) -> None:
    """A peer that pipelines requests but never reads the answers must not hold a
    connection (and its buffers) forever: the focus gives up on it."""
    conn = RawTls(stack, "127.0.0.8", rcvbuf=4096)
    batch = b"".join(request("OPTIONS", call_id=f"nr-{n}") for n in range(200))
    sent = 0
    since = stack.log_size()
    try:
        conn.sock.settimeout(HEADER_TIMEOUT + SLACK + 3)
        deadline = time.monotonic() + 60
        last_ok = time.monotonic()
        with contextlib.suppress(TimeoutError, ConnectionError, ssl.SSLError):
            while time.monotonic() < deadline:  # until the focus stops reading us
                conn.sock.sendall(batch)
                sent += 200
                last_ok = time.monotonic()
        assert sent < 2_000_000, "the focus kept reading a peer that never reads"
        responses, closed = conn.until_closed(HEADER_TIMEOUT + SLACK)
        print(f"never-reading peer: {sent} requests sent, {len(responses)} answered, "
              f"cut off {time.monotonic() - last_ok:.1f}s after its last send went through")
        assert closed, "the focus still holds a connection whose peer never reads"
        assert len(responses) < sent
    finally:
        conn.close()
    assert any(e.get("reason") == "write timeout" for e in stack.log_events(since))


def test_focus_still_serves_joins_after_everything(stack: Stack) -> None:
    """After every attack in this module: the same focus process, and users still join
    (an organizer, then an attendee of the same conference)."""
    assert stack.proc.proc is not None and stack.proc.proc.poll() is None

    async def both() -> None:
        conns = [await open_conn(stack.cfg), await open_conn(stack.cfg)]
        try:
            alice = ConferenceDialog(conns[0], conference_uri("LAST"), "alice@contoso.example",
                                     USERS["alice@contoso.example"])
            bob = ConferenceDialog(conns[1], conference_uri("LAST"), "bob@contoso.example",
                                   USERS["bob@contoso.example"])
            started = time.monotonic()
            assert (await alice.join()).role == "organizer"
            assert (await bob.join()).role == "attendee"
            assert time.monotonic() - started < 2.0
            assert await bob.leave() == 200 and await alice.leave() == 200
        finally:
            for conn in conns:
                await conn.close()

    asyncio.run(both())
    assert not crashes(stack.log_events())
