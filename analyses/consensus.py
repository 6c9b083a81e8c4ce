"""`gauge overlap RUN... --common-basis`: consensus tickets of N seeds in one neuron basis.

The dense (level-0) networks of the runs are synchronised into one basis (MergeMany,
Ainsworth et al. 2023, via :func:`gauge.align_many`) and every run's level-L mask is permuted
with its network. Each weight then has a keep count, the number of seeds whose ticket keeps
it; its histogram is compared with the chance of independent masks with the same per-layer
densities (Poisson-binomial, binomial for equal densities), in the raw basis and in the common
basis, per layer and overall, with the consensus mask "kept by >= k of N" and its density.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from analyses.common import check_outputs, finish, resolve_device

__all__ = ["compute", "plot", "summary", "run_common_basis"]


def compute(run_dirs: Sequence[str | Path], levels: Sequence[int], *, method: str = "mergemany",
            device="cpu") -> dict:
    from analyses.study import example_input, open_seed_runs
    from gauge import align_many, consensus, infer_spec
    from tickets import build_run_model, load_level
    runs = open_seed_runs(run_dirs, sorted(set(levels) | {0}), "--common-basis")
    model = build_run_model(runs[0])
    spec = infer_spec(model, example_input(runs[0].meta))
    sync = align_many(spec, [load_level(r, 0).final for r in runs], method=method,
                      device=device)
    out = {"runs": [str(r.path) for r in runs], "method": method,
           "alignment": sync.to_dict(), "levels": {}}
    for lv in levels:
        masks = [load_level(r, lv).mask for r in runs]
        raw, common = consensus(masks), consensus(sync.aligned(spec, masks))
        out["levels"][str(lv)] = {"density": raw.overall.densities[0], "raw": raw.to_dict(),
                                  "aligned": common.to_dict()}
    return out


def summary(result: dict) -> list[tuple[str, str]]:
    rows = []
    for lv, d in sorted(result["levels"].items(), key=lambda kv: int(kv[0])):
        n = d["raw"]["n"]
        ra, al = d["raw"]["overall"], d["aligned"]["overall"]
        fmt = lambda v: "n/a" if v is None else f"{v:.2f}x"  # noqa: E731
        rows.append((f"level {lv} ({100 * d['density']:.1f}% kept)",
                     f"kept by all {n}: raw {ra['observed'][-1]}, common basis "
                     f"{al['observed'][-1]}, chance {ra['expected'][-1]:.1f} "
                     f"(raw {fmt(ra['unanimous_ratio'])}, common {fmt(al['unanimous_ratio'])} "
                     f"chance); majority-mask density {100 * d['aligned']['density_at_least'][str(n // 2 + 1)]:.2f}%"))
    return rows


def plot(result: dict, plot_path) -> list[Path]:
    """Overall keep-count histogram (raw, common basis, chance) at the sparsest level, and per
    layer the weights kept by every seed relative to chance."""
    import numpy as np

    from analyses.figures import COLORS, new_figure, save_figure
    lv = max(result["levels"], key=int)
    d = result["levels"][lv]
    n = d["raw"]["n"]
    fig, axes = new_figure(2, 1, width=3.5, height=2.8)
    ax = axes[0][0]
    c = np.arange(n + 1)
    ax.bar(c - 0.2, d["raw"]["overall"]["observed"], width=0.4, color=COLORS["raw"],
           label="raw basis")
    ax.bar(c + 0.2, d["aligned"]["overall"]["observed"], width=0.4, color=COLORS["aligned"],
           label="common basis")
    ax.plot(c, d["raw"]["overall"]["expected"], color=COLORS["chance"], marker="o", ls="--",
            label="chance (same densities)")
    ax.set_yscale("log")
    ax.set_xticks(c)
    ax.set_xlabel(f"seeds keeping the weight (of {n})")
    ax.set_ylabel("weights")
    ax.set_title(f"keep counts, level {lv} ({100 * d['density']:.1f}% kept)")
    ax.legend(fontsize=7)
    ax = axes[0][1]
    layers = list(d["raw"]["per_layer"])
    x = np.arange(len(layers))
    for off, key, color, label in ((-0.2, "raw", COLORS["raw"], "raw basis"),
                                   (0.2, "aligned", COLORS["aligned"], "common basis")):
        vals = [d[key]["per_layer"][k]["unanimous_ratio"] or 0.0 for k in layers]
        ax.bar(x + off, vals, width=0.4, color=color, label=label)
        for xi, v in zip(x, vals):
            if v == 0:  # log axis: a zero count has no bar
                ax.annotate("0", (xi + off, 1.0), ha="center", va="bottom", fontsize=7,
                            color=color)
    ax.axhline(1.0, color=COLORS["chance"], ls="--", label="chance")
    ax.set_yscale("log")
    ax.set_xticks(x, [k.replace(".weight", "") for k in layers], rotation=45, ha="right",
                  fontsize=7)
    ax.set_ylabel(f"kept by all {n} / chance")
    ax.set_xlabel("layer")
    ax.set_title("unanimous weights vs chance, per layer")
    ax.legend(fontsize=7)
    stem = Path(plot_path)
    return save_figure(fig, stem.with_suffix("") if stem.suffix else stem)


def run_common_basis(args) -> int:
    """The ``--common-basis`` mode of ``gauge overlap``."""
    from analyses.common import UsageError
    if len(args.runs) < 2:
        raise UsageError("give at least two run directories")
    plot_path = check_outputs(args)
    result = compute(args.runs, [args.level], device=resolve_device(args.device))
    return finish(args, result, summary, plot, plot_path)
