"""What the user sees: live progress on stderr while the run goes, then the report table."""

from __future__ import annotations

import sys
from typing import Any

from .plan import fmt_size


class Live:
    """rich.progress on stderr (joins, items decrypted); a no-op when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Any = None
        self._joins: Any = None
        self._items: Any = None

    def __enter__(self) -> Live:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=Console(stderr=True), transient=False)
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)
            self._progress = None

    def say(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(f"[dim]{text}[/]")
        elif self.enabled:
            print(text, file=sys.stderr)

    def start_joins(self, total: int) -> None:
        if self._progress is not None:
            self._joins = self._progress.add_task("joins", total=total)

    def joined(self) -> None:
        if self._progress is not None and self._joins is not None:
            self._progress.advance(self._joins)

    def start_items(self, total: int) -> None:
        if self._progress is not None:
            self._items = self._progress.add_task("items decrypted", total=total)

    def decrypted(self) -> None:
        if self._progress is not None and self._items is not None:
            self._progress.advance(self._items)


def _pcts(d: dict[str, float | None]) -> str:
    if d.get("p50") is None:
        return "n/a"
    return " / ".join(f"{d[k]:.1f}" for k in ("p50", "p95", "p99"))


def _mib(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f} MiB"


def render_table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="webconf loadtest", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("target", report["target"]),
        ("participants / conferences", f"{report['participants']} / {report['conferences']}"),
        ("items per conference x size",
         f"{report['items']} x {fmt_size(report['item_size'])}"),
        ("connection / join concurrency",
         f"{report['connection']} / {report['join_concurrency']}"),
        ("joins ok", f"{report['joins_ok']} of {report['participants']}"),
        ("join latency p50/p95/p99 ms", _pcts(report["join_latency_ms"])),
    ]
    if "connect_latency_ms" in report:
        rows.append(("TLS connect p50/p95/p99 ms", _pcts(report["connect_latency_ms"])))
    rows += [
        ("joins/s", f"{report['joins_per_s']:.1f}"),
        ("upload p50/p95/p99 ms", _pcts(report["upload_latency_ms"])),
        ("share-to-all-decrypted p50/p95/p99 ms", _pcts(report["share_latency_ms"])),
        ("share-to-participant p50/p95/p99 ms", _pcts(report["participant_latency_ms"])),
        ("downloads verified", str(report["downloads_verified"])),
        *([("page turn to attendee p50/p95/p99 ms", _pcts(report["present_latency_ms"])),
           ("page turns seen", f"{report['page_turns_seen']}")]
          if "present_latency_ms" in report else []),
        ("download MB/s", f"{report['download_mb_s']:.1f}"),
        ("errors", ", ".join(f"{k}: {v}" for k, v in report["errors"].items()) or "0"),
        ("peak RSS focus", _mib(report["rss_mib"]["focus"])),
        ("peak RSS WCS", _mib(report["rss_mib"]["wcs"])),
        ("peak RSS total", _mib(report["rss_mib"]["total"])),
        ("CPU s client / focus / WCS", " / ".join(
            "n/a" if report["cpu_s"].get(k) is None else f"{report['cpu_s'][k]:.1f}"
            for k in ("client", "focus", "wcs"))),
        ("duration", f"{report['duration_s']:.1f} s"),
    ]
    for metric, value in rows:
        table.add_row(metric, value)
    return table
