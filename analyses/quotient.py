"""gauge quotient: the distance between two checkpoints once every symmetry is factored out.

Reports three L2 distances between the parameter vectors: raw ||A - B||; permutation-only
min_P ||A - P B|| (weight matching, Ainsworth et al. 2022); and the gauge quotient distance
min over permutations and positive per-unit rescalings g of ||c(A) - g B||, with c(A) the
canonical (minimum-norm, Stock et al. 2019) point of A's rescaling orbit, found by alternating
weight matching with the closed-form best rescaling per unit. It is 0 exactly when B is a
permuted and rescaled copy of A. Networks with normalisation layers have no rescalable groups:
their quotient is the permutation distance between canonical points.

Example:
  gauge quotient a.safetensors b.safetensors --plot distances.png
"""

from __future__ import annotations

import sys
from pathlib import Path

from analyses.common import (UsageError, add_device_argument, add_json_argument,
                             check_outputs, finish, resolve_device)

HELP = "raw, permutation-only and gauge quotient (permutation + rescaling) distance of two checkpoints"


def add_arguments(parser) -> None:
    parser.add_argument("a", metavar="A", help="checkpoint A")
    parser.add_argument("b", metavar="B", help="checkpoint B, same architecture")
    parser.add_argument("--max-iter", type=int, default=20,
                        help="most alternations of matching and rescaling (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weight matching")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="bar chart of the distances and the alternation history")
    add_json_argument(parser)
    add_device_argument(parser)
    parser.add_argument("--quiet", action="store_true")


def compute(a: str, b: str, *, max_iter: int = 20, seed: int = 0, device="cpu") -> dict:
    from analyses.align_many import load_checkpoints
    from analyses.study import example_input
    from gauge import infer_spec, quotient_distance
    model, (pa, pb), metas = load_checkpoints([a, b])
    spec = infer_spec(model, example_input(metas[0]))
    r = quotient_distance(spec, pa, pb, max_iter=max_iter, seed=seed, device=device)
    norm_a = sum(float(v.double().pow(2).sum()) for v in pa.values()
                 if v.is_floating_point()) ** 0.5
    return {"a": str(a), "b": str(b), "model": metas[0].get("model"), "norm_a": norm_a,
            **r.to_dict()}


def summary(result: dict) -> list[tuple[str, str]]:
    rel = lambda v: f"{v:.6g} ({100 * v / max(result['norm_a'], 1e-30):.1f}% of ||A||)"  # noqa: E731
    return [("raw ||A - B||", rel(result["raw"])),
            ("permutation min_P ||A - P B||", rel(result["permutation"])),
            ("canonical ||c(A) - c(B)||", rel(result["canonical"])),
            ("canonical + permutation", rel(result["canonical_permutation"])),
            ("quotient min_g ||c(A) - g B||", rel(result["quotient"])),
            ("rescalable groups", str(len(result["rescalable"]))),
            ("alternations", f"{result['iterations']} "
                             f"({'converged' if result['converged'] else 'cap'})")]


def plot(result: dict, plot_path) -> list[Path]:
    from analyses.figures import COLORS, PALETTE, new_figure, save_figure
    fig, axes = new_figure(2, 1, width=3.3, height=2.6)
    ax = axes[0][0]
    keys = ["raw", "permutation", "canonical", "canonical_permutation", "quotient"]
    labels = ["raw", "perm.", "canonical", "canon.\n+ perm.", "quotient"]
    colors = [COLORS["raw"], PALETTE[4], PALETTE[5], PALETTE[2], COLORS["aligned"]]
    ax.bar(range(len(keys)), [result[k] for k in keys], color=colors)
    ax.set_xticks(range(len(keys)), labels, fontsize=7)
    ax.set_ylabel("L2 distance")
    ax.set_title("distance between A and B")
    ax = axes[0][1]
    ax.plot(range(len(result["history"])), result["history"], marker="o",
            color=COLORS["aligned"])
    ax.set_xlabel("alternation (matching + rescaling)")
    ax.set_ylabel(r"$\|c(A) - gB\|$")
    ax.set_title("quotient distance search")
    fig.suptitle(f"{result.get('model')}: {Path(result['a']).name} vs {Path(result['b']).name}",
                 fontsize=9)
    stem = Path(plot_path)
    return save_figure(fig, stem.with_suffix("") if stem.suffix else stem)


def run(args) -> int:
    if args.max_iter < 1:
        raise UsageError(f"--max-iter must be >= 1, got {args.max_iter}")
    plot_path = check_outputs(args)
    result = compute(args.a, args.b, max_iter=args.max_iter, seed=args.seed,
                     device=resolve_device(args.device))
    return finish(args, result, summary, plot, plot_path)


if __name__ == "__main__":
    from analyses.cli import run_command
    sys.exit(run_command(sys.modules[__name__]))
