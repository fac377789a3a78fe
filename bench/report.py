"""Benchmark result rows and the table they print as: what `bench/__main__.py` and every
benchmark module share, in a module that imports neither (no import cycle)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Row:
    """One line of the bench table: our figure, the baseline's, and whether the target held."""

    metric: str
    ours: float
    baseline: float | None
    target: str
    """Human-readable target, e.g. ">= 0.25x", "< 250 ms", "< 2048 MiB"."""
    passed: bool | None
    unit: str = ""
    lower_is_better: bool = False
    detail: dict[str, Any] = field(default_factory=dict)
    cpu_ms: float | None = None
    """Our servers' CPU milliseconds per operation (e.g. per join) over the measured window,
    from /proc: the cost beside the rate, which contention on the machine does not change."""
    baseline_cpu_ms: float | None = None
    """The baseline's, the same way."""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.ours / self.baseline

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = None if self.ratio is None else round(self.ratio, 3)
        return out


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        text = f"{value:,}"
    else:
        text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"
    return f"{text} {unit}".strip()


def _cpu(r: Row) -> str:
    """"ours / baseline ms" of server CPU per operation, "-" where the row has none."""
    if r.cpu_ms is None and r.baseline_cpu_ms is None:
        return "-"

    def one(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}" if v < 10 else f"{v:.1f}"

    return f"{one(r.cpu_ms)} / {one(r.baseline_cpu_ms)} ms"


COLUMNS = ("metric", "ours", "baseline", "ratio", "target", "pass",
           "server CPU per op (ours / baseline)")


def table_markdown(rows: list[Row]) -> str:
    """The rows as the Markdown table README.md carries."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append(row_markdown(r))
    return "\n".join(lines)


def row_markdown(r: Row) -> str:
    """One Markdown table line; its first cell is the metric (README merges on it)."""
    ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
    ok = {True: "yes", False: "**no**", None: "-"}[r.passed]
    return (f"| {r.metric} | {_fmt(r.ours, r.unit)} | {_fmt(r.baseline, r.unit)} | "
            f"{ratio} | {r.target} | {ok} | {_cpu(r)} |")


def print_table(rows: list[Row]) -> None:
    """The rows as a terminal table (rich is imported only when a table is printed)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="webconf benchmarks (medians; ratio = ours / baseline)")
    for col in COLUMNS:
        table.add_column(col)
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        ok = {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}[r.passed]
        table.add_row(r.metric, _fmt(r.ours, r.unit), _fmt(r.baseline, r.unit), ratio,
                      r.target, ok, _cpu(r))
    Console(width=170).print(table)
