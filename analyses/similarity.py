"""gauge similarity: do two networks (or N seeds) learn the same features, layer by layer?

Runs the checkpoints on the same inputs and compares their hidden representations:

* linear CKA (Kornblith et al. 2019) between every layer of A and every layer of B, streamed
  over batches; --debiased uses the unbiased HSIC estimator (Song et al. 2012), which does not
  overestimate the similarity of wide layers on few inputs (Nguyen et al. 2021);
* the matched-neuron correlation (Li et al. 2015): after activation matching, the mean Pearson
  correlation of each unit of A with its matched unit of B (1: B is a relabelling of A).

The layers are the permutable hidden activations of the model's permutation spec, named by the
layer producing them (see gauge.similarity). With N > 2 checkpoints every pair is compared and
the same-layer CKA is averaged over pairs: layers with mean CKA >= --threshold are "shared"
across seeds, the others "seed-specific".

Example:
  gauge similarity s0/level_00/final.safetensors s1/level_00/final.safetensors \\
      --data mnist1d --plot similarity.png
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from analyses.common import (UsageError, add_device_argument, add_json_argument, finish,
                             ensure_output_path, load_checkpoint_for_cli, resolve_device)

HELP = ("representation similarity of networks: layer x layer linear CKA and matched-neuron "
        "correlation")


def add_arguments(parser) -> None:
    parser.add_argument("checkpoints", nargs="+", metavar="CKPT",
                        help="two or more checkpoints of one architecture (.safetensors)")
    parser.add_argument("--data", default=None,
                        help="dataset whose inputs are compared (default: the checkpoint's)")
    parser.add_argument("--root", default=None, help="folder with the dataset files")
    parser.add_argument("--split", choices=["test", "train"], default="test",
                        help="split the inputs come from (default test)")
    parser.add_argument("--num-examples", type=int, default=2000,
                        help="inputs compared (default 2000)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--debiased", action="store_true",
                        help="debiased CKA (unbiased HSIC, Song et al. 2012)")
    parser.add_argument("--threshold", type=float, default=0.8,
                        help="mean CKA at or above which a layer counts as shared across "
                             "seeds (default 0.8)")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="CKA heatmap and per-layer bars (PNG/PDF/SVG by the suffix)")
    add_json_argument(parser)
    add_device_argument(parser)
    parser.add_argument("--quiet", action="store_true")


def compute(model, params_list: Sequence[dict], inputs, *, debiased: bool = False,
            threshold: float = 0.8, batch_size: int = 500, device="cpu"):
    """:func:`gauge.similarity.similarity_across_seeds` with the model's inferred spec."""
    import torch

    from gauge import infer_spec
    from gauge.similarity import similarity_across_seeds
    spec = infer_spec(model, torch.zeros(2, *inputs.shape[1:]))
    return similarity_across_seeds(model.to(device), spec, params_list, inputs,
                                   threshold=threshold, batch_size=batch_size,
                                   debiased=debiased, device=device)


def summary(result) -> list[tuple[str, str]]:
    """One ``(layer, text)`` line per layer: same-layer CKA and matched correlation (mean and
    standard deviation over pairs), shared or seed-specific."""
    many = len(result.pairs) > 1
    out = []
    for i, g in enumerate(result.layers):
        pm = (lambda m, s: f"{m:.3f} +- {s:.3f}") if many else (lambda m, s: f"{m:.3f}")
        kind = "shared" if g in result.shared else "seed-specific"
        out.append((g, f"CKA {pm(result.mean_cka[i], result.std_cka[i])}, matched "
                       f"correlation {pm(result.mean_corr[i], result.std_corr[i])} ({kind})"))
    return out


def plot(result, path: str | Path, *, names: Sequence[str] = ("A", "B")) -> list[Path]:
    """Left: CKA of every layer of A (rows) with every layer of B (columns), first pair.
    Right: per layer, same-layer CKA and matched-neuron correlation (mean +- std over pairs
    when there are more than two networks), the shared threshold dashed."""
    import numpy as np

    from analyses.figures import COLORS, new_figure, save_plot
    r0 = result.results[0]
    m = len(result.layers)
    fig, axes = new_figure(2, 1, width=max(4.0, 0.5 * m + 2.5), height=3.4)
    ax = axes[0][0]
    cka = np.array(r0.cka, dtype=float)
    im = ax.imshow(cka, vmin=0, vmax=1, cmap="viridis", origin="upper")
    ax.grid(False)
    ax.set_xticks(range(m), r0.layers, rotation=45, ha="right")
    ax.set_yticks(range(m), r0.layers)
    ax.set_xlabel(f"layer of {names[1]}")
    ax.set_ylabel(f"layer of {names[0]}")
    for i in range(m):
        for j in range(m):
            if np.isfinite(cka[i, j]):
                ax.text(j, i, f"{cka[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if cka[i, j] > 0.6 else "white")
    est = "debiased " if r0.debiased else ""
    ax.set_title(f"{est}linear CKA")
    fig.colorbar(im, ax=ax, shrink=0.8, label="CKA")
    ax = axes[0][1]
    x = np.arange(m)
    many = len(result.pairs) > 1
    ax.bar(x - 0.2, result.mean_cka, 0.4, yerr=result.std_cka if many else None, capsize=2,
           color=COLORS["ticket"], label="same-layer CKA")
    ax.bar(x + 0.2, result.mean_corr, 0.4, yerr=result.std_corr if many else None,
           capsize=2, color=COLORS["random_reinit"], label="matched-neuron correlation")
    ax.axhline(result.threshold, color=COLORS["chance"], ls="--", lw=1,
               label=f"shared threshold {result.threshold:g}")
    ax.set_xticks(x, result.layers, rotation=45, ha="right")
    ax.set_xlabel("layer")
    ax.set_ylabel("similarity (1 = same features)")
    ax.set_ylim(0, 1.05)
    n_nets = len({i for p in result.pairs for i in p})
    ax.set_title(f"mean over {len(result.pairs)} pairs of {n_nets} networks" if many
                 else "per layer")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, fontsize=7)
    fig.suptitle(f"Representation similarity on {r0.n_examples} inputs", fontsize=9)
    return save_plot(fig, path)


def short_names(paths: Sequence[str]) -> list[str]:
    """The first path component where the paths differ (``s0`` of ``s0/level_00/final``)."""
    parts = [Path(p).with_suffix("").parts for p in paths]
    for i in range(min(map(len, parts))):
        if len({q[i] for q in parts}) > 1:
            return [q[i] for q in parts]
    return [f"#{i + 1}" for i in range(len(paths))]


def run(args) -> int:
    from gauge.errors import check_same_keys

    if len(args.checkpoints) < 2:
        raise UsageError("give at least two checkpoints to compare")
    if args.num_examples < 4 or args.batch_size < 1:
        raise UsageError("--num-examples must be >= 4 and --batch-size >= 1")
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold must be in [0, 1], got {args.threshold}")
    for p in args.checkpoints:
        if Path(p).is_dir():
            raise UsageError(f"{p} is a directory; give a checkpoint file such as "
                             f"{Path(p) / 'level_00' / 'final.safetensors'}")
    if args.plot:
        from analyses.figures import check_plot_path
        check_plot_path(args.plot)
    if args.json not in (None, "-"):
        ensure_output_path(args.json, "JSON")
    device = resolve_device(args.device)
    loaded = [load_checkpoint_for_cli(p) for p in args.checkpoints]
    model, params0, meta = loaded[0]
    for (_, params, _), path in zip(loaded[1:], args.checkpoints[1:]):
        check_same_keys(params0, params, names=(str(args.checkpoints[0]), str(path)))
    name = args.data or meta.get("dataset")
    if not name:
        raise UsageError(f"{args.checkpoints[0]} names no dataset; give --data NAME")
    from tickets import load_dataset
    data = load_dataset(name, root=args.root, seed=int(meta.get("dataset_seed", 0) or 0))
    x = getattr(data, args.split).tensors[0]
    shape = tuple(int(d) for d in meta["input_shape"])
    if tuple(x.shape[1:]) != shape:
        raise UsageError(f"--data {name} has inputs of shape {tuple(x.shape[1:])}, the model "
                         f"expects {shape}")
    inputs = x[:args.num_examples]
    result = compute(model, [p for _, p, _ in loaded], inputs, debiased=args.debiased,
                     threshold=args.threshold, batch_size=args.batch_size, device=device)
    out = {"checkpoints": [str(p) for p in args.checkpoints], "dataset": name,
           "split": args.split, "device": str(device), **result.to_dict()}
    if args.plot:
        out["figures"] = [str(p) for p in plot(result, args.plot,
                                               names=short_names(args.checkpoints[:2]))]
    return finish(args, out, lambda _: summary(result))


if __name__ == "__main__":
    from analyses.cli import run_command
    sys.exit(run_command(sys.modules[__name__]))
