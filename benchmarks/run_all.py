"""Run every ``benchmarks/bench_*.py`` and print one table of ratios against their references.

Each module exposes ``run(quick: bool = False) -> list[dict]`` with rows
``{benchmark, case, measure, ours, reference_name, reference, ratio, target, ok}``; references are
measured in the same run. A module that is missing ``run``, fails to import or raises becomes one
row saying so, and the others still run.

    python benchmarks/run_all.py [--quick] [--only gwdl mcc] [--csv FILE]

Exit status: 0 when every row is ok, 1 when a target is missed or a benchmark errored.
"""

import argparse
import csv
import glob
import importlib
import os
import sys
import time
import traceback
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
COLUMNS = ("benchmark", "case", "measure", "ours", "reference_name", "reference", "ratio", "target", "ok")


def discover(only: Optional[List[str]] = None) -> List[str]:
    paths = sorted(glob.glob(os.path.join(HERE, "bench_*.py")))
    if only:
        paths = [p for p in paths if os.path.basename(p)[len("bench_"):-3] in only]
    return paths


def error_row(name: str, message: str) -> Dict:
    return {"benchmark": name, "case": "-", "measure": "error", "ours": None, "reference_name": "-",
            "reference": None, "ratio": None, "target": "runs", "ok": False, "error": message}


def run_module(path: str, quick: bool) -> List[Dict]:
    name = os.path.basename(path)[:-3]
    try:
        # imported by its plain name from benchmarks/ (on sys.path): worker processes of a benchmark
        # (e.g. the converter's pool) must be able to import the module their functions live in
        if os.path.dirname(path) not in sys.path:
            sys.path.insert(0, os.path.dirname(path))
        module = importlib.import_module(name)
    except Exception as e:
        return [error_row(name, f"import failed: {type(e).__name__}: {e}")]
    if not callable(getattr(module, "run", None)):
        return [error_row(name, "no run(quick) function")]
    try:
        rows = module.run(quick=quick)
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        return [error_row(name, f"{type(e).__name__}: {e}")]
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        return [error_row(name, "run() did not return a list of dicts")]
    return [{**{c: None for c in COLUMNS}, "benchmark": name, **r} for r in rows]


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: List[Dict]) -> str:
    header = list(COLUMNS)
    body = []
    for r in rows:
        cells = [_cell(r.get(c)) for c in header]
        if r.get("error"):
            cells[3] = r["error"]
        body.append(cells)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(out)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--only", nargs="+", help="benchmark names (bench_<name>.py) to run")
    parser.add_argument("--csv", help="also write the rows to this CSV file")
    args = parser.parse_args(argv)
    sys.path.insert(0, HERE)
    paths = discover(args.only)
    if not paths:
        print("no benchmarks found" + (f" for --only {' '.join(args.only)}" if args.only else ""), file=sys.stderr)
        return 2
    rows = []
    for path in paths:
        started = time.time()
        print(f"running {os.path.basename(path)} ...", file=sys.stderr, flush=True)
        rows += run_module(path, args.quick)
        print(f"  {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    print(format_table(rows))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(COLUMNS) + ["error"], extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    failed = [r for r in rows if not r.get("ok")]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} rows ok" + (f"; not ok: {len(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
