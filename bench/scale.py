"""Scale of one node: memory of focus + WCS with 10,000 joined participants.

    python -m bench.scale [--participants 10000] [--conference-size 100] [--workers 4]
                          [--sip-per-connection 1] [--no-leave] [--smoke]

A real deployment (`webconf serve`: focus + WCS processes). Every participant joins with
its own SIP dialog over its own TLS connection to the focus (`--sip-per-connection N` lets
N dialogs share one) and opens its own WSS data channel to the WCS, from `--workers`
client processes (`bench.loadgen`), each bound to its own loopback source address
(127.0.0.2, 127.0.0.3, ...: all of 127.0.0.0/8 is on `lo`) so source ports never run out.
Participants are spread over conferences of `--conference-size` (each conference's
organizer joins first and counts as one of the participants); joins are paced at
`--join-concurrency` in flight overall.

Measured: VmRSS of the focus and WCS processes before any join and once everyone joined
and the join traffic settled, their VmHWM (peak), bytes per participant
((rss_after - rss_before) / joined), the time to join everyone, how many SIP connections
and channels are still open at measurement time, and errors. Then everyone leaves (BYE;
the WCS revokes each cookie and closes the channel). RLIMIT_NOFILE is raised to the hard
limit here before the servers start (they inherit it) and in every client process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

from webconf.deploy.config import Config
from webconf.protocol import conference_uri

from .common import Stack, cpu_seconds, machine, stack
from .loadgen import (
    Fleet,
    Member,
    Target,
    WorkerSpec,
    raise_nofile,
    split,
)
from .report import Row

TENANT = "contoso.example"
PASSWORD = "bench-" + "pw"
TARGET_MIB = 2048.0
FULL_N = 10_000


async def _add_users(cfg: Config, addresses: list[str]) -> None:
    """Add the users in one transaction (adding 10,000 one by one takes half a minute)."""
    from focus.directory import Directory

    directory = await Directory.for_deployment(cfg)
    try:
        await directory.add_user(addresses[0], PASSWORD)  # creates the tenant row
        await directory.add_new_users([(address, PASSWORD) for address in addresses[1:]])
    finally:
        await directory.close()


def _members(n: int, conference_size: int) -> list[Member]:
    conferences = max(1, -(-n // conference_size))
    members = []
    for c in range(conferences):
        organizer = f"org{c}@{TENANT}"
        uri = conference_uri(organizer, f"SCALE{c}")
        members.append(Member(uri, organizer, organizer=True))
        start = c * conference_size
        for i in range(start + 1, min(n, start + conference_size)):
            members.append(Member(uri, f"u{i}@{TENANT}"))
    return members


def log_summary(st: Stack, limit: int = 5) -> dict[str, Any]:
    """Warnings and errors the servers logged: counts by (component, event/message) and a
    few samples, so a failed join can be traced to its cause."""
    counts: Counter[str] = Counter()
    spans: dict[str, list[float]] = {}
    samples: list[str] = []
    for name in ("focus", "wcs"):
        path = st.cfg.log_dir / f"{name}.log"
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"level": "raw", "msg": line}
            if entry.get("level") in ("info", "debug"):
                continue
            what = str(entry.get("event") or entry.get("msg") or "")
            what = re.sub(r"/(conferences|participants)/[^/:\s]+", r"/\1/*", what)[:70]
            key = f"{name} {entry.get('level')}: {what}"
            counts[key] += 1
            ts = entry.get("ts")
            if isinstance(ts, int | float):
                span = spans.setdefault(key, [ts, ts])
                span[0], span[1] = min(span[0], ts), max(span[1], ts)
            if len(samples) < limit:
                samples.append(line[:400])
    errors = sum(n for k, n in counts.items() if " error: " in k or " critical: " in k)
    return {"counts": dict(counts.most_common(12)), "errors": errors, "samples": samples,
            "spans": {k: [round(a, 1), round(b, 1)] for k, (a, b) in spans.items()
                      if k in dict(counts.most_common(12))}}


def _settle(st: Stack, quiet_seconds: float, limit: float) -> None:
    """Wait until the servers' CPU time stops growing (join traffic drained)."""
    deadline = time.monotonic() + limit
    pids = list(st.pids.values())
    last = sum(cpu_seconds(p) for p in pids)
    while time.monotonic() < deadline:
        time.sleep(quiet_seconds)
        now = sum(cpu_seconds(p) for p in pids)
        if now - last < 0.05 * quiet_seconds * len(pids):
            return
        last = now


def measure(*, participants: int, conference_size: int = 100, workers: int = 4,
            sip_per_connection: int = 1, join_concurrency: int = 128, leave: bool = True,
            channels: bool = True, server_env: dict[str, str] | None = None,
            lean_client_ssl: bool = True, timeout: float = 120.0,
            verbose: bool = True) -> dict[str, Any]:
    say = print if verbose else (lambda *_: None)
    nofile = raise_nofile()
    members = _members(participants, conference_size)
    env = {"WEBCONF_FOCUS_MAX_CONNECTIONS": str(4 * participants + 1000),
           "WEBCONF_WCS_MAX_CONNECTIONS": str(4 * participants + 1000),
           "WEBCONF_WCS_SHUTDOWN_GRACE_SECONDS": "3", **(server_env or {})}
    result: dict[str, Any] = {"participants": participants, "conference_size": conference_size,
                              "workers": workers, "sip_per_connection": sip_per_connection,
                              "channels": channels, "server_env": server_env or {},
                              "nofile": nofile}
    with stack(env=env, tenants=(TENANT,)) as st:
        cfg = st.cfg
        t = time.perf_counter()
        asyncio.run(_add_users(cfg, [m.address for m in members]))
        say(f"scale: {len(members)} users added in {time.perf_counter() - t:.1f} s")
        time.sleep(1.0)
        result["rss_before"] = st.current_rss()
        result["pids"] = st.pids
        say(f"scale: server pids {json.dumps(st.pids)}")
        ca = str(cfg.certs_dir / "ca.pem")
        target = Target(cfg.public_host, cfg.focus.sip_port, ca, PASSWORD)
        specs = [WorkerSpec(i, target, part, local_host=f"127.0.0.{2 + i}",
                            sip_per_connection=sip_per_connection, download=False,
                            channels=channels,
                            join_concurrency=max(1, join_concurrency // workers),
                            timeout=timeout, lean_ssl=lean_client_ssl)
                 for i, part in enumerate(split(members, workers))]
        with Fleet(specs) as fleet:
            result["t_join_start"] = round(time.time(), 1)
            started = time.perf_counter()
            errors: Counter[str] = Counter()
            joined = 0
            for organizers in (True, False):
                for r in fleet.call("join", 3600, organizers=organizers):
                    errors.update(r["errors"])
                    joined += r["joined"]
            join_s = time.perf_counter() - started
            say(f"scale: {joined}/{len(members)} joined in {join_s:.1f} s "
                f"errors={dict(errors)}")
            _settle(st, 2.0, 300.0)
            status = fleet.call("status", 120)
            result["rss_after"] = st.current_rss()
            result["hwm"] = st.peak_rss()
            result["join_seconds"] = round(join_s, 1)
            result["joined"] = joined
            result["join_errors"] = dict(errors)
            result["channels_open"] = sum(s["channels_open"] for s in status)
            result["sip_open"] = sum(s["sip_open"] for s in status)
            result["channel_reconnects"] = sum(s["channel_reconnects"] for s in status)
            result["client_rss_mib"] = [s["rss_mib"] for s in status]
            say("scale: " + json.dumps({k: result[k] for k in (
                "rss_before", "rss_after", "hwm", "channels_open", "sip_open",
                "channel_reconnects", "client_rss_mib")}))
            if leave:
                result["t_leave_start"] = round(time.time(), 1)
                started = time.perf_counter()
                left = fleet.call("leave", 3600, concurrency=max(1, join_concurrency // workers))
                result["leave_seconds"] = round(time.perf_counter() - started, 1)
                result["t_leave_end"] = round(time.time(), 1)
                result["left"] = sum(r["left"] for r in left)
                leave_errors: Counter[str] = Counter()
                for r in left:
                    leave_errors.update(r["errors"])
                result["leave_errors"] = dict(leave_errors)
                say(f"scale: {result['left']} left in {result['leave_seconds']} s "
                    f"errors={dict(leave_errors)}")
        result["server_log"] = log_summary(st)
        if result["server_log"]["counts"]:
            say("scale: server warnings " + json.dumps(result["server_log"]["counts"]))
    return result


def rows_from(result: dict[str, Any]) -> list[Row]:
    n = result["participants"]
    before, after, hwm = result["rss_before"], result["rss_after"], result["hwm"]
    total_after = round(after.get("focus", 0.0) + after.get("wcs", 0.0), 1)
    total_before = before.get("focus", 0.0) + before.get("wcs", 0.0)
    total_hwm = round(hwm.get("focus", 0.0) + hwm.get("wcs", 0.0), 1)
    joined = result["joined"]
    per = (total_after - total_before) * 1024 * 1024 / joined if joined else 0.0
    join_errors = sum(result["join_errors"].values())
    errors = join_errors + sum(result.get("leave_errors", {}).values())
    errors += max(0, n - joined - join_errors)  # never attempted (should not happen)
    if result.get("channels", True):  # channels that dropped before the measure
        errors += joined - result["channels_open"]
    if result["sip_per_connection"] == 1:
        errors += joined - result["sip_open"]
    detail = {
        "focus_mib": after.get("focus"), "wcs_mib": after.get("wcs"),
        "focus_hwm_mib": hwm.get("focus"), "wcs_hwm_mib": hwm.get("wcs"),
        "hwm_total_mib": total_hwm,
        "before_mib": {k: round(v, 1) for k, v in before.items()},
        "bytes_per_participant": round(per),
        "focus_bytes_per_participant": round(
            (after.get("focus", 0) - before.get("focus", 0)) * 1024 * 1024 / joined)
        if joined else 0,
        "wcs_bytes_per_participant": round(
            (after.get("wcs", 0) - before.get("wcs", 0)) * 1024 * 1024 / joined)
        if joined else 0,
        "joined": joined, "channels_open": result["channels_open"],
        "sip_connections_open": result["sip_open"],
        "channel_reconnects": result["channel_reconnects"],
        "errors": errors, "join_errors": result["join_errors"],
        "leave_errors": result.get("leave_errors"), "left": result.get("left"),
        "join_seconds": result["join_seconds"], "leave_seconds": result.get("leave_seconds"),
        "conference_size": result["conference_size"], "workers": result["workers"],
        "sip_per_connection": result["sip_per_connection"],
        "server_env": result.get("server_env", {}),
        "client_rss_mib": result["client_rss_mib"],
        "server_log_errors": result.get("server_log", {}).get("errors", 0),
        "server_warnings": result.get("server_log", {}).get("counts", {}),
        "machine": machine(),
    }
    if n != FULL_N:
        detail["extrapolated_10k_mib"] = round(total_before + per * FULL_N / 1024 / 1024, 1)
    passed: bool | None = total_after < TARGET_MIB and total_hwm < TARGET_MIB and errors == 0
    if n != FULL_N:
        # Not judged: from a few hundred participants, one-off allocations (pools, arenas,
        # caches) weigh as much as the participants, so the extrapolation runs high.
        passed = None
    label = "10k" if n == FULL_N else f"{n}"
    return [Row(f"RSS focus+WCS, {label} participants", total_after, None,
                f"< {TARGET_MIB:.0f} MiB" + ("" if n == FULL_N else " (10k extrapolated)"),
                passed, "MiB", True, detail)]


def run(smoke: bool) -> list[Row]:
    if smoke:
        result = measure(participants=200, conference_size=100, workers=2,
                         join_concurrency=100, timeout=30.0, verbose=False)
    else:
        result = measure(participants=FULL_N, conference_size=100, workers=4)
    return rows_from(result)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--participants", type=int, default=FULL_N)
    parser.add_argument("--conference-size", type=int, default=100)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--sip-per-connection", type=int, default=1)
    parser.add_argument("--join-concurrency", type=int, default=128,
                        help="joins in flight over all workers (the focus gives the WCS 5 s "
                             "per admission: keep this under ~5 s x the joins/s it sustains)")
    parser.add_argument("--no-channels", action="store_true",
                        help="SIP dialogs only (to tell SIP memory from data-channel memory)")
    parser.add_argument("--no-leave", action="store_true")
    parser.add_argument("--fat-client-ssl", action="store_true",
                        help="client processes keep asyncio's 256 KiB TLS buffer per socket")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment of the server processes only, e.g. "
                             "WEBCONF_UVLOOP=0 or WEBCONF_LEAN_TLS_BUFFERS=0")
    parser.add_argument("--json", type=Path, help="write the raw result here")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        rows = run(smoke=True)
    else:
        result = measure(participants=args.participants, conference_size=args.conference_size,
                         workers=args.workers, sip_per_connection=args.sip_per_connection,
                         join_concurrency=args.join_concurrency, leave=not args.no_leave,
                         channels=not args.no_channels,
                         server_env=dict(kv.split("=", 1) for kv in args.server_env),
                         lean_client_ssl=not args.fat_client_ssl)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        rows = rows_from(result)
    for row in rows:
        print(json.dumps(row.as_dict()))


if __name__ == "__main__":
    main()
