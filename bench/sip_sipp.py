"""The SIPp rows of `bench/sip_joins.py`: Debian's SIPp (one C++ thread, no TLS) driving
the Digest join scenario bench/sipp/join_auth.xml over plain TCP, closed loop at N calls in
flight, against any server (our focus's `focus.tcp_port` listener, or Kamailio's TCP port).
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webconf.deploy.lifetime import die_with_parent
from webconf.protocol import conference_uri

from .common import cpu_seconds

SIPP_SCENARIO = Path(__file__).resolve().parent / "sipp" / "join_auth.xml"


@dataclass
class SippRun:
    rate: float
    successful: int
    failed: int
    elapsed: float
    cpu: dict[str, float]
    error: str = ""

    def brief(self) -> dict[str, Any]:
        out: dict[str, Any] = {"calls_per_s": round(self.rate, 1), "successful": self.successful,
                               "failed": self.failed, "seconds": round(self.elapsed, 2),
                               "cpu_pct": self.cpu}
        if self.error:
            out["error"] = self.error
        return out


def _sipp_epoch(text: str) -> float:
    """SIPp's time stamp "YYYY-MM-DD\tHH:MM:SS.micros\tEPOCH.micros" as epoch seconds."""
    return float(text.strip().split("\t")[-1])


def parse_sipp_stats(path: Path) -> tuple[int, int, float]:
    """(successful calls, failed calls, elapsed seconds) from SIPp's -trace_stat CSV.

    Elapsed is CurrentTime - StartTime of the last (final) dump: ElapsedTime(C) has only
    whole seconds."""
    with path.open(newline="") as fh:
        rows = [r for r in csv.reader(fh, delimiter=";") if r]
    header, last = rows[0], rows[-1]
    col = {name: i for i, name in enumerate(header)}
    elapsed = _sipp_epoch(last[col["CurrentTime"]]) - _sipp_epoch(last[col["StartTime"]])
    return int(last[col["SuccessfulCall(C)"]]), int(last[col["FailedCall(C)"]]), elapsed


def sipp(*, port: int, transport: str, calls: int, concurrency: int,
         server_pids: Callable[[], dict[str, list[int]]], user: str, password: str,
         domain: str, conference_id: str, timeout: float = 120.0) -> SippRun:
    """Run SIPp's join scenario over TCP (`t1` one connection, `tn` one per call)."""
    workdir = Path(tempfile.mkdtemp(prefix="webconf-sipp-"))
    stats = workdir / "stats.csv"
    # SIPp's Digest uri defaults to "sip:<remote ip>:<port>"; the focus requires the
    # Request-URI (docs/protocol.md §2), so name it (SIPp adds the "sip:").
    auth_uri = conference_uri(f"org@{domain}", conference_id).removeprefix("sip:")
    cmd = ["sipp", f"127.0.0.1:{port}", "-sf", str(SIPP_SCENARIO), "-s", user, "-ap", password,
           "-key", "domain", domain, "-key", "conf", conference_id, "-auth_uri", auth_uri,
           "-t", transport, "-i",
           "127.0.0.1", "-r", "100000", "-rp", "1000", "-l", str(concurrency), "-m",
           str(calls), "-nostdin", "-trace_stat", "-stf", str(stats), "-fd", "1",
           "-timeout", f"{int(timeout)}s", "-max_socket", str(max(64, concurrency * 4))]
    try:
        groups = server_pids()
        before = {name: sum(cpu_seconds(p) for p in pids) for name, pids in groups.items()}
        started = time.time()
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                preexec_fn=die_with_parent())  # dies with the bench
        try:
            _, err = proc.communicate(timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        wall = time.time() - started
        cpu = {name: round(100 * (sum(cpu_seconds(p) for p in pids) - before[name]) / wall, 1)
               for name, pids in groups.items()}
        try:
            ok, failed, elapsed = parse_sipp_stats(stats)
        except (OSError, ValueError, KeyError, IndexError) as exc:
            return SippRun(0.0, 0, 0, wall, cpu, error=f"no stats ({exc}): "
                           f"{err.decode(errors='replace')[-300:]}")
        error = "" if proc.returncode in (0, 1) else f"sipp exit {proc.returncode}"
        return SippRun(ok / elapsed if elapsed > 0 else 0.0, ok, failed, elapsed, cpu, error)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
