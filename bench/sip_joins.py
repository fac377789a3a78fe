"""SIP joins per second and server CPU per join: our focus against Kamailio, in one run.

    python -m bench --only sip            # the rows, with the other benchmarks' runner
    python -m bench.sip_joins [--smoke] [--rounds 3] [--seconds 10] [--json]

One join, as the same load generator (bench/sip_gen.py) drives every server:

- ours:     INVITE -> 401 (Digest challenge, SHA-256, qop=auth) -> ACK -> INVITE with Digest
            -> 100 -> 200 (a cookie minted at the WCS, the admission committed) -> ACK -> BYE
            -> 200 (the cookie revoked at the WCS, durably, before the 200);
- Kamailio with Digest: INVITE -> 401 (auth.so `www_challenge`, qop=auth, SHA-256) -> ACK
            -> INVITE with Digest (`pv_www_authenticate`, one fixed password) -> 200 -> ACK
            -> BYE -> 200: the peer doing the same Digest dance, statelessly, without a
            database;
- Kamailio stateless 200: INVITE -> 200 -> ACK -> BYE -> 200 (`sl_send_reply`, no auth):
            the least a SIP server can do for a join.

Kamailio is Debian's `kamailio` + `kamailio-tls-modules` over TLS (bench/kamailio/*.tmpl).
Ours runs twice in the same run: on the embedded SQLite default (`webconf serve`), and as a
node on a fresh PostgreSQL database made for this run and dropped after it (bench/cluster.py).

Rows (medians over rounds; ratio = ours / Kamailio; servers alternate within each round):
1. `joins/s, one TLS connection (N in flight), <backend> vs Kamailio <peer>`: every join on
   one reused TLS connection, N dialogs in flight. Targets: >= 0.25x the stateless 200,
   >= 0.5x Kamailio with Digest.
2. `joins/s, TLS connection per join (N in flight), <backend> vs Kamailio <peer>`: N
   concurrent clients, each opening a new TLS connection (full handshake, no resumption)
   per join. Target >= 1.0x. Kamailio 5.6 crashes with tcp_children > 1 under
   connection-per-call load, so it runs with tcp_children=1 here (and in the SIPp per-call
   row); the one-connection rows use 2.
3. `server CPU per join, one TLS connection (N in flight), <backend>`: the CPU column of
   row 1 as a row of its own, for its goal (<= 0.6 ms); baseline Kamailio with Digest.
4. `failed joins, N in flight on one TLS connection, <backend>`: a burst of N joins sent at
   once on one connection, each replaced as soon as it ends, for a few seconds; counts
   every join that did not end in 200 (503s and any other non-200 final answer, timeouts,
   lost connections), warm-up and drain included. Baseline: Kamailio with Digest. Goal 0.
5. `joins/s, SIPp TCP one connection` and `joins/s, SIPp TCP connection per call`: Debian's
   SIPp (no TLS) over plain TCP (the SQLite deployment's `focus.tcp_port` listener), with
   the Digest scenario bench/sipp/join_auth.xml, closed loop at N calls in flight (-l N).
   Informative.

Every row carries the server CPU per join beside the rate ("server CPU per op"): utime +
stime from /proc/<pid>/stat of the server processes, read at both ends of the measured
window, over the joins completed in it. Ours = `webconf serve` and every process under it
(focus, WCS) and, on PostgreSQL, the backends serving our database (pg_stat_activity);
PostgreSQL's shared background processes (WAL writer, checkpointer) are not attributable
and not counted. Kamailio = its main process and its children. The breakdown per process
group, and the generator's own CPU, are in each row's detail.

Modules: `bench/sip_gen.py` the asyncio load generator (rows 1-4), `bench/sip_kamailio.py`
the Kamailio baselines, `bench/sip_sipp.py` the SIPp runner (row 5); this module sizes the
rounds, alternates the servers and makes the rows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clients.sip import ConferenceDialog, SipConnection
from webconf.deploy import tls
from webconf.protocol import conference_uri

from .cluster import cluster
from .common import (
    Stack,
    children,
    cmdline,
    machine,
    median,
    pg_backend_pids,
    pg_missing,
    require,
    stack,
)
from .report import Row
from .sip_gen import Measurement, gen_process, generate
from .sip_kamailio import Kamailio, kamailio
from .sip_sipp import SippRun, sipp

DOMAIN = "contoso.example"
CONF_ID = "BENCH"
ORGANIZER = "org"
CONF_URI = conference_uri(f"{ORGANIZER}@{DOMAIN}", CONF_ID)
PASSWORD = "bench-pw"
N_USERS = 64
SIPP_USER = "sipp0"

RETIRED_METRICS = ("joins/s, one TLS connection", "joins/s, TLS connection per join")
"""The rows' earlier names (before the backends and the Digest peer were in them): a
partial README update (`--only sip`) drops their lines."""

BACKEND_LABEL = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
PEER_LABEL = {"stateless": "stateless 200", "digest": "with Digest"}
PEER_TARGET = {("reused", "stateless"): 0.25, ("reused", "digest"): 0.5,
               ("per-join", "stateless"): 1.0, ("per-join", "digest"): 1.0}
"""Issue 11's goals: ours / Kamailio, per connection mode and Kamailio configuration."""
KAM_CHILDREN = {"reused": 2, "per-join": 1}
CPU_GOAL_MS = 0.6
"""Issue 11's goal for our servers' CPU per join."""
Pids = Callable[[], dict[str, list[int]]]


def _organizer_join(cfg: Any) -> None:
    """The organizer joins (and leaves) once, so the conference exists for attendees."""
    async def go() -> None:
        conn = await SipConnection.open("127.0.0.1", cfg.focus.sip_port,
                                        ssl_context=tls.client_context(cfg),
                                        server_hostname=DOMAIN)
        try:
            dialog = ConferenceDialog(conn, CONF_URI, f"{ORGANIZER}@{DOMAIN}", PASSWORD)
            await dialog.join()
            await dialog.leave()
        finally:
            await conn.close()

    asyncio.run(go())


def serve_groups(serve_pid: int) -> dict[str, list[int]]:
    """Every process of one `webconf serve` by kind: focus, wcs, and serve (the supervisor
    and anything else under it), found by walking its process tree now."""
    out: dict[str, list[int]] = {"focus": [], "wcs": [], "serve": []}
    todo = [serve_pid]
    while todo:
        pid = todo.pop()
        line = cmdline(pid)
        kind = "wcs" if "-m conferencing" in line else "focus" if "-m focus" in line \
            else "serve"
        out[kind].append(pid)
        todo += children(pid)
    return out


@dataclass
class Target:
    """One server the generator drives: where it listens, whom to trust, what to meter."""

    name: str
    port: int
    ca_file: str
    pids: Pids


@dataclass
class Settings:
    rounds: int = 3
    seconds: float = 10.0
    warmup: float = 1.5
    reused_concurrency: int = 32
    """Dialogs in flight on the one connection."""
    per_join_concurrency: int = 8
    """Concurrent clients, each on a new TLS connection per join."""
    reused_processes: int = 1
    per_join_processes: int = 2
    """Generator processes for the per-join rows: the client side of a full TLS handshake
    costs about as much CPU as the server side."""
    bursts: tuple[int, ...] = (64, 256)
    """Joins in flight on one connection for the failed-joins rows."""
    burst_seconds: float = 5.0
    burst_warmup: float = 0.5
    backends: tuple[str, ...] = ("sqlite", "postgresql")
    sipp_concurrency: int = 32
    sipp_seconds: float = 8.0
    sipp: bool = True


SMOKE = Settings(rounds=1, seconds=1.5, warmup=0.5, burst_seconds=1.0, burst_warmup=0.3,
                 sipp_seconds=1.5)


@dataclass
class Runs:
    """Every measurement of one run, keyed by (who, mode) and (who, burst in flight)."""

    joins: dict[tuple[str, str], list[Measurement]] = field(default_factory=dict)
    bursts: dict[tuple[str, int], Measurement] = field(default_factory=dict)
    sipp: dict[tuple[str, str], list[SippRun]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    database: str = ""


def _gen(t: Target, *, mode: str, concurrency: int, processes: int, warmup: float,
         seconds: float, tag: str) -> Measurement:
    return generate(host="127.0.0.1", port=t.port, tls=True, ca_file=t.ca_file,
                    server_hostname=DOMAIN, mode=mode, concurrency=concurrency,
                    processes=processes, users=[f"u{i}" for i in range(N_USERS)],
                    password=PASSWORD, domain=DOMAIN, conference_uri=CONF_URI, warmup=warmup,
                    duration=seconds, server_pids=t.pids, tag=tag)


@dataclass
class Peer:
    """One running Kamailio baseline and how the generator reaches it."""

    kam: Kamailio
    target: Target


def _kam_pids(kam: Kamailio) -> Pids:
    return lambda: {"kamailio": kam.pids()}


def _checked(m: Measurement, peer: Peer | None, runs: Runs) -> Measurement:
    if peer is not None and not peer.kam.alive():
        m.errors["kamailio crashed"] = 1
        runs.notes.append(f"kamailio died: {peer.kam.log_tail()[-300:]}")
    return m


def _measure(s: Settings, ours: dict[str, Target], peers: dict[tuple[str, str], Peer],
             runs: Runs) -> None:
    """Rows 1-4: every server, each round in alternating order; then the bursts."""
    for rnd in range(s.rounds):
        for mode in ("reused", "per-join"):
            reused = mode == "reused"
            who = [*ours, *(f"kamailio-{p}" for p in PEER_LABEL if (p, mode) in peers)]
            if rnd % 2:
                who.reverse()  # alternate who goes first against load drift
            for name in who:
                peer = peers.get((name.removeprefix("kamailio-"), mode))
                target = peer.target if peer is not None else ours[name]
                m = _gen(target, mode=mode, tag=f"{name[0]}{name[-1]}{rnd}{mode[0]}",
                         concurrency=s.reused_concurrency if reused else
                         s.per_join_concurrency,
                         processes=s.reused_processes if reused else s.per_join_processes,
                         warmup=s.warmup, seconds=s.seconds)
                runs.joins.setdefault((name, mode), []).append(_checked(m, peer, runs))
    digest = peers.get(("digest", "reused"))
    for n in s.bursts:
        for name in [*ours, *(["kamailio-digest"] if digest else [])]:
            peer = digest if name == "kamailio-digest" else None
            target = peer.target if peer is not None else ours[name]
            runs.bursts[(name, n)] = _checked(_gen(
                target, mode="reused", concurrency=n, processes=1, warmup=s.burst_warmup,
                seconds=s.burst_seconds, tag=f"b{name[0]}{name[-1]}{n}"), peer, runs)


def _measure_sipp(s: Settings, sq: Stack, peers: dict[tuple[str, str], Peer],
                  runs: Runs) -> None:
    """Row 5: SIPp over TCP against the SQLite deployment and Kamailio stateless 200."""
    guess = {"ours": 150.0, "kamailio": 2000.0}
    for _ in range(s.rounds):
        for transport in ("t1", "tn"):
            for who in ("ours", "kamailio"):
                pids: Pids
                if who == "ours":
                    port, pids = sq.cfg.focus.tcp_port, lambda: serve_groups(sq.serve.pid)
                else:
                    peer = peers.get(("stateless", "reused" if transport == "t1"
                                      else "per-join"))
                    if peer is None:
                        continue
                    port, pids = peer.kam.tcp_port, peer.target.pids
                bucket = runs.sipp.setdefault((who, transport), [])
                prior = [r.rate for r in bucket if r.rate > 0]
                rate = median(prior) if prior else guess[who]
                bucket.append(sipp(
                    port=port, transport=transport, calls=max(50, int(rate * s.sipp_seconds)),
                    concurrency=s.sipp_concurrency, server_pids=pids, user=SIPP_USER,
                    password=PASSWORD, domain=DOMAIN, conference_id=CONF_ID))


def measure(s: Settings) -> Runs:
    """Start every server (ours on SQLite and on a fresh PostgreSQL database, Kamailio in
    four configurations), run every measurement, stop them all. The SQLite deployment
    always runs: its certificates serve Kamailio, and SIPp drives it."""
    runs = Runs()
    missing = require("kamailio", "sipp")
    accounts = [(f"{u}@{DOMAIN}", PASSWORD)
                for u in [*(f"u{i}" for i in range(N_USERS)), ORGANIZER, SIPP_USER]]
    env = {"WEBCONF_FOCUS_MD5_ONLY_USER_AGENTS": "baresip,sipp"}
    with contextlib.ExitStack() as es:
        sq = es.enter_context(stack(users=accounts, tcp_sip=True, env=env))
        _organizer_join(sq.cfg)
        ca_file = str(sq.cfg.certs_dir / "ca.pem")
        ours: dict[str, Target] = {}
        if "sqlite" in s.backends:
            ours["sqlite"] = Target("sqlite", sq.cfg.focus.sip_port, ca_file,
                                    lambda: serve_groups(sq.serve.pid))
        why = pg_missing() if "postgresql" in s.backends else None
        if why:
            runs.notes.append(f"no PostgreSQL rows: {why}")
        elif "postgresql" in s.backends:
            cl = es.enter_context(cluster(users=accounts))
            node = cl.node("n1")
            node.start()
            _organizer_join(cl.cfg)
            runs.database = cl.database_url.rsplit("/", 1)[1]

            def pg_pids() -> dict[str, list[int]]:
                assert node.serve is not None
                return {**serve_groups(node.serve.pid),
                        "postgres": pg_backend_pids(cl.database_url)}

            ours["postgresql"] = Target("postgresql", node.sip_port,
                                        str(cl.cfg.certs_dir / "ca.pem"), pg_pids)
        peers: dict[tuple[str, str], Peer] = {}
        if "kamailio" in missing:
            runs.notes.append("kamailio not installed: no baseline (make sysdeps)")
        else:
            for peer, digest in (("stateless", None), ("digest", (DOMAIN, PASSWORD))):
                for mode, tcp_children in KAM_CHILDREN.items():
                    kam = es.enter_context(kamailio(sq.cfg.certs_dir,
                                                    tcp_children=tcp_children, digest=digest))
                    peers[(peer, mode)] = Peer(kam, Target(
                        f"kamailio-{peer}", kam.tls_port, ca_file, _kam_pids(kam)))
        _measure(s, ours, peers, runs)
        if s.sipp and "sipp" in missing:
            runs.notes.append("sipp not installed: no SIPp rows (make sysdeps)")
        elif s.sipp:
            _measure_sipp(s, sq, peers, runs)
    return runs


# -- the rows -----------------------------------------------------------------------------------
def _mode_label(s: Settings, mode: str) -> str:
    if mode == "reused":
        return f"one TLS connection ({s.reused_concurrency} in flight)"
    return f"TLS connection per join ({s.per_join_concurrency} in flight)"


def _cpu_median(ms: list[Measurement]) -> float | None:
    values = [v for v in (m.server_cpu_ms_per_join for m in ms) if v is not None]
    return round(median(values), 3) if values else None


def _groups_median(ms: list[Measurement]) -> dict[str, float]:
    """Median CPU ms per join of each process group over the rounds."""
    names = sorted({name for m in ms for name in m.cpu_ms_per_join})
    return {name: round(median([m.cpu_ms_per_join[name] for m in ms
                                if name in m.cpu_ms_per_join]), 3) for name in names}


CPU_NOTE = ("server CPU per join = (utime + stime over the measured window, /proc/<pid>/stat) "
            "/ joins completed in the window; ours = webconf serve + focus + WCS (+ the "
            "PostgreSQL backends of our database, from pg_stat_activity; PostgreSQL's shared "
            "background processes are not counted); kamailio = all its processes")


def _join_row(s: Settings, mode: str, backend: str, peer: str, ours: list[Measurement],
              base: list[Measurement] | None, common: dict[str, Any]) -> Row:
    factor = PEER_TARGET[(mode, peer)]
    ours_rate = median([m.rate for m in ours])
    base_rate = median([m.rate for m in base]) if base else None
    reused = mode == "reused"
    detail: dict[str, Any] = {
        **common, "ours_is": f"webconf serve on {BACKEND_LABEL[backend]}",
        "baseline_is": f"Kamailio {PEER_LABEL[peer]} (tcp_children={KAM_CHILDREN[mode]})",
        "generator": f"bench.sip_gen asyncio generator ("
                     f"{s.reused_processes if reused else s.per_join_processes} "
                     "process(es), uvloop if installed), bytes templates, Digest via "
                     "webconf.sip.digest_client",
        "in_flight": s.reused_concurrency if reused else s.per_join_concurrency,
        "tls": "one connection for the whole round" if reused else
               "a full handshake per join (no session resumption)",
        "kamailio_tcp_children": KAM_CHILDREN[mode],
        "cpu_ms_per_join_by_group": {"ours": _groups_median(ours),
                                     **({"kamailio": _groups_median(base)} if base else {})},
        "ours_rounds": [m.brief() for m in ours],
        **({"kamailio_rounds": [m.brief() for m in base]} if base else {})}
    if not reused:
        detail["kamailio_note"] = ("tcp_children=1: Kamailio 5.6 crashes with tcp_children "
                                   "> 1 under connection-per-call load")
    if base:
        # the servers run back to back in each round: the per-round ratio is the comparison
        # least affected by load that drifts between rounds
        per_round = [o.rate / b.rate for o, b in zip(ours, base, strict=False) if b.rate > 0]
        detail["ratio_per_round"] = [round(r, 4) for r in per_round]
        detail["ratio_median_of_rounds"] = round(median(per_round), 4)
    return Row(f"joins/s, {_mode_label(s, mode)}, {BACKEND_LABEL[backend]} vs Kamailio "
               f"{PEER_LABEL[peer]}", round(ours_rate, 1),
               None if base_rate is None else round(base_rate, 1), f">= {factor}x",
               None if not base_rate else ours_rate >= factor * base_rate, unit="joins/s",
               detail=detail, cpu_ms=_cpu_median(ours),
               baseline_cpu_ms=_cpu_median(base) if base else None)


def _cpu_row(s: Settings, backend: str, ours: list[Measurement],
             base: list[Measurement] | None, common: dict[str, Any]) -> Row:
    """The CPU-per-join goal as a row of its own (the join rows carry it beside the rate)."""
    cpu = _cpu_median(ours)
    base_cpu = _cpu_median(base) if base else None
    return Row(f"server CPU per join, {_mode_label(s, 'reused')}, {BACKEND_LABEL[backend]}",
               0.0 if cpu is None else cpu, base_cpu, f"<= {CPU_GOAL_MS} ms",
               cpu is not None and cpu <= CPU_GOAL_MS, unit="ms", lower_is_better=True,
               detail={**common, "baseline_is": "Kamailio with Digest (tcp_children=2)",
                       "by_group_ms": {"ours": _groups_median(ours),
                                       **({"kamailio": _groups_median(base)} if base
                                          else {})}})


def _burst_brief(m: Measurement, n: int) -> dict[str, Any]:
    return {"failed": m.failed, "started": m.started, "succeeded": m.succeeded,
            f"failed_of_the_first_{n}": m.first_failed, **m.brief()}


def _burst_row(s: Settings, n: int, backend: str, m: Measurement,
               base: Measurement | None, common: dict[str, Any]) -> Row:
    return Row(
        f"failed joins, {n} in flight on one TLS connection, {BACKEND_LABEL[backend]}",
        m.failed, None if base is None else base.failed, "0",
        m.started > 0 and m.failed == 0, lower_is_better=True,
        cpu_ms=m.server_cpu_ms_per_join,
        baseline_cpu_ms=None if base is None else base.server_cpu_ms_per_join,
        detail={**common, "ours_is": f"webconf serve on {BACKEND_LABEL[backend]}",
                "baseline_is": "Kamailio with Digest (tcp_children=2)",
                "what": f"{n} joins sent at once on one TLS connection, each replaced as "
                        f"soon as it ends, for {s.burst_warmup + s.burst_seconds:g} s; "
                        "failed = every join not ending in 200 (non-200 final answers such "
                        "as 503, timeouts, lost connections), warm-up and drain included",
                "ours": _burst_brief(m, n),
                **({"kamailio": _burst_brief(base, n)} if base is not None else {})})


def _sipp_cpu_ms(r: SippRun) -> float | None:
    """Server CPU ms per call of a SIPp run (its cpu is % of one core over the run)."""
    if r.rate <= 0:
        return None
    return round(10 * sum(r.cpu.values()) / r.rate, 3)


def _sipp_rows(s: Settings, runs: Runs) -> list[Row]:
    rows = []
    for transport, metric in (("t1", "joins/s, SIPp TCP one connection"),
                              ("tn", "joins/s, SIPp TCP connection per call")):
        mine = runs.sipp.get(("ours", transport), [])
        base = runs.sipp.get(("kamailio", transport), [])
        if not mine:
            continue
        cpu_o = [v for v in map(_sipp_cpu_ms, mine) if v is not None]
        cpu_b = [v for v in map(_sipp_cpu_ms, base) if v is not None]
        o = median([r.rate for r in mine])
        b = median([r.rate for r in base]) if base else None
        rows.append(Row(
            metric, round(o, 1), None if b is None else round(b, 1), "-", None,
            unit="joins/s", cpu_ms=round(median(cpu_o), 3) if cpu_o else None,
            baseline_cpu_ms=round(median(cpu_b), 3) if cpu_b else None, detail={
                "rounds": s.rounds, "generator": f"SIPp 3.6 -t {transport} "
                f"-l {s.sipp_concurrency} (closed loop), scenario "
                "bench/sipp/join_auth.xml (Digest via -s/-ap, MD5)",
                "ours_is": "webconf serve on SQLite, focus.tcp_port",
                "baseline_is": "Kamailio stateless 200",
                "kamailio_tcp_children": KAM_CHILDREN["reused" if transport == "t1"
                                                      else "per-join"],
                "ours_rounds": [r.brief() for r in mine],
                "kamailio_rounds": [r.brief() for r in base],
                "cpu_note": "server CPU per call over SIPp's whole run (its ramp included)",
                "note": "informative: SIPp (one C++ thread) is the load generator here, "
                        "and may be the limit for Kamailio"}))
    return rows


def rows_of(s: Settings, runs: Runs, common: dict[str, Any]) -> list[Row]:
    """The table rows of one run's measurements."""
    common = {**common, "cpu_note": CPU_NOTE,
              **({"notes": runs.notes} if runs.notes else {}),
              **({"postgresql_database": runs.database} if runs.database else {})}
    rows: list[Row] = []
    backends = [b for b in BACKEND_LABEL
                if any(k[0] == b for k in [*runs.joins, *runs.bursts])]
    for mode in ("reused", "per-join"):
        for backend in [b for b in backends if (b, mode) in runs.joins]:
            peers = [p for p in PEER_LABEL if (f"kamailio-{p}", mode) in runs.joins]
            for peer in peers or ["stateless"]:
                rows.append(_join_row(s, mode, backend, peer, runs.joins[(backend, mode)],
                                      runs.joins.get((f"kamailio-{peer}", mode)), common))
    for backend in [b for b in backends if (b, "reused") in runs.joins]:
        rows.append(_cpu_row(s, backend, runs.joins[(backend, "reused")],
                             runs.joins.get(("kamailio-digest", "reused")), common))
    for n in s.bursts:
        for backend in backends:
            rows.append(_burst_row(s, n, backend, runs.bursts[(backend, n)],
                                   runs.bursts.get(("kamailio-digest", n)), common))
    return rows + _sipp_rows(s, runs)


def run(smoke: bool = False, settings: Settings | None = None) -> list[Row]:
    s = settings or (SMOKE if smoke else Settings())
    common = {"rounds": s.rounds, "seconds_per_round": s.seconds, "warmup_s": s.warmup,
              "machine": machine(), "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}
    return rows_of(s, measure(s), common)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--reused-concurrency", type=int)
    parser.add_argument("--per-join-concurrency", type=int)
    parser.add_argument("--per-join-processes", type=int)
    parser.add_argument("--bursts", help="comma-separated joins in flight, e.g. 64,256")
    parser.add_argument("--backends", help="comma-separated: sqlite,postgresql")
    parser.add_argument("--no-sipp", action="store_true", help="skip the SIPp rows")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--generator", metavar="SPEC_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generator:
        gen_process(args.generator)  # what older bench versions spawned
        return
    s = SMOKE if args.smoke else Settings()
    for name in ("rounds", "seconds", "reused_concurrency", "per_join_concurrency",
                 "per_join_processes"):
        value = getattr(args, name)
        if value is not None:
            setattr(s, name, value)
    if args.bursts is not None:
        s.bursts = tuple(int(n) for n in args.bursts.split(",") if n)
    if args.backends is not None:
        s.backends = tuple(b for b in args.backends.split(",") if b)
    s.sipp = not args.no_sipp
    rows = run(args.smoke, s)
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        from .report import print_table

        print_table(rows)


if __name__ == "__main__":
    main()
