"""Make the multi-seed flatness table of docs/results.md ("Flatness per IMP level, 3 seeds").

Reads the Adam IMP runs made by docs/scripts/imp_tables.py (seeds 0, 1, 2; tickets and the
random_reinit / random_prune controls), measures every level with
``analyses.flatness.compute`` (cached per run under RUN/analyses/, so a second call only reads
JSON) and prints one markdown table: mean +- std over seeds per level and kind.

    PYTHONPATH=. OMP_NUM_THREADS=1 python docs/scripts/flatness_table.py --runs runs/imp_study
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch

from analyses.flatness import compute

COLUMNS = (("top_eig_raw", "λmax raw", 2), ("top_eig_gauge_fixed", "λmax gauge-fixed", 2),
           ("trace_raw", "tr(H) raw", 0), ("trace_gauge_fixed", "tr(H) gauge-fixed", 0),
           ("sharpness_adaptive", "adaptive sharpness", 4), ("test_acc", "test acc", 3))
KINDS = {None: "ticket", "random_reinit": "random reinit", "random_prune": "random prune"}


def fmt(values, digits):
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path("runs/imp_study"))
    ap.add_argument("--study", default="adam")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--levels", type=int, nargs="+", default=[0, 2, 4, 6, 8, 10])
    ap.add_argument("--no-controls", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    dirs = [args.runs / f"{args.study}_s{s}" for s in args.seeds]
    missing = [str(d) for d in dirs if not (d / "run.json").is_file()]
    if missing:
        print(f"error: no IMP run at {', '.join(missing)}; make them with "
              f"docs/scripts/imp_tables.py", file=sys.stderr)
        return 2
    result = compute(dirs, levels=args.levels, controls=not args.no_controls, progress=False)
    groups = defaultdict(list)
    for row in result.rows:
        groups[(row["control"], row["level"])].append(row)
    head = ["kind", "level", "weights left"] + [name for _, name, _ in COLUMNS]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * 2 + "---:|" * (len(head) - 2))
    for control in KINDS:
        for level in args.levels:
            rows = groups.get((control, level))
            if not rows or (control is not None and level == 0):
                continue
            cells = [KINDS[control] if level else "dense", str(level),
                     f"{100 * statistics.mean(r['density'] for r in rows):.1f}%"]
            cells += [fmt([float(r[key]) for r in rows], digits) for key, _, digits in COLUMNS]
            print("| " + " | ".join(cells) + " |")
    print(f"\n{len(result.rows)} rows from {len(dirs)} seeds; options {result.options}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
