"""gauge connect: linear mode connectivity between two checkpoints, naive and aligned.

Evaluates loss and error on the straight line theta(alpha) = (1 - alpha) A + alpha B and
reports the barriers: loss_barrier = max_alpha L(alpha) - [(1 - alpha) L(0) + alpha L(1)]
(Entezari et al. 2022), error_barrier = max_alpha E(alpha) - mean(E(0), E(1)) (Frankle et al.
2020) and the midpoint values (Jordan et al. 2022).

With --align weight|activation, B is first permuted into A's basis (Hungarian weight or
activation matching, Ainsworth et al. 2023) and both paths, naive and aligned, are measured
and drawn in one figure. --bn reset recomputes BatchNorm statistics at every alpha on the
training set, --bn repair applies REPAIR (Jordan et al. 2022), --bn none keeps the interpolated
statistics. Models without BatchNorm accept all three.

A and B may be in any format the toolkit reads (docs/byo.md); the model is the one their
metadata records (a checkpoint written by gauge records it), else --model SOURCE with
--model-kwargs and --input-shape. --data takes a dataset name, a .npz/.pt/.safetensors file or
pkg.module:factory; it must fit the model.

Example:
  gauge connect a.safetensors b.safetensors --align weight --points 25 --plot curve.png
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from analyses.common import (NotApplicable, UsageError, add_model_arguments,
                             add_output_arguments, check_data_fits, check_outputs, emit_json,
                             figure_stem, load_data, load_model_and_params, percent,
                             resolve_device)
from analyses.study import (align_params, align_seeds, common_levels, example_input, open_runs,
                            require_levels, same_architecture)
from tickets.runs import cache_file, level_stamp, read_cache, write_cache

HELP = "linear mode connectivity: loss/error barrier along the path between two checkpoints"

#: Bump to invalidate cached results of compute().
CACHE_VERSION = 1


def check_points(points: int) -> int:
    if points < 2:
        raise UsageError(f"--points must be >= 2 (the two endpoints at least), got {points}")
    return points


# --------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser) -> None:
    parser.add_argument("a", metavar="A", help="checkpoint A (e.g. RUN/level_00/final.safetensors)")
    parser.add_argument("b", metavar="B", help="checkpoint B, same architecture as A")
    parser.add_argument("--align", choices=["weight", "activation"], default=None,
                        help="also measure the path after permuting B into A's basis")
    parser.add_argument("--bn", choices=["reset", "none", "repair"], default="reset",
                        help="BatchNorm statistics along the path (default reset)")
    parser.add_argument("--points", type=int, default=25,
                        help="alphas evenly spaced in [0, 1], plus 0.5 (default 25)")
    add_model_arguments(parser)
    parser.add_argument("--data", default=None,
                        help="dataset: a name, a .npz/.pt/.safetensors file or "
                             "pkg.module:factory (default: the checkpoint's)")
    parser.add_argument("--root", default=None, help="folder with the dataset files")
    parser.add_argument("--split", choices=["test", "train"], default="test",
                        help="split the path is evaluated on (default test)")
    parser.add_argument("--train-metrics", action="store_true",
                        help="also evaluate loss/error on the training set")
    parser.add_argument("--stats-samples", type=int, default=None, metavar="N",
                        help="training samples per statistics pass for --bn reset/repair "
                             "(default: the whole training set)")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="seed of weight matching")
    add_output_arguments(parser, plot="figure of loss and error along the path(s) (PNG + PDF)")


def load_checkpoints_and_data(paths, args, what: str = "checkpoint"):
    """``(loaded, data)``: the checkpoints on one model (:func:`load_model_and_params`) and
    ``--data`` (default: the dataset the checkpoint records), checked to fit the model."""
    data = load_data(args.data, root=args.root) if args.data else None
    loaded = load_model_and_params(paths, args, data)
    if data is None:
        name = loaded.meta.get("dataset")
        if not name:
            raise UsageError(f"{paths[0]}: no dataset recorded in the {what}; pass --data NAME, "
                             "FILE or pkg.module:factory")
        data = load_data(name, root=args.root, seed=int(loaded.meta.get("dataset_seed", 0) or 0))
    check_data_fits(loaded.model, data, data_name=args.data or data.name, model_name=loaded.name)
    return loaded, data


def _train_split_or_none(data, stats_samples):
    if stats_samples is not None and stats_samples <= 0:
        return {"test": data.test}  # no training batches at all
    return data


def run(args) -> int:
    from gauge.connect import linear_path

    check_points(args.points)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    for p in (args.a, args.b):
        if Path(p).is_dir() and not (Path(p) / "config.json").is_file():
            raise UsageError(f"{p} is a directory; give a checkpoint file such as "
                             f"{Path(p) / 'level_00' / 'final.safetensors'}")
    plot_path = check_outputs(args, [args.a, args.b])
    device = resolve_device(args.device)
    loaded, data = load_checkpoints_and_data([args.a, args.b], args)
    model, (pa, pb) = loaded.model, loaded.params
    if args.stats_samples is not None and args.stats_samples <= 0 and args.bn != "none":
        import torch.nn as nn
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if has_bn or args.bn == "repair":
            raise UsageError(f"--stats-samples {args.stats_samples} leaves no training data, but "
                             f"--bn {args.bn} measures statistics on training batches; use a "
                             "positive --stats-samples or --bn none")
    path_data = _train_split_or_none(data, args.stats_samples)
    kw = dict(n_points=args.points, split=args.split, bn=args.bn, batch_size=args.batch_size,
              train_metrics=args.train_metrics,
              stats_samples=args.stats_samples if (args.stats_samples or 0) > 0 else None,
              device=device)
    naive = linear_path(model, pa, pb, path_data, **kw)
    aligned = None
    if args.align:
        from gauge import infer_spec
        spec = infer_spec(model, loaded.example_input())
        pb_aligned, _ = align_params(model, spec, pa, pb, args.align, data, seed=args.seed,
                                     device=device)
        aligned = linear_path(model, pa, pb_aligned, path_data, **kw)
    out = {"a": str(args.a), "b": str(args.b), "model": loaded.name,
           "dataset": data.name, "align": args.align, "bn": args.bn, "split": args.split,
           "naive": naive.to_dict(), "aligned": aligned.to_dict() if aligned else None,
           "device": str(device)}
    if plot_path is not None:
        out["figures"] = [str(p) for p in plot_paths(naive, aligned, plot_path,
                                                     title=f"{loaded.name} on {data.name}")]
    if args.json != "-":
        for name, r in (("naive", naive), ("aligned", aligned)):
            if r is not None:
                mid = "" if r.midpoint_error is None else f", midpoint error {r.midpoint_error:+.4f}"
                print(f"{name:8s} loss barrier {r.loss_barrier:.4f}, error barrier "
                      f"{r.error_barrier:.4f}{mid} (bn={args.bn}, {len(r.alphas)} points)")
    emit_json(args.json, out)
    return 0


def plot_paths(naive, aligned, plot_path, *, title: str = "") -> list[Path]:
    """Loss and error vs alpha, naive and (if given) aligned, in one figure."""
    from analyses.figures import COLORS, new_figure, save_figure
    fig, axes = new_figure(2, 1, width=3.2, height=2.5)
    for r, name in ((naive, "naive"), (aligned, "aligned")):
        if r is None:
            continue
        axes[0][0].plot(r.alphas, r.loss, color=COLORS[name], marker="o", ms=2.5, label=name)
        axes[0][1].plot(r.alphas, [100 * e for e in r.error], color=COLORS[name], marker="o",
                        ms=2.5, label=name)
    axes[0][0].set_ylabel(f"{naive.split} loss")
    axes[0][1].set_ylabel(f"{naive.split} error (%)")
    for ax in axes[0]:
        ax.set_xlabel(r"$\alpha$ (0 = A, 1 = B)")
        ax.legend()
    if title:
        fig.suptitle(f"{title} (bn={naive.bn})", fontsize=9)
    return save_figure(fig, figure_stem(Path(plot_path)))


# --------------------------------------------------------------------------------------------
# report


@dataclass(frozen=True)
class ConnectResult:
    """Barriers between seeds per level: one row per (pair, level) with naive and aligned
    loss/error barriers; ``paths['i-j/L']`` the full paths."""

    runs: list[str]
    bn: str
    align: str
    points: int
    rows: list[dict]
    paths: dict = field(default_factory=dict)

    def table(self) -> list[dict]:
        """Mean +- std over pairs per level."""
        import numpy as np
        out = []
        for level in sorted({r["level"] for r in self.rows}):
            rs = [r for r in self.rows if r["level"] == level]
            row = {"level": level, "density": rs[0]["density"], "pairs": len(rs)}
            for k in ("naive_loss_barrier", "aligned_loss_barrier", "naive_error_barrier",
                      "aligned_error_barrier"):
                v = np.array([r[k] for r in rs], dtype=float)
                row[k] = f"{v.mean():.4f} ± {v.std():.4f}"
            out.append(row)
        return out

    def to_dict(self) -> dict:
        return {"runs": self.runs, "bn": self.bn, "align": self.align, "points": self.points,
                "rows": self.rows, "paths": self.paths}


def _paths(model, spec, data, a, b, level: int, perm, *, bn: str, points: int, device) -> dict:
    """Naive and aligned paths between two seeds' final weights at one level."""
    from gauge import apply_permutation, linear_path
    from tickets import load_level
    la, lb = load_level(a, level), load_level(b, level)
    naive = linear_path(model, la.final, lb.final, data, n_points=points, bn=bn, device=device)
    al = linear_path(model, la.final, apply_permutation(spec, perm(), lb.final), data,
                     n_points=points, bn=bn, device=device)
    return {"naive": naive.to_dict(), "aligned": al.to_dict(),
            "density": float(la.metrics["density"])}


def _row(pair: str, level: int, cached: Mapping) -> dict:
    from gauge import PathResult
    nv, al = PathResult.from_dict(cached["naive"]), PathResult.from_dict(cached["aligned"])
    return {"pair": pair, "level": level, "density": cached["density"],
            "naive_loss_barrier": nv.loss_barrier, "aligned_loss_barrier": al.loss_barrier,
            "naive_error_barrier": nv.error_barrier, "aligned_error_barrier": al.error_barrier}


def compute(run_dirs: Sequence[Path], *, levels: Sequence[int] | None = None, bn: str = "reset",
            align: str = "weight", points: int = 11, max_pairs: int = 3, device="cpu",
            progress: bool = False) -> ConnectResult:
    """Naive and aligned barriers between the final weights of seeds ``(0, 1), (0, 2), ...``
    (at most ``max_pairs`` pairs) at every level in ``levels`` (default: the levels all runs
    have). Each (pair, level) is cached in ``RUN_A/analyses/connect-<key>.json``."""
    from functools import cache, partial

    from gauge import infer_spec
    from tickets import build_run_model, load_run_data

    check_points(points)
    runs = open_runs(run_dirs)
    if len(runs) < 2:
        raise NotApplicable("connect needs at least two runs (seeds)")
    same_architecture([r.meta for r in runs], [str(r.path) for r in runs])
    levels = common_levels(runs) if levels is None else [int(lv) for lv in levels]
    require_levels(runs, levels)
    model = build_run_model(runs[0])
    spec = infer_spec(model, example_input(runs[0].meta))
    data = load_run_data(runs[0])
    rows, paths = [], {}
    for j in range(1, min(len(runs), max_pairs + 1)):
        a, b = runs[0], runs[j]
        perm = cache(partial(align_seeds, model, spec, a, b, align, data, device=device))
        for level in levels:
            key = {"v": CACHE_VERSION, "a": str(a.path.resolve()), "b": str(b.path.resolve()),
                   "level": level, "bn": bn, "align": align, "points": points,
                   "stamp": [level_stamp(a, level), level_stamp(b, level)]}
            cpath = cache_file(a.path, "connect", key)
            cached = read_cache(cpath)
            if cached is None:
                cached = _paths(model, spec, data, a, b, level, perm, bn=bn, points=points,
                                device=device)
                write_cache(cpath, cached)
            rows.append(_row(f"0-{j}", level, cached))
            paths[f"0-{j}/{level}"] = cached
    return ConnectResult(runs=[str(r.path) for r in runs], bn=bn, align=align, points=points,
                         rows=rows, paths=paths)


def summary(result: ConnectResult) -> list[tuple[str, str]]:
    """Loss and error barrier, naive -> aligned, at the densest and the sparsest level (mean
    over pairs)."""
    out = []
    levels = sorted({r["level"] for r in result.rows})
    ends = levels[:1] + levels[-1:] if len(levels) > 1 else levels
    for kind in ("loss", "error"):
        for lv in ends:
            rs = [r for r in result.rows if r["level"] == lv]
            naive = _mean(r[f"naive_{kind}_barrier"] for r in rs)
            al = _mean(r[f"aligned_{kind}_barrier"] for r in rs)
            density = percent(_mean(r["density"] for r in rs))
            out.append((f"{kind} barrier naive -> aligned, {density}% weights",
                        f"{naive:.3f} -> {al:.3f}"))
    return out


def _mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values)


def plot(result: ConnectResult, out_dir: Path) -> list[Path]:
    """Barrier vs weights remaining (naive vs aligned, mean ± std over pairs) and the paths
    of the first pair at the densest level."""
    import numpy as np

    from analyses.figures import COLORS, new_figure, save_figure, weights_remaining_axis
    from gauge.connect import PathResult
    out_dir = Path(out_dir)
    files = []
    levels = sorted({r["level"] for r in result.rows})
    fig, axes = new_figure(2, 1, width=3.2, height=2.5)
    for col, metric in enumerate(("loss_barrier", "error_barrier")):
        ax = axes[0][col]
        for kind in ("naive", "aligned"):
            dens, mean, std = [], [], []
            for lv in levels:
                rs = [r for r in result.rows if r["level"] == lv]
                v = np.array([r[f"{kind}_{metric}"] for r in rs], dtype=float)
                dens.append(100 * rs[0]["density"])
                mean.append(v.mean())
                std.append(v.std())
            mean, std = np.array(mean), np.array(std)
            ax.plot(dens, mean, marker="o", color=COLORS[kind], label=kind)
            ax.fill_between(dens, mean - std, mean + std, color=COLORS[kind], alpha=0.2)
        weights_remaining_axis(ax)
        ax.set_ylabel(metric.replace("_", " "))
        ax.legend()
    fig.suptitle(f"barriers between seeds (bn={result.bn}, align={result.align})", fontsize=9)
    files += save_figure(fig, out_dir / "connect_barriers")
    if result.paths:
        first = next(iter(result.paths))
        p = result.paths[first]
        files += plot_paths(PathResult.from_dict(p["naive"]), PathResult.from_dict(p["aligned"]),
                            out_dir / "connect_path", title=f"pair {first.replace('/', ', level ')}")
    return files


if __name__ == "__main__":
    from analyses.cli import run_command
    sys.exit(run_command(sys.modules[__name__]))
