"""gauge curve: nonlinear mode connectivity, a trained curve vs the straight line.

Trains the bend(s) of a quadratic Bezier curve or a polygonal chain between two fixed
checkpoints on the loss averaged over the curve (Garipov et al. 2018) and measures loss and
error along it with the same alpha grid, BatchNorm handling (--bn) and barrier definitions as
`gauge connect`: loss barrier (Entezari et al. 2022), error barrier (Frankle et al. 2020).
The straight line is measured too. With --align weight|activation B is first permuted into
A's basis and both paths are measured naive and aligned: how much of the linear barrier a
curve removes, and how much alignment leaves for a curve to remove.

Example:
  gauge curve a.safetensors b.safetensors --align weight --steps 1000 --plot curve.png
"""

from __future__ import annotations

import sys
from pathlib import Path

from analyses.common import (UsageError, add_device_argument, add_json_argument,
                             check_outputs, finish, resolve_device)

HELP = "nonlinear mode connectivity: train a Bezier/polychain curve between two checkpoints"


def add_arguments(parser) -> None:
    parser.add_argument("a", metavar="A", help="checkpoint A")
    parser.add_argument("b", metavar="B", help="checkpoint B, same architecture")
    parser.add_argument("--align", choices=["weight", "activation"], default=None,
                        help="also measure both paths after permuting B into A's basis")
    parser.add_argument("--kind", choices=["bezier", "polychain"], default="bezier")
    parser.add_argument("--bends", type=int, default=1, help="trained bends (default 1)")
    parser.add_argument("--steps", type=int, default=1000, help="Adam steps (default 1000)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-samples", type=int, default=None, metavar="N",
                        help="training examples the bends see (default: all)")
    parser.add_argument("--bn", choices=["reset", "none", "repair"], default="reset")
    parser.add_argument("--points", type=int, default=25,
                        help="alphas evenly spaced in [0, 1], plus 0.5 (default 25)")
    parser.add_argument("--data", default=None, help="dataset (default: the checkpoint's)")
    parser.add_argument("--root", default=None, help="folder with the dataset files")
    parser.add_argument("--split", choices=["test", "train"], default="test")
    parser.add_argument("--seed", type=int, default=0, help="seed of t, batches and matching")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="loss and error along the linear and curved paths")
    add_json_argument(parser)
    add_device_argument(parser)
    parser.add_argument("--quiet", action="store_true")


def compute(a, b, *, align=None, kind="bezier", bends=1, steps=1000, lr=1e-3, batch_size=128,
            train_samples=None, bn="reset", points=25, data=None, root=None, split="test",
            seed=0, device="cpu") -> dict:
    from torch.utils.data import TensorDataset

    from analyses.align_many import load_checkpoints
    from analyses.connect import check_points
    from analyses.study import align_params, example_input
    from gauge import curve_path, infer_spec, linear_path
    from tickets.data import load_dataset
    check_points(points)
    model, (pa, pb), metas = load_checkpoints([a, b])
    meta = metas[0]
    ds = load_dataset(data or meta["dataset"], root=root,
                      seed=int(meta.get("dataset_seed", 0) or 0))
    if list(ds.input_shape) != [int(d) for d in meta["input_shape"]]:
        raise UsageError(f"--data {ds.name}: inputs {tuple(ds.input_shape)} do not fit {a}")
    train = ds.train
    if train_samples is not None:
        x, y = ds.train.tensors
        train = TensorDataset(x[:max(train_samples, 0)], y[:max(train_samples, 0)])
    path_data = {"train": train, "test": ds.test}
    kw = dict(n_points=points, split=split, bn=bn, device=device)
    ckw = dict(kind=kind, bends=bends, steps=steps, lr=lr, batch_size=batch_size, seed=seed, **kw)
    out = {"a": str(a), "b": str(b), "model": meta.get("model"), "dataset": ds.name,
           "kind": kind, "bends": bends, "steps": steps, "bn": bn, "align": align}
    out["curve_naive"] = curve_path(model, pa, pb, path_data, **ckw).to_dict()
    out["linear_naive"] = linear_path(model, pa, pb, path_data, **kw).to_dict()
    if align:
        spec = infer_spec(model, example_input(meta))
        pb_al, _ = align_params(model, spec, pa, pb, align, ds, seed=seed, device=device)
        out["curve_aligned"] = curve_path(model, pa, pb_al, path_data, **ckw).to_dict()
        out["linear_aligned"] = linear_path(model, pa, pb_al, path_data, **kw).to_dict()
    return out


def summary(result: dict) -> list[tuple[str, str]]:
    rows = []
    for key in ("linear_naive", "curve_naive", "linear_aligned", "curve_aligned"):
        r = result.get(key)
        if r is not None:
            rows.append((key.replace("_", " "), f"loss barrier {r['loss_barrier']:.4f}, error "
                                                f"barrier {100 * r['error_barrier']:.2f} points"))
    return rows


def plot(result: dict, plot_path) -> list[Path]:
    from analyses.figures import COLORS, new_figure, save_figure
    fig, axes = new_figure(2, 1, width=3.3, height=2.6)
    for key in ("linear_naive", "curve_naive", "linear_aligned", "curve_aligned"):
        r = result.get(key)
        if r is None:
            continue
        shape, which = key.split("_")
        style = dict(color=COLORS[which], ls="--" if shape == "linear" else "-", marker="o",
                     ms=2.5, label=f"{shape}, {which}")
        axes[0][0].plot(r["alphas"], r["loss"], **style)
        axes[0][1].plot(r["alphas"], [100 * e for e in r["error"]], **style)
    split = result["linear_naive"]["split"]
    axes[0][0].set_ylabel(f"{split} loss")
    axes[0][1].set_ylabel(f"{split} error (%)")
    for ax in axes[0]:
        ax.set_xlabel("t (0 = A, 1 = B)")
        ax.legend(fontsize=7)
    fig.suptitle(f"{result['model']} on {result['dataset']}: straight line vs "
                 f"{result['kind']} curve ({result['bends']} bend(s), bn={result['bn']})",
                 fontsize=9)
    stem = Path(plot_path)
    return save_figure(fig, stem.with_suffix("") if stem.suffix else stem)


def run(args) -> int:
    if args.bends < 1:
        raise UsageError(f"--bends must be >= 1 (a curve with no bend is the straight line; "
                         f"use gauge connect), got {args.bends}")
    if args.steps < 0 or args.batch_size < 1 or not args.lr > 0:
        raise UsageError("--steps must be >= 0, --batch-size >= 1 and --lr > 0")
    plot_path = check_outputs(args)
    result = compute(args.a, args.b, align=args.align, kind=args.kind, bends=args.bends,
                     steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                     train_samples=args.train_samples, bn=args.bn, points=args.points,
                     data=args.data, root=args.root, split=args.split, seed=args.seed,
                     device=resolve_device(args.device))
    return finish(args, result, summary, plot, plot_path)


if __name__ == "__main__":
    from analyses.cli import run_command
    sys.exit(run_command(sys.modules[__name__]))
