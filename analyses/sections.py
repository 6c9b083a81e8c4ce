"""The report's own sections: analyses that only make sense over a study of IMP runs and so
have no subcommand of their own.

  sparsity       test accuracy vs weights remaining: ticket / random reinit / random prune
  optimizer      tickets vs random reinit per optimizer and rewind point (Frankle et al. 2019)
  permutation    the permutation weight matching finds for one layer, as a matrix image
  overlap_layers per-layer mask overlap across seeds at the sparsest common level
  landscape      Hessian spectral density and 1-D / 2-D loss slices, dense vs sparsest ticket

Each is a :class:`Section`: ``compute(run_dirs, *, levels, device, progress, ...)`` returns a
frozen result dataclass, ``plot(result, out_dir)`` writes its figures, ``summary(result)`` gives
the (quantity, value) rows of the terminal table; the same contract as a subcommand module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Mapping, Sequence

from analyses.common import NotApplicable, percent
from tickets.runs import cache_file, level_stamp, read_cache, write_cache
from analyses.study import (align_seeds, arch_label, common_levels, example_input, group_labels,
                            group_runs, level_metrics, open_runs, primary_runs,
                            sparsest_pruned_level)

__all__ = ["Section", "SPARSITY", "OPTIMIZER", "PERMUTATION", "LAYER_OVERLAP", "LANDSCAPE",
           "SparsityResult", "OptimizerResult", "PermutationResult", "LayerOverlapResult",
           "LandscapeResult"]

#: Cache format of the sections' results; bump to invalidate old caches.
CACHE_VERSION = 3


@dataclass(frozen=True)
class Section:
    """A report section that is not a subcommand: its compute, plot and summary functions."""

    compute: Callable
    plot: Callable
    summary: Callable


def _to_dict(result) -> dict:
    return {f.name: getattr(result, f.name) for f in fields(result)}


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def _acc(row: Mapping) -> str:
    return f"{100 * row['test_acc_mean']:.2f} ± {100 * row['test_acc_std']:.2f}"


# --------------------------------------------------------------------------------------------
# Sparsity vs accuracy


def _curve(runs, control: str | None) -> list[dict]:
    """Mean +- std (over runs) of test accuracy per level present in every run."""
    if not all(r.levels if control is None else r.controls.get(control) for r in runs):
        return []
    rows = []
    for level in common_levels(runs, control):
        metrics = [level_metrics(run, level, control) for run in runs]
        accs = [m["test_acc"] for m in metrics]
        missing = [str(run.path) for run, a in zip(runs, accs) if a is None]
        if missing:
            raise NotApplicable(f"{missing[0]} records no test accuracy at level {level} (an "
                                "OpenLTH run without its logger file)")
        rem = [m["density"] for m in metrics]
        mean, std = _mean_std(accs)
        rows.append({"level": level, "weights_remaining": sum(rem) / len(rem),
                     "test_acc_mean": mean, "test_acc_std": std, "n": len(accs),
                     "test_acc": accs})
    return rows


def _control_order(control: str):
    return {"random_reinit": 0, "random_prune": 1}.get(control, 2), control


@dataclass(frozen=True)
class SparsityResult:
    """Test accuracy vs weights remaining for the ticket and each control (mean +- std)."""

    group: str
    seeds: list
    curves: dict  # "ticket" | control name -> rows (level, weights_remaining, mean, std, n)

    to_dict = _to_dict

    def table(self) -> list[dict]:
        rows = {}
        for kind, curve in self.curves.items():
            for r in curve:
                row = rows.setdefault(r["level"], {"level": r["level"], "weights remaining %":
                                                   percent(r["weights_remaining"])})
                row[f"{kind} acc %"] = _acc(r)
        return [rows[k] for k in sorted(rows)]


def compute_sparsity(run_dirs, *, levels=None, device=None, progress=False) -> SparsityResult:
    """Test accuracy of the ticket and of each control at every level all runs completed."""
    runs = open_runs(run_dirs)
    curves = {"ticket": _curve(runs, None)}
    for control in sorted({c for r in runs for c in r.controls}, key=_control_order):
        curve = _curve(runs, control)
        if curve:
            curves[control] = curve
    if not curves["ticket"]:
        raise NotApplicable("no level is completed in every run of the group")
    return SparsityResult(group=group_labels(runs)[0], seeds=[r.meta["seed"] for r in runs],
                          curves=curves)


def _plot_curves(ax, curves: Mapping[str, list], *, dense: float | None = None,
                 linestyles=None):
    from analyses.figures import COLORS, weights_remaining_axis
    for kind, curve in curves.items():
        if not curve:
            continue
        x = [100 * r["weights_remaining"] for r in curve]
        m = [100 * r["test_acc_mean"] for r in curve]
        s = [100 * r["test_acc_std"] for r in curve]
        color = COLORS.get(kind)
        ax.plot(x, m, marker="o", color=color, label=kind.replace("_", " "),
                linestyle=(linestyles or {}).get(kind, "-"))
        if any(v > 0 for v in s):
            ax.fill_between(x, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)],
                            color=color, alpha=0.2, linewidth=0)
    weights_remaining_axis(ax)
    if dense is not None:
        ax.axhline(100 * dense, color=COLORS["dense"], linestyle=":", linewidth=1,
                   label="dense")
    ax.set_ylabel("test accuracy (%)")


def _dense_acc(curve: Sequence[Mapping]) -> float | None:
    return next((r["test_acc_mean"] for r in curve if r["level"] == 0), None)


def plot_sparsity(result: SparsityResult, out_dir: Path) -> list[Path]:
    from analyses.figures import new_figure, save_figure, style
    with style():
        fig, axes = new_figure(width=4.4, height=3.0)
        ax = axes[0, 0]
        _plot_curves(ax, result.curves, dense=_dense_acc(result.curves["ticket"]))
        n = len(result.seeds)
        ax.set_title(f"{result.group}: {n} seed{'s' if n != 1 else ''}"
                     + (", mean ± std" if n > 1 else ""))
        ax.legend(loc="lower left")
    return save_figure(fig, Path(out_dir) / "sparsity_accuracy")


def summary_sparsity(result: SparsityResult) -> list[tuple[str, str]]:
    ticket = result.curves["ticket"]
    dense, last = ticket[0], ticket[-1]
    rows = [("dense test acc %", _acc(dense)),
            (f"ticket acc % at {percent(last['weights_remaining'])}% weights", _acc(last))]
    for control, curve in result.curves.items():
        same = [r for r in curve if r["level"] == last["level"]]
        if control != "ticket" and same:
            rows.append((f"{control} acc % at same level", _acc(same[0])))
    return rows


# --------------------------------------------------------------------------------------------
# Optimizer and rewinding


@dataclass(frozen=True)
class OptimizerResult:
    """Ticket vs random reinit per configuration (optimizer, rewind point).

    ``groups``: label -> {optimizer, lr, momentum, rewind_iter, seeds, curves}; ``gap``: label ->
    ticket minus random-reinit test accuracy at the sparsest level both have (``gap``) and
    averaged over every pruned level (``mean_gap``): the "winning" margin of Frankle & Carbin
    (2019); ~0 means rewinding to that point does not find a ticket.
    """

    groups: dict
    gap: dict

    to_dict = _to_dict

    def table(self) -> list[dict]:
        rows = []
        for label, g in self.groups.items():
            gap = self.gap.get(label) or {}
            rows.append({"configuration": label, "optimizer": g["optimizer"],
                         "rewind iter": g["rewind_iter"], "seeds": len(g["seeds"]),
                         "dense acc %": percent(g.get("dense_acc")),
                         "weights remaining %": percent(gap.get("weights_remaining")),
                         "ticket acc %": percent(gap.get("ticket_acc")),
                         "reinit acc %": percent(gap.get("reinit_acc")),
                         "ticket - reinit (points)": "?" if gap.get("gap") is None
                         else f"{100 * gap['gap']:+.2f}",
                         "mean over levels (points)": "?" if gap.get("mean_gap") is None
                         else f"{100 * gap['mean_gap']:+.2f}"})
        return rows


def _gap(curves: Mapping[str, list]) -> dict | None:
    """Ticket minus reinit accuracy at the sparsest pruned level both have, and the mean."""
    reinit = {r["level"]: r for r in curves["random_reinit"]}
    both = [r for r in curves["ticket"] if r["level"] in reinit and r["level"] > 0]
    if not both:
        return None
    last = both[-1]
    diffs = [r["test_acc_mean"] - reinit[r["level"]]["test_acc_mean"] for r in both]
    return {"level": last["level"], "weights_remaining": last["weights_remaining"],
            "ticket_acc": last["test_acc_mean"],
            "reinit_acc": reinit[last["level"]]["test_acc_mean"],
            "gap": last["test_acc_mean"] - reinit[last["level"]]["test_acc_mean"],
            "mean_gap": sum(diffs) / len(diffs), "levels_compared": len(diffs)}


def compute_optimizer(run_dirs, *, levels=None, device=None, progress=False
                      ) -> OptimizerResult:
    """For each configuration of the primary model with the random_reinit control: ticket and
    reinit curves and the margin between them. Needs two configurations to compare."""
    runs = open_runs(run_dirs)
    primary = primary_runs(runs)
    arch = arch_label(primary[0].meta) if primary else None
    groups = {}
    for label, rs in group_runs(runs).items():
        rs = [r for r in rs if arch_label(r.meta) == arch and r.controls.get("random_reinit")]
        if rs:
            groups[label] = primary_runs(rs)
    if not groups:
        raise NotApplicable("needs runs with the random_reinit control (gauge imp --control "
                            "random_reinit)")
    settings = {(rs[0].config.optimizer, rs[0].rewind_iter) for rs in groups.values()}
    if len(settings) < 2:
        opt, rewind = next(iter(settings))
        raise NotApplicable("needs runs of one model with different optimizers or rewind "
                            "iterations (e.g. gauge imp --optimizer sgd --rewind-iter K); all "
                            f"runs share {opt} rewind {rewind}")
    out, gaps = {}, {}
    for label, rs in groups.items():
        cfg = rs[0].config
        curves = {"ticket": _curve(rs, None), "random_reinit": _curve(rs, "random_reinit")}
        out[label] = {"optimizer": cfg.optimizer, "lr": cfg.lr, "momentum": cfg.momentum,
                      "rewind_iter": rs[0].rewind_iter, "seeds": [r.meta["seed"] for r in rs],
                      "dense_acc": _dense_acc(curves["ticket"]), "curves": curves}
        gaps[label] = _gap(curves)
    return OptimizerResult(groups=out, gap=gaps)


def plot_optimizer(result: OptimizerResult, out_dir: Path) -> list[Path]:
    from analyses.figures import new_figure, save_figure, style
    with style():
        fig, axes = new_figure(ncols=len(result.groups), width=3.3, height=2.9, sharey=True)
        for ax, (label, g) in zip(axes[0], result.groups.items()):
            _plot_curves(ax, g["curves"], dense=g["dense_acc"],
                         linestyles={"random_reinit": "--"})
            mom = f" mom {g['momentum']:g}" if g["optimizer"] == "sgd" else ""
            ax.set_title(f"{g['optimizer']} lr {g['lr']:g}{mom}, rewind to iter "
                         f"{g['rewind_iter']}")
            gap = result.gap.get(label)
            if gap:
                ax.text(0.03, 0.04, f"ticket − reinit: {100 * gap['gap']:+.1f} pts at "
                        f"{percent(gap['weights_remaining'])}%, {100 * gap['mean_gap']:+.1f} "
                        "mean over levels", transform=ax.transAxes, fontsize=7)
            if ax is not axes[0, 0]:
                ax.set_ylabel("")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=len(labels))
    return save_figure(fig, Path(out_dir) / "optimizer_rewinding")


def summary_optimizer(result: OptimizerResult) -> list[tuple[str, str]]:
    return [(f"{label}: ticket - reinit, points (at {percent(gap['weights_remaining'])}% / "
             "mean over levels)", f"{100 * gap['gap']:+.2f} / {100 * gap['mean_gap']:+.2f}")
            for label, gap in result.gap.items() if gap]


# --------------------------------------------------------------------------------------------
# The permutation found


@dataclass(frozen=True)
class PermutationResult:
    """The permutation weight matching finds between two seeds, for one hidden layer.

    ``perm[i]`` is the unit of B matched to unit ``i`` of A; ``corr_naive``/``corr_aligned``:
    cosine similarity of the units' incoming weight vectors (A rows vs B rows) before and after
    alignment; ``diag_naive``/``diag_aligned``: mean diagonal similarity (1 = identical units).
    """

    layer: str
    group: str
    runs: list
    level: int
    perm: list
    corr_naive: list
    corr_aligned: list
    diag_naive: float
    diag_aligned: float
    fixed_points: int

    to_dict = _to_dict

    def table(self) -> list[dict]:
        return [{"layer": self.layer, "level": self.level, "units": len(self.perm),
                 "fixed points": self.fixed_points,
                 "mean diag. cosine, naive": f"{self.diag_naive:.3f}",
                 "mean diag. cosine, aligned": f"{self.diag_aligned:.3f}"}]


def _display_layer(spec, params) -> tuple[str, str]:
    """(perm group, weight name) of the smallest hidden layer with at least 8 units: a
    permutation of a few dozen units is readable as an image, one of hundreds is not."""
    best = None
    for group, members in spec.perm_to_axes.items():
        for name, axis in members:
            if axis == 0 and params[name].ndim >= 2 and name.endswith("weight"):
                size = params[name].shape[0]
                rank = (size < 8, size, name)
                if best is None or rank < best[0]:
                    best = (rank, group, name)
    if best is None:
        raise NotApplicable("the model has no permutable weight matrix")
    return best[1], best[2]


def _cosines(u, v):
    """Cosine similarity of every row of ``u`` with every row of ``v`` (float64)."""
    u = u.reshape(u.shape[0], -1).double()
    v = v.reshape(v.shape[0], -1).double()
    u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return u @ v.T


def _rounded(matrix) -> list[list[float]]:
    return [[round(float(v), 5) for v in row] for row in matrix.tolist()]


def compute_permutation(run_dirs, *, levels=None, device="cpu", progress=False
                        ) -> PermutationResult:
    """Weight matching between the first two seeds' dense networks; the similarity of one
    layer's units before and after. Cached in ``RUN_0/analyses/``."""
    import torch

    from gauge import apply_permutation, infer_spec
    from tickets import build_run_model
    runs = open_runs(run_dirs)
    if len(runs) < 2:
        raise NotApplicable("needs two seeds of one configuration")
    a, b = runs[0], runs[1]
    key = {"v": CACHE_VERSION, "a": str(a.path.resolve()), "b": str(b.path.resolve()),
           "level": 0, "stamp": [level_stamp(a, 0), level_stamp(b, 0)]}
    cpath = cache_file(a.path, "report-permutation", key)
    cached = read_cache(cpath)
    if cached is not None:
        return PermutationResult(**cached)
    model = build_run_model(a)
    spec = infer_spec(model, example_input(a.meta))
    pa, pb = load_dense(a), load_dense(b)
    perm = align_seeds(model, spec, a, b, "weight", seed=0, device=device)
    aligned = apply_permutation(spec, perm, pb)
    group, name = _display_layer(spec, pa)
    naive, al = _cosines(pa[name], pb[name]), _cosines(pa[name], aligned[name])
    order = [int(i) for i in perm[group].tolist()]
    result = PermutationResult(
        layer=name, group=str(group), runs=[str(a.path), str(b.path)], level=0, perm=order,
        corr_naive=_rounded(naive), corr_aligned=_rounded(al),
        diag_naive=float(torch.diagonal(naive).mean()),
        diag_aligned=float(torch.diagonal(al).mean()),
        fixed_points=sum(int(i == p) for i, p in enumerate(order)))
    write_cache(cpath, result.to_dict())
    return result


def load_dense(run) -> dict:
    """The dense (level 0) final weights of a run."""
    from tickets import load_level
    return load_level(run, 0).final


def plot_permutation(result: PermutationResult, out_dir: Path) -> list[Path]:
    import numpy as np

    from analyses.figures import new_figure, save_figure, style
    n = len(result.perm)
    naive, aligned = np.asarray(result.corr_naive), np.asarray(result.corr_aligned)
    # a colour scale set by the aligned similarities: trained units are far from identical, and
    # a +-1 scale would wash the diagonal out
    vlim = float(max(0.1, np.percentile(np.abs(aligned), 99.5)))
    with style():
        fig, axes = new_figure(ncols=3, width=2.6, height=2.6)
        for ax, mat, title in ((axes[0, 0], naive, "before: cos(unit i of A, unit j of B)"),
                               (axes[0, 2], aligned, "after aligning B to A")):
            im = ax.imshow(mat, cmap="RdBu_r", vmin=-vlim, vmax=vlim, interpolation="nearest")
            ax.set_title(title, fontsize=8)
        ax = axes[0, 1]
        ax.scatter(result.perm, np.arange(n), s=max(1.0, 600 / n), marker="s", color="black",
                   linewidths=0)
        ax.set_xlim(-0.5, n - 0.5)
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_aspect("equal")
        ax.set_title(f"permutation found ({result.fixed_points}/{n} fixed)", fontsize=8)
        for ax in axes[0]:
            ax.set_xlabel("unit j of B")
            ax.set_ylabel("unit i of A")
            ax.grid(False)
        fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label="cosine similarity of incoming "
                     "weights")
        fig.suptitle(f"{result.layer} (level {result.level}): weight matching between seeds; "
                     f"mean diagonal {result.diag_naive:.2f} -> {result.diag_aligned:.2f}",
                     fontsize=9)
    return save_figure(fig, Path(out_dir) / "permutation_matrix")


def summary_permutation(result: PermutationResult) -> list[tuple[str, str]]:
    return [(f"{result.layer}: mean unit cosine naive -> aligned",
             f"{result.diag_naive:.3f} -> {result.diag_aligned:.3f}")]


# --------------------------------------------------------------------------------------------
# Mask overlap per layer


@dataclass(frozen=True)
class LayerOverlapResult:
    """Per-layer Jaccard overlap of the seeds' masks at the sparsest common level: raw,
    aligned and chance, mean (and std) over seed pairs (from the overlap analysis)."""

    level: int
    density: float
    layers: dict  # name -> {raw, raw_std, aligned, aligned_std, chance, density}

    to_dict = _to_dict

    def table(self) -> list[dict]:
        return [{"layer": k, "density %": percent(v["density"]), "raw": f"{v['raw']:.3f}",
                 "aligned": "-" if v["aligned"] is None else f"{v['aligned']:.3f}",
                 "chance": f"{v['chance']:.3f}"} for k, v in self.layers.items()]


def _per_layer(pairs: Mapping[str, Mapping]) -> dict[str, dict]:
    """Mean (and std) over seed pairs of each layer's raw, aligned and chance Jaccard."""
    acc: dict[str, dict[str, list]] = {}
    for pair in pairs.values():
        for kind in ("raw", "aligned"):
            for name, d in ((pair.get(kind) or {}).get("per_layer") or {}).items():
                a = acc.setdefault(name, {"raw": [], "aligned": [], "chance": [], "density": []})
                a[kind].append(d["jaccard"])
                if kind == "raw":
                    a["chance"].append(d["chance_jaccard"])
                    a["density"].append(d["density_a"])
    layers = {}
    for name, a in acc.items():
        raw_m, raw_s = _mean_std(a["raw"])
        al = _mean_std(a["aligned"]) if a["aligned"] else (None, None)
        layers[name] = {"raw": raw_m, "raw_std": raw_s, "aligned": al[0], "aligned_std": al[1],
                        "chance": sum(a["chance"]) / len(a["chance"]),
                        "density": sum(a["density"]) / len(a["density"])}
    return layers


def compute_layer_overlap(run_dirs, *, levels=None, device="cpu", progress: bool = False
                          ) -> LayerOverlapResult:
    """The overlap analysis at the sparsest pruned level, broken down per layer."""
    from analyses import overlap
    runs = open_runs(run_dirs)
    if len(runs) < 2:
        raise NotApplicable("per-layer overlap needs two seeds of one configuration")
    level = sparsest_pruned_level(runs, levels, "per-layer overlap")
    res = overlap.compute(runs, levels=[level], device=device, progress=progress)
    entry = res.levels[str(level)]
    return LayerOverlapResult(level=level, density=float(entry["density"]),
                              layers=_per_layer(entry["pairs"]))


def plot_layer_overlap(result: LayerOverlapResult, out_dir: Path) -> list[Path]:
    import numpy as np

    from analyses.figures import COLORS, new_figure, save_figure, style
    names = list(result.layers)
    x = np.arange(len(names))
    with style():
        fig, axes = new_figure(width=max(3.4, 1.1 * len(names) + 1.2), height=2.8)
        ax = axes[0, 0]
        w = 0.27
        for i, kind in enumerate(("raw", "aligned", "chance")):
            vals = [result.layers[n][kind] for n in names]
            if any(v is None for v in vals):
                continue
            errs = [result.layers[n].get(f"{kind}_std") or 0 for n in names]
            ax.bar(x + (i - 1) * w, vals, w, yerr=errs if kind != "chance" else None,
                   color=COLORS.get(kind if kind != "raw" else "naive"), label=kind,
                   capsize=2)
        ax.set_xticks(x, [f"{n.removesuffix('.weight')}\n{percent(result.layers[n]['density'])}%"
                          for n in names])
        ax.set_ylabel("Jaccard overlap of masks")
        ax.set_title(f"per-layer mask overlap across seeds, level {result.level}")
        ax.legend()
    return save_figure(fig, Path(out_dir) / "overlap_per_layer")


def summary_layer_overlap(result: LayerOverlapResult) -> list[tuple[str, str]]:
    return [(f"{k} Jaccard raw / aligned / chance", f"{d['raw']:.3f} / "
             f"{'-' if d['aligned'] is None else format(d['aligned'], '.3f')} / {d['chance']:.3f}")
            for k, d in result.layers.items()]


# --------------------------------------------------------------------------------------------
# Spectrum and loss landscape


@dataclass(frozen=True)
class LandscapeResult:
    """Hessian spectral density (stochastic Lanczos quadrature, Ghorbani et al. 2019) and 1-D
    and 2-D loss slices along filter-normalised random directions (Li et al. 2018), raw and
    gauge-fixed, for the first seed's dense network and its sparsest common ticket."""

    run: str
    entries: dict  # "level_L" -> {density, density_grid, density_values, slice_raw, ...}

    to_dict = _to_dict

    def table(self) -> list[dict]:
        return [{"network": key, "weights remaining %": percent(e["density"]),
                 "loss at minimum": f"{e['loss0']:.4f}",
                 "1-D loss rise at |alpha|=1, raw": f"{e['rise_raw']:.4f}",
                 "gauge-fixed": f"{e['rise_gauge_fixed']:.4f}",
                 "HVPs (density)": e["n_hvp"]} for key, e in self.entries.items()]


def _floats(values) -> list[float]:
    return [float(v) for v in values]


def _rise(losses: Sequence[float]) -> float:
    """Mean loss at alpha = -1 and +1 minus the loss at the minimum (alpha = 0)."""
    return float((losses[0] + losses[-1]) / 2 - losses[len(losses) // 2])


def _landscape_entry(model, spec, xy, files, *, quick: bool, seed: int, device) -> dict:
    import numpy as np

    from gauge import landscape_1d, landscape_2d, spectral_density
    n_runs, steps = (2, 30) if quick else (4, 60)
    alphas = list(np.linspace(-1, 1, 21 if quick else 41))
    grid2 = list(np.linspace(-1, 1, 9 if quick else 17))
    params, mask = files.final, files.mask
    dens = spectral_density(model, params, xy, n_runs=n_runs, lanczos_steps=steps, mask=mask,
                            device=device, seed=seed).to_dict()
    sl = landscape_1d(model, params, xy, mask=mask, alphas=alphas, device=device, seed=seed,
                      gauge_fixed=True, spec=spec)
    plane = landscape_2d(model, params, xy, mask=mask, alphas=grid2, device=device,
                         seed=seed).to_dict()
    raw, fixed = sl.raw.to_dict(), sl.gauge_fixed.to_dict()
    return {"level": files.level, "density": float(files.metrics["density"]),
            "density_grid": _floats(dens["grid"]), "density_values": _floats(dens["density"]),
            "n_hvp": int(dens["n_hvp"]), "alphas": _floats(raw["alphas"]),
            "slice_raw": _floats(raw["losses"]), "slice_gauge_fixed": _floats(fixed["losses"]),
            "loss0": float(raw["losses"][len(alphas) // 2]),
            "rise_raw": _rise(raw["losses"]), "rise_gauge_fixed": _rise(fixed["losses"]),
            "plane_alphas": _floats(grid2),
            "plane_losses": [_floats(row) for row in plane["losses"]]}


def compute_landscape(run_dirs, *, levels=None, device="cpu", progress=False,
                      quick: bool = False, subset: int = 512, seed: int = 0
                      ) -> LandscapeResult:
    """Spectrum and loss slices of the first run's dense network and of its sparsest level in
    ``levels``, on its first ``subset`` training examples. Cached in ``RUN/analyses/``."""
    from gauge import infer_spec
    from tickets import build_run_model, load_level, load_run_data
    run = open_runs(run_dirs)[0]
    wanted = sorted({0, max(levels)} & set(levels)) if levels else [0]
    key = {"v": CACHE_VERSION, "quick": bool(quick), "subset": subset, "seed": seed,
           "levels": wanted, "run": str(run.path.resolve()),
           "stamp": [level_stamp(run, lv) for lv in wanted]}
    cpath = cache_file(run.path, "report-landscape", key)
    cached = read_cache(cpath)
    if cached is not None:
        return LandscapeResult(**cached)
    model = build_run_model(run)
    x, y = load_run_data(run).train.tensors
    xy = (x[:subset], y[:subset])
    spec = infer_spec(model, x[:2])
    entries = {f"level_{lv}": _landscape_entry(model, spec, xy, load_level(run, lv),
                                               quick=quick, seed=seed, device=device)
               for lv in wanted}
    result = LandscapeResult(run=str(run.path), entries=entries)
    write_cache(cpath, result.to_dict())
    return result


def plot_landscape(result: LandscapeResult, out_dir: Path) -> list[Path]:
    import numpy as np

    from analyses.figures import PALETTE, new_figure, save_figure, style
    entries = list(result.entries.values())
    with style():
        fig, axes = new_figure(ncols=2 + len(entries), width=2.9, height=2.6)
        ax_d, ax_s = axes[0, 0], axes[0, 1]
        for i, e in enumerate(entries):
            label = "dense" if e["level"] == 0 else f"ticket {percent(e['density'])}%"
            c = "#000000" if e["level"] == 0 else PALETTE[0]
            g, d = np.asarray(e["density_grid"]), np.asarray(e["density_values"])
            ax_d.semilogy(g, np.maximum(d, 1e-8), color=c, label=label)
            ax_s.plot(e["alphas"], e["slice_raw"], color=c, label=f"{label}, raw")
            ax_s.plot(e["alphas"], e["slice_gauge_fixed"], color=c, linestyle="--",
                      label=f"{label}, gauge-fixed")
            ax = axes[0, 2 + i]
            a = np.asarray(e["plane_alphas"])
            cs = ax.contourf(a, a, np.asarray(e["plane_losses"]), levels=14, cmap="viridis")
            fig.colorbar(cs, ax=ax, label="train loss")
            ax.set_title(f"2-D slice, {label}", fontsize=8)
            ax.set_xlabel("direction 1")
            ax.set_ylabel("direction 2")
            ax.grid(False)
        ax_d.set_ylim(bottom=1e-6)
        ax_d.set_xlabel("Hessian eigenvalue")
        ax_d.set_ylabel("spectral density")
        ax_d.set_title("Hessian spectrum (SLQ)", fontsize=8)
        ax_d.legend()
        ax_s.set_xlabel("alpha (filter-normalised direction)")
        ax_s.set_ylabel("train loss")
        ax_s.set_title("1-D slice, raw vs gauge-fixed", fontsize=8)
        ax_s.legend(fontsize=6)
    return save_figure(fig, Path(out_dir) / "landscape")


def summary_landscape(result: LandscapeResult) -> list[tuple[str, str]]:
    return [(f"1-D loss rise at |alpha|=1 raw / gauge-fixed, {percent(e['density'])}% weights",
             f"{e['rise_raw']:.3f} / {e['rise_gauge_fixed']:.3f}")
            for e in result.entries.values()]


SPARSITY = Section(compute_sparsity, plot_sparsity, summary_sparsity)
OPTIMIZER = Section(compute_optimizer, plot_optimizer, summary_optimizer)
PERMUTATION = Section(compute_permutation, plot_permutation, summary_permutation)
LAYER_OVERLAP = Section(compute_layer_overlap, plot_layer_overlap, summary_layer_overlap)
LANDSCAPE = Section(compute_landscape, plot_landscape, summary_landscape)
