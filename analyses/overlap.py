"""gauge overlap: are the tickets of different seeds the same subnetwork, modulo permutation?

Compares the level-L masks of N IMP runs pairwise: intersection, Jaccard index and overlap
coefficient, against the chance level of independent random masks with the same per-layer
densities (hypergeometric; a z-score says how far above chance). With --align weight (or
activation) each run's network is first matched to the other's (Hungarian matching of the
dense level-0 final weights, Ainsworth et al. 2023) and its mask permuted into the other's
basis: masks permute like the weights they cover.

Besides the toolkit's run directories, the tickets may come from elsewhere:

* OpenLTH run trees (a run folder with replicate_*/, or several replicate folders): the
  replicates' level-L masks, aligned on their level-0 trained weights;
* mask files with --masks MA MB [...]: safetensors or .pt keyed by parameter name (`_mask`
  suffixes stripped), pruned state_dicts (their `*_mask` entries), OpenLTH mask.pth files;
  --weights A B [...] gives the dense weights each is aligned on (any checkpoint format; the
  model as in `gauge align`, from their metadata or --model).

Examples:
  gauge overlap runs/s0 runs/s1 runs/s2 --level 3 --align weight --plot heatmap.png
  gauge overlap open_lth_data/lottery_x --level 3 --align weight
  gauge overlap --masks ma.pt mb.pt --weights a.pt b.pt --model mynets.py:ResMLP --align weight
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from analyses.common import (UsageError, add_model_arguments,
                             add_output_arguments, check_outputs, emit_json, figure_stem,
                             percent, resolve_device)
from tickets.runs import cache_file, level_stamp, read_cache, write_cache
from analyses.study import (align_seeds, common_levels, example_input, is_openlth_tree,
                            open_runs, open_seed_runs)

HELP = "mask overlap of tickets across seeds, raw and modulo permutation, against chance"
CACHE_VERSION = 1


def add_arguments(parser) -> None:
    parser.add_argument("runs", nargs="*", metavar="RUN_DIR",
                        help="IMP run directories (>= 2) or OpenLTH run trees")
    parser.add_argument("--level", type=int, default=None,
                        help="IMP level whose masks to compare (needed with RUN_DIR)")
    parser.add_argument("--masks", nargs="+", default=None, metavar="MASK",
                        help="mask files to compare instead of run directories (>= 2)")
    parser.add_argument("--weights", nargs="+", default=None, metavar="CKPT",
                        help="with --masks: the dense weights each mask is aligned on")
    parser.add_argument("--align", choices=["weight", "activation"], default=None,
                        help="also compare after permuting each mask into the other's basis")
    parser.add_argument("--common-basis", action="store_true",
                        help="keep counts of all masks in one synchronised basis vs chance")
    add_model_arguments(parser)
    parser.add_argument("--data", default=None,
                        help="inputs of --align activation for --masks/OpenLTH trees: a dataset "
                             "name, a .npz/.pt/.safetensors file or pkg.module:factory")
    parser.add_argument("--root", default=None, help="folder with the dataset files")
    add_output_arguments(parser, plot="heatmaps of the Jaccard matrices (PNG + PDF)")


@dataclass(frozen=True)
class OverlapAnalysis:
    """Per level: Jaccard matrices (``raw``, ``aligned``, ``chance``) over the runs, z-scores,
    and per-layer numbers of each pair."""

    runs: list[str]
    align: str | None
    levels: dict  # str(level) -> {"density", "matrix": OverlapMatrix.to_dict(), "pairs": {...}}

    def table(self) -> list[dict]:
        rows = []
        for lv, d in sorted(self.levels.items(), key=lambda kv: int(kv[0])):
            m = d["matrix"]
            n = len(m["names"])
            off = [(i, j) for i in range(n) for j in range(n) if i < j]

            def mean(key):
                vals = [m[key][i][j] for i, j in off if m.get(key) and m[key][i][j] is not None]
                return sum(vals) / len(vals) if vals else None
            rows.append({"level": int(lv), "density": d["density"], "pairs": len(off),
                         "jaccard_raw": mean("raw"), "jaccard_aligned": mean("aligned"),
                         "jaccard_chance": mean("chance"), "z_raw": mean("z_raw"),
                         "z_aligned": mean("z_aligned")})
        return rows

    def to_dict(self) -> dict:
        return {"runs": self.runs, "align": self.align, "levels": self.levels,
                "table": self.table()}


def _perms(runs, align: str, device, state: dict):
    """Spec and the permutation of every pair (i < j) of seeds, found once per call."""
    if "perms" not in state:
        from gauge import infer_spec
        from tickets import build_run_model, load_run_data
        model = build_run_model(runs[0])
        spec = infer_spec(model, example_input(runs[0].meta))
        data = load_run_data(runs[0]) if align == "activation" else None
        state["spec"] = spec
        state["perms"] = {(i, j): align_seeds(model, spec, runs[i], runs[j], align, data,
                                              device=device)
                          for i in range(len(runs)) for j in range(i + 1, len(runs))}
    return state["perms"], state["spec"]


def _analyse(runs, level: int, align: str | None, device, state: dict) -> dict:
    from tickets import load_level
    masks = [load_level(r, level).mask for r in runs]
    perms, spec = _perms(runs, align, device, state) if align else (None, None)
    return overlaps([str(r.path) for r in runs], masks, perms, spec)


def overlaps(names: Sequence[str], masks: Sequence[dict], perms=None, spec=None) -> dict:
    """The overlap matrix of ``masks`` and each pair's numbers, raw and (with ``perms[(i, j)]``
    mapping network j onto network i, for ``spec``) aligned."""
    from gauge import aligned_mask_overlap, mask_overlap, overlap_matrix
    from tickets import sparsity
    mat = overlap_matrix(dict(zip(names, masks)), perms=perms, spec=spec)
    pairs = {}
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            entry = {"raw": mask_overlap(masks[i], masks[j]).to_dict()}
            if perms is not None:
                entry["aligned"] = aligned_mask_overlap(spec, perms[(i, j)], masks[i],
                                                        masks[j]).to_dict()
            pairs[f"{i}-{j}"] = entry
    return {"density": sparsity(masks[0]).density, "matrix": mat.to_dict(), "pairs": pairs}


def _openlth_tickets(paths, level: int) -> tuple[list[str], list[str], list[str]]:
    """``(names, mask paths, dense weight paths)`` of the replicates of OpenLTH trees: each
    replicate's level-``level`` mask and its level-0 trained weights."""
    from tickets.openlth import open_openlth
    names, masks, weights = [], [], []
    for path in paths:
        tree = open_openlth(path)
        for rep in tree.replicates():
            masks.append(str(tree.level(rep, level).path))
            weights.append(str(tree.level(rep, 0).final))
            names.append(f"{path}/replicate_{rep}" if len(tree.replicates()) > 1 else str(path))
    return names, masks, weights


def compute_files(mask_paths: Sequence[str], weight_paths: Sequence[str] | None, args, *,
                  names: Sequence[str] | None = None, level: int = 0, device="cpu"
                  ) -> OverlapAnalysis:
    """Overlap of masks read from files (:func:`tickets.masks.load_mask`), aligned (with
    ``args.align``) on the dense weights ``weight_paths`` read onto one model
    (:func:`analyses.common.load_model_and_params`)."""
    from gauge import check_same_keys, infer_spec
    from tickets.masks import load_mask
    from analyses.common import load_data, load_model_and_params
    from analyses.study import align_params
    if len(mask_paths) < 2:
        raise UsageError("give at least two masks (or run directories) to compare")
    if weight_paths is not None and len(weight_paths) != len(mask_paths):
        raise UsageError(f"--weights gives {len(weight_paths)} checkpoints for "
                         f"{len(mask_paths)} masks; give one per mask, in the same order")
    if args.align and weight_paths is None:
        raise UsageError(f"--align {args.align} needs --weights A B ...: the dense weights each "
                         "mask is aligned on")
    names = list(names or mask_paths)
    perms = spec = None
    if weight_paths is None:
        masks = [load_mask(p) for p in mask_paths]
    else:
        data = load_data(args.data, root=args.root) if args.data else None
        loaded = load_model_and_params(weight_paths, args, data)
        masks = [load_mask(m, params) for m, params in zip(mask_paths, loaded.params)]
        if args.align:
            if args.align == "activation" and data is None:
                raise UsageError("--align activation needs --data (the inputs to correlate on)")
            spec = infer_spec(loaded.model, loaded.example_input())
            perms = {(i, j): align_params(loaded.model, spec, loaded.params[i],
                                          loaded.params[j], args.align, data, device=device)[1]
                     for i in range(len(masks)) for j in range(i + 1, len(masks))}
    for m, p in zip(masks[1:], mask_paths[1:]):
        check_same_keys(masks[0], m, names=(mask_paths[0], p), what="masks")
    return OverlapAnalysis(runs=names, align=args.align if perms else None,
                           levels={str(level): overlaps(names, masks, perms, spec)})


def compute(run_dirs: Sequence[Path], *, levels: Sequence[int] | None = None,
            align: str | None = "weight", device="cpu", progress: bool = False
            ) -> OverlapAnalysis:
    """Overlap matrices of the runs' masks at each level in ``levels`` (default: every pruned
    level all runs have), raw and aligned; cached per level in RUN_0/analyses/."""
    if levels is None:
        levels = common_levels(open_runs(run_dirs))
    levels = [int(lv) for lv in levels if int(lv) > 0] or [int(lv) for lv in levels]
    runs = open_seed_runs(run_dirs, levels + ([0] if align else []), "overlap")
    out, state = {}, {}
    for lv in levels:
        key = {"v": CACHE_VERSION, "runs": [str(r.path.resolve()) for r in runs], "level": lv,
               "align": align, "stamp": [level_stamp(r, lv) for r in runs] +
               [level_stamp(r, 0) for r in runs]}
        cpath = cache_file(runs[0].path, "overlap", key)
        res = read_cache(cpath)
        if res is None:
            res = _analyse(runs, lv, align, device, state)
            write_cache(cpath, res)
        out[str(lv)] = res
    return OverlapAnalysis(runs=[str(r.path) for r in runs], align=align, levels=out)


def summary(result: OverlapAnalysis) -> list[tuple[str, str]]:
    """Mean Jaccard over seed pairs at the sparsest level: raw, aligned and chance."""
    t = result.table()[-1]
    aligned = "-" if t["jaccard_aligned"] is None else f"{t['jaccard_aligned']:.3f}"
    return [(f"Jaccard raw / aligned / chance, {percent(t['density'])}% weights",
             f"{t['jaccard_raw']:.3f} / {aligned} / {t['jaccard_chance']:.3f}")]


def _short(names):
    return [Path(n).name or n for n in names]


def plot(result: OverlapAnalysis, out_dir: Path, *, stem: str | Path | None = None
         ) -> list[Path]:
    """Heatmaps (raw / aligned / chance Jaccard) at the sparsest level, and mean off-diagonal
    Jaccard vs weights remaining."""
    import numpy as np

    from analyses.figures import COLORS, new_figure, save_figure, weights_remaining_axis
    files = []
    lv = max(result.levels, key=int)
    m = result.levels[lv]["matrix"]
    kinds = [k for k in ("raw", "aligned", "chance") if m.get(k) is not None]
    fig, axes = new_figure(len(kinds), 1, width=2.6, height=2.4)
    labels = _short(m["names"])
    vmax = 1.0
    for ax, kind in zip(axes[0], kinds):
        a = np.array(m[kind], dtype=float)
        im = ax.imshow(a, vmin=0, vmax=vmax, cmap="viridis")
        ax.set_title(f"{kind} Jaccard")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=6)
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
        ax.grid(False)
        for i in range(a.shape[0]):
            for j in range(a.shape[1]):
                ax.text(j, i, f"{a[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if a[i, j] < 0.6 else "black")
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8)
    dens = 100 * result.levels[lv]["density"]
    fig.suptitle(f"mask overlap across seeds, level {lv} ({dens:.1f}% weights remaining)",
                 fontsize=9)
    files += save_figure(fig, Path(stem) if stem else Path(out_dir) / "overlap_heatmap")
    if stem is None and len(result.levels) > 1:
        rows = result.table()
        fig, axes = new_figure(1, 1, width=3.6, height=2.6)
        ax = axes[0][0]
        x = [100 * r["density"] for r in rows]
        for kind in ("raw", "aligned", "chance"):
            y = [r[f"jaccard_{kind}"] for r in rows]
            if all(v is not None for v in y):
                ax.plot(x, y, marker="o", color=COLORS[kind], label=kind,
                        ls="--" if kind == "chance" else "-")
        weights_remaining_axis(ax)
        ax.set_ylabel("mean Jaccard between seeds")
        ax.legend()
        files += save_figure(fig, Path(out_dir) / "overlap_vs_level")
    return files


def run(args) -> int:
    if args.common_basis:
        from analyses.consensus import run_common_basis
        return run_common_basis(args)
    plot_path = check_outputs(args, [*args.runs, *(args.masks or []), *(args.weights or [])])
    device = resolve_device(args.device)
    if args.masks:
        if args.runs:
            raise UsageError("give run directories or --masks, not both")
        result = compute_files(args.masks, args.weights, args, device=device,
                               level=args.level or 0)
    elif args.weights:
        raise UsageError("--weights goes with --masks MA MB ...")
    elif args.runs and all(is_openlth_tree(p) for p in args.runs):
        if args.level is None:
            raise UsageError("--level L: the OpenLTH level whose masks to compare")
        names, masks, weights = _openlth_tickets(args.runs, args.level)
        result = compute_files(masks, weights, args, names=names, level=args.level,
                               device=device)
    else:
        if len(args.runs) < 2:
            raise UsageError("give at least two run directories (or --masks MA MB ...)")
        if args.level is None:
            raise UsageError("--level L: the IMP level whose masks to compare")
        result = compute(args.runs, levels=[args.level], align=args.align, device=device)
    out = result.to_dict()
    if plot_path is not None:
        out["figures"] = [str(p) for p in plot(result, plot_path.parent,
                                               stem=figure_stem(plot_path))]
    if args.json != "-":
        r = result.table()[0]
        print(f"level {r['level']} ({100 * r['density']:.1f}% weights), {r['pairs']} pair(s): "
              f"Jaccard raw {r['jaccard_raw']:.4f} (z {r['z_raw'] or 0:+.1f}), chance "
              f"{r['jaccard_chance']:.4f}" + (f", aligned {r['jaccard_aligned']:.4f} (z "
                                              f"{r['z_aligned'] or 0:+.1f})"
                                              if r["jaccard_aligned"] is not None else ""))
    emit_json(args.json, out)
    return 0


if __name__ == "__main__":
    from analyses.cli import run_command
    sys.exit(run_command(sys.modules[__name__]))
