"""gauge transfer: move a lottery ticket from one seed to another (sparse re-basin).

Following Adnan et al. (2025), a ticket found in run A is a mask in A's basis of hidden units;
to use it in run B it must be expressed in B's basis. Steps: align B's dense final weights to
A's (Hungarian weight or activation matching, Ainsworth et al. 2023), which gives the
permutation P mapping B onto A; permute A's level-L mask with P^-1 into B's basis; train B's
rewind weights (its level-0 init.safetensors: theta_0, or theta_k with late rewinding) under
that mask with B's training config and data order. Reported next to it, all from the same
rewind weights: A's mask unpermuted ("naive"), a random mask with the same per-layer survivor
counts, and B's own ticket at level L (read from B's run directory).

Example:
  gauge transfer --ticket runs/s0 --level 3 --to runs/s1 --json transfer.json
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from analyses.common import (UsageError, add_device_argument, add_json_argument, emit_json,
                             ensure_output_path, resolve_device)
from analyses.connect import (align_params, cache_file, example_input, level_stamp, read_cache,
                              same_architecture, write_cache)
from tickets.transfer import VARIANTS, TransferResult, transfer_ticket

HELP = "move a ticket from one seed to another by permuting its mask (sparse re-basin)"
CACHE_VERSION = 1


def add_arguments(parser) -> None:
    parser.add_argument("--ticket", required=True, metavar="RUN_A",
                        help="IMP run directory the ticket comes from")
    parser.add_argument("--level", type=int, required=True, help="level of the ticket in RUN_A")
    parser.add_argument("--to", required=True, metavar="RUN_B",
                        help="IMP run directory (another seed, same architecture) to move it to")
    parser.add_argument("--align", choices=["weight", "activation"], default="weight",
                        help="how B is matched to A (default weight)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random-mask control and of weight matching")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="bar chart of the four test accuracies (PNG + PDF)")
    add_json_argument(parser)
    add_device_argument(parser)
    parser.add_argument("--quiet", action="store_true")


def transfer(run_a, run_b, level: int, *, align: str = "weight", seed: int = 0, device="cpu"
             ) -> TransferResult:
    """The computation behind ``gauge transfer`` (runs: paths or ``RunInfo``): B aligned to A,
    then :func:`tickets.transfer.transfer_ticket`."""
    from gauge.infer import infer_spec
    from tickets.runs import build_run_model, load_level, load_run_data, open_run

    a = run_a if hasattr(run_a, "meta") else open_run(run_a)
    b = run_b if hasattr(run_b, "meta") else open_run(run_b)
    if Path(a.path).resolve() == Path(b.path).resolve():
        raise UsageError("--ticket and --to are the same run directory")
    same_architecture([a.meta, b.meta], [str(a.path), str(b.path)])
    if a.meta.get("dataset") != b.meta.get("dataset"):
        raise UsageError(f"{a.path} was trained on {a.meta.get('dataset')}, {b.path} on "
                         f"{b.meta.get('dataset')}")
    for run, lv in ((a, level), (a, 0), (b, 0), (b, level)):
        if lv not in run.levels:
            raise UsageError(f"{run.path}: level {lv} is not complete (completed: "
                             f"{', '.join(map(str, run.levels)) or 'none'})")
    model = build_run_model(b)
    spec = infer_spec(model, example_input(b.meta))
    data = load_run_data(b)
    _, perm = align_params(model, spec, load_level(a, 0).final, load_level(b, 0).final, align,
                           data, seed=seed, device=device)
    return transfer_ticket(a, b, level, spec, perm, align=align, seed=seed, data=data,
                           device=device)


def compute(run_dirs: Sequence[Path], *, levels: Sequence[int] | None = None,
            level: int | None = None, align: str = "weight", device="cpu",
            progress: bool = False) -> TransferResult:
    """Transfer run 0's ticket to run 1 at ``level`` (default: the sparsest level both have);
    cached in RUN_0/analyses/."""
    from tickets.runs import open_run
    if len(run_dirs) < 2:
        raise UsageError("transfer needs two runs (seeds)")
    a, b = open_run(run_dirs[0]), open_run(run_dirs[1])
    if level is None:
        common = sorted(set(a.levels) & set(b.levels))
        if levels is not None:
            common = [lv for lv in common if lv in set(levels)]
        pruned = [lv for lv in common if lv > 0]
        if not pruned:
            raise UsageError("transfer needs a pruned level (>= 1) in both runs")
        level = pruned[-1]
    key = {"v": CACHE_VERSION, "a": str(a.path.resolve()), "b": str(b.path.resolve()),
           "level": level, "align": align,
           "stamp": [level_stamp(a, level), level_stamp(b, level), level_stamp(b, 0)]}
    cpath = cache_file(a.path, "transfer", key)
    cached = read_cache(cpath)
    if cached is not None:
        return TransferResult(**cached)
    res = transfer(a, b, level, align=align, device=device)
    write_cache(cpath, res.to_dict())
    return res


def plot(result: TransferResult, out_dir: Path, *, stem: str | Path | None = None) -> list[Path]:
    from analyses.figures import COLORS, PALETTE, new_figure, save_figure
    colors = {"permuted": COLORS["aligned"], "naive": COLORS["naive"],
              "random": COLORS["random_prune"], "own": PALETTE[3]}
    fig, axes = new_figure(1, 1, width=3.4, height=2.6)
    ax = axes[0][0]
    names = [r["mask"] for r in result.rows]
    accs = [100 * (r["test_acc"] or 0) for r in result.rows]
    ax.bar(names, accs, color=[colors.get(n, PALETTE[0]) for n in names])
    for i, v in enumerate(accs):
        ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(min(accs) * 0.9, max(accs) * 1.05 + 1)
    ax.set_title(f"ticket transfer, {100 * result.density:.1f}% weights", fontsize=9)
    return save_figure(fig, Path(stem) if stem else Path(out_dir) / "transfer")


def run(args) -> int:
    plot_path = ensure_output_path(args.plot, "plot") if args.plot else None
    if args.json not in (None, "-"):
        ensure_output_path(args.json, "JSON")
    device = resolve_device(args.device)
    res = transfer(args.ticket, args.to, args.level, align=args.align, seed=args.seed,
                   device=device)
    out = res.to_dict()
    if plot_path is not None:
        stem = plot_path.with_suffix("") if plot_path.suffix else plot_path
        out["figures"] = [str(p) for p in plot(res, plot_path.parent, stem=stem)]
    if args.json != "-" and not args.quiet:
        print(f"ticket {args.ticket} level {args.level} ({100 * res.density:.1f}% weights) -> "
              f"{args.to}:")
        for r in res.rows:
            jac = res.overlap_with_own.get(r["mask"], {}).get("jaccard")
            extra = f"  (Jaccard with own ticket {jac:.3f})" if jac is not None else ""
            print(f"  {r['mask']:9s} test acc {r['test_acc']:.4f}{extra}")
    emit_json(args.json, out)
    return 0


if __name__ == "__main__":
    from analyses.cli import run_command
    sys.exit(run_command(sys.modules[__name__]))
