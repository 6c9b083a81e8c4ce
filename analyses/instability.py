"""gauge instability: instability analysis of Frankle, Dziugaite, Roy & Carbin (2020).

Trains the network once to each rewind iteration k, then two copies from there with different
data orders (--data-seeds), and reports the error barrier between the two copies' final weights
per k (max_alpha E(alpha) - mean(E(0), E(1)) on the test set). A network is stable at k when the
barrier is ~0. With --ticket RUN --level L (or --mask FILE) the copies are the sparse
subnetwork m * theta_k (one fixed mask for every k).

Example:
  gauge instability --model mlp --data mnist1d --rewind-iters 0 100 500 2000 --plot inst.png
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from analyses.common import (NotApplicable, UsageError, add_json_argument, add_plot_argument,
                             check_outputs, emit_json, figure_stem, resolve_device)
from analyses.connect import check_points
from tickets.runs import cache_file, level_stamp, read_cache, write_cache
from analyses.study import common_levels, open_runs
from analyses.train import add_training_arguments, config_from_args, model_and_data_from_args

HELP = ("instability analysis: barrier between two copies trained from iteration k with "
        "different data orders (Frankle et al. 2020)")
CACHE_VERSION = 1
DEFAULT_REWIND = (0, 100, 500, 2000)


def add_arguments(parser) -> None:
    add_training_arguments(parser)
    g = parser.add_argument_group("instability")
    g.add_argument("--rewind-iters", type=int, nargs="+", default=list(DEFAULT_REWIND),
                   metavar="K", help="iterations k to branch from (default 0 100 500 2000)")
    g.add_argument("--data-seeds", type=int, nargs=2, default=[1, 2], metavar=("A", "B"),
                   help="data-order seeds of the two copies (default 1 2)")
    g.add_argument("--ticket", default=None, metavar="RUN",
                   help="IMP run directory whose --level mask the copies train under")
    g.add_argument("--level", type=int, default=None, help="level of --ticket")
    g.add_argument("--mask", default=None, metavar="FILE",
                   help="mask: safetensors/.pt keyed by weight name, a pruned state_dict or an "
                        "OpenLTH mask.pth")
    g.add_argument("--bn", choices=["reset", "none", "repair"], default="reset")
    g.add_argument("--points", type=int, default=11, help="alphas on the path (default 11)")
    add_plot_argument(parser, "error barrier vs rewind iteration (PNG + PDF)")
    add_json_argument(parser)


def _mask_from_args(args, source: str, model):
    if args.ticket and args.mask:
        raise UsageError("give --ticket RUN --level L or --mask FILE, not both")
    if args.ticket:
        if args.level is None:
            raise UsageError("--ticket needs --level")
        from tickets import load_level, open_run
        run = open_run(args.ticket)
        if run.meta.get("model") != source:
            raise UsageError(f"--ticket {args.ticket} is a {run.meta.get('model')} run, not "
                             f"--model {args.model}: masks of different models")
        return load_level(run, args.level).mask, f"{args.ticket} level {args.level}"
    if args.level is not None:
        raise UsageError("--level needs --ticket RUN")
    if args.mask:
        from tickets.masks import load_mask
        return load_mask(args.mask, model.state_dict()), args.mask
    return None, "dense"


def run(args) -> int:
    from tickets.instability import instability

    check_points(args.points)
    plot_path = check_outputs(args)
    device = resolve_device(args.device)
    source, kwargs, model, data = model_and_data_from_args(args)
    mask, what = _mask_from_args(args, source, model)
    cfg = config_from_args(args)

    def show(row):
        if args.json != "-":
            print(f"k={row['rewind_iter']:6d}  error barrier {row['error_barrier']:.4f}  loss "
                  f"barrier {row['loss_barrier']:.4f}  test acc {row['test_acc_a']:.4f} / "
                  f"{row['test_acc_b']:.4f}", flush=True)
    res = instability(source, data, cfg, rewind_iters=args.rewind_iters, seed=args.seed,
                      data_seeds=tuple(args.data_seeds), mask=mask, model_kwargs=kwargs,
                      bn=args.bn, n_points=args.points, device=device, callback=show)
    out = res.to_dict()
    out["subnetwork"] = what
    if plot_path is not None:
        out["figures"] = [str(p) for p in _plot({what: res}, figure_stem(plot_path))]
    emit_json(args.json, out)
    return 0


def _plot(results: dict, stem: Path) -> list[Path]:
    from analyses.figures import COLORS, PALETTE, new_figure, save_figure
    fig, axes = new_figure(1, 1, width=3.6, height=2.6)
    ax = axes[0][0]
    for i, (name, res) in enumerate(results.items()):
        ks = [r["rewind_iter"] for r in res.rows]
        eb = [100 * r["error_barrier"] for r in res.rows]
        color = COLORS["dense"] if name == "dense" else (COLORS["ticket"] if i == 1 else
                                                         PALETTE[i % len(PALETTE)])
        label = name if name == "dense" else f"ticket ({100 * res.density:.1f}% weights)"
        ax.plot(ks, eb, marker="o", color=color, label=label)
    ax.set_xscale("symlog", linthresh=max(1, min([k for r in results.values()
                                                  for k in r.rewind_iters if k > 0] or [1])))
    ax.set_xlabel("rewind iteration k")
    ax.set_ylabel("error barrier (%)")
    ax.set_title("instability (Frankle et al. 2020)")
    ax.legend()
    return save_figure(fig, stem)


@dataclass(frozen=True)
class InstabilityReport:
    """Instability of the first run's dense network and of its ticket at one level."""

    run: str
    level: int | None
    results: dict  # "dense" / "level_L" -> InstabilityResult.to_dict()

    def table(self) -> list[dict]:
        names = list(self.results)
        ks = self.results[names[0]]["rewind_iters"]
        rows = []
        for i, k in enumerate(ks):
            row = {"rewind_iter": k}
            for n in names:
                r = self.results[n]["rows"][i]
                row[f"{n}_error_barrier"] = r["error_barrier"]
                row[f"{n}_loss_barrier"] = r["loss_barrier"]
            rows.append(row)
        return rows

    def to_dict(self) -> dict:
        return {"run": self.run, "level": self.level, "results": self.results,
                "table": self.table()}


def _branch(run, level: int | None, data, ks, *, data_seeds, bn: str, points: int, device
            ) -> dict:
    """Instability of ``run``'s dense network (``level`` None) or of its ticket at ``level``,
    cached in ``RUN/analyses/``."""
    from tickets import load_level
    from tickets.instability import instability
    key = {"v": CACHE_VERSION, "run": str(run.path.resolve()), "level": level, "ks": ks,
           "seeds": list(data_seeds), "bn": bn, "points": points,
           "stamp": level_stamp(run, level) if level is not None else 0}
    cpath = cache_file(run.path, "instability", key)
    cached = read_cache(cpath)
    if cached is None:
        mask = load_level(run, level).mask if level is not None else None
        cached = instability(run.meta["model"], data, run.config, rewind_iters=ks,
                             seed=int(run.meta["seed"]), data_seeds=data_seeds, mask=mask,
                             model_kwargs=run.meta.get("model_kwargs") or {}, bn=bn,
                             n_points=points, device=device).to_dict()
        write_cache(cpath, cached)
    return cached


def compute(run_dirs: Sequence[Path], *, levels: Sequence[int] | None = None,
            level: int | None = None, rewind_iters: Sequence[int] = DEFAULT_REWIND,
            data_seeds=(1, 2), bn: str = "reset", points: int = 11, device="cpu",
            progress: bool = False) -> InstabilityReport:
    """Instability of the first run's architecture (its model, data, training config and seed):
    dense, and under its ticket at ``level`` (default: the sparsest level all runs have).
    Rewind iterations past the end of training are dropped. Cached in RUN/analyses/."""
    from tickets import load_run_data
    runs = open_runs(run_dirs)
    if not runs:
        raise NotApplicable("instability needs a run directory")
    run0 = runs[0]
    if level is None:
        pruned = [lv for lv in common_levels(runs)
                  if lv > 0 and (levels is None or lv in set(levels))]
        level = pruned[-1] if pruned else None
    elif level not in run0.levels:
        raise UsageError(f"{run0.path}: level {level} is not complete")
    data = load_run_data(run0)
    total = run0.config.total_iters(len(data.train))
    ks = [k for k in rewind_iters if 0 <= k < total]
    opts = dict(data_seeds=data_seeds, bn=bn, points=points, device=device)
    results = {"dense": _branch(run0, None, data, ks, **opts)}
    if level is not None:
        results[f"level_{level}"] = _branch(run0, level, data, ks, **opts)
    return InstabilityReport(run=str(run0.path), level=level, results=results)


def summary(result: InstabilityReport) -> list[tuple[str, str]]:
    """Error barrier (%) per rewind iteration, dense and ticket."""
    out = []
    for r in result.table():
        parts = [f"{k.replace('_error_barrier', '')} {100 * x:.1f}" for k, x in r.items()
                 if k.endswith("_error_barrier")]
        out.append((f"error barrier (%) rewinding to iter {r['rewind_iter']}", ", ".join(parts)))
    return out


def plot(result: InstabilityReport, out_dir: Path) -> list[Path]:
    from tickets.instability import InstabilityResult
    res = {("dense" if n == "dense" else n): InstabilityResult.from_dict(d)
           for n, d in result.results.items()}
    return _plot(res, Path(out_dir) / "instability")


if __name__ == "__main__":
    from analyses.cli import run_command
    sys.exit(run_command(sys.modules[__name__]))
