"""Make the pruning-at-initialization tables of docs/results.md (section "Pruning at
initialization vs IMP").

Runs the `gauge imp` commands below for seeds 0, 1, 2 (skipping runs already complete: the
run directories resume), then prints two markdown tables (mean +- std over seeds) built only
from the run directories: test accuracy against sparsity for IMP and each score at init, and
Frankle et al. (2021)'s ablations of each score (shuffle each layer's mask = random_prune,
reinitialise = random_reinit, invert the scores = inverted).

    PYTHONPATH=. python docs/scripts/pai_tables.py --runs runs/pai_study [--jobs 2]

Every run uses one CPU thread (OMP_NUM_THREADS=1): small MLPs are fastest that way and the
results are bit-reproducible.
"""

from __future__ import annotations

import sys
from pathlib import Path

from imp_tables import ms, run_study  # the same driver and mean ± std as the IMP tables

SEEDS = (0, 1, 2)
SPARSITIES = (0.5, 0.8, 0.9, 0.96)
#: The MLP 40-300-100-10 on MNIST-1D, Adam 1e-3 for 20 epochs (800 iterations); every weight
#: matrix ranked together (global) so that IMP and the scores differ only in the ranking.
BASE = ["--model", "mlp", "--data", "mnist1d", "--epochs", "20", "--eval-every", "800",
        "--sparsities", ",".join(map(str, SPARSITIES)), "--quiet"]
ABLATIONS = ("random_prune", "random_reinit", "inverted")
SCORED = ("snip", "grasp", "synflow", "magnitude_init")
STUDIES = {
    "imp": BASE + ["--strategy", "global"],
    **{s: BASE + ["--strategy", s] + [a for c in ABLATIONS for a in ("--control", c)]
       for s in SCORED},
    "random": BASE + ["--strategy", "random"],
}
NAMES = {"imp": "IMP (global)", "snip": "SNIP", "grasp": "GraSP", "synflow": "SynFlow",
         "magnitude_init": "magnitude at init", "random": "random"}


def command(study: str, seed: int, runs: Path) -> list[str]:
    return ["gauge", "imp", *STUDIES[study], "--seed", str(seed),
            "--out", str(runs / f"{study}_s{seed}")]


def accs(runs: Path, study: str, level: int, control: str | None = None) -> list[float]:
    """Test accuracy of ``level`` per seed, from the run directories."""
    from tickets.runs import open_run
    out = []
    for seed in SEEDS:
        run = open_run(runs / f"{study}_s{seed}")
        if level in run.completed_levels(control):
            out.append(run.metrics(level, control)["test_acc"])
    return out


def table_methods(runs: Path) -> str:
    lines = ["| sparsity % | weights left % | " + " | ".join(NAMES[s] for s in STUDIES) + " |",
             "|---:|---:|" + "---:|" * len(STUDIES)]
    lines.append("| 0 (dense) | 100 | " + " | ".join(ms(accs(runs, s, 0)) for s in STUDIES)
                 + " |")
    for lv, s in enumerate(SPARSITIES, 1):
        lines.append(f"| {100 * s:g} | {100 * (1 - s):g} | " + " | ".join(
            ms(accs(runs, st, lv)) for st in STUDIES) + " |")
    return "\n".join(lines)


def table_ablations(runs: Path) -> str:
    lines = ["| score | sparsity % | score's mask | shuffled (random_prune) | reinit "
             "(random_reinit) | inverted |", "|---|---:|---:|---:|---:|---:|"]
    for s in SCORED:
        for lv, sp in enumerate(SPARSITIES, 1):
            cells = [ms(accs(runs, s, lv))] + [ms(accs(runs, s, lv, c)) for c in ABLATIONS]
            lines.append(f"| {NAMES[s]} | {100 * sp:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_layer(runs: Path, study: str, level: int) -> str:
    """Density per tensor of ``study``'s level ``level`` (seed 0)."""
    from tickets.runs import open_run
    per = open_run(runs / f"{study}_s0").metrics(level)["per_layer"]
    return ", ".join(f"{n} {100 * v['density']:.1f}%" for n, v in per.items())


def main() -> int:
    _, runs = run_study(__doc__, "runs/pai_study", STUDIES, command)
    print("\n### Test accuracy against sparsity\n")
    print(table_methods(runs))
    print("\n### Ablations (Frankle et al. 2021)\n")
    print(table_ablations(runs))
    last = len(SPARSITIES)
    print(f"\nDensity per tensor at {100 * SPARSITIES[-1]:g}% sparsity (seed 0):\n")
    for s in STUDIES:
        print(f"- {NAMES[s]}: {per_layer(runs, s, last)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
