"""Fan-out: one presenter shares a 5 MiB deck with 500 participants of one conference.

    python -m bench.fanout [--participants 500] [--size 5MiB] [--rounds 5] [--workers 2]
                           [--warm] [--profile PREFIX] [--smoke]

A real deployment (`webconf serve`: focus + WCS processes). The presenter (the organizer,
in this process) joins first; the participants join from `--workers` client processes
(`bench.loadgen`: shared SIP TLS connections and one shared aiohttp pool per process) and
open their WSS data channels. Each round the presenter uploads a fresh random item
(streamed, with its SHA-256 declared); every participant reacts to the `item.shared` push
on its channel by downloading the ciphertext, decrypting it while it streams and verifying
size and SHA-256 (nothing is written to disk).

Clocks: t0 = `time.time()` just before the upload request is sent, t201 = when its 201
arrived; the workers report the wall-clock moments of each push arrival and of each
verified end of download, so every latency is a difference of one machine's clock across
processes. Reported per round over participants: share-to-all-decrypted (done - t0)
p50/p95/p99/max, the same from the 201, the push alone (arrival - t201, and from t0), the
download alone (done - arrival), and the aggregate decrypted throughput. Rows carry the
median over rounds.

By default a participant's download opens a new HTTPS connection (its pool holds only its
WSS channel): that is what a fresh client does. `--warm` first makes every participant
fetch the item list, so the shared pools hold warm keep-alive connections.

Where the time goes: each round also records the CPU seconds of the WCS, the focus, every
client process and the whole machine (/proc), so the detail shows how much of the two
cores the round got (`ours_pct_of_machine`; other work on a shared machine slows it) and
`cpu_floor_ms`, the time the round's CPU work needs with the cores to itself (the WCS on
its one core, everything on all cores). `--profile PREFIX` records py-spy stacks of the
WCS and of one client process during the last round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from clients.meeting import FocusAddress, MeetingClient
from clients.wcs import client_ssl_context
from webconf.protocol import conference_uri
from webconf.stats import summary_ms

from .common import Stack, cpu_seconds, machine, median, stack
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
CONFERENCE = "FANOUT"
PASSWORD = "bench-" + "pw"
TARGET_MS = 250.0
MIB = 1024 * 1024


async def _stream(data: bytes, chunk: int = MIB) -> AsyncIterator[bytes]:
    for i in range(0, len(data), chunk):
        yield data[i:i + chunk]


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    out = {name: cpu_seconds(pid) for name, pid in pids.items()}
    # The whole machine (/proc/stat): busy and idle core-seconds, to see the contention.
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        tick = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + fields[4]
        out["machine_busy"] = (sum(fields[:8]) - idle) / tick
        out["machine_idle"] = idle / tick
    return out


def _stats(values: list[float]) -> dict[str, float]:
    """p50/p95/p99/max in ms (`webconf.stats.summary_ms`); zeros when nothing arrived, so
    the medians over rounds stay numbers."""
    return {k: 0.0 if v is None else v for k, v in summary_ms(values, with_max=True).items()}


async def _round(presenter: MeetingClient, fleet: Fleet, size: int, n: int,
                 timeout: float, profile: str | None,
                 pids: dict[str, int]) -> dict[str, Any]:
    data = os.urandom(size)
    digest = hashlib.sha256(data).hexdigest()
    spies = []
    if profile is not None:
        exe = Path(sys.executable).parent / "py-spy"
        for name in ("wcs", "worker0"):
            spies.append(subprocess.Popen(
                [str(exe) if exe.exists() else "py-spy", "record", "-p", str(pids[name]),
                 "-o", f"{profile}-{name}.txt", "--format", "raw", "-r", "200",
                 "--nonblocking", "-d", "120"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        await asyncio.sleep(1.5)
    cpu_before = _cpu(pids)
    t0 = time.time()
    assert presenter.wcs is not None
    item = await presenter.wcs.upload(_stream(data), name=f"deck-{secrets.token_hex(3)}.pdf",
                                      content_type="application/pdf", sha256=digest, size=size)
    t201 = time.time()
    replies = await fleet.acall("collect", timeout + 30, item_id=item["id"], timeout=timeout)
    wall = time.time() - t0
    cpu_after = _cpu(pids)
    for spy in spies:
        spy.send_signal(2)
        await asyncio.to_thread(spy.wait, 30)
    notify = [t for r in replies for t in r["notify"]]
    done = [t for r in replies for t in r["done"]]
    errors: Counter[str] = Counter()
    for r in replies:
        errors.update(r["errors"])
    participants = sum(r["participants"] for r in replies)
    missing = n - participants
    if missing:
        errors["not-joined"] += missing
    pairs = [(a, d) for r in replies for a, d in r["pairs"]]
    span = (max(done) - min(notify)) if done and notify else 0.0
    return {
        "all_decrypted_from_send": _stats([d - t0 for d in done]),
        "all_decrypted_from_201": _stats([d - t201 for d in done]),
        "push_from_201": _stats([t - t201 for t in notify]),
        "push_from_send": _stats([t - t0 for t in notify]),
        "download_alone": _stats([d - a for a, d in pairs]),
        "upload_ms": round((t201 - t0) * 1000, 1),
        "decrypted": len(done),
        "errors": dict(errors),
        "aggregate_mib_s": round(len(done) * size / MIB / span, 1) if span > 0 else 0.0,
        "last_done_ms": round((max(done) - t0) * 1000, 1) if done else 0.0,
        "cpu_seconds": {k: round(cpu_after[k] - cpu_before[k], 2) for k in cpu_before
                        if k in cpu_after},
        "cpu_wall_seconds": round(wall, 2),
    }


async def _measure(st: Stack, *, participants: int, size: int, rounds: int, workers: int,
                   sip_per_connection: int, warm: bool, timeout: float,
                   profile: str | None, say: Any, uvloop: bool = False) -> dict[str, Any]:
    cfg = st.cfg
    host = cfg.public_host
    ca = str(cfg.certs_dir / "ca.pem")
    organizer = f"presenter@{TENANT}"
    uri = conference_uri(organizer, CONFERENCE)
    ssl_ctx = client_ssl_context(ca)
    presenter = MeetingClient(uri, organizer, PASSWORD,
                              focus=FocusAddress(host, cfg.focus.sip_port), ssl_context=ssl_ctx)
    await presenter.join()
    members = [Member(uri, f"p{i}@{TENANT}") for i in range(participants)]
    target = Target(host, cfg.focus.sip_port, ca, PASSWORD)
    specs = [WorkerSpec(i, target, part, sip_per_connection=sip_per_connection,
                        join_concurrency=max(10, 200 // workers), timeout=timeout,
                        uvloop=uvloop)
             for i, part in enumerate(split(members, workers))]
    fleet = Fleet(specs)
    try:
        started = time.perf_counter()
        joins = await fleet.acall("join", 600)
        join_s = time.perf_counter() - started
        join_errors: Counter[str] = Counter()
        for r in joins:
            join_errors.update(r["errors"])
        joined = sum(r["joined"] for r in joins)
        say(f"fanout: {joined}/{participants} joined in {join_s:.1f} s "
            f"errors={dict(join_errors)}")
        await asyncio.sleep(1.0)
        results = []
        for k in range(rounds):
            if warm:
                await fleet.acall("warm", 120)
            prof = profile if k == rounds - 1 else None
            pids = {**st.pids, "driver": os.getpid(),
                    **{f"worker{i}": pid for i, pid in enumerate(fleet.pids)}}
            res = await _round(presenter, fleet, size, participants, timeout, prof, pids)
            say(f"fanout round {k + 1}/{rounds}: " + json.dumps(res))
            results.append(res)
            await asyncio.sleep(1.0)
        status = await fleet.acall("status", 60)
    finally:
        await asyncio.to_thread(fleet.close)
        await presenter.leave()
        await presenter.close()
    return {"joined": joined, "join_seconds": round(join_s, 1), "join_errors": dict(join_errors),
            "rounds": results, "status": status}


def measure(*, participants: int, size: int, rounds: int, workers: int = 2,
            sip_per_connection: int = 25, warm: bool = False, timeout: float = 120.0,
            profile: str | None = None, verbose: bool = True,
            uvloop: bool = False) -> dict[str, Any]:
    raise_nofile()
    users = [(f"presenter@{TENANT}", PASSWORD)] + [
        (f"p{i}@{TENANT}", PASSWORD) for i in range(participants)]
    say = print if verbose else (lambda *_: None)
    env = {"WEBCONF_WCS_MAX_UPLOAD_BYTES": str(max(size + 1, 2 * 1024**3))}
    with stack(users=users, env=env, tenants=(TENANT,)) as st:
        return asyncio.run(_measure(st, participants=participants, size=size, rounds=rounds,
                                    workers=workers, sip_per_connection=sip_per_connection,
                                    warm=warm, timeout=timeout, profile=profile, say=say,
                                    uvloop=uvloop))


def rows_from(result: dict[str, Any], *, participants: int, size: int,
              workers: int, warm: bool) -> list[Row]:
    rounds = result["rounds"]

    def med(key: str, stat: str) -> float:
        return round(median([r[key][stat] for r in rounds]), 1)

    errors: Counter[str] = Counter(result["join_errors"])
    for r in rounds:
        errors.update(r["errors"])
    n_err = sum(errors.values())
    size_text = f"{size // MIB} MiB" if size % MIB == 0 else f"{size // 1024} KiB"
    p99 = med("all_decrypted_from_send", "p99")
    detail = {
        "rounds": len(rounds),
        "participants_joined": result["joined"],
        "workers": workers,
        "connections": "warm keep-alive" if warm else "new HTTPS connection per download",
        "p50_ms": med("all_decrypted_from_send", "p50"),
        "p95_ms": med("all_decrypted_from_send", "p95"),
        "max_ms": med("all_decrypted_from_send", "max"),
        "from_201_p99_ms": med("all_decrypted_from_201", "p99"),
        "notify_p99_ms": med("push_from_201", "p99"),
        "notify_from_send_p99_ms": med("push_from_send", "p99"),
        "download_alone_p50_ms": med("download_alone", "p50"),
        "download_alone_p99_ms": med("download_alone", "p99"),
        "upload_ms": round(median([r["upload_ms"] for r in rounds]), 1),
        "aggregate_mib_s": round(median([r["aggregate_mib_s"] for r in rounds]), 1),
        "p99_per_round_ms": [r["all_decrypted_from_send"]["p99"] for r in rounds],
        "errors": n_err,
        "error_kinds": dict(errors),
        "join_seconds": result["join_seconds"],
        "machine": machine(),
    }
    cpu_keys = sorted({k for r in rounds for k in r["cpu_seconds"]})
    cpu = {k: round(median([r["cpu_seconds"].get(k, 0.0) for r in rounds]), 2) for k in cpu_keys}
    ours_cpu = median([sum(v for k, v in r["cpu_seconds"].items()
                           if not k.startswith("machine")) for r in rounds])
    cores = os.cpu_count() or 1
    wcs_cpu = cpu.get("wcs", 0.0)
    detail["cpu_seconds_median"] = cpu
    detail["ours_cpu_seconds"] = round(ours_cpu, 2)
    detail["round_wall_seconds"] = round(median([r["cpu_wall_seconds"] for r in rounds]), 2)
    detail["machine_busy_pct"] = round(100 * median([
        r["cpu_seconds"].get("machine_busy", 0.0) / cores / max(r["cpu_wall_seconds"], 1e-9)
        for r in rounds]), 1)
    detail["ours_pct_of_machine"] = round(100 * median([
        sum(v for k, v in r["cpu_seconds"].items() if not k.startswith("machine"))
        / cores / max(r["cpu_wall_seconds"], 1e-9) for r in rounds]), 1)
    # The round cannot end before the CPU work is done: the single-threaded WCS's share on
    # one core, everything on all cores. What p99 would be with the cores to ourselves.
    detail["cpu_floor_ms"] = round(1000 * max(wcs_cpu, ours_cpu / cores), 1)
    push = med("push_from_201", "p99")
    return [
        Row(f"fan-out {participants} x {size_text}: share-to-all-decrypted p99", p99, None,
            f"< {TARGET_MS:.0f} ms", p99 < TARGET_MS and n_err == 0, "ms", True, detail),
        Row("fan-out: item.shared push p99", push, None, "-", None, "ms", True,
            {"from_201_p50_ms": med("push_from_201", "p50"),
             "from_201_max_ms": med("push_from_201", "max"),
             "from_send_p99_ms": med("push_from_send", "p99"),
             "participants": result["joined"], "errors": n_err}),
    ]


def run(smoke: bool) -> list[Row]:
    if smoke:
        kw: dict[str, Any] = {"participants": 20, "size": 512 * 1024, "rounds": 2,
                              "workers": 2, "sip_per_connection": 5, "timeout": 30.0}
    else:
        kw = {"participants": 500, "size": 5 * MIB, "rounds": 5, "workers": 2,
              "sip_per_connection": 25}
    result = measure(**kw, verbose=not smoke)
    return rows_from(result, participants=kw["participants"], size=kw["size"],
                     workers=kw["workers"], warm=False)


def _parse_size(text: str) -> int:
    units = {"kib": 1024, "mib": MIB, "gib": 1024 * MIB, "": 1}
    t = text.strip().lower()
    for unit, scale in units.items():
        if unit and t.endswith(unit):
            return int(float(t[: -len(unit)]) * scale)
    return int(t)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--participants", type=int, default=500)
    parser.add_argument("--size", type=_parse_size, default=5 * MIB)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sip-per-connection", type=int, default=25,
                        help="dialogs per SIP TLS connection (the focus allows 32 INVITEs "
                             "in flight per connection)")
    parser.add_argument("--warm", action="store_true")
    parser.add_argument("--uvloop", action="store_true",
                        help="client processes on uvloop (when installed)")
    parser.add_argument("--profile", metavar="PREFIX",
                        help="py-spy the WCS and worker 0 during the last round: "
                             "PREFIX-wcs.txt, PREFIX-worker0.txt (collapsed stacks)")
    parser.add_argument("--json", type=Path, help="write the raw result here")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        rows = run(smoke=True)
    else:
        result = measure(participants=args.participants, size=args.size, rounds=args.rounds,
                         workers=args.workers, sip_per_connection=args.sip_per_connection,
                         warm=args.warm, profile=args.profile, uvloop=args.uvloop)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        rows = rows_from(result, participants=args.participants, size=args.size,
                         workers=args.workers, warm=args.warm)
    for row in rows:
        print(json.dumps(row.as_dict()))


if __name__ == "__main__":
    main()
