"""`python -m bench` (or `make bench`): every benchmark, one table, JSON under bench/results/.

    python -m bench [--smoke] [--only sip,download,...] [--update-readme]

Each module runs our side and its baseline in the same run and reports medians and ratios.
`--smoke` is the short CI variant. `--update-readme` rewrites the table between the
`<!-- bench:start -->` / `<!-- bench:end -->` markers of README.md.
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
from .report import Row, print_table, table_markdown

MODULES = {
    "sip": "bench.sip_joins",
    "download": "bench.download",
    "upload": "bench.upload",
    "fanout": "bench.fanout",
    "scale": "bench.scale",
    "scaleout": "bench.scaleout",
}
RESULTS = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parents[1] / "README.md"


def update_readme(rows: list[Row], stamp: str) -> None:
    text = README.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if start not in text or end not in text:
        return
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    body = f"\n_Last run: {stamp}, `python -m bench`._\n\n{table_markdown(rows)}\n"
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
    started = time.time()
    for name in wanted:
        try:
            module = importlib.import_module(MODULES[name])
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
        update_readme(rows, f"{stamp} on {info['cores']} cores ({info['machine']})")
    for failure in failures:
        print(f"FAILED {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
