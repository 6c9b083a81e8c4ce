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
directories OUT/runs/* (reusable: gauge report OUT/runs/* --out DIR reproduces the numbers;
add --quick for a --quick demo) and OUT/demo.json (the demo's configuration and timings). Run again with the same OUT, it
resumes: finished levels and cached analyses are read back. --quick runs a small version
(fewer epochs and levels) in about a minute, for CI.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from analyses.common import (UsageError, emit_json, ensure_output_path, progress_enabled,
                             resolve_device)
from analyses.report import (add_report_arguments, build_report, check_analysis_names, log_for,
                             print_summary)

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
    levels: int


@dataclass(frozen=True)
class DemoPlan:
    """What the demo trains. ``epochs``/``fraction`` apply to every run; ``levels`` to the Adam
    runs, ``sgd_levels`` to the SGD runs.

    ``fraction`` 0.36 per level = two of Frankle & Carbin's 20 % steps at once (0.8^2), so 4
    levels reach the same ~17 % of hidden weights as their 8 levels at half the cost; the
    output layer is pruned at half rate, as in their LeNet-300-100. Under SGD the gap between
    rewinding to init and late rewinding opens at higher sparsity, hence 6 levels (~7 %).
    """

    model: str = "mlp"
    dataset: str = "mnist1d"
    epochs: float = 40
    levels: int = 4
    sgd_levels: int = 6
    fraction: float = 0.36
    sgd_lr: float = 0.1
    sgd_momentum: float = 0.9
    late_rewind: int = 100
    runs: tuple[DemoRun, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return {"model": self.model, "dataset": self.dataset, "epochs": self.epochs,
                "levels": self.levels, "sgd_levels": self.sgd_levels, "fraction": self.fraction, "sgd_lr": self.sgd_lr,
                "sgd_momentum": self.sgd_momentum, "late_rewind": self.late_rewind,
                "runs": [r.__dict__ for r in self.runs]}


def plan(quick: bool = False) -> DemoPlan:
    """The demo's runs: 3 Adam seeds with both controls, then SGD rewound to init and late."""
    base = (DemoPlan(epochs=4, levels=2, sgd_levels=2, fraction=0.5, late_rewind=20) if quick
            else DemoPlan())
    runs = [DemoRun(f"adam_seed{s}", s, "adam", 0, ("random_reinit", "random_prune"),
                    base.levels) for s in range(3)]
    runs += [DemoRun("sgd_rewind0_seed0", 0, "sgd", 0, ("random_reinit",), base.sgd_levels),
             DemoRun(f"sgd_rewind{base.late_rewind}_seed0", 0, "sgd", base.late_rewind,
                     ("random_reinit",), base.sgd_levels)]
    return DemoPlan(**{**base.__dict__, "runs": tuple(runs)})


def _config(p: DemoPlan, run: DemoRun):
    from tickets.train import default_config
    cfg = default_config(p.model, p.dataset).replace(epochs=p.epochs, iters=None)
    if run.optimizer == "sgd":
        cfg = cfg.replace(optimizer="sgd", lr=p.sgd_lr, momentum=p.sgd_momentum)
    return cfg


def _imp_task(task: dict, on_level=None) -> str:
    """One IMP run of the demo (also the body of a worker process)."""
    from tickets import run_imp
    from tickets.data import load_dataset
    from tickets.train import TrainConfig
    data = load_dataset(task["dataset"])
    run_imp(task["model"], data, TrainConfig.from_dict(task["cfg"]), levels=task["levels"],
            fraction=task["fraction"], rewind_iter=task["rewind_iter"], seed=task["seed"],
            out_dir=task["out_dir"], control=task["control"], device=task["device"],
            progress=False, on_level=on_level)
    return task["out_dir"]


def _worker(task: dict) -> str:
    import torch
    # a spawned worker does not run cli.main: one core per process, the small MLP gains
    # nothing from more
    torch.set_num_threads(1)
    return _imp_task(task)


def _completed_trainings(out_dir: str) -> int:
    return sum(1 for _ in Path(out_dir).glob("**/level_*/metrics.json"))


def _run_parallel(tasks: list[dict], jobs: int, bar, log) -> None:
    """IMP runs in ``jobs`` worker processes (spawned: no forked torch state); the progress bar
    counts the levels completed on disk."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_worker, t): t for t in tasks}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
            if bar is not None:
                bar.n = sum(_completed_trainings(t["out_dir"]) for t in tasks)
                bar.refresh()
            for f in done:
                f.result()  # re-raises a worker's error (a TicketsError stays one line)
                log(f"IMP {Path(futures[f]['out_dir']).name}: done")


def torch_device(device):
    import torch
    return torch.device(device)


def run_demo(out: str | Path, *, quick: bool = False, device="cpu", progress: bool = False,
             log=None, only=None, skip=(), jobs: int = 1):
    """Run the demo's IMP runs into ``out/runs`` and build the report in ``out``.

    Returns ``(ReportResult, timings)``; ``timings`` has the seconds spent in IMP and in the
    analyses.
    """
    from tickets.data import load_dataset
    from tickets.store import save_json, versions

    out = ensure_output_path(out, "--out", directory=True)
    check_analysis_names(list(only or []) + list(skip or []))
    log = log or (lambda msg: None)
    p = plan(quick)
    data = load_dataset(p.dataset)
    n_train = len(data.train)
    total_trainings = sum(1 + r.levels * (1 + len(r.controls)) for r in p.runs)
    tasks = []
    for r in p.runs:
        cfg = _config(p, r)
        if r.rewind_iter >= cfg.total_iters(n_train):
            raise UsageError(f"late rewind {r.rewind_iter} is beyond training "
                             f"({cfg.total_iters(n_train)} iterations)")
        tasks.append(dict(model=p.model, dataset=p.dataset, cfg=cfg.to_dict(), levels=r.levels,
                          fraction=p.fraction, rewind_iter=r.rewind_iter, seed=r.seed,
                          out_dir=str(out / "runs" / r.name), control=list(r.controls),
                          device=str(device)))
    run_dirs = [Path(t["out_dir"]) for t in tasks]
    jobs = max(1, min(jobs, len(tasks))) if torch_device(device).type == "cpu" else 1
    log(f"IMP: {len(tasks)} runs ({total_trainings} trainings of {p.epochs:g} epochs) on "
        f"{jobs} process(es)")
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total_trainings, desc="IMP", unit="train", dynamic_ncols=True)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        if jobs == 1:
            for t in tasks:
                log(f"IMP {Path(t['out_dir']).name}")
                _imp_task(t, on_level=(lambda row: bar.update(1)) if bar is not None else None)
        else:
            _run_parallel(tasks, jobs, bar, log)
    finally:
        if bar is not None:
            bar.close()
    t_imp = time.perf_counter() - t0
    log(f"IMP done in {t_imp:.1f}s ({time.process_time() - c0:.1f}s CPU); analyses")
    t1 = time.perf_counter()
    report = build_report(run_dirs, out, device=device, progress=progress, log=log, only=only,
                          skip=skip, quick=quick)
    timings = {"imp_s": t_imp, "imp_jobs": jobs, "analyses_s": time.perf_counter() - t1,
               "per_analysis_s": report.seconds}
    save_json(out / "demo.json", {"quick": quick, "plan": p.to_dict(), "timings": timings,
                                  "device": str(device), "versions": versions()})
    return report, timings


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="gauge-demo", metavar="DIR",
                        help="output folder (default: ./gauge-demo); run again to resume")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="IMP runs in parallel, one CPU core each (default: 2 when the "
                             "machine has 2 or more cores, else 1)")
    add_report_arguments(parser, quick_help="small version for CI and a first look: fewer "
                         "epochs and levels, cheaper analyses (about a minute on 2 cores)")


def run(args) -> int:
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    log = log_for(args)
    jobs = args.jobs if args.jobs is not None else min(2, os.cpu_count() or 1)
    if jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {jobs}")
    report, timings = run_demo(args.out, quick=args.quick, device=device,
                               progress=progress_enabled(args), log=log, only=args.only,
                               skip=args.skip, jobs=jobs)
    if log is not None:
        print_summary(report.summary)
        print(f"demo: IMP {timings['imp_s']:.0f}s, analyses {timings['analyses_s']:.0f}s, total "
              f"{time.perf_counter() - t0:.0f}s; open {report.html}")
    emit_json(args.json, report.results)
    return 0


if __name__ == "__main__":
    from analyses.cli import run_command
    sys.exit(run_command(sys.modules[__name__]))
