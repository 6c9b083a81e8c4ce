"""gauge demo: the whole study on embedded MNIST-1D, then the report.

On MNIST-1D (Greydanus 2020; generated procedurally, nothing is downloaded) with the
40-300-100-10 MLP:

  1. IMP with rewinding to init for 3 seeds under Adam (Frankle & Carbin's LeNet optimizer),
     with the random_reinit and random_prune controls;
  2. the optimizer story: IMP under SGD with momentum rewound to init, and with late
     rewinding (Frankle et al. 2019), each with the random_reinit control;
  3. every analysis across the seeds (gauge report): sparsity-accuracy curves, naive vs
     aligned barriers per level, instability vs rewind iteration, mask overlap raw / aligned /
     chance, ticket transfer, flatness per level raw and gauge-fixed, the permutation found.

Writes OUT/report.html (self-contained), OUT/results.json, OUT/figures/*.png|pdf, the IMP run
directories OUT/runs/* (reusable: gauge report OUT/runs/* --out DIR reproduces the numbers)
and OUT/demo.json (the demo's configuration and timings). Run again with the same OUT, it
resumes: finished levels and cached analyses are read back. --quick runs a small version
(fewer epochs and levels) in about a minute, for CI.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from analyses.common import (UsageError, add_json_argument, emit_json, progress_enabled,
                             resolve_device)
from analyses.report import (add_report_arguments, build_report, check_analysis_names,
                             print_summary, set_threads)

HELP = "run the whole study on embedded MNIST-1D and write a report"

__all__ = ["DemoPlan", "plan", "run_demo"]


@dataclass(frozen=True)
class DemoRun:
    """One IMP run of the demo: its folder name and :func:`tickets.imp.run_imp` arguments."""

    name: str
    seed: int
    optimizer: str
    rewind_iter: int
    controls: tuple[str, ...]


@dataclass(frozen=True)
class DemoPlan:
    """What the demo trains. ``epochs``/``levels``/``fraction`` apply to every run.

    ``fraction`` 0.36 per level = two of Frankle & Carbin's 20 % steps at once (0.8^2), so 4
    levels reach the same ~17 % of hidden weights as their 8 levels at half the cost; the
    output layer is pruned at half rate, as in their LeNet-300-100.
    """

    model: str = "mlp"
    dataset: str = "mnist1d"
    epochs: float = 40
    levels: int = 4
    fraction: float = 0.36
    sgd_lr: float = 0.1
    sgd_momentum: float = 0.9
    late_rewind: int = 100
    runs: tuple[DemoRun, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return {"model": self.model, "dataset": self.dataset, "epochs": self.epochs,
                "levels": self.levels, "fraction": self.fraction, "sgd_lr": self.sgd_lr,
                "sgd_momentum": self.sgd_momentum, "late_rewind": self.late_rewind,
                "runs": [r.__dict__ for r in self.runs]}


def plan(quick: bool = False) -> DemoPlan:
    """The demo's runs: 3 Adam seeds with both controls, then SGD rewound to init and late."""
    base = (DemoPlan(epochs=6, levels=2, fraction=0.5, late_rewind=20) if quick
            else DemoPlan())
    runs = [DemoRun(f"adam_seed{s}", s, "adam", 0, ("random_reinit", "random_prune"))
            for s in range(3)]
    runs += [DemoRun("sgd_rewind0_seed0", 0, "sgd", 0, ("random_reinit",)),
             DemoRun(f"sgd_rewind{base.late_rewind}_seed0", 0, "sgd", base.late_rewind,
                     ("random_reinit",))]
    return DemoPlan(**{**base.__dict__, "runs": tuple(runs)})


def _config(p: DemoPlan, run: DemoRun):
    from tickets.train import default_config
    cfg = default_config(p.model, p.dataset).replace(epochs=p.epochs, iters=None)
    if run.optimizer == "sgd":
        cfg = cfg.replace(optimizer="sgd", lr=p.sgd_lr, momentum=p.sgd_momentum)
    return cfg


def run_demo(out: str | Path, *, quick: bool = False, device="cpu", progress: bool = False,
             log=None, only=None, skip=()):
    """Run the demo's IMP runs into ``out/runs`` and build the report in ``out``.

    Returns ``(ReportResult, timings)``; ``timings`` has the seconds spent in IMP and in the
    analyses.
    """
    from tickets.data import load_dataset
    from tickets.imp import run_imp
    from tickets.store import save_json, versions

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: --out is a file, expected a directory")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"{out}: cannot write the demo: {parent} is a file")
    check_analysis_names(list(only or []) + list(skip or []))
    log = log or (lambda msg: None)
    p = plan(quick)
    data = load_dataset(p.dataset)
    n_train = len(data.train)
    total_trainings = sum(1 + p.levels * (1 + len(r.controls)) for r in p.runs)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total_trainings, desc="IMP", unit="train", dynamic_ncols=True)
    t0 = time.perf_counter()
    run_dirs = []
    for r in p.runs:
        cfg = _config(p, r)
        if r.rewind_iter >= cfg.total_iters(n_train):
            raise UsageError(f"late rewind {r.rewind_iter} is beyond training "
                             f"({cfg.total_iters(n_train)} iterations)")
        path = out / "runs" / r.name
        log(f"IMP {r.name}: {r.optimizer}, rewind to iteration {r.rewind_iter}, {p.levels} "
            f"levels, controls {', '.join(r.controls)}")
        if bar is not None:
            bar.set_postfix_str(r.name)

        def on_level(row, _bar=bar):
            if _bar is not None:
                _bar.update(1)

        run_imp(p.model, data, cfg, levels=p.levels, fraction=p.fraction,
                rewind_iter=r.rewind_iter, seed=r.seed, out_dir=path, control=list(r.controls),
                device=device, progress=False, on_level=on_level)
        run_dirs.append(path)
    if bar is not None:
        bar.close()
    t_imp = time.perf_counter() - t0
    log(f"IMP done in {t_imp:.1f}s; analyses")
    t1 = time.perf_counter()
    report = build_report(run_dirs, out, device=device, progress=progress, log=log, only=only,
                          skip=skip)
    timings = {"imp_s": t_imp, "analyses_s": time.perf_counter() - t1,
               "per_analysis_s": report.seconds}
    save_json(out / "demo.json", {"quick": quick, "plan": p.to_dict(), "timings": timings,
                                  "device": str(device), "versions": versions()})
    return report, timings


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="gauge-demo", metavar="DIR",
                        help="output folder (default: ./gauge-demo); run again to resume")
    parser.add_argument("--quick", action="store_true",
                        help="small version (fewer epochs and levels), about a minute")
    add_report_arguments(parser)
    add_json_argument(parser)


def run(args) -> int:
    set_threads(args.threads)
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    verbose = not args.quiet and args.json != "-"
    log = (lambda m: print(m, file=sys.stderr)) if verbose else None
    report, timings = run_demo(args.out, quick=args.quick, device=device,
                               progress=progress_enabled(args), log=log, only=args.only,
                               skip=args.skip)
    if verbose:
        print_summary(report.results)
        print(f"demo: IMP {timings['imp_s']:.0f}s, analyses {timings['analyses_s']:.0f}s, total "
              f"{time.perf_counter() - t0:.0f}s; open {report.html}")
    emit_json(args.json, report.results)
    return 0


if __name__ == "__main__":
    from analyses.cli import run_command
    sys.exit(run_command(sys.modules[__name__]))
