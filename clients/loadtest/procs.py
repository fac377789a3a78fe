"""The servers' processes as /proc shows them: which pids serve a deployment, their peak
RSS and CPU time (reported when the servers run on this machine)."""

from __future__ import annotations

import os
from pathlib import Path


def _component(args: list[str]) -> tuple[str, int] | None:
    """("wcs"|"focus", index of the module argument) for `python -m conferencing|focus ...`."""
    for i, arg in enumerate(args[:-1]):
        if arg == "-m":
            module = args[i + 1]
            if module == "conferencing":
                return "wcs", i + 1
            if module == "focus":
                return "focus", i + 1
            return None
    return None


def find_server_pids(base_dir: Path) -> dict[str, list[int]]:
    """PIDs of the WCS and focus processes serving `base_dir`, from /proc cmdlines."""
    base = base_dir.expanduser().resolve()
    found: dict[str, list[int]] = {"wcs": [], "focus": []}
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:
        return found
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        comp = _component(args)
        if comp is None:
            continue
        kind, index = comp
        for arg in args[index + 1:]:
            path = Path(arg)
            if not path.is_absolute():
                try:
                    path = Path(os.readlink(entry / "cwd")) / path
                except OSError:
                    continue
            if path.resolve() == base:
                found[kind].append(int(entry.name))
                break
    return found


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM (peak resident set) of a process in MiB, None if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far, None if unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def rss_report(pids: dict[str, list[int]] | None) -> dict[str, float | None]:
    out: dict[str, float | None] = {"wcs": None, "focus": None, "total": None}
    if not pids:
        return out
    total = 0.0
    for kind in ("wcs", "focus"):
        values = [v for v in (peak_rss_mib(p) for p in pids.get(kind, [])) if v is not None]
        if values:
            out[kind] = round(sum(values), 1)
            total += sum(values)
    if out["wcs"] is not None or out["focus"] is not None:
        out["total"] = round(total, 1)
    return out


def client_cpu() -> float:
    times = os.times()
    return times.user + times.system


def cpu_report(pids: dict[str, list[int]] | None, client_since: float = 0.0
               ) -> dict[str, float | None]:
    """CPU seconds of the server processes (since they started) and of this process (since
    `client_since`, a `client_cpu()` reading)."""
    out: dict[str, float | None] = {"wcs": None, "focus": None}
    for kind in ("wcs", "focus"):
        values = [v for v in (cpu_seconds(p) for p in (pids or {}).get(kind, []))
                  if v is not None]
        if values:
            out[kind] = round(sum(values), 2)
    times = os.times()
    out["client"] = round(times.user + times.system - client_since, 2)
    return out
