"""gauge merge: average N checkpoints in one neuron basis and measure the merged network.

The checkpoints are first brought into one basis (--method mergemany, Ainsworth et al. 2023;
c2m3, Crisostomi et al. 2024; reference; or none for the naive average), then averaged. The
merged network is measured against the endpoints' mean on --split; --bn reset recomputes
BatchNorm statistics, --bn repair applies REPAIR (Jordan et al. 2022) with the endpoints' mean
statistics as the target (folded into the written weights), --bn none keeps the averaged
statistics. The naive average is always measured too, for comparison. With --masks (one mask
file per checkpoint, e.g. RUN/level_LL/mask.safetensors) the merged network is pruned to the
consensus mask: the weights kept by at least --consensus K of the N masks in the common basis.

Example:
  gauge merge s0.safetensors s1.safetensors s2.safetensors --out merged.safetensors --bn repair
"""

from __future__ import annotations

import sys
from pathlib import Path

from analyses.common import (UsageError, add_device_argument, add_json_argument,
                             check_outputs, ensure_output_path, finish, resolve_device)

HELP = "merge N checkpoints: align them into one basis, average, measure vs the endpoints"


def add_arguments(parser) -> None:
    parser.add_argument("checkpoints", nargs="+", metavar="CKPT",
                        help="checkpoints of one architecture (>= 2)")
    parser.add_argument("--out", required=True, help="merged checkpoint (.safetensors)")
    parser.add_argument("--method", choices=["mergemany", "c2m3", "reference", "none"],
                        default="mergemany", help="alignment before averaging (default mergemany)")
    parser.add_argument("--bn", choices=["reset", "none", "repair"], default="reset",
                        help="statistics of the merged network (default reset)")
    parser.add_argument("--masks", nargs="+", default=None, metavar="MASK",
                        help="one mask file per checkpoint: merge the tickets under their "
                             "consensus mask")
    parser.add_argument("--consensus", type=int, default=None, metavar="K",
                        help="keep the weights kept by >= K of the N masks (default: majority)")
    parser.add_argument("--data", default=None, help="dataset (default: the checkpoint's)")
    parser.add_argument("--root", default=None, help="folder with the dataset files")
    parser.add_argument("--split", choices=["test", "train"], default="test")
    parser.add_argument("--stats-samples", type=int, default=None, metavar="N",
                        help="training samples per statistics pass (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weight matching")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="bars: endpoints, their mean, naive and aligned merge")
    add_json_argument(parser)
    add_device_argument(parser)
    parser.add_argument("--quiet", action="store_true")


def load_masks(paths, params_list, names) -> list[dict]:
    """One bool mask per checkpoint; a mask whose tensors are not weights of the checkpoints
    (a ticket of another run family) is refused naming the file and tensor."""
    from tickets.store import load_checkpoint
    masks = []
    for path, name in zip(paths, names):
        m, _ = load_checkpoint(path, check=False)
        for k, v in m.items():
            if k not in params_list[0] or tuple(v.shape) != tuple(params_list[0][k].shape):
                raise UsageError(f"mask {path}: tensor {k!r} is not a weight of {name} (a "
                                 f"mask of a different run family?)")
        masks.append({k: v.bool() for k, v in m.items()})
    return masks


def compute(paths, *, method="mergemany", bn="reset", masks=None, consensus_k=None,
            data=None, root=None, split="test", stats_samples=None, seed=0, device="cpu"
            ) -> dict:
    """Naive and aligned merges of the checkpoints, measured; ``result["merged"]`` holds the
    merged params of ``method`` (not JSON)."""
    from analyses.align_many import load_checkpoints
    from analyses.study import example_input
    from gauge import align_many, consensus, evaluate_merge, infer_spec
    from tickets.data import load_dataset
    model, params, metas = load_checkpoints(paths)
    n = len(params)
    if masks is not None and len(masks) != n:
        raise UsageError(f"--masks: {len(masks)} mask files for {n} checkpoints")
    k = consensus_k if consensus_k is not None else n // 2 + 1
    if masks is not None and not 1 <= k <= n:
        raise UsageError(f"--consensus must be in 1..{n}, got {k}")
    mask_list = load_masks(masks, params, paths) if masks else None
    meta = metas[0]
    ds = load_dataset(data or meta["dataset"], root=root,
                      seed=int(meta.get("dataset_seed", 0) or 0))
    if list(ds.input_shape) != [int(d) for d in meta["input_shape"]]:
        raise UsageError(f"--data {ds.name}: inputs {tuple(ds.input_shape)} do not fit "
                         f"{paths[0]} ({tuple(meta['input_shape'])})")
    if stats_samples is not None and stats_samples <= 0:
        ds = {"test": ds.test}
    kw = dict(bn=bn, split=split, stats_samples=stats_samples, device=device)
    out = {"checkpoints": [str(p) for p in paths], "model": meta.get("model"), "method": method,
           "bn": bn, "dataset": getattr(ds, "name", meta["dataset"])}
    spec = infer_spec(model, example_input(meta))
    raw_cons = consensus(mask_list) if mask_list else None
    naive, merged = evaluate_merge(model, params, ds,
                                   mask=raw_cons.mask(k) if raw_cons else None, **kw)
    out["naive"] = naive.to_dict()
    cons = raw_cons
    if method != "none":
        sync = align_many(spec, params, method=method, seed=seed, device=device)
        out["alignment"] = sync.to_dict()
        cons = consensus(sync.aligned(spec, mask_list)) if mask_list else None
        res, merged = evaluate_merge(model, sync.aligned(spec, params), ds,
                                     mask=cons.mask(k) if cons else None, **kw)
        out["aligned"] = res.to_dict()
    if cons is not None:
        out["consensus"] = {"k": k, "density": cons.density(k),
                            "chance_density": cons.chance_density(k),
                            "raw_density": raw_cons.density(k)}
    out["merged"] = merged
    out["meta"] = meta
    return out


def summary(result: dict) -> list[tuple[str, str]]:
    best = result.get("aligned") or result["naive"]
    rows = [("networks", str(best["n"])),
            ("endpoint error (mean)", f"{100 * best['endpoint_mean_error']:.2f}%"),
            ("naive merge error", f"{100 * result['naive']['merged_error']:.2f}%")]
    if result.get("aligned"):
        rows.append((f"{result['method']} merge error", f"{100 * best['merged_error']:.2f}%"))
    rows.append(("merged - endpoints", f"{100 * best['error_gap']:+.2f} points error, "
                                       f"{best['loss_gap']:+.4f} loss"))
    if "consensus" in result:
        c = result["consensus"]
        rows.append(("consensus mask", f">= {c['k']} of {best['n']}: density "
                                       f"{100 * c['density']:.2f}% (chance "
                                       f"{100 * c['chance_density']:.2f}%)"))
    rows.append(("bn", result["bn"]))
    return rows


def plot(result: dict, plot_path) -> list[Path]:
    from analyses.figures import COLORS, PALETTE, new_figure, save_figure
    best = result.get("aligned") or result["naive"]
    labels = [f"net {i}" for i in range(best["n"])] + ["endpoint\nmean", "naive\nmerge"]
    values = list(best["endpoint_error"]) + [best["endpoint_mean_error"],
                                            result["naive"]["merged_error"]]
    colors = [PALETTE[5]] * best["n"] + [COLORS["dense"], COLORS["naive"]]
    if result.get("aligned"):
        labels.append(f"{result['method']}\nmerge")
        values.append(best["merged_error"])
        colors.append(COLORS["aligned"])
    fig, axes = new_figure(1, 1, width=max(3.4, 0.45 * len(labels) + 1), height=2.8)
    ax = axes[0][0]
    ax.bar(range(len(values)), [100 * v for v in values], color=colors)
    ax.set_xticks(range(len(values)), labels, fontsize=7)
    ax.set_ylabel(f"{best['split']} error (%)")
    ax.set_title(f"merging {best['n']} {result.get('model')} networks (bn={result['bn']})")
    stem = Path(plot_path)
    return save_figure(fig, stem.with_suffix("") if stem.suffix else stem)


def run(args) -> int:
    from tickets.store import save_checkpoint
    out = ensure_output_path(args.out, "checkpoint")
    plot_path = check_outputs(args)
    if args.consensus is not None and not args.masks:
        raise UsageError("--consensus needs --masks (one mask file per checkpoint)")
    result = compute(args.checkpoints, method=args.method, bn=args.bn, masks=args.masks,
                     consensus_k=args.consensus, data=args.data, root=args.root,
                     split=args.split, stats_samples=args.stats_samples, seed=args.seed,
                     device=resolve_device(args.device))
    meta = dict(result.pop("meta"))
    meta["merge"] = {"sources": result["checkpoints"], "method": args.method, "bn": args.bn}
    save_checkpoint(out, result.pop("merged"), meta)
    result["out"] = str(out)
    return finish(args, result, lambda r: summary(r) + [("merged checkpoint", str(out))], plot,
                  plot_path)


if __name__ == "__main__":
    from analyses.cli import run_command
    sys.exit(run_command(sys.modules[__name__]))
