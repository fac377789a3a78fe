"""Shared pieces of the benchmarks: result rows, a real deployment, process RSS, medians.

Every benchmark module exposes `run(smoke: bool) -> list[Row]`: it runs our side and its
baseline in the same run, on the same machine, several rounds, and reports medians and
the ratio ours/baseline (higher is better unless `lower_is_better`). `smoke=True` is the
short CI variant that only proves the script still works.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Row:
    metric: str
    ours: float
    baseline: float | None
    target: str
    """Human-readable target, e.g. ">= 0.25x", "< 250 ms", "< 2048 MiB"."""
    passed: bool | None
    unit: str = ""
    lower_is_better: bool = False
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        assert self.baseline is not None
        return self.ours / self.baseline

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = None if self.ratio is None else round(self.ratio, 3)
        return out


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return float(ordered[k])


_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A free loopback port, never the same one twice in this process (the kernel may
    hand a just-closed ephemeral port out again at once on a busy machine)."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set) of a live process, in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rss_mib(pid: int) -> float:
    """Current VmRSS of a live process, in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def require(*tools: str) -> list[str]:
    """The tools of `tools` that are missing from PATH (benchmarks skip their rows)."""
    return [t for t in tools if shutil.which(t) is None]


@dataclass
class Stack:
    """A real deployment served by `webconf serve` (focus + WCS processes)."""

    cfg: Any
    proc: subprocess.Popen[str]
    workdir: Path

    @property
    def pids(self) -> dict[str, int]:
        out = {}
        for child in children(self.proc.pid):
            line = cmdline(child)
            if "-m conferencing" in line:
                out["wcs"] = child
            elif "-m focus" in line:
                out["focus"] = child
        return out

    def peak_rss(self) -> dict[str, float]:
        return {name: round(peak_rss_mib(pid), 1) for name, pid in self.pids.items()}

    def current_rss(self) -> dict[str, float]:
        return {name: round(rss_mib(pid), 1) for name, pid in self.pids.items()}


@contextlib.contextmanager
def stack(*, users: Sequence[tuple[str, str]] = (), env: dict[str, str] | None = None,
          tenants: Sequence[str] = ("contoso.example",), tcp_sip: bool = False,
          ready_timeout: float = 90.0) -> Iterator[Stack]:
    """Init a deployment in a temp dir, add users, run `webconf serve`; always clean up."""
    import asyncio

    from focus.directory import Directory
    from webconf.deploy.init import init_deployment

    workdir = Path(tempfile.mkdtemp(prefix="webconf-bench-"))
    cfg = init_deployment(workdir / "dep", https_port=free_port(), internal_port=free_port(),
                          sip_port=free_port(), tenants=list(tenants))

    async def add_users() -> None:
        directory = await Directory.open(cfg.store_url)
        try:
            for address, password in users:
                await directory.add_user(address, password)
        finally:
            await directory.close()

    if users:
        asyncio.run(add_users())
    full_env = {**os.environ, "WEBCONF_FOCUS_MAX_CONNECTIONS_PER_SOURCE": "1000000",
                "WEBCONF_FOCUS_MAX_CONNECTIONS": "1000000", **(env or {})}
    if tcp_sip:
        cfg.focus.tcp_port = free_port()
        full_env["WEBCONF_FOCUS_TCP_PORT"] = str(cfg.focus.tcp_port)
    proc = subprocess.Popen([sys.executable, "-m", "webconf", "serve", str(cfg.base_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env, start_new_session=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + ready_timeout
        while True:
            line = proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                err = proc.stderr.read() if proc.stderr else ""
                raise RuntimeError(f"webconf serve did not start: {err[-2000:]}")
            if line.startswith("webconf ready"):
                break
        yield Stack(cfg, proc, workdir)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def machine() -> dict[str, Any]:
    import platform

    return {"cores": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(), "host": platform.node(),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def standalone(prog: str, doc: str | None, run: Any) -> None:
    """`python -m bench.<module> [--smoke]`: one module's rows as a table, with details."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    from .__main__ import print_table

    rows = run(args.smoke)
    print_table(rows)
    for r in rows:
        print(r.metric, r.detail)

