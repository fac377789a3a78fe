"""Per-join CPU of the focus's sans-IO core (`focus.core.FocusCore`), split by phase.

Not a test and not part of `make bench`: a profiling aid for the lean SIP path (issue 11).
It drives one `FocusCore` the way `focus/server.py` does (`requests_per_turn=1`, one
`receive_data` per message, the directory's and the WCS's answers fed back at once) with the
bytes `bench/sip_gen.py` sends, for thousands of joins:

    INVITE (no credentials) -> 401 ; ACK ; INVITE + Digest -> LookupCredentials ;
    credentials_found -> 100 + Admit ; admitted -> 200 + join body ; ACK ; BYE -> 200 + Revoke

The agent's side (building requests, answering the 401) is done outside the timed
sections. Every figure is a median over the joins (`time.perf_counter_ns`; `--clock cpu` for
`time.thread_time_ns`, a system call of ~1 us): the machine is shared, and a median
ignores the calls that another process preempted. Two runs per case:
- plain: the clock read around each core call only, so the steps and "total" (the sum
  of the steps' medians) are unperturbed;
- instrumented: the core's phases (parse, validate, digest verify, nonce mint and check,
  building responses, dialog bookkeeping) wrapped with exclusive timers (a phase called
  inside another is not counted twice); "rest" is the instrumented total minus the
  phases, i.e. dispatch and everything not named. Each wrapped call adds about 1 us of
  timer overhead (the difference between the two totals), so compare phases with phases
  (before/after), not with the plain total.
`--cprofile` adds the top functions by own time.

Usage: .venv/bin/python -m bench.profile_focus_core [--joins 5000] [--mode reused|per-join]
       [--algorithm SHA-256|MD5|both] [--clock wall|cpu] [--cprofile] [--json]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import inspect
import io
import json
import pstats
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from focus import core as core_mod
from focus.core import FocusCore, FocusSettings
from focus.events import Admit, Conn, LookupCredentials, Output, Send
from webconf.protocol import Admission
from webconf.sip import digest, digest_client, framing, sdp

DOMAIN = "contoso.example"
CONF_URI = f"sip:alice@{DOMAIN};gruu;opaque=app:conf:focus:id:K7Q2"
PASSWORD = "pw-bench"
USERS = [f"user{i}" for i in range(50)]
NOW = 1_700_000_000.0
COOKIE = "eyJhbGciOiJFZERTQSJ9." + "x" * 220 + "." + "y" * 86  # a JWT's size
CLOCK = time.perf_counter_ns
STEPS = ("connect", "invite_401", "ack_401", "invite_auth", "credentials", "admitted",
         "ack", "bye", "disconnect")

# -- the agent (untimed) ------------------------------------------------------------------


class Agent:
    """Builds the requests of `bench/sip_gen.py` for one connection."""

    def __init__(self, local: str = "127.0.0.1:40000", ua: str = "webconf-bench/1") -> None:
        self.local = local.encode()
        self.via = b"Via: SIP/2.0/TLS " + self.local
        self.ua = b"User-Agent: " + ua.encode() + b"\r\n"
        self.ha1: dict[tuple[str, str], str] = {}
        self.n = 0

    def invite(self, call: dict[str, Any], auth: bytes) -> bytes:
        call["n"] += 1
        call["branch"] = b"z9hG4bK%s.%d" % (call["id"], call["n"])
        user = call["user"].encode()
        return b"".join((
            b"INVITE ", CONF_URI.encode(), b" SIP/2.0\r\n", self.via, b";branch=",
            call["branch"], b";rport\r\nMax-Forwards: 70\r\nFrom: <sip:", user, b"@",
            DOMAIN.encode(), b">;tag=", call["tag"], b"\r\nTo: <", CONF_URI.encode(),
            b">\r\nCall-ID: ", call["id"], b"\r\nCSeq: %d INVITE\r\nContact: <sip:"
            % call["cseq"], user, b"@", self.local, b";transport=tls>\r\n", auth,
            b"Accept: application/vnd.webconf.join+json\r\n", self.ua,
            b"Content-Length: 0\r\n\r\n"))

    def in_dialog(self, call: dict[str, Any], method: bytes, ruri: bytes, to: bytes,
                  branch: bytes) -> bytes:
        user = call["user"].encode()
        return b"".join((
            method, b" ", ruri, b" SIP/2.0\r\n", self.via, b";branch=", branch,
            b";rport\r\nMax-Forwards: 70\r\nFrom: <sip:", user, b"@", DOMAIN.encode(),
            b">;tag=", call["tag"], b"\r\nTo: ", to, b"\r\nCall-ID: ", call["id"],
            b"\r\nCSeq: %d " % call["cseq"], method, b"\r\n", self.ua,
            b"Content-Length: 0\r\n\r\n"))

    def authorization(self, call: dict[str, Any], response: bytes, algorithm: str) -> bytes:
        values = [line.split(b":", 1)[1].strip().decode() for line in response.split(b"\r\n")
                  if line.lower().startswith(b"www-authenticate:")]
        challenge = digest_client.choose_challenge(digest_client.parse_challenges(values),
                                                   (algorithm,))
        assert challenge is not None, response
        key = (call["user"], challenge.algorithm)
        if key not in self.ha1:
            self.ha1[key] = digest.ha1(call["user"], challenge.realm, PASSWORD,
                                       challenge.algorithm)
        self.n += 1
        value = digest_client.authorization(
            challenge, username=call["user"], method="INVITE", uri=CONF_URI,
            ha1_hex=self.ha1[key], cnonce=f"{self.n:x}")
        return b"Authorization: " + value.encode() + b"\r\n"


def _field(response: bytes, name: bytes) -> bytes:
    for line in response.split(b"\r\n"):
        if line.lower().startswith(name + b":"):
            return line.split(b":", 1)[1].strip()
    raise AssertionError(f"no {name!r} in {response!r}")


def _sends(outputs: list[Output]) -> list[bytes]:
    return [o.data for o in outputs if isinstance(o, Send)]


# -- driving the core ---------------------------------------------------------------------


def make_core() -> FocusCore:
    """The core as `focus/server.py` builds it (defaults of the config)."""
    return FocusCore(
        FocusSettings(contact_host="127.0.0.1", contact_port=5061, tcp_contact_port=5060,
                      answer_sdp=lambda offer, **kw: sdp.answer_offer(
                          offer, address="127.0.0.1", **kw),
                      make_multipart=sdp.multipart_mixed, accepts=sdp.accepts,
                      requests_per_turn=1),
        digest.NonceService(b"s" * 32, lifetime=300.0),
        digest.FailureThrottle(max_failures=5, max_source_failures=50))


class Runner:
    """Runs joins against one core and sums the time of each step (ns)."""

    def __init__(self, mode: str, algorithm: str) -> None:
        self.core = make_core()
        self.mode = mode
        self.algorithms = ["SHA-256", "MD5"] if algorithm == "both" else [algorithm]
        self.agent = Agent()
        self.samples: dict[str, list[int]] = defaultdict(list)
        """Nanoseconds of each call of each step, in join order."""
        self.joins = 0
        self.conn_id = 0
        self.conn: Conn | None = None
        self.credentials = {
            u: {alg: digest.ha1(u, DOMAIN, PASSWORD, alg) for alg in ("SHA-256", "MD5")}
            for u in USERS}

    def _timed(self, step: str, call: Callable[[], list[Output]]) -> list[Output]:
        """One input, then (as the edge does) the calls that drain what it buffered."""
        core, cid = self.core, self.conn.id if self.conn is not None else 0
        t0 = CLOCK()
        out = call()
        while core.pending(cid):
            out += core.receive_data(cid, b"", NOW)
        self.samples[step].append(CLOCK() - t0)
        return out

    def _new_conn(self) -> None:
        self.conn_id += 1
        conn = Conn(self.conn_id, "127.0.0.1", 40000 + self.conn_id % 20000, "TLS",
                    tls_version="TLSv1.3")
        t0 = CLOCK()
        self.core.connection_made(conn)
        self.samples["connect"].append(CLOCK() - t0)
        self.conn = conn

    def join(self, now: float) -> None:
        core = self.core
        if self.conn is None or self.mode == "per-join":
            self._new_conn()
        assert self.conn is not None
        cid = self.conn.id
        n = self.joins
        self.joins += 1
        algorithm = self.algorithms[n % len(self.algorithms)]
        call: dict[str, Any] = {"id": b"g-%d" % n, "tag": b"%x" % n,
                                "user": USERS[n % len(USERS)], "n": 0, "cseq": 1, "branch": b""}
        agent = self.agent

        data = agent.invite(call, b"")
        out = self._timed("invite_401", lambda: core.receive_data(cid, data, now))
        (r401,) = _sends(out)
        assert r401.startswith(b"SIP/2.0 401 "), r401
        ack = agent.in_dialog(call, b"ACK", CONF_URI.encode(), _field(r401, b"to"),
                              call["branch"])
        self._timed("ack_401", lambda: core.receive_data(cid, ack, now))

        call["cseq"] += 1
        data = agent.invite(call, agent.authorization(call, r401, algorithm))
        out = self._timed("invite_auth", lambda: core.receive_data(cid, data, now))
        (lookup,) = [o for o in out if isinstance(o, LookupCredentials)]
        found = {a: self.credentials[lookup.username][a] for a in lookup.algorithms}
        out = self._timed("credentials",
                          lambda: core.credentials_found(lookup.ticket, found, now))
        (admit,) = [o for o in out if isinstance(o, Admit)]
        assert _sends(out)[0].startswith(b"SIP/2.0 100 "), out
        admission = Admission("P" + "K7Q2" * 4, f"p{n}", "attendee", COOKIE,
                              "2030-01-01T00:00:00Z", "https://127.0.0.1:8443")
        out = self._timed("admitted", lambda: core.admitted(admit.ticket, admission, now))
        (r200,) = _sends(out)
        assert r200.startswith(b"SIP/2.0 200 "), r200

        contact = _field(r200, b"contact")
        target = contact[contact.index(b"<") + 1:contact.index(b">")]
        to = _field(r200, b"to")
        call["n"] += 1
        ack = agent.in_dialog(call, b"ACK", target, to, b"z9hG4bK%s.%d" % (call["id"], call["n"]))
        self._timed("ack", lambda: core.receive_data(cid, ack, now))
        call["cseq"] += 1
        call["n"] += 1
        bye = agent.in_dialog(call, b"BYE", target, to, b"z9hG4bK%s.%d" % (call["id"], call["n"]))
        out = self._timed("bye", lambda: core.receive_data(cid, bye, now))
        (r_bye,) = _sends(out)
        assert r_bye.startswith(b"SIP/2.0 200 "), r_bye
        if self.mode == "per-join":
            self._timed("disconnect", lambda: core.connection_lost(cid, now))
            self.conn = None


# -- phase instrumentation ----------------------------------------------------------------

PHASES: list[tuple[str, Any, str]] = [
    # (phase, owner object, attribute): missing attributes are skipped, so the script runs
    # against older and newer versions of the core alike.
    ("parse", framing.SipFramer, "feed"),
    ("parse", framing.SipFramer, "next_event"),
    ("parse", framing, "parse_head"),
    ("parse", framing, "parse_request_head"),
    ("parse", framing, "content_length"),
    ("validate", core_mod, "validate_request"),
    ("validate", core_mod, "bracket_addr_spec"),
    ("validate", core_mod, "max_forwards"),
    ("digest verify", digest, "verify"),
    ("digest verify", core_mod, "parse_auth_params"),
    ("nonce mint", digest.NonceService, "make"),
    ("nonce check", digest.NonceService, "check"),
    ("build responses", core_mod, "make_response"),
    ("build responses", core_mod, "serialize"),
    ("build responses", core_mod, "response_bytes"),
    ("build responses", digest, "build_challenges"),
    ("build responses", Admission, "to_bytes"),
    ("build responses", FocusCore, "_contact"),
    ("dialog bookkeeping", FocusCore, "_dialog_for"),
    ("dialog bookkeeping", FocusCore, "_terminate"),
    ("dialog bookkeeping", FocusCore, "_remember"),
    ("dialog bookkeeping", FocusCore, "_guard"),
    ("dialog bookkeeping", core_mod, "Dialog"),
    ("dialog bookkeeping", core_mod, "AwaitingCredentials"),
    ("dialog bookkeeping", core_mod, "AwaitingAdmission"),
    ("dialog bookkeeping", digest.FailureThrottle, "check"),
    ("dialog bookkeeping", digest.FailureThrottle, "record_success"),
    ("dialog bookkeeping", FocusCore, "connection_made"),
    ("dialog bookkeeping", FocusCore, "connection_lost"),
]


class PhaseTimer:
    """Exclusive time per phase: a stack of (phase, start, time spent in children)."""

    def __init__(self) -> None:
        self.totals: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list[Any]] = []
        self._undo: list[tuple[Any, str, Any]] = []
        self._last: dict[str, int] = {}
        self.per_join: dict[str, list[int]] = defaultdict(list)
        """Nanoseconds of each phase in each join."""

    def end_join(self) -> None:
        for phase in dict.fromkeys(p for p, _, _ in PHASES):
            value = self.totals[phase]
            self.per_join[phase].append(value - self._last.get(phase, 0))
            self._last[phase] = value

    def wrap(self, phase: str, func: Callable[..., Any]) -> Callable[..., Any]:
        stack, totals, calls, clock = self._stack, self.totals, self.calls, CLOCK

        def timed(*args: Any, **kwargs: Any) -> Any:
            frame = [0, 0]
            stack.append(frame)
            start = clock()
            try:
                return func(*args, **kwargs)
            finally:
                elapsed = clock() - start
                stack.pop()
                totals[phase] += elapsed - frame[1]
                calls[phase] += 1
                if stack:
                    stack[-1][1] += elapsed
        return timed

    def install(self) -> None:
        for phase, owner, name in PHASES:
            if name not in vars(owner) and not hasattr(owner, name):
                continue
            raw = inspect.getattr_static(owner, name)
            self._undo.append((owner, name, raw))
            if isinstance(raw, staticmethod):
                setattr(owner, name, staticmethod(self.wrap(phase, raw.__func__)))
            elif isinstance(raw, type):
                setattr(owner, name, self.wrap(phase, raw))
            else:
                setattr(owner, name, self.wrap(phase, raw))

    def uninstall(self) -> None:
        for owner, name, raw in reversed(self._undo):
            setattr(owner, name, raw)
        self._undo.clear()


# -- main ---------------------------------------------------------------------------------


def run(mode: str, algorithm: str, joins: int, *, instrument: bool = False,
        profile: cProfile.Profile | None = None) -> tuple[Runner, PhaseTimer | None]:
    runner = Runner(mode, algorithm)
    for i in range(min(500, joins)):  # warm-up: caches, allocator, branch predictors
        runner.join(NOW + i * 0.001)
    runner.samples.clear()
    timer = PhaseTimer() if instrument else None
    if timer is not None:
        timer.install()
    gc.collect()
    try:
        if profile is not None:
            profile.enable()
        for i in range(joins):
            runner.join(NOW + 1 + i * 0.001)
            if timer is not None:
                timer.end_join()
        if profile is not None:
            profile.disable()
    finally:
        if timer is not None:
            timer.uninstall()
    runner.joins = joins
    return runner, timer


def _per_join(samples: dict[str, list[int]], joins: int) -> list[int]:
    """Each join's total over the steps (one call of each step per join)."""
    return [sum(samples[s][i] for s in STEPS if s in samples) for i in range(joins)]


def _us(ns: float) -> float:
    return round(ns / 1000, 1)


def report(mode: str, algorithm: str, joins: int, cprofile: bool) -> dict[str, Any]:
    runner, _ = run(mode, algorithm, joins)
    steps = {s: statistics.median(runner.samples[s]) for s in STEPS if s in runner.samples}
    per_join = _per_join(runner.samples, joins)
    runner, timer = run(mode, algorithm, joins, instrument=True)
    assert timer is not None
    totals = _per_join(runner.samples, joins)
    names = list(dict.fromkeys(p for p, _, _ in PHASES))
    phases = {p: statistics.median(timer.per_join[p]) for p in names}
    phases["rest"] = statistics.median(
        [totals[i] - sum(timer.per_join[p][i] for p in names) for i in range(joins)])
    calls = {p: timer.calls[p] / joins for p in names}
    result: dict[str, Any] = {"mode": mode, "algorithm": algorithm, "joins": joins,
                              "python": sys.version.split()[0],
                              "us_per_join": _us(sum(steps.values())),
                              "us_per_join_mean": _us(sum(per_join) / joins),
                              "us_per_join_instrumented": _us(statistics.median(totals)),
                              "steps_us": {s: _us(v) for s, v in steps.items()},
                              "phases_us": {p: _us(v) for p, v in phases.items()},
                              "phase_calls_per_join": {p: round(c, 1) for p, c in calls.items()}}
    if cprofile:
        prof = cProfile.Profile()
        run(mode, algorithm, joins, profile=prof)
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(30)
        result["cprofile"] = text.getvalue()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--joins", type=int, default=5000)
    parser.add_argument("--mode", choices=("reused", "per-join", "both"), default="both")
    parser.add_argument("--algorithm", choices=("SHA-256", "MD5", "both"), default="both")
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="wall")
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.thread_time_ns if args.clock == "cpu" else time.perf_counter_ns
    modes = ("reused", "per-join") if args.mode == "both" else (args.mode,)
    algorithms = ("SHA-256", "MD5") if args.algorithm == "both" else (args.algorithm,)
    results = [report(m, a, args.joins, args.cprofile)
               for m in modes for a in algorithms]
    if args.json:
        print(json.dumps(results, indent=1))
        return
    for r in results:
        print(f"\n== {r['mode']} connection, {r['algorithm']}: "
              f"{r['us_per_join']} us of core CPU per join (medians of {r['joins']} joins; "
              f"mean {r['us_per_join_mean']}; {r['us_per_join_instrumented']} instrumented)")
        print("  steps:  " + "  ".join(f"{k}={v}" for k, v in r["steps_us"].items() if v))
        for phase, value in r["phases_us"].items():
            calls = r["phase_calls_per_join"].get(phase)
            print(f"  {phase:20s} {value:7.1f} us" + (f"  ({calls} calls)" if calls else ""))
        if "cprofile" in r:
            print(r["cprofile"])


if __name__ == "__main__":
    main()
