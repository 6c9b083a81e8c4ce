"""gauge transfer: move a lottery ticket from one seed to another (sparse re-basin).

Following Adnan et al. (2025), a ticket found in run A is a mask in A's basis of hidden units;
to use it in run B it must be expressed in B's basis. Steps: align B's dense final weights to
A's (Hungarian weight or activation matching, Ainsworth et al. 2023), which gives the
permutation P mapping B onto A; permute A's level-L mask with P^-1 into B's basis; train B's
rewind weights (its level-0 init.safetensors: theta_0, or theta_k with late rewinding) under
that mask with B's training config and data order. Reported next to it, all from the same
rewind weights: A's mask unpermuted ("naive"), a random mask with the same per-layer survivor
counts, and B's own ticket at level L (read from B's run directory).

The ticket may also come from outside the toolkit: --ticket an OpenLTH replicate (its
level_L mask, aligned on its level-0 trained weights), or a mask file (safetensors/.pt keyed by
parameter name, a pruned state_dict, an OpenLTH mask.pth) with --weights A, the dense weights
of the network it was found in (any checkpoint format). B is always an IMP run directory: its
training config, data and rewind weights are what the ticket is trained with.

Examples:
  gauge transfer --ticket runs/s0 --level 3 --to runs/s1 --json transfer.json
  gauge transfer --ticket open_lth_data/lottery_x/replicate_1 --level 3 --to runs/s1
  gauge transfer --ticket mask_a.pt --weights a.pt --level 3 --to runs/s1
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from analyses.common import (NotApplicable, UsageError, add_output_arguments, check_outputs,
                             emit_json, figure_stem, percent, resolve_device)
from analyses.study import (align_seeds, example_input, is_openlth_tree, open_runs,
                            require_levels, same_architecture, sparsest_pruned_level)
from tickets.runs import cache_file, level_stamp, read_cache, write_cache
from tickets.transfer import TransferResult, transfer_ticket

HELP = "move a ticket from one seed to another by permuting its mask (sparse re-basin)"
CACHE_VERSION = 1


def add_arguments(parser) -> None:
    parser.add_argument("--ticket", required=True, metavar="RUN_A",
                        help="IMP run directory the ticket comes from, an OpenLTH replicate, "
                             "or a mask file (with --weights)")
    parser.add_argument("--weights", default=None, metavar="CKPT",
                        help="with a mask file as --ticket: the dense weights of its network")
    parser.add_argument("--level", type=int, required=True, help="level of the ticket in RUN_A")
    parser.add_argument("--to", required=True, metavar="RUN_B",
                        help="IMP run directory (another seed, same architecture) to move it to")
    parser.add_argument("--align", choices=["weight", "activation"], default="weight",
                        help="how B is matched to A (default weight)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random-mask control and of weight matching")
    add_output_arguments(parser, plot="bar chart of the four test accuracies (PNG + PDF)")


def _open_pair(run_a, run_b, level: int):
    """The two runs, checked: different directories, one architecture and dataset, and the
    levels the transfer reads (0 and ``level`` of both)."""
    a, b = open_runs([run_a, run_b])
    if Path(a.path).resolve() == Path(b.path).resolve():
        raise UsageError("--ticket and --to are the same run directory")
    same_architecture([a.meta, b.meta], [str(a.path), str(b.path)])
    if a.meta.get("dataset") != b.meta.get("dataset"):
        raise UsageError(f"{a.path} was trained on {a.meta.get('dataset')}, {b.path} on "
                         f"{b.meta.get('dataset')}")
    require_levels([a, b], [level, 0])
    return a, b


def transfer(run_a, run_b, level: int, *, align: str = "weight", seed: int = 0, device="cpu"
             ) -> TransferResult:
    """The computation behind ``gauge transfer`` (runs: paths or ``RunInfo``): B aligned to A,
    then :func:`tickets.transfer.transfer_ticket`."""
    from gauge import infer_spec
    from tickets import build_run_model, load_run_data

    a, b = _open_pair(run_a, run_b, level)
    model = build_run_model(b)
    spec = infer_spec(model, example_input(b.meta))
    data = load_run_data(b)
    perm = align_seeds(model, spec, a, b, align, data, seed=seed, device=device)
    return transfer_ticket(a, b, level, spec, perm, align=align, seed=seed, data=data,
                           device=device)


def compute(run_dirs: Sequence[Path], *, levels: Sequence[int] | None = None,
            level: int | None = None, align: str = "weight", device="cpu",
            progress: bool = False) -> TransferResult:
    """Transfer run 0's ticket to run 1 at ``level`` (default: the sparsest level both have);
    cached in RUN_0/analyses/."""
    if len(run_dirs) < 2:
        raise NotApplicable("transfer needs two runs (seeds)")
    a, b = open_runs(run_dirs[:2])
    if level is None:
        level = sparsest_pruned_level([a, b], levels, "transfer")
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


def summary(result: TransferResult) -> list[tuple[str, str]]:
    """Test accuracy of B's rewind weights under each mask."""
    accs = ", ".join(f"{r['mask']} {100 * r['test_acc']:.1f}" for r in result.rows)
    return [(f"test acc % by mask, {percent(result.density)}% weights", accs)]


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


def _external_ticket(args) -> tuple[dict, dict, str]:
    """``(mask, dense weights, name)`` of a ticket that is not a run directory: an OpenLTH
    replicate's level (aligned on its level-0 trained weights) or a mask file with
    ``--weights``; both read onto B's model (:func:`tickets.masks.load_mask`)."""
    from tickets import build_run_model
    from tickets.checkpoints import read_params
    from tickets.masks import load_mask
    from tickets.openlth import open_openlth
    b = open_runs([args.to])[0]
    model = build_run_model(b)
    path = Path(args.ticket)
    if path.is_dir():
        if args.weights:
            raise UsageError("--weights goes with a mask file as --ticket")
        tree = open_openlth(path)
        if len(tree.replicates()) > 1:
            raise UsageError(f"{path}: an OpenLTH run with replicates {tree.replicates()}; name "
                             f"one, e.g. {path / f'replicate_{tree.replicates()[0]}'}")
        rep = tree.replicates()[0]
        mask_at, dense_at = tree.level(rep, args.level).path, tree.level(rep, 0).final
    else:
        if not args.weights:
            raise UsageError(f"--ticket {path} is a mask file: give --weights A, the dense "
                             "weights of the network it was found in (to align on)")
        mask_at, dense_at = path, args.weights
    dense = read_params(dense_at, model).params
    return load_mask(mask_at, dense), dense, str(path)


def transfer_external(args, device) -> TransferResult:
    """``gauge transfer`` with a ticket from an OpenLTH replicate or a mask file."""
    from gauge import infer_spec
    from tickets import build_run_model, load_level, load_run_data
    from tickets.transfer import transfer_mask
    from analyses.study import align_params
    mask, dense_a, name = _external_ticket(args)
    b = open_runs([args.to])[0]
    require_levels([b], [args.level, 0])
    model = build_run_model(b)
    spec = infer_spec(model, example_input(b.meta))
    data = load_run_data(b)
    _, perm = align_params(model, spec, dense_a, load_level(b, 0).final, args.align, data,
                           seed=args.seed, device=device)
    return transfer_mask(mask, name, b, args.level, spec, perm, align=args.align,
                         seed=args.seed, data=data, device=device)


def run(args) -> int:
    plot_path = check_outputs(args, [args.ticket, args.to] + ([args.weights] if args.weights
                                                              else []))
    device = resolve_device(args.device)
    if not Path(args.ticket).is_file() and not is_openlth_tree(args.ticket):
        if args.weights:
            raise UsageError("--weights goes with a mask file as --ticket, not a run directory")
        res = transfer(args.ticket, args.to, args.level, align=args.align, seed=args.seed,
                       device=device)
    else:
        res = transfer_external(args, device)
    out = res.to_dict()
    if plot_path is not None:
        out["figures"] = [str(p) for p in plot(res, plot_path.parent,
                                               stem=figure_stem(plot_path))]
    if args.json != "-":
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
