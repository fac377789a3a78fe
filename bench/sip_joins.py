"""SIP joins per second: our focus (full authenticated join) against Kamailio (stateless 200).

    python -m bench --only sip            # the rows, with the other benchmarks' runner
    python -m bench.sip_joins [--smoke] [--rounds 3] [--seconds 10] [--json]

One join, as the same load generator drives both servers:

- ours:     INVITE -> 401 (Digest challenge) -> ACK -> INVITE with Digest -> 100 -> 200 (a
            cookie minted at the WCS over mTLS) -> ACK -> BYE -> 200 (cookie revoked at the
            WCS, durably, before the 200);
- Kamailio: INVITE -> 200 -> ACK -> BYE -> 200 (`sl_send_reply`, no state, no auth), over
            TLS from Debian's `kamailio` + `kamailio-tls-modules` (bench/kamailio/*.tmpl).

Rows (medians over rounds; ratio = ours / Kamailio):
1. `joins/s, one TLS connection`: every join on one reused TLS connection, N dialogs in
   flight (target >= 0.25x).
2. `joins/s, TLS connection per join`: N concurrent clients, each opening a new TLS
   connection (full handshake, no resumption) per join (target >= 1.0x). Kamailio 5.6
   crashes with tcp_children > 1 under connection-per-call load, so it runs with
   tcp_children=1 here (and in the SIPp per-call row); the one-connection row uses 2.
3. `joins/s, SIPp TCP one connection` and 4. `joins/s, SIPp TCP connection per call`:
   Debian's SIPp (no TLS) over plain TCP (our focus's `focus.tcp_port` listener), with the
   Digest scenario bench/sipp/join_auth.xml, closed loop at N calls in flight (-l N).
   Informative.

Modules: `bench/sip_gen.py` the asyncio load generator (rows 1 and 2),
`bench/sip_kamailio.py` the Kamailio baseline, `bench/sip_sipp.py` the SIPp runner (rows 3
and 4); this module sizes the rounds, alternates the servers and makes the rows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clients.sip import ConferenceDialog, SipConnection
from webconf.deploy import tls
from webconf.protocol import conference_uri

from .common import machine, median, require, stack
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


@dataclass
class Settings:
    rounds: int = 3
    seconds: float = 10.0
    warmup: float = 1.5
    reused_concurrency: int = 32
    """Dialogs in flight on the one connection (the focus answers 503 past 32 pending)."""
    per_join_concurrency: int = 32
    reused_processes: int = 1
    per_join_processes: int = 2
    sipp_concurrency: int = 32
    sipp_seconds: float = 8.0


def _ratio_row(metric: str, target: str, factor: float, ours: list[Measurement],
               base: list[Measurement] | None, detail: dict[str, Any]) -> Row:
    ours_rate = median([m.rate for m in ours])
    base_rate = median([m.rate for m in base]) if base else None
    passed = None if not base_rate else ours_rate >= factor * base_rate
    detail = {**detail, "ours_rounds": [m.brief() for m in ours],
              **({"kamailio_rounds": [m.brief() for m in base]} if base else {})}
    if base:
        # the two servers run back to back in each round: the per-round ratio is the
        # comparison least affected by load that drifts between rounds
        per_round = [o.rate / b.rate for o, b in zip(ours, base, strict=False) if b.rate > 0]
        detail["ratio_per_round"] = [round(r, 4) for r in per_round]
        detail["ratio_median_of_rounds"] = round(median(per_round), 4)
        cpu_ours = [sum(v for k, v in m.cpu_ms_per_join.items() if k != "generator")
                    for m in ours if m.rate > 0]
        cpu_base = [sum(v for k, v in m.cpu_ms_per_join.items() if k != "generator")
                    for m in base if m.rate > 0]
        detail["server_cpu_ms_per_join"] = {"ours": round(median(cpu_ours), 3),
                                            "kamailio": round(median(cpu_base), 3)}
    return Row(metric, round(ours_rate, 1), None if base_rate is None else round(base_rate, 1),
               target, passed, unit="joins/s", detail=detail)


def run(smoke: bool = False, settings: Settings | None = None) -> list[Row]:
    s = settings or (Settings(rounds=1, seconds=2.0, warmup=0.7, sipp_seconds=2.0)
                     if smoke else Settings())
    missing = require("kamailio", "sipp")
    load_start = round(os.getloadavg()[0], 2)
    users = [f"u{i}" for i in range(N_USERS)]
    accounts = [(f"{u}@{DOMAIN}", PASSWORD) for u in [*users, ORGANIZER, SIPP_USER]]
    env = {"WEBCONF_FOCUS_MD5_ONLY_USER_AGENTS": "baresip,sipp"}
    ours: dict[str, list[Measurement]] = {"reused": [], "per-join": []}
    kam: dict[str, list[Measurement]] = {"reused": [], "per-join": []}
    sipp_ours: dict[str, list[SippRun]] = {"t1": [], "tn": []}
    sipp_kam: dict[str, list[SippRun]] = {"t1": [], "tn": []}
    notes: list[str] = []
    with contextlib.ExitStack() as stack_:
        st = stack_.enter_context(stack(users=accounts, tcp_sip=True, env=env))
        cfg = st.cfg
        _organizer_join(cfg)
        ca_file = str(cfg.certs_dir / "ca.pem")
        kam_multi = kam_one = None
        if "kamailio" not in missing:
            kam_multi = stack_.enter_context(kamailio(cfg.certs_dir, tcp_children=2))
            kam_one = stack_.enter_context(kamailio(cfg.certs_dir, tcp_children=1))
        else:
            notes.append("kamailio not installed: no baseline (make bench-deps)")

        def our_pids() -> dict[str, list[int]]:
            return {name: [pid] for name, pid in st.pids.items()}

        def kam_pids(k: Kamailio) -> Callable[[], dict[str, list[int]]]:
            return lambda: {"kamailio": k.pids()}

        for rnd in range(s.rounds):
            for mode in ("reused", "per-join"):
                conc = s.reused_concurrency if mode == "reused" else s.per_join_concurrency
                procs = s.reused_processes if mode == "reused" else s.per_join_processes
                gen_args: dict[str, Any] = dict(
                    tls=True, ca_file=ca_file, server_hostname=DOMAIN, mode=mode,
                    concurrency=conc, processes=procs, users=users, password=PASSWORD,
                    domain=DOMAIN, conference_uri=CONF_URI, warmup=s.warmup,
                    duration=s.seconds)
                targets: list[tuple[str, Any]] = [("ours", None)]
                k = kam_multi if mode == "reused" else kam_one
                if k is not None:
                    targets.append(("kamailio", k))
                if rnd % 2:
                    targets.reverse()  # alternate who goes first against load drift
                for who, kserver in targets:
                    if kserver is None:
                        m = generate(host="127.0.0.1", port=cfg.focus.sip_port,
                                     server_pids=our_pids, tag=f"o{rnd}{mode[0]}", **gen_args)
                        ours[mode].append(m)
                    else:
                        m = generate(host="127.0.0.1", port=kserver.tls_port,
                                     server_pids=kam_pids(kserver), tag=f"k{rnd}{mode[0]}",
                                     **gen_args)
                        if not kserver.alive():
                            m.errors["kamailio crashed"] = 1
                            notes.append(f"kamailio died: {kserver.log_tail()[-300:]}")
                        kam[mode].append(m)
        if "sipp" in missing:
            notes.append("sipp not installed: no SIPp rows (make bench-deps)")
        else:
            guess = {"ours": 150.0, "kamailio": 2000.0}
            for rnd in range(s.rounds):
                for transport in ("t1", "tn"):
                    for who in ("ours", "kamailio"):
                        if who == "ours":
                            port, pids = cfg.focus.tcp_port, our_pids
                            bucket = sipp_ours
                        else:
                            k = kam_multi if transport == "t1" else kam_one
                            if k is None:
                                continue
                            port, pids, bucket = k.tcp_port, kam_pids(k), sipp_kam
                        prior = [r.rate for r in bucket[transport] if r.rate > 0]
                        rate = median(prior) if prior else guess[who]
                        calls = max(50, int(rate * s.sipp_seconds))
                        bucket[transport].append(sipp(
                            port=port, transport=transport, calls=calls,
                            concurrency=s.sipp_concurrency, server_pids=pids,
                            user=SIPP_USER, password=PASSWORD, domain=DOMAIN,
                            conference_id=CONF_ID))
    kam_children = {"reused": 2, "per-join": 1}
    base_detail = {"rounds": s.rounds, "seconds_per_round": s.seconds, "warmup_s": s.warmup,
                   "machine": machine(), "load_avg_1m_at_start": load_start,
                   **({"notes": notes} if notes else {})}
    gen_desc = ("bench.sip_gen asyncio generator ({procs} process(es), uvloop if installed), "
                "bytes templates, Digest via webconf.sip.digest_client")
    rows = [
        _ratio_row("joins/s, one TLS connection", ">= 0.25x", 0.25, ours["reused"],
                   kam["reused"] or None, {
                       **base_detail,
                       "generator": gen_desc.format(procs=s.reused_processes),
                       "dialogs_in_flight": s.reused_concurrency,
                       "kamailio_tcp_children": kam_children["reused"]}),
        _ratio_row("joins/s, TLS connection per join", ">= 1.0x", 1.0, ours["per-join"],
                   kam["per-join"] or None, {
                       **base_detail,
                       "generator": gen_desc.format(procs=s.per_join_processes),
                       "concurrent_clients": s.per_join_concurrency,
                       "tls": "full handshake per join (no session resumption)",
                       "kamailio_tcp_children": 1,
                       "kamailio_note": "tcp_children=1: Kamailio 5.6 crashes with "
                                        "tcp_children > 1 under connection-per-call load"}),
    ]
    if "sipp" not in missing:
        for transport, metric in (("t1", "joins/s, SIPp TCP one connection"),
                                  ("tn", "joins/s, SIPp TCP connection per call")):
            o = median([r.rate for r in sipp_ours[transport]])
            b = median([r.rate for r in sipp_kam[transport]]) if sipp_kam[transport] else None
            rows.append(Row(metric, round(o, 1), None if b is None else round(b, 1), "-", None,
                            unit="joins/s", detail={
                                "rounds": s.rounds, "generator": f"SIPp 3.6 -t {transport} "
                                f"-l {s.sipp_concurrency} (closed loop), scenario "
                                "bench/sipp/join_auth.xml (Digest via -s/-ap, MD5)",
                                "kamailio_tcp_children": 2 if transport == "t1" else 1,
                                "ours_rounds": [r.brief() for r in sipp_ours[transport]],
                                "kamailio_rounds": [r.brief() for r in sipp_kam[transport]],
                                "note": "informative: SIPp (one C++ thread) is the load "
                                        "generator here, and may be the limit for Kamailio"}))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--reused-concurrency", type=int)
    parser.add_argument("--per-join-concurrency", type=int)
    parser.add_argument("--per-join-processes", type=int)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--generator", metavar="SPEC_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generator:
        gen_process(args.generator)  # what older bench versions spawned
        return
    s = (Settings(rounds=1, seconds=2.0, warmup=0.7, sipp_seconds=2.0) if args.smoke
         else Settings())
    for name in ("rounds", "seconds", "reused_concurrency", "per_join_concurrency",
                 "per_join_processes"):
        value = getattr(args, name)
        if value is not None:
            setattr(s, name, value)
    rows = run(args.smoke, s)
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        for r in rows:
            ratio = "-" if r.ratio is None else f"{r.ratio:.3f}x"
            print(f"{r.metric:40s} ours {r.ours:10.1f}  kamailio {r.baseline!s:>10}  "
                  f"ratio {ratio:>8}  target {r.target:9s} pass {r.passed}")


if __name__ == "__main__":
    main()
