"""`python -m bench` (or `make bench`): every benchmark, one table, JSON under bench/results/.

    python -m bench [--smoke] [--only sip,download,...] [--update-readme]

Each module runs our side and its baseline in the same run and reports medians and ratios.
`--smoke` is the short CI variant. `--update-readme` rewrites the table between the
`<!-- bench:start -->` / `<!-- bench:end -->` markers of README.md (with `--only`, only
the lines of the rows measured; the rest of the table stays).
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from .common import machine
from .report import COLUMNS, Row, print_table, row_markdown, table_markdown

MODULES = {
    "sip": "bench.sip_joins",
    "download": "bench.download",
    "upload": "bench.upload",
    "fanout": "bench.fanout",
    "present": "bench.present",
    "scale": "bench.scale",
    "scaleout": "bench.scaleout",
}
RESULTS = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parents[1] / "README.md"


def update_readme(rows: list[Row], stamp: str, only: list[str] | None = None,
                  retired: set[str] | None = None) -> None:
    """Write the table between the markers. A full run writes it whole; `only` (a partial
    run, `--only a,b`) replaces the lines of the metrics it measured in place, inserts its
    new metrics after its previous line, drops `retired` metrics (renamed rows) and keeps
    every other line, noting the partial run in the stamp line."""
    text = README.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if start not in text or end not in text:
        return
    head, rest = text.split(start, 1)
    old, tail = rest.split(end, 1)
    if only is None:
        body = f"\n_Last run: {stamp}, `python -m bench`._\n\n{table_markdown(rows)}\n"
        README.write_text(head + start + body + end + tail)
        return
    lines = old.strip("\n").splitlines()
    stamp_line = next((ln for ln in lines if ln.startswith("_")), "_Last run: -_")
    entries: list[tuple[str, str]] = []
    for line in lines:
        if not line.startswith("| ") or line.startswith("| metric |"):
            continue
        cells = line.strip().strip("|").split(" | ")
        missing = len(COLUMNS) - len(cells)
        entries.append((cells[0].strip(), line + " - |" * max(0, missing)))
    measured = {r.metric for r in rows}
    # new metrics go where this run's (or its renamed) rows were, else at the end
    cursor = next((i for i, (m, _) in enumerate(entries)
                   if m in measured or m in (retired or set())), None)
    for row in rows:
        index = next((i for i, (m, _) in enumerate(entries) if m == row.metric), None)
        if index is None:
            index = len(entries) if cursor is None else cursor
            entries.insert(index, (row.metric, row_markdown(row)))
        else:
            entries[index] = (row.metric, row_markdown(row))
        cursor = index + 1
    entries = [(m, ln) for m, ln in entries if m in measured or m not in (retired or set())]
    command = f"`python -m bench --only {','.join(only)}`"
    clauses = [c for c in stamp_line.strip("_").rstrip(".").split("; ") if command not in c]
    clauses.append(f"the {', '.join(only)} rows {stamp}, {command}")
    table = table_markdown([]) + "\n" + "\n".join(ln for _, ln in entries)
    body = f"\n_{'; '.join(clauses)}._\n\n{table}\n"
    README.write_text(head + start + body + end + tail)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="short CI variant")
    parser.add_argument("--only", default="", help="comma-separated: " + ",".join(MODULES))
    parser.add_argument("--update-readme", action="store_true")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    args = parser.parse_args()
    wanted = [m for m in args.only.split(",") if m] or list(MODULES)
    rows: list[Row] = []
    failures = []
    retired: set[str] = set()
    started = time.time()
    for name in wanted:
        try:
            module = importlib.import_module(MODULES[name])
            retired |= set(getattr(module, "RETIRED_METRICS", ()))
            rows += module.run(smoke=args.smoke)
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the rest
            traceback.print_exc()
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    print_table(rows)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    info = machine()
    doc = {"date": stamp, "machine": info, "smoke": args.smoke, "seconds": round(
        time.time() - started, 1), "rows": [r.as_dict() for r in rows], "failures": failures}
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        kind = "smoke" if args.smoke else "full"
        path = RESULTS / f"{stamp.replace(':', '')}-{info['host']}-{kind}.json"
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {path}")
    if args.update_readme and not args.smoke:
        update_readme(rows, f"{stamp} on {info['cores']} cores ({info['machine']})",
                      None if wanted == list(MODULES) else wanted, retired)
    for failure in failures:
        print(f"FAILED {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
