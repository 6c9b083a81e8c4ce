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

Example:
  gauge connect a.safetensors b.safetensors --align weight --points 25 --plot curve.png
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from analyses.common import (UsageError, add_device_argument, add_json_argument, emit_json,
                             ensure_output_path, load_checkpoint_for_cli, resolve_device)
from tickets.runs import cache_file, level_stamp, read_cache, write_cache  # noqa: F401

HELP = "linear mode connectivity: loss/error barrier along the path between two checkpoints"

#: Bump to invalidate cached results of compute().
CACHE_VERSION = 1


# --------------------------------------------------------------------------------------------
# helpers shared by connect / overlap / transfer / instability


def same_architecture(metas: Sequence[dict], names: Sequence[str]) -> None:
    """UsageError unless every meta names the same model, options, classes and input shape."""
    def arch(m):
        return (m.get("model"), json.dumps(m.get("model_kwargs") or {}, sort_keys=True),
                m.get("num_classes"), tuple(m.get("input_shape") or ()))
    first = arch(metas[0])
    for m, n in zip(metas[1:], names[1:]):
        if arch(m) != first:
            raise UsageError(f"{n} is a {m.get('model')} {m.get('model_kwargs') or {}}, "
                             f"{names[0]} a {metas[0].get('model')} "
                             f"{metas[0].get('model_kwargs') or {}}: not the same architecture")


def example_input(meta: dict):
    import torch
    return torch.zeros(2, *[int(d) for d in meta["input_shape"]])


def align_params(model, spec, params_a, params_b, method: str, data=None, *, seed: int = 0,
                 device="cpu"):
    """B permuted into A's basis: ``(params_b_aligned, perm)`` (gauge.match.align)."""
    from gauge.match import align
    inputs = None
    if method == "activation":
        if data is None:
            raise UsageError("--align activation needs training data")
        inputs = data.train.tensors[0][:1000]
        aligned, match = align(model, spec, params_a, params_b, method="activation",
                               inputs=inputs)
    else:
        aligned, match = align(model, spec, params_a, params_b, method="weight", seed=seed)
    return aligned, match.perm


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
    parser.add_argument("--data", default=None, help="dataset (default: the checkpoint's)")
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
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="figure of loss and error along the path(s) (PNG + PDF)")
    add_json_argument(parser)
    add_device_argument(parser)
    parser.add_argument("--quiet", action="store_true")


def _load_data(name: str, root, meta: dict, what: str):
    from tickets.data import load_dataset
    data = load_dataset(name, root=root, seed=int(meta.get("dataset_seed", 0) or 0))
    if list(data.input_shape) != [int(d) for d in meta["input_shape"]] or \
            data.num_classes != int(meta["num_classes"]):
        raise UsageError(f"--data {name}: inputs {tuple(data.input_shape)} / "
                         f"{data.num_classes} classes do not fit {what} "
                         f"({tuple(meta['input_shape'])} / {meta['num_classes']} classes)")
    return data


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
        if Path(p).is_dir():
            raise UsageError(f"{p} is a directory; give a checkpoint file such as "
                             f"{Path(p) / 'level_00' / 'final.safetensors'}")
    plot_path = ensure_output_path(args.plot, "plot") if args.plot else None
    if args.json not in (None, "-"):
        ensure_output_path(args.json, "JSON")
    device = resolve_device(args.device)
    model, pa, meta_a = load_checkpoint_for_cli(args.a)
    _, pb, meta_b = load_checkpoint_for_cli(args.b)
    same_architecture([meta_a, meta_b], [args.a, args.b])
    if args.stats_samples is not None and args.stats_samples <= 0 and args.bn != "none":
        import torch.nn as nn
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if has_bn or args.bn == "repair":
            raise UsageError(f"--stats-samples {args.stats_samples} leaves no training data, but "
                             f"--bn {args.bn} measures statistics on training batches; use a "
                             "positive --stats-samples or --bn none")
    data = _load_data(args.data or meta_a["dataset"], args.root, meta_a, args.a)
    path_data = _train_split_or_none(data, args.stats_samples)
    kw = dict(n_points=args.points, split=args.split, bn=args.bn, batch_size=args.batch_size,
              train_metrics=args.train_metrics,
              stats_samples=args.stats_samples if (args.stats_samples or 0) > 0 else None,
              device=device)
    naive = linear_path(model, pa, pb, path_data, **kw)
    aligned = None
    if args.align:
        from gauge.infer import infer_spec
        spec = infer_spec(model, example_input(meta_a))
        pb_aligned, _ = align_params(model, spec, pa, pb, args.align, data, seed=args.seed,
                                     device=device)
        aligned = linear_path(model, pa, pb_aligned, path_data, **kw)
    out = {"a": str(args.a), "b": str(args.b), "model": meta_a["model"],
           "dataset": data.name, "align": args.align, "bn": args.bn, "split": args.split,
           "naive": naive.to_dict(), "aligned": aligned.to_dict() if aligned else None,
           "device": str(device)}
    if plot_path is not None:
        out["figures"] = [str(p) for p in plot_paths(naive, aligned, plot_path,
                                                     title=f"{meta_a['model']} on {data.name}")]
    if args.json != "-" and not args.quiet:
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
    stem = Path(plot_path)
    return save_figure(fig, stem.with_suffix("") if stem.suffix else stem)


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


def compute(run_dirs: Sequence[Path], *, levels: Sequence[int] | None = None, bn: str = "reset",
            align: str = "weight", points: int = 11, max_pairs: int = 3, device="cpu",
            progress: bool = False) -> ConnectResult:
    """Naive and aligned barriers between the final weights of seeds ``(0, 1), (0, 2), ...``
    (at most ``max_pairs`` pairs) at every level in ``levels`` (default: the levels all runs
    have). Each (pair, level) is cached in ``RUN_A/analyses/connect-<key>.json``."""
    from gauge.connect import PathResult, linear_path
    from gauge.infer import infer_spec
    from tickets.runs import build_run_model, load_level, load_run_data, open_run

    check_points(points)
    runs = [open_run(p) for p in run_dirs]
    if len(runs) < 2:
        raise UsageError("connect needs at least two runs (seeds)")
    same_architecture([r.meta for r in runs], [str(r.path) for r in runs])
    common = sorted(set.intersection(*(set(r.levels) for r in runs)))
    levels = common if levels is None else [int(l) for l in levels]
    for r in runs:
        missing = [l for l in levels if l not in r.levels]
        if missing:
            raise UsageError(f"{r.path}: level {missing[0]} is not complete (completed: "
                             f"{', '.join(map(str, r.levels)) or 'none'})")
    model = build_run_model(runs[0])
    spec = infer_spec(model, example_input(runs[0].meta))
    data = load_run_data(runs[0])
    rows, paths, perms = [], {}, {}
    pairs = [(0, j) for j in range(1, len(runs))][:max_pairs]
    for i, j in pairs:
        for level in levels:
            a, b = runs[i], runs[j]
            key = {"v": CACHE_VERSION, "a": str(a.path.resolve()), "b": str(b.path.resolve()),
                   "level": level, "bn": bn, "align": align, "points": points,
                   "stamp": [level_stamp(a, level), level_stamp(b, level)]}
            cpath = cache_file(a.path, "connect", key)
            cached = read_cache(cpath)
            if cached is None:
                la, lb = load_level(a, level), load_level(b, level)
                naive = linear_path(model, la.final, lb.final, data, n_points=points, bn=bn,
                                    device=device)
                # permutation found on the dense networks: a seed's units keep their identity
                # across IMP levels (same init, same rewind point)
                if (i, j) not in perms:
                    d0a, d0b = load_level(a, 0).final, load_level(b, 0).final
                    perms[(i, j)] = align_params(model, spec, d0a, d0b, align, data,
                                                 device=device)[1]
                perm = perms[(i, j)]
                from gauge.symmetry import apply_permutation
                lb_al = apply_permutation(spec, perm, lb.final)
                al = linear_path(model, la.final, lb_al, data, n_points=points, bn=bn,
                                 device=device)
                cached = {"naive": naive.to_dict(), "aligned": al.to_dict(),
                          "density": float(la.metrics.get("density", 1.0))}
                write_cache(cpath, cached)
            nv, al = PathResult.from_dict(cached["naive"]), PathResult.from_dict(cached["aligned"])
            rows.append({"pair": f"{i}-{j}", "level": level, "density": cached["density"],
                         "naive_loss_barrier": nv.loss_barrier,
                         "aligned_loss_barrier": al.loss_barrier,
                         "naive_error_barrier": nv.error_barrier,
                         "aligned_error_barrier": al.error_barrier})
            paths[f"{i}-{j}/{level}"] = cached
    return ConnectResult(runs=[str(r.path) for r in runs], bn=bn, align=align, points=points,
                         rows=rows, paths=paths)


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
