"""Make the IMP tables of docs/results.md (sections "IMP: tickets vs controls" and
"Optimizer regimes and late rewinding").

Runs the `gauge imp` commands below for seeds 0, 1, 2 (skipping runs already complete: the
run directories resume), then prints the two markdown tables (mean +- std over seeds) built
only from the run directories (tickets.runs.open_run / summary rows).

    PYTHONPATH=. python docs/scripts/imp_tables.py --runs runs/imp_study [--jobs 2]

Every run uses one CPU thread (OMP_NUM_THREADS=1): small MLPs are fastest that way and the
results are bit-reproducible.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEEDS = (0, 1, 2)
LEVELS = 10
#: Late rewinding points for the SGD regime: 3 and 10 epochs of 60 (5% and 17% of training;
#: Frankle et al. 2019 rewind to 0.1-7% of training, Renda et al. 2020 further). mnist1d has
#: 40 iterations per epoch at batch 100.
LATE_KS = (120, 400)
# Evaluating every 10 epochs instead of every epoch saves a quarter of the CPU time; the final
# accuracy (always evaluated at the end) is unchanged.
BASE = ["--model", "mlp", "--data", "mnist1d", "--levels", str(LEVELS), "--eval-every", "400",
        "--quiet"]
SGD = ["--optimizer", "sgd", "--lr", "0.1", "--momentum", "0.9"]
STUDIES = {
    # Frankle & Carbin (2019) LeNet recipe: Adam 1e-3, layerwise 20% (output 10%), reset to init
    "adam": BASE + ["--control", "random_reinit", "--control", "random_prune"],
    # SGD with momentum, reset to init (k = 0) vs late rewinding (k = LATE_K)
    "sgd_k0": BASE + SGD + ["--control", "random_reinit"],
    **{f"sgd_k{k}": BASE + SGD + ["--rewind-iter", str(k), "--control", "random_reinit"]
       for k in LATE_KS},
}


def command(study: str, seed: int, runs: Path) -> list[str]:
    return ["gauge", "imp", *STUDIES[study], "--seed", str(seed),
            "--out", str(runs / f"{study}_s{seed}")]


def run_one(cmd: list[str]) -> tuple[list[str], int, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "analyses.cli", *cmd[1:]], env=env,
                          capture_output=True, text=True, cwd=ROOT)
    return cmd, proc.returncode, proc.stderr.strip()


def rows(runs: Path, study: str, control: str | None = None) -> list[dict[int, dict]]:
    """Per seed: level -> summary row, from the run directories."""
    from tickets.runs import load_level, open_run
    out = []
    for seed in SEEDS:
        run = open_run(runs / f"{study}_s{seed}")
        levels = run.levels if control is None else run.controls.get(control, ())
        out.append({lv: load_level(run, lv, control=control).metrics for lv in levels})
    return out


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"


def table_controls(runs: Path) -> str:
    ticket = rows(runs, "adam")
    reinit = rows(runs, "adam", "random_reinit")
    rprune = rows(runs, "adam", "random_prune")
    lines = ["| level | weights remaining % | ticket test acc % | random_reinit % | "
             "random_prune % |", "|---:|---:|---:|---:|---:|"]
    for lv in range(LEVELS + 1):
        if not all(lv in r for r in ticket):
            continue
        dens = 100 * statistics.mean(r[lv]["density"] for r in ticket)
        get = lambda rs: [r[lv]["test_acc"] for r in rs if lv in r]  # noqa: E731
        lines.append(f"| {lv} | {dens:.1f} | {ms(get(ticket))} | {ms(get(reinit))} | "
                     f"{ms(get(rprune))} |")
    return "\n".join(lines)


def table_regimes(runs: Path) -> str:
    show = (8, 9, 10)
    lines = ["| regime | rewind k | dense % | " + " | ".join(
        f"ticket L{lv} %" for lv in show) + " | " + " | ".join(
        f"reinit L{lv} %" for lv in show) + " | ticket - dense | ticket - reinit |",
        "|---|---:|---:|" + "---:|" * (2 * len(show) + 2)]
    regimes = [("adam", "Adam 1e-3", 0), ("sgd_k0", "SGD 0.1, mom 0.9", 0)]
    regimes += [(f"sgd_k{k}", "SGD 0.1, mom 0.9", k) for k in LATE_KS]
    for study, name, k in regimes:
        ticket, reinit = rows(runs, study), rows(runs, study, "random_reinit")
        cells = [ms([r[0]["test_acc"] for r in ticket])]
        cells += [ms([r[lv]["test_acc"] for r in ticket if lv in r]) for lv in show]
        cells += [ms([r[lv]["test_acc"] for r in reinit if lv in r]) for lv in show]
        # per seed: mean over levels L8-L10 of the gap, then mean +- std over seeds (points)
        gap_dense = [statistics.mean(t[lv]["test_acc"] - t[0]["test_acc"] for lv in show)
                     for t in ticket if all(lv in t for lv in show)]
        gap_reinit = [statistics.mean(t[lv]["test_acc"] - r[lv]["test_acc"] for lv in show)
                      for t, r in zip(ticket, reinit) if all(lv in t and lv in r for lv in show)]
        cells += [ms(gap_dense),
                  ms(gap_reinit)]
        lines.append(f"| {name} | {k} | " + " | ".join(cells) + " |")
    adam = rows(runs, "adam")
    weights = ", ".join(f"L{lv} = {100 * statistics.mean(r[lv]['density'] for r in adam):.1f}%"
                        for lv in show)
    return "\n".join(lines) + (f"\n\nWeights remaining: {weights}. The two gap columns "
                               "are in points, averaged over L8-L10 per seed, then mean ± "
                               "std over seeds.")


def run_study(doc: str, default_runs: str, studies, command) -> tuple[Path, Path]:
    """The shared driver of the study scripts: parse ``--runs/--jobs/--tables-only``, run every
    ``command(study, seed, runs)`` that is missing (``gauge imp`` resumes), print the commands
    with the seed left as ``S``. Returns ``(runs as given, runs resolved)``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path(default_runs))
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (one thread each)")
    ap.add_argument("--tables-only", action="store_true", help="do not run anything")
    args = ap.parse_args()
    runs = args.runs.resolve()
    cmds = [command(s, seed, runs) for seed in SEEDS for s in studies]
    if not args.tables_only:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for cmd, rc, err in pool.map(run_one, cmds):
                print(f"[rc={rc}] {shlex.join(cmd)}" + (f"\n  {err}" if rc else ""),
                      file=sys.stderr, flush=True)
    print("Commands (seeds 0, 1, 2):\n")
    for s in studies:
        print("    " + shlex.join(command(s, 0, args.runs)).replace("--seed 0", "--seed S")
              .replace("_s0", "_sS"))
    return args.runs, runs


def main() -> int:
    _, runs = run_study(__doc__, "runs/imp_study", STUDIES, command)
    print("\n### Tickets vs controls (Adam)\n")
    print(table_controls(runs))
    print("\n### Optimizer regimes and late rewinding\n")
    print(table_regimes(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
