"""gauge report: one HTML report (figures + results.json) from existing IMP run directories.

Give any number of IMP run directories (gauge imp --out RUN; any seeds, model, dataset).
The report groups the runs by configuration (model, dataset, optimizer, rewinding; seeds
differ within a group), then composes every analysis of this build:

  sparsity      test accuracy vs weights remaining: ticket / random reinit / random prune
  optimizer     tickets vs random reinit per optimizer and rewind point (Frankle et al. 2019)
  connect       naive vs aligned loss/error barriers between seeds per level
  instability   error barrier vs rewind iteration (Frankle et al. 2020)
  overlap       mask overlap across seeds: raw, aligned, chance (overlap_layers: per layer)
  transfer      a ticket permuted into another seed's basis (sparse re-basin)
  flatness      Hessian top eigenvalue, trace, sharpness per level: raw and gauge-fixed
  landscape     Hessian spectral density, 1-D/2-D loss slices: dense vs sparsest ticket
  align         weight matching between seeds
  permutation   the permutation found for one layer, as a matrix image

Each analysis caches its results next to the runs (RUN/analyses/), so a second call is fast.
An analysis that cannot run (a module not in this build, too few seeds, levels missing from a
run, runs of different models) is listed in the report with the reason; the rest is still
written. Output: OUT/report.html (self-contained: figures embedded, no network),
OUT/results.json (every number), OUT/figures/*.png and *.pdf.
"""

from __future__ import annotations

import base64
import hashlib
import html
import importlib
import inspect
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from analyses.common import (UsageError, add_device_argument, add_json_argument, emit_json,
                             progress_enabled, resolve_device)

HELP = "build the HTML report (figures + results.json) from existing IMP run directories"

__all__ = ["Run", "open_runs", "build_report", "ReportResult", "ANALYSES", "render_html",
           "SparsityResult", "OptimizerResult", "PermutationResult", "summary_rows",
           "format_table"]

#: Cache format of the analyses this module computes itself; bump to invalidate old caches.
CACHE_VERSION = 2


# --------------------------------------------------------------------------------------------
# Run directories


@dataclass(frozen=True)
class Run:
    """One IMP run directory as the report sees it.

    ``levels``: completed levels of the ticket run; ``controls``: control name -> completed
    levels; ``group``: a label shared by runs that differ only in their seeds.
    """

    path: Path
    meta: dict
    levels: tuple[int, ...]
    controls: dict
    seed: Any
    group: str
    arch: str

    def to_dict(self) -> dict:
        return {"path": str(self.path), "seed": self.seed, "group": self.group,
                "arch": self.arch, "levels": list(self.levels),
                "controls": {k: list(v) for k, v in self.controls.items()}}


_LEVEL_RE = re.compile(r"^level_(\d+)$")
# run.json keys that may differ between runs of one configuration.
_PER_RUN_KEYS = {"seed", "data_seed", "dataset_seed", "versions", "versions_first", "root",
                 "control_seeds", "out", "out_dir", "path", "created",
                 "timestamp", "time", "wall_time", "levels", "control", "controls", "device",
                 "command", "argv", "host", "resume"}


def _completed_levels(folder: Path) -> tuple[int, ...]:
    levels = []
    if folder.is_dir():
        for child in folder.iterdir():
            m = _LEVEL_RE.match(child.name)
            if m and (child / "metrics.json").is_file() and (child / "final.safetensors").is_file():
                levels.append(int(m.group(1)))
    return tuple(sorted(levels))


def _read_run(path: Path) -> tuple[dict, tuple[int, ...], dict]:
    """(run.json, levels, controls), through ``tickets.runs.open_run`` when it exists."""
    try:
        from tickets.runs import open_run
    except ImportError:
        open_run = None
    if open_run is not None:
        info = open_run(path)
        controls = {k: tuple(v) for k, v in dict(getattr(info, "controls", {}) or {}).items()}
        return dict(info.meta), tuple(info.levels), controls
    meta_path = path / "run.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: not an IMP run directory (cannot read run.json: {e})") from e
    controls = {}
    if (path / "controls").is_dir():
        for child in sorted((path / "controls").iterdir()):
            if child.is_dir():
                controls[child.name] = _completed_levels(child)
    return meta, _completed_levels(path), controls


def _get(meta: Mapping, *keys, default=None):
    """First of ``keys`` found in ``meta`` or its nested ``config``/``train_config`` dicts."""
    for scope in (meta, meta.get("config") or {}, meta.get("train_config") or {},
                  meta.get("imp") or {}):
        if not isinstance(scope, Mapping):
            continue
        for k in keys:
            if k in scope and scope[k] is not None:
                return scope[k]
    return default


def _config_key(meta: Mapping) -> str:
    def strip(obj):
        if isinstance(obj, Mapping):
            return {k: strip(v) for k, v in sorted(obj.items()) if k not in _PER_RUN_KEYS}
        return obj
    return json.dumps(strip(meta), sort_keys=True, default=str)


def _arch(meta: Mapping) -> str:
    model = _get(meta, "model", "model_name", default="?")
    kwargs = _get(meta, "model_kwargs", default={}) or {}
    data = _get(meta, "dataset", "data", default="?")
    kw = ",".join(f"{k}={v}" for k, v in sorted(kwargs.items()))
    return f"{model}({kw}) on {data}" if kw else f"{model} on {data}"


def _group_label(meta: Mapping) -> str:
    model = _get(meta, "model", "model_name", default="?")
    opt = _get(meta, "optimizer", default="?")
    rewind = _get(meta, "rewind_iter", default=0)
    return f"{model} {opt} rewind {rewind}"


def open_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Open and validate run directories (before anything is written).

    A path that is missing, a file, or a folder without ``run.json`` is a usage error; a run
    with no completed level is kept (the report lists it as skipped).
    """
    if not paths:
        raise UsageError("give at least one IMP run directory")
    runs, seen, labels = [], set(), {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise UsageError(f"{path}: no such run directory")
        if not path.is_dir():
            raise UsageError(f"{path}: is a file, expected an IMP run directory (gauge imp --out)")
        if not (path / "run.json").is_file():
            raise UsageError(f"{path}: not an IMP run directory (no run.json; make one with "
                             "gauge imp --out DIR)")
        key = path.resolve()
        if key in seen:
            raise UsageError(f"{path}: given twice")
        seen.add(key)
        meta, levels, controls = _read_run(path)
        ckey = _config_key(meta)
        label = _group_label(meta)
        # two different configurations with the same short label get numbered labels
        label = labels.setdefault(ckey, label if label not in labels.values()
                                  else f"{label} #{len(labels) + 1}")
        runs.append(Run(path=path, meta=meta, levels=levels, controls=controls,
                        seed=_get(meta, "seed"), group=label, arch=_arch(meta)))
    return runs


def _groups(runs: Sequence[Run]) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = {}
    for r in runs:
        out.setdefault(r.group, []).append(r)
    return out


def _primary(runs: Sequence[Run]) -> list[Run]:
    """The runs the analyses across seeds use: the largest group of runs with at least one level
    (first given wins ties), without the runs that lack levels the others have when at least
    two runs remain (so one unfinished seed does not truncate the study)."""
    groups = _groups([r for r in runs if r.levels])
    if not groups:
        return []
    group = max(groups.values(), key=len)
    deepest = max(len(r.levels) for r in group)
    full = [r for r in group if len(r.levels) == deepest]
    return full if len(full) >= 2 or len(group) < 2 else group


def _metrics(run: Run, level: int, control: str | None = None) -> dict:
    base = run.path if control is None else run.path / "controls" / control
    return json.loads((base / f"level_{level:02d}" / "metrics.json").read_text())


def _weights_remaining(metrics: Mapping) -> float | None:
    """Fraction of prunable weights left, from a level's metrics.json."""
    for key in ("weights_remaining", "density", "remaining"):
        v = metrics.get(key)
        if isinstance(v, (int, float)):
            return float(v) if v <= 1 else float(v) / 100
    s = metrics.get("sparsity")
    if isinstance(s, Mapping):
        for key in ("weights_remaining", "density", "remaining"):
            if isinstance(s.get(key), (int, float)):
                return float(s[key])
        for key in ("overall", "total", "global", "sparsity"):
            if isinstance(s.get(key), (int, float)):
                return 1.0 - float(s[key])
    if isinstance(s, (int, float)):
        return 1.0 - float(s)
    return None


def _test_acc(metrics: Mapping) -> float | None:
    for key in ("test_acc", "test_accuracy", "accuracy"):
        v = metrics.get(key)
        if isinstance(v, (int, float)):
            return float(v)
    final = metrics.get("final") or metrics.get("metrics")
    if isinstance(final, Mapping):
        return _test_acc(final)
    return None


# --------------------------------------------------------------------------------------------
# Built-in analyses: sparsity-accuracy, optimizer story, permutation image


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def _curve(runs: Sequence[Run], control: str | None) -> list[dict]:
    """Mean +- std (over runs) of test accuracy per level present in every run."""
    per_run = [run.levels if control is None else run.controls.get(control, ()) for run in runs]
    if not per_run or not all(per_run):
        return []
    common = sorted(set.intersection(*map(set, per_run)))
    rows = []
    for level in common:
        accs, rem = [], []
        for run in runs:
            m = _metrics(run, level, control)
            a, w = _test_acc(m), _weights_remaining(m)
            if a is None:
                continue
            accs.append(a)
            if w is None and control is not None and level in run.levels:
                w = _weights_remaining(_metrics(run, level))
            if w is not None:
                rem.append(w)
        if not accs:
            continue
        mean, std = _mean_std(accs)
        rows.append({"level": level, "weights_remaining": (sum(rem) / len(rem)) if rem else None,
                     "test_acc_mean": mean, "test_acc_std": std, "n": len(accs),
                     "test_acc": accs})
    return rows


@dataclass(frozen=True)
class SparsityResult:
    """Test accuracy vs weights remaining for the ticket and each control (mean +- std)."""

    group: str
    seeds: list
    curves: dict  # "ticket" | control name -> rows (level, weights_remaining, mean, std, n)

    def to_dict(self) -> dict:
        return {"group": self.group, "seeds": list(self.seeds), "curves": self.curves}

    def table(self) -> list[dict]:
        rows = {}
        for kind, curve in self.curves.items():
            for r in curve:
                row = rows.setdefault(r["level"], {"level": r["level"],
                                                   "weights remaining %": _pct(r["weights_remaining"])})
                row[f"{kind} acc %"] = f"{100 * r['test_acc_mean']:.2f} ± {100 * r['test_acc_std']:.2f}"
        return [rows[k] for k in sorted(rows)]


def compute_sparsity(runs: Sequence[Run]) -> SparsityResult:
    if not runs:
        raise _Skip("no run has a completed level")
    curves = {"ticket": _curve(runs, None)}
    for control in sorted({c for r in runs for c in r.controls},
                          key=lambda c: ({"random_reinit": 0, "random_prune": 1}.get(c, 2), c)):
        curve = _curve(runs, control)
        if curve:
            curves[control] = curve
    if not curves["ticket"]:
        raise _Skip("no level is completed in every run of the group")
    return SparsityResult(group=runs[0].group, seeds=[r.seed for r in runs], curves=curves)


def _pct(x):
    return "?" if x is None else f"{100 * x:.1f}"


def _plot_curves(ax, curves: Mapping[str, list], *, dense: float | None = None,
                 linestyles=None):
    from analyses.figures import COLORS, weights_remaining_axis
    for kind, curve in curves.items():
        pts = [r for r in curve if r["weights_remaining"]]
        if not pts:
            continue
        x = [100 * r["weights_remaining"] for r in pts]
        m = [100 * r["test_acc_mean"] for r in pts]
        s = [100 * r["test_acc_std"] for r in pts]
        color = COLORS.get(kind)
        label = kind.replace("_", " ")
        ax.plot(x, m, marker="o", color=color, label=label,
                linestyle=(linestyles or {}).get(kind, "-"))
        if any(v > 0 for v in s):
            ax.fill_between(x, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)],
                            color=color, alpha=0.2, linewidth=0)
    weights_remaining_axis(ax)
    if dense is not None:
        ax.axhline(100 * dense, color=COLORS["dense"], linestyle=":", linewidth=1,
                   label="dense")
    ax.set_ylabel("test accuracy (%)")


def plot_sparsity(result: SparsityResult, out_dir: Path) -> list[Path]:
    from analyses.figures import new_figure, save_figure, style
    with style():
        fig, axes = new_figure(width=4.4, height=3.0)
        ax = axes[0, 0]
        ticket = result.curves.get("ticket", [])
        dense = next((r["test_acc_mean"] for r in ticket if r["level"] == 0), None)
        _plot_curves(ax, result.curves, dense=dense)
        n = len(result.seeds)
        ax.set_title(f"{result.group}: {n} seed{'s' if n != 1 else ''}"
                     + (", mean ± std" if n > 1 else ""))
        ax.legend(loc="lower left")
    return save_figure(fig, Path(out_dir) / "sparsity_accuracy")


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

    def to_dict(self) -> dict:
        return {"groups": self.groups, "gap": self.gap}

    def table(self) -> list[dict]:
        rows = []
        for label, g in self.groups.items():
            gap = self.gap.get(label) or {}
            rows.append({"configuration": label, "optimizer": g["optimizer"],
                         "rewind iter": g["rewind_iter"], "seeds": len(g["seeds"]),
                         "dense acc %": _pct(g.get("dense_acc")),
                         "weights remaining %": _pct(gap.get("weights_remaining")),
                         "ticket acc %": _pct(gap.get("ticket_acc")),
                         "reinit acc %": _pct(gap.get("reinit_acc")),
                         "ticket - reinit (points)": "?" if gap.get("gap") is None
                         else f"{100 * gap['gap']:+.2f}",
                         "mean over levels (points)": "?" if gap.get("mean_gap") is None
                         else f"{100 * gap['mean_gap']:+.2f}"})
        return rows


def compute_optimizer(runs: Sequence[Run]) -> OptimizerResult:
    # configurations of the primary architecture that have a pruned level and the reinit
    # control: the comparison is "does the ticket beat random reinit under this optimizer"
    arch = _primary(runs)[0].arch if _primary(runs) else None
    with_reinit = [r for r in runs if r.arch == arch and r.controls.get("random_reinit")]
    groups = {label: _primary(rs) for label, rs in _groups(with_reinit).items()}
    if not groups:
        raise _Skip("needs runs with the random_reinit control (gauge imp --control "
                    "random_reinit)")
    settings = {(str(_get(rs[0].meta, "optimizer")), _get(rs[0].meta, "rewind_iter", default=0))
                for rs in groups.values()}
    if len(settings) < 2:
        raise _Skip("needs runs of one model with different optimizers or rewind iterations "
                    "(e.g. gauge imp --optimizer sgd --rewind-iter K); all runs share "
                    f"{next(iter(settings))[0]} rewind {next(iter(settings))[1]}")
    out, gaps = {}, {}
    for label, rs in groups.items():
        meta = rs[0].meta
        curves = {"ticket": _curve(rs, None)}
        curves["random_reinit"] = _curve(rs, "random_reinit")
        dense = next((r["test_acc_mean"] for r in curves["ticket"] if r["level"] == 0), None)
        out[label] = {"optimizer": _get(meta, "optimizer"), "lr": _get(meta, "lr"),
                      "momentum": _get(meta, "momentum"),
                      "rewind_iter": _get(meta, "rewind_iter", default=0),
                      "seeds": [r.seed for r in rs], "dense_acc": dense, "curves": curves}
        reinit = {r["level"]: r for r in curves.get("random_reinit", [])}
        both = [r for r in curves["ticket"] if r["level"] in reinit and r["level"] > 0]
        if both:
            last = both[-1]
            diffs = [r["test_acc_mean"] - reinit[r["level"]]["test_acc_mean"] for r in both]
            gaps[label] = {"level": last["level"], "weights_remaining": last["weights_remaining"],
                           "ticket_acc": last["test_acc_mean"],
                           "reinit_acc": reinit[last["level"]]["test_acc_mean"],
                           "gap": last["test_acc_mean"] - reinit[last["level"]]["test_acc_mean"],
                           "mean_gap": sum(diffs) / len(diffs), "levels_compared": len(diffs)}
        else:
            gaps[label] = None
    return OptimizerResult(groups=out, gap=gaps)


def plot_optimizer(result: OptimizerResult, out_dir: Path) -> list[Path]:
    from analyses.figures import new_figure, save_figure, style
    n = len(result.groups)
    with style():
        fig, axes = new_figure(ncols=n, width=3.3, height=2.9, sharey=True)
        for ax, (label, g) in zip(axes[0], result.groups.items()):
            _plot_curves(ax, g["curves"], dense=g.get("dense_acc"),
                         linestyles={"random_reinit": "--"})
            lr = f" lr {g['lr']:g}" if isinstance(g.get("lr"), (int, float)) else ""
            mom = (f" mom {g['momentum']:g}" if g.get("optimizer") == "sgd"
                   and isinstance(g.get("momentum"), (int, float)) else "")
            ax.set_title(f"{g['optimizer']}{lr}{mom}, rewind to iter {g['rewind_iter']}")
            gap = result.gap.get(label)
            if gap:
                ax.text(0.03, 0.04, f"ticket − reinit: {100 * gap['gap']:+.1f} pts at "
                        f"{_pct(gap['weights_remaining'])}%, {100 * gap['mean_gap']:+.1f} "
                        "mean over levels", transform=ax.transAxes, fontsize=7)
            if ax is not axes[0, 0]:
                ax.set_ylabel("")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=len(labels))
    return save_figure(fig, Path(out_dir) / "optimizer_rewinding")


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

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def table(self) -> list[dict]:
        return [{"layer": self.layer, "level": self.level, "units": len(self.perm),
                 "fixed points": self.fixed_points,
                 "mean diag. cosine, naive": f"{self.diag_naive:.3f}",
                 "mean diag. cosine, aligned": f"{self.diag_aligned:.3f}"}]


def _cache_path(run: Run, name: str, key: Mapping) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return run.path / "analyses" / f"report-{name}-{digest[:12]}.json"


def compute_permutation(runs: Sequence[Run], *, level: int = 0, device="cpu") -> PermutationResult:
    if len(runs) < 2:
        raise _Skip("needs two seeds of one configuration")
    a, b = runs[0], runs[1]
    key = {"v": CACHE_VERSION, "a": str(a.path.resolve()), "b": str(b.path.resolve()),
           "level": level, "mtime": [_mtime(a, level), _mtime(b, level)]}
    cache = _cache_path(a, "permutation", key)
    if cache.is_file():
        try:
            return PermutationResult(**json.loads(cache.read_text()))
        except (TypeError, json.JSONDecodeError):
            pass
    import torch
    try:
        from gauge.match import weight_matching
        from gauge.infer import infer_spec
        from gauge.symmetry import apply_permutation
    except ImportError as e:
        raise _Skip(f"gauge alignment not in this build ({e})") from e
    from tickets.store import load_checkpoint, model_from_meta
    pa, meta = load_checkpoint(a.path / f"level_{level:02d}" / "final.safetensors")
    pb, _ = load_checkpoint(b.path / f"level_{level:02d}" / "final.safetensors")
    model = model_from_meta(meta, str(a.path))
    x = torch.zeros(2, *meta["input_shape"])
    spec = infer_spec(model, x)
    match = weight_matching(spec, pa, pb, seed=0)
    aligned = apply_permutation(spec, match.perm, pb)
    # the smallest hidden layer with at least 8 units: a permutation of a few dozen units is
    # readable as an image, one of hundreds is not
    best = None
    for group, members in spec.perm_to_axes.items():
        for name, axis in members:
            if axis == 0 and pa[name].ndim >= 2 and name.endswith("weight"):
                size = pa[name].shape[0]
                rank = (size < 8, size, name)
                if best is None or rank < best[0]:
                    best = (rank, group, name)
    if best is None:
        raise _Skip("the model has no permutable weight matrix")
    best = best[1:]
    group, name = best

    def cos(u, v):
        u = u.reshape(u.shape[0], -1).double()
        v = v.reshape(v.shape[0], -1).double()
        u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return u @ v.T

    naive, al = cos(pa[name], pb[name]), cos(pa[name], aligned[name])
    perm = [int(i) for i in match.perm[group].tolist()]
    result = PermutationResult(
        layer=name, group=str(group), runs=[str(a.path), str(b.path)], level=level, perm=perm,
        corr_naive=[[round(float(v), 5) for v in row] for row in naive.tolist()],
        corr_aligned=[[round(float(v), 5) for v in row] for row in al.tolist()],
        diag_naive=float(torch.diagonal(naive).mean()), diag_aligned=float(torch.diagonal(al).mean()),
        fixed_points=sum(int(i == p) for i, p in enumerate(perm)))
    from tickets.store import save_json
    save_json(cache, result.to_dict())
    return result


def _mtime(run: Run, level: int) -> float:
    try:
        return (run.path / f"level_{level:02d}" / "final.safetensors").stat().st_mtime_ns
    except OSError:
        return 0


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


@dataclass(frozen=True)
class LayerOverlapResult:
    """Per-layer Jaccard overlap of the seeds' masks at the sparsest common level: raw,
    aligned and chance, mean (and std) over seed pairs (from the overlap analysis)."""

    level: int
    density: float
    layers: dict  # name -> {raw, raw_std, aligned, aligned_std, chance, density}

    def to_dict(self) -> dict:
        return {"level": self.level, "density": self.density, "layers": self.layers}

    def table(self) -> list[dict]:
        return [{"layer": k, "density %": _pct(v["density"]), "raw": f"{v['raw']:.3f}",
                 "aligned": "-" if v["aligned"] is None else f"{v['aligned']:.3f}",
                 "chance": f"{v['chance']:.3f}"} for k, v in self.layers.items()]


def compute_layer_overlap(runs: Sequence[Run], *, levels=(), device="cpu",
                          progress: bool = False) -> LayerOverlapResult:
    try:
        from analyses import overlap
    except ImportError as e:
        raise _Skip(f"module analyses.overlap is not part of this build ({e})") from e
    pruned = [lv for lv in levels if lv > 0]
    if not pruned:
        raise _Skip("needs a pruned level (>= 1) completed in every run")
    level = max(pruned)
    res = _call(overlap.compute, [r.path for r in runs], levels=[level], device=device,
                progress=progress).to_dict()
    entry = res["levels"].get(str(level), res["levels"].get(level))
    acc: dict[str, dict[str, list]] = {}
    for pair in entry["pairs"].values():
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
    return LayerOverlapResult(level=level, density=float(entry.get("density", 0.0)),
                              layers=layers)


def plot_layer_overlap(result: LayerOverlapResult, out_dir: Path) -> list[Path]:
    import numpy as np
    from analyses.figures import COLORS, new_figure, save_figure, style
    names = list(result.layers)
    x = np.arange(len(names))
    with style():
        fig, axes = new_figure(width=max(3.4, 1.1 * len(names) + 1.2), height=2.8)
        ax = axes[0, 0]
        w = 0.27
        for i, (kind, label) in enumerate((("raw", "raw"), ("aligned", "aligned"),
                                           ("chance", "chance"))):
            vals = [result.layers[n][kind] for n in names]
            if any(v is None for v in vals):
                continue
            errs = [result.layers[n].get(f"{kind}_std") or 0 for n in names]
            ax.bar(x + (i - 1) * w, vals, w, yerr=errs if kind != "chance" else None,
                   color=COLORS.get(kind if kind != "raw" else "naive"), label=label,
                   capsize=2)
        ax.set_xticks(x, [f"{n.removesuffix('.weight')}\n{_pct(result.layers[n]['density'])}%"
                          for n in names])
        ax.set_ylabel("Jaccard overlap of masks")
        ax.set_title(f"per-layer mask overlap across seeds, level {result.level}")
        ax.legend()
    return save_figure(fig, Path(out_dir) / "overlap_per_layer")


@dataclass(frozen=True)
class LandscapeResult:
    """Hessian spectral density (stochastic Lanczos quadrature, Ghorbani et al. 2019) and 1-D
    and 2-D loss slices along filter-normalised random directions (Li et al. 2018), raw and
    gauge-fixed, for the first seed's dense network and its sparsest common ticket."""

    run: str
    entries: dict  # "level_L" -> {density, density_grid, density_values, slice_raw, ...}

    def to_dict(self) -> dict:
        return {"run": self.run, "entries": self.entries}

    def table(self) -> list[dict]:
        rows = []
        for key, e in self.entries.items():
            rows.append({"network": key, "weights remaining %": _pct(e["density"]),
                         "loss at minimum": f"{e['loss0']:.4f}",
                         "1-D loss rise at |alpha|=1, raw": f"{e['rise_raw']:.4f}",
                         "gauge-fixed": f"{e['rise_gauge_fixed']:.4f}",
                         "HVPs (density)": e["n_hvp"]})
        return rows


def compute_landscape(runs: Sequence[Run], *, levels=(), device="cpu", quick: bool = False,
                      subset: int = 512, seed: int = 0) -> LandscapeResult:
    try:
        import gauge as F
        from gauge.infer import infer_spec
    except ImportError as e:
        raise _Skip(f"gauge.flatness is not part of this build ({e})") from e
    from tickets.runs import build_run_model, load_level, load_run_data, open_run
    run = runs[0]
    wanted = sorted({0, max(levels)} & set(levels)) if levels else [0]
    opts = {"v": CACHE_VERSION, "quick": bool(quick), "subset": subset, "seed": seed,
            "levels": wanted, "run": str(run.path.resolve()),
            "stamp": [_mtime(run, lv) for lv in wanted]}
    cache = _cache_path(run, "landscape", opts)
    if cache.is_file():
        try:
            return LandscapeResult(**json.loads(cache.read_text()))
        except (TypeError, json.JSONDecodeError):
            pass
    info = open_run(run.path)
    model = build_run_model(info)
    data = load_run_data(info)
    x, y = data.train.tensors
    xy = (x[:subset], y[:subset])
    spec = infer_spec(model, x[:2])
    n_runs, steps = (2, 30) if quick else (4, 60)
    alphas = list(np.linspace(-1, 1, 21 if quick else 41))
    grid2 = list(np.linspace(-1, 1, 9 if quick else 17))
    entries = {}
    for lv in wanted:
        files = load_level(info, lv)
        params, mask = files.final, files.mask
        dens = F.spectral_density(model, params, xy, n_runs=n_runs, lanczos_steps=steps,
                                  mask=mask, device=device, seed=seed)
        sl = F.landscape_1d(model, params, xy, mask=mask, alphas=alphas, device=device,
                            seed=seed, gauge_fixed=True, spec=spec)
        sl2 = F.landscape_2d(model, params, xy, mask=mask, alphas=grid2, device=device,
                             seed=seed)
        raw, fixed = sl.raw.to_dict(), sl.gauge_fixed.to_dict()
        mid = len(alphas) // 2
        d2 = sl2.to_dict()
        entries[f"level_{lv}"] = {
            "level": lv, "density": float(files.metrics.get("density", 1.0)),
            "density_grid": [float(v) for v in dens.to_dict()["grid"]],
            "density_values": [float(v) for v in dens.to_dict()["density"]],
            "n_hvp": int(dens.n_hvp),
            "alphas": [float(a) for a in raw["alphas"]],
            "slice_raw": [float(v) for v in raw["losses"]],
            "slice_gauge_fixed": [float(v) for v in fixed["losses"]],
            "loss0": float(raw["losses"][mid]),
            "rise_raw": float((raw["losses"][0] + raw["losses"][-1]) / 2 - raw["losses"][mid]),
            "rise_gauge_fixed": float((fixed["losses"][0] + fixed["losses"][-1]) / 2
                                      - fixed["losses"][mid]),
            "plane_alphas": [float(a) for a in grid2],
            "plane_losses": [[float(v) for v in row] for row in d2["losses"]]}
    result = LandscapeResult(run=str(run.path), entries=entries)
    from tickets.store import save_json
    save_json(cache, result.to_dict())
    return result


def plot_landscape(result: LandscapeResult, out_dir: Path) -> list[Path]:
    import numpy as np
    from analyses.figures import PALETTE, new_figure, save_figure, style
    entries = list(result.entries.values())
    with style():
        fig, axes = new_figure(ncols=2 + len(entries), width=2.9, height=2.6)
        ax_d, ax_s = axes[0, 0], axes[0, 1]
        for i, e in enumerate(entries):
            label = "dense" if e["level"] == 0 else f"ticket {_pct(e['density'])}%"
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


# --------------------------------------------------------------------------------------------
# Composition


class _Skip(Exception):
    """An analysis that does not apply to these runs (the reason is shown in the report)."""


@dataclass(frozen=True)
class Analysis:
    """One section of the report: a module of :mod:`analyses` (``compute``/``plot``) or a
    built-in function pair, and what it needs from the runs."""

    name: str
    title: str
    what: str
    module: str | None = None
    compute: Callable | None = None
    plot: Callable | None = None
    min_runs: int = 1
    needs_pruned: bool = False


ANALYSES: tuple[Analysis, ...] = (
    Analysis("sparsity", "Sparsity vs accuracy",
             "Test accuracy of the IMP ticket and its controls against the fraction of weights "
             "remaining (log scale; Frankle & Carbin 2019). Band: ± 1 std over seeds.",
             compute=compute_sparsity, plot=plot_sparsity),
    Analysis("optimizer", "Optimizer and rewinding",
             "Tickets vs random reinitialisation per optimizer and rewind point. Frankle & "
             "Carbin (2019) find winning tickets rewound to init under Adam; Frankle et al. "
             "(2019) find that under SGD with momentum they need late rewinding. The margin "
             "below (ticket minus reinit, at the sparsest level and averaged over levels) says "
             "what these runs show.", compute=compute_optimizer, plot=plot_optimizer),
    Analysis("connect", "Linear mode connectivity between seeds",
             "Loss and error barriers on the straight path between two seeds' solutions, naive "
             "and after aligning one to the other (Entezari et al. 2022; Ainsworth et al. 2023).",
             module="analyses.connect", min_runs=2),
    Analysis("instability", "Instability vs rewind iteration",
             "Error barrier between two copies trained from iteration k with different data "
             "orders (Frankle et al. 2020).", module="analyses.instability"),
    Analysis("overlap", "Mask overlap across seeds",
             "Jaccard overlap of the tickets' masks: raw, after permutation alignment, and the "
             "chance level of independent random masks.", module="analyses.overlap", min_runs=2,
             needs_pruned=True),
    Analysis("transfer", "Ticket transfer across seeds",
             "A ticket's mask permuted into another seed's basis and trained from that seed's "
             "rewind weights, vs the unpermuted mask, the seed's own ticket and a random mask "
             "(Adnan et al. 2025).", module="analyses.transfer", min_runs=2, needs_pruned=True),
    Analysis("flatness", "Flatness per level, raw and gauge-fixed",
             "Top Hessian eigenvalue, trace and sharpness per IMP level, raw and at the "
             "scale-canonical point (Dinh et al. 2017; Andriushchenko et al. 2023).",
             module="analyses.flatness"),
    Analysis("overlap_layers", "Mask overlap per layer",
             "Per-layer Jaccard overlap of the seeds' masks at the sparsest level: raw, after "
             "alignment and chance; mean ± std over seed pairs.",
             compute=compute_layer_overlap, plot=plot_layer_overlap, min_runs=2,
             needs_pruned=True),
    Analysis("landscape", "Spectrum and loss landscape",
             "Hessian spectral density (stochastic Lanczos quadrature; Ghorbani et al. 2019) "
             "and 1-D / 2-D loss slices along filter-normalised random directions (Li et al. "
             "2018), for the first seed's dense network and its sparsest ticket; the 1-D slice "
             "also at the scale-canonical (gauge-fixed) point.",
             compute=compute_landscape, plot=plot_landscape),
    Analysis("align", "Alignment between seeds",
             "Weight matching between seeds (Ainsworth et al. 2023).", module="analyses.align",
             min_runs=2),
    Analysis("permutation", "The permutation found",
             "Weight matching between the first two seeds' dense networks, for the smallest "
             "hidden layer: unit similarity before and after alignment and the permutation.",
             compute=compute_permutation, plot=plot_permutation, min_runs=2),
)
_ORDER = ("sparsity", "optimizer", "connect", "instability", "overlap", "overlap_layers",
          "transfer", "flatness", "landscape", "align", "permutation")
ANALYSES = tuple(sorted(ANALYSES, key=lambda a: _ORDER.index(a.name)))


#: ``--quick``: cheaper settings of the expensive analyses (for CI and first looks). The
#: demo's ``--quick`` uses them, so ``gauge report --quick`` reproduces its numbers.
QUICK_OPTIONS: dict[str, dict[str, Any]] = {
    "landscape": {"quick": True},
    "flatness": {"subset": 256, "trace_samples": 6, "sharpness_steps": 3},
    "instability": {"rewind_iters": (0, 40), "points": 5},
    "connect": {"points": 5},
}


def _call(fn: Callable, *args, **options):
    """Call ``fn`` with the subset of ``options`` its signature accepts."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn(*args)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(*args, **options)
    return fn(*args, **{k: v for k, v in options.items() if k in params})


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def _load_analysis(a: Analysis) -> tuple[Callable, Callable]:
    if a.compute is not None:
        return a.compute, a.plot
    try:
        module = importlib.import_module(a.module)
    except ModuleNotFoundError as e:
        if e.name and (a.module == e.name or a.module.startswith(e.name + ".")):
            raise _Skip(f"module {a.module} is not part of this build") from e
        raise _Skip(f"module {a.module} cannot be imported: {_first_line(e)}") from e
    except Exception as e:  # a module with a bug must not take the whole report down
        raise _Skip(f"module {a.module} cannot be imported: {type(e).__name__}: "
                    f"{_first_line(e)}") from e
    compute, plot = getattr(module, "compute", None), getattr(module, "plot", None)
    if compute is None:
        raise _Skip(f"module {a.module} has no compute(run_dirs, ...) function")
    return compute, plot


def _to_dict(result) -> Any:
    if hasattr(result, "to_dict"):
        return result.to_dict()
    return result


def _table(result, module_name: str | None) -> list[dict] | None:
    """Rows for the HTML table: ``result.table()`` or ``module.table(result)`` when defined."""
    for owner in (result, importlib.import_module(module_name) if module_name else None):
        fn = getattr(owner, "table", None) if owner is not None else None
        if callable(fn):
            try:
                rows = fn() if owner is result else fn(result)
                if rows:
                    return [dict(r) for r in rows]
            except Exception:  # noqa: BLE001 - a table is a nicety; fall back to generic
                return None
    return None


@dataclass(frozen=True)
class ReportResult:
    """What ``build_report`` wrote: the results dict (= results.json), paths, timings."""

    results: dict
    html: Path
    json: Path
    figures: dict
    seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return self.results


def _level_notes(runs: Sequence[Run], primary: Sequence[Run]) -> list[dict]:
    skipped = []
    for r in runs:
        if not r.levels:
            skipped.append({"analysis": "all", "runs": [str(r.path)],
                            "reason": f"{r.path} has no completed level (IMP still running or "
                                      "killed before level 0 finished)"})
    if primary:
        chosen = {id(r) for r in primary}
        short = [r for r in runs if r.levels and r.group == primary[0].group
                 and id(r) not in chosen]
        for r in short:
            skipped.append({"analysis": "across seeds", "runs": [str(r.path)],
                            "reason": f"{r.path} has levels {list(r.levels)} only, the other "
                                      f"seeds {list(primary[0].levels)}: left out of the "
                                      "analyses across seeds (resume it with the same gauge imp "
                                      "command to include it)"})
        common = set.intersection(*(set(r.levels) for r in primary))
        for r in primary:
            extra = sorted(set(r.levels) - common)
            if extra:
                skipped.append({"analysis": "levels", "runs": [str(r.path)],
                                "reason": f"levels {extra} of {r.path} are not in every run of "
                                          f"group '{r.group}' (common: {sorted(common)}); "
                                          "analyses across seeds use the common levels"})
        arch = primary[0].arch
        others = [r for r in runs if r.levels and r.arch != arch]
        if others:
            archs = sorted({r.arch for r in others})
            skipped.append({"analysis": "across seeds", "runs": [str(r.path) for r in others],
                            "reason": f"{len(others)} run(s) of a different model/dataset "
                                      f"({'; '.join(archs)}) than the primary group ({arch}): "
                                      "left out of the analyses across seeds, which need one "
                                      "architecture"})
        rest = [r for r in runs if r.levels and r.arch == arch and r.group != primary[0].group]
        if rest:
            skipped.append({"analysis": "across seeds", "runs": [str(r.path) for r in rest],
                            "reason": f"{len(rest)} run(s) of other configurations ("
                                      f"{'; '.join(sorted({r.group for r in rest}))}): shown in "
                                      "the sparsity/optimizer comparison only; the analyses "
                                      f"across seeds use group '{primary[0].group}'"})
    return skipped


def check_analysis_names(names: Sequence[str], analyses: Sequence[Analysis] = ANALYSES) -> None:
    """``--only``/``--skip`` values must name analyses of the report."""
    known = [a.name for a in analyses]
    for n in names:
        if n not in known:
            raise UsageError(f"unknown analysis {n!r}; choose from {', '.join(known)}")


def build_report(run_dirs: Sequence[str | Path], out_dir: str | Path, *, device="cpu",
                 only: Sequence[str] | None = None, skip: Sequence[str] = (),
                 quick: bool = False, options: Mapping[str, Mapping[str, Any]] | None = None,
                 analyses: Sequence[Analysis] = ANALYSES,
                 progress: bool = False, log: Callable[[str], None] | None = None) -> ReportResult:
    """Compose every available analysis over ``run_dirs`` and write the report to ``out_dir``.

    Writes ``out_dir/report.html``, ``out_dir/results.json`` and ``out_dir/figures/``. Every
    analysis that cannot run is recorded under ``results["skipped"]`` with the reason; the
    others are still written. Each analysis' ``compute`` gets the options its signature
    accepts among ``device``, ``levels`` (the levels common to the runs), ``progress`` and
    ``options[name]`` (with ``quick``: :data:`QUICK_OPTIONS` first). The options used are
    recorded in ``results["options"]``: the same options on the same runs give the same
    numbers.
    """
    runs = open_runs(run_dirs)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: --out is a file, expected a directory")
    for parent in out_dir.parents:
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"{out_dir}: cannot write the report: {parent} is a file")
    check_analysis_names(list(only or []) + list(skip), analyses)
    log = log or (lambda msg: None)
    fig_dir = out_dir / "figures"
    primary = _primary(runs)
    common = sorted(set.intersection(*(set(r.levels) for r in primary))) if primary else []
    base_options = {"device": device, "levels": common, "progress": progress}
    from analyses.figures import style
    per_analysis: dict[str, dict] = {}
    for source in ((QUICK_OPTIONS if quick else {}), options or {}):
        for name, opts in source.items():
            per_analysis.setdefault(name, {}).update(opts)

    results: dict[str, Any] = {}
    figures: dict[str, list[str]] = {}
    tables: dict[str, list[dict] | None] = {}
    skipped = _level_notes(runs, primary)
    seconds: dict[str, float] = {}

    def run_one(a: Analysis) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            # the optimizer story compares configurations; everything else one configuration
            scope = [r for r in runs if r.levels] if a.name == "optimizer" else primary
            if not primary:
                raise _Skip("no run has a completed level")
            if len(scope) < a.min_runs:
                raise _Skip(f"needs at least {a.min_runs} seeds of one configuration; group "
                            f"'{primary[0].group}' has {len(primary)}")
            if a.needs_pruned and not [lv for lv in common if lv > 0]:
                raise _Skip("needs a pruned level (>= 1) completed in every run; common levels: "
                            f"{common}")
            compute, plot = _load_analysis(a)
            log(f"{a.name}: computing")
            opts = {**base_options, **per_analysis.get(a.name, {})}
            if a.module is None:
                result = _call(compute, scope, **opts)
            else:
                result = _call(compute, [r.path for r in scope], **opts)
            results[a.name] = _to_dict(result)
            tables[a.name] = _table(result, a.module)
            paths = []
            if plot is not None:
                try:
                    paths = list(plot(result, fig_dir) or [])
                except Exception as e:  # noqa: BLE001 - the numbers still count
                    skipped.append({"analysis": a.name, "runs": [],
                                    "reason": f"figure failed: {type(e).__name__}: "
                                              f"{_first_line(e)}"})
            figures[a.name] = [str(Path(p).relative_to(out_dir)) if Path(p).is_relative_to(out_dir)
                               else str(p) for p in paths]
        except _Skip as e:
            skipped.append({"analysis": a.name, "runs": [], "reason": _first_line(e)})
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - one failing analysis must not lose the others
            skipped.append({"analysis": a.name, "runs": [],
                            "reason": f"failed: {type(e).__name__}: {_first_line(e)}"})
        seconds[a.name] = time.perf_counter() - t0
        log(f"{a.name}: {seconds[a.name]:.1f}s ({time.process_time() - c0:.1f}s CPU)")

    for a in analyses:
        if (only and a.name not in only) or a.name in skip:
            continue
        with style():  # every module's artists in the house style, not only its axes
            run_one(a)

    report = {
        "runs": [r.to_dict() for r in runs],
        "primary_group": primary[0].group if primary else None,
        "common_levels": common,
        "quick": bool(quick),
        "options": per_analysis,
        "analyses": results,
        "figures": figures,
        "skipped": skipped,
    }
    from tickets.store import atomic_write_text, save_json
    json_path = out_dir / "results.json"
    save_json(json_path, report)
    html_path = out_dir / "report.html"
    atomic_write_text(html_path, render_html(report, out_dir, tables=tables, analyses=analyses))
    return ReportResult(results=report, html=html_path, json=json_path, figures=figures,
                        seconds=seconds)


# --------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:2em}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em;display:block;overflow-x:auto;
max-width:100%}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.8em;color:#555}.what{color:#444}.skip{color:#8a4b00}
code{background:#f5f5f5;padding:0 .2em}
"""


def _esc(x) -> str:
    return html.escape(str(x))


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, str) and "/" in v and len(v) > 30:
        return "…/" + "/".join(Path(v).parts[-2:])  # run paths: the part that tells them apart
    if isinstance(v, float):
        if v == 0 or 1e-3 <= abs(v) < 1e5:
            return f"{v:.4g}"
        return f"{v:.3e}"
    return str(v)


def format_table(rows: Sequence[Mapping], *, limit: int = 60) -> str:
    """An HTML table of ``rows`` (dicts with the same keys, scalars as values)."""
    if not rows:
        return ""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    body = []
    for r in rows[:limit]:
        body.append("<tr>" + "".join(f"<td>{_esc(_fmt(r.get(c, '')))}</td>" for c in cols) + "</tr>")
    more = (f"<tr><td colspan='{len(cols)}'>… {len(rows) - limit} more rows in results.json"
            "</td></tr>") if len(rows) > limit else ""
    return f"<table><tr>{head}</tr>{''.join(body)}{more}</table>"


def _is_scalar(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _generic_tables(obj, title: str = "", depth: int = 0) -> str:
    """Tables for a result's ``to_dict()`` whatever its shape: top-level scalars as key/value
    rows, lists of flat dicts as tables, nested dicts one level down; long numeric lists (curves)
    are left to the figures."""
    if not isinstance(obj, Mapping) or depth > 2:
        return ""
    parts = []
    scalars = [{"quantity": k, "value": v} for k, v in obj.items()
               if _is_scalar(v) and not (isinstance(v, str) and len(v) > 200)]
    if scalars:
        parts.append(format_table(scalars))
    for k, v in obj.items():
        if isinstance(v, list) and v and all(isinstance(r, Mapping) for r in v):
            rows = [{kk: vv for kk, vv in r.items() if _is_scalar(vv)} for r in v]
            if any(rows):
                parts.append(f"<h4>{_esc(k)}</h4>" + format_table(rows))
        elif isinstance(v, Mapping) and v:
            inner = _generic_tables(v, k, depth + 1)
            if inner:
                parts.append(f"<h4>{_esc(title + ' / ' if title else '')}{_esc(k)}</h4>{inner}")
    return "".join(parts)


def _img(path: Path, alt: str) -> str:
    raw = path.read_bytes()
    data = base64.b64encode(raw).decode("ascii")
    # figures are saved at 200 dpi: show them at half their pixel width (about 100 dpi)
    width = int.from_bytes(raw[16:20], "big") // 2 if raw[:8] == b"\x89PNG\r\n\x1a\n" else 0
    size = f" width='{width}'" if width else ""
    return (f"<figure><img alt='{_esc(alt)}'{size} src='data:image/png;base64,{data}'>"
            f"<figcaption>{_esc(path.name)} (PDF next to it)</figcaption></figure>")


def render_html(report: Mapping, out_dir: Path, *, tables: Mapping | None = None,
                analyses: Sequence[Analysis] = ANALYSES) -> str:
    """The self-contained report page: every PNG embedded as base64, no external resource."""
    tables = tables or {}
    out_dir = Path(out_dir)
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>gauge report</title><style>{_CSS}</style></head><body>",
             "<h1>gauge-tickets report</h1>"]
    runs = report.get("runs", [])
    parts.append(f"<p>{len(runs)} run director{'y' if len(runs) == 1 else 'ies'}; primary group "
                 f"<b>{_esc(report.get('primary_group'))}</b>; levels common to its runs: "
                 f"{_esc(report.get('common_levels'))}. Every number is in "
                 "<code>results.json</code>; every figure is in <code>figures/</code> as PNG and "
                 "PDF.</p>")
    parts.append(format_table([{"run": r["path"], "seed": r["seed"], "configuration": r["group"],
                                "model": r["arch"], "levels": len(r["levels"]),
                                "controls": ", ".join(f"{k} ({len(v)})"
                                                      for k, v in r["controls"].items()) or "-"}
                               for r in runs]))
    skipped = report.get("skipped", [])
    parts.append("<h2 id='skipped'>Skipped analyses and notes</h2>")
    if skipped:
        parts.append("<ul class='skip'>" + "".join(
            f"<li><b>{_esc(s['analysis'])}</b>: {_esc(s['reason'])}</li>" for s in skipped)
            + "</ul>")
    else:
        parts.append("<p>None: every analysis ran.</p>")
    for a in analyses:
        if a.name not in report.get("analyses", {}):
            continue
        parts.append(f"<h2 id='{_esc(a.name)}'>{_esc(a.title)}</h2><p class='what'>"
                     f"{_esc(a.what)}</p>")
        for rel in report.get("figures", {}).get(a.name, []):
            p = out_dir / rel if not Path(rel).is_absolute() else Path(rel)
            if p.suffix.lower() == ".png" and p.is_file():
                parts.append(_img(p, f"{a.title}: {p.stem}"))
        value = report["analyses"][a.name]
        rows = tables.get(a.name)
        if not rows and isinstance(value, Mapping):
            # the result's own table of rows when it has one ("table", else "rows")
            for key in ("table", "rows"):
                cand = value.get(key)
                if isinstance(cand, list) and cand and all(isinstance(r, Mapping) for r in cand):
                    rows = [{k: v for k, v in r.items() if _is_scalar(v)} for r in cand]
                    break
        if rows:
            settings = {k: v for k, v in value.items() if _is_scalar(v) and
                        not (isinstance(v, str) and ("/" in v or len(v) > 60))} \
                if isinstance(value, Mapping) else {}
            if settings:
                parts.append("<p class='what'>" + ", ".join(
                    f"{_esc(k)} = <code>{_esc(_fmt(v))}</code>" for k, v in settings.items())
                    + "</p>")
            parts.append(format_table(rows))
        else:
            parts.append(_generic_tables(value))
    parts.append("</body></html>")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Terminal summary


def summary_rows(report: Mapping) -> list[tuple[str, str, str]]:
    """(analysis, quantity, value) rows for the closing terminal table."""
    rows: list[tuple[str, str, str]] = []
    res = report.get("analyses", {})
    sp = res.get("sparsity")
    if sp:
        ticket = sp["curves"].get("ticket", [])
        if ticket:
            dense, last = ticket[0], ticket[-1]
            rows.append(("sparsity", "dense test acc %", f"{100 * dense['test_acc_mean']:.2f} ± "
                                                         f"{100 * dense['test_acc_std']:.2f}"))
            rows.append(("sparsity", f"ticket acc % at {_pct(last['weights_remaining'])}% weights",
                         f"{100 * last['test_acc_mean']:.2f} ± {100 * last['test_acc_std']:.2f}"))
            for control, curve in sp["curves"].items():
                if control == "ticket":
                    continue
                same = [r for r in curve if r["level"] == last["level"]]
                if same:
                    rows.append(("sparsity", f"{control} acc % at same level",
                                 f"{100 * same[0]['test_acc_mean']:.2f} ± "
                                 f"{100 * same[0]['test_acc_std']:.2f}"))
    opt = res.get("optimizer")
    if opt:
        for label, gap in opt["gap"].items():
            if gap:
                rows.append(("optimizer", f"{label}: ticket - reinit, points (at "
                             f"{_pct(gap['weights_remaining'])}% / mean over levels)",
                             f"{100 * gap['gap']:+.2f} / {100 * gap['mean_gap']:+.2f}"))
    for name, value in res.items():
        if name in ("sparsity", "optimizer"):
            continue
        try:
            extra = _SUMMARY[name](value) if name in _SUMMARY else _generic_summary(value)
        except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError):
            extra = _generic_summary(value)
        rows += [(name, q, v) for q, v in extra]
    for s in report.get("skipped", []):
        rows.append((s["analysis"], "skipped", s["reason"][:90]))
    return rows


def _mean(values) -> float:
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def _by_level(rows, key):
    out: dict[int, list] = {}
    for r in rows:
        out.setdefault(int(r["level"]), []).append(r.get(key))
    return {lv: _mean(v) for lv, v in sorted(out.items())}


def _ends(d: Mapping[int, Any]) -> list[int]:
    keys = sorted(d)
    return keys[:1] + keys[-1:] if len(keys) > 1 else keys


def _summary_connect(v) -> list[tuple[str, str]]:
    rows = v["rows"]
    dens = _by_level(rows, "density")
    out = []
    for kind in ("loss", "error"):
        naive, al = _by_level(rows, f"naive_{kind}_barrier"), _by_level(rows, f"aligned_{kind}_barrier")
        for lv in _ends(naive):
            out.append((f"{kind} barrier naive -> aligned, {_pct(dens[lv])}% weights",
                        f"{naive[lv]:.3f} -> {al[lv]:.3f}"))
    return out


def _summary_instability(v) -> list[tuple[str, str]]:
    out = []
    for r in v.get("table", []):
        parts = [f"{k.replace('_error_barrier', '')} {100 * x:.1f}" for k, x in r.items()
                 if k.endswith("_error_barrier") and x is not None]
        out.append((f"error barrier (%) rewinding to iter {r['rewind_iter']}", ", ".join(parts)))
    return out


def _summary_overlap(v) -> list[tuple[str, str]]:
    t = v["table"][-1]
    return [(f"Jaccard raw / aligned / chance, {_pct(t['density'])}% weights",
             f"{t['jaccard_raw']:.3f} / {t['jaccard_aligned']:.3f} / {t['jaccard_chance']:.3f}")]


def _summary_transfer(v) -> list[tuple[str, str]]:
    accs = ", ".join(f"{r['mask']} {100 * r['test_acc']:.1f}" for r in v["rows"]
                     if r.get("test_acc") is not None)
    return [(f"test acc % by mask, {_pct(v['density'])}% weights", accs)]


def _summary_flatness(v) -> list[tuple[str, str]]:
    rows = [r for r in v["rows"] if r.get("control") is None]
    dens = _by_level(rows, "density")
    raw, gf = _by_level(rows, "top_eig_raw"), _by_level(rows, "top_eig_gauge_fixed")
    sh = _by_level(rows, "sharpness_adaptive")
    out = []
    for lv in _ends(raw):
        out.append((f"top eigenvalue raw / gauge-fixed, {_pct(dens[lv])}% weights",
                    f"{raw[lv]:.3g} / {gf[lv]:.3g}"))
        out.append((f"adaptive sharpness, {_pct(dens[lv])}% weights", f"{sh[lv]:.3g}"))
    return out


def _summary_permutation(v) -> list[tuple[str, str]]:
    return [(f"{v['layer']}: mean unit cosine naive -> aligned",
             f"{v['diag_naive']:.3f} -> {v['diag_aligned']:.3f}")]


def _generic_summary(value) -> list[tuple[str, str]]:
    return [(k, _fmt(float(v))) for k, v in (value.items() if isinstance(value, Mapping) else [])
            if isinstance(v, (int, float)) and not isinstance(v, bool)][:6]


def _summary_overlap_layers(v) -> list[tuple[str, str]]:
    return [(f"{k} Jaccard raw / aligned / chance", f"{d['raw']:.3f} / "
             f"{'-' if d['aligned'] is None else format(d['aligned'], '.3f')} / {d['chance']:.3f}")
            for k, d in v["layers"].items()]


def _summary_landscape(v) -> list[tuple[str, str]]:
    return [(f"1-D loss rise at |alpha|=1 raw / gauge-fixed, {_pct(e['density'])}% weights",
             f"{e['rise_raw']:.3f} / {e['rise_gauge_fixed']:.3f}") for e in v["entries"].values()]


_SUMMARY = {"overlap_layers": _summary_overlap_layers, "landscape": _summary_landscape,
            "connect": _summary_connect, "instability": _summary_instability,
            "overlap": _summary_overlap, "transfer": _summary_transfer,
            "flatness": _summary_flatness, "permutation": _summary_permutation}


def print_summary(report: Mapping, file=None) -> None:
    rows = summary_rows(report)
    if not rows:
        return
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    file = file or sys.stdout
    print(f"{'analysis':<{w0}}  {'quantity':<{w1}}  value", file=file)
    print(f"{'-' * w0}  {'-' * w1}  -----", file=file)
    for a, q, v in rows:
        print(f"{a:<{w0}}  {q:<{w1}}  {v}", file=file)


# --------------------------------------------------------------------------------------------
# CLI


def add_report_arguments(parser, quick_help: str | None = None) -> None:
    """Options shared by ``gauge report`` and ``gauge demo``."""
    names = [a.name for a in ANALYSES]
    parser.add_argument("--only", nargs="+", metavar="NAME", default=None,
                        help=f"run only these analyses ({', '.join(names)})")
    parser.add_argument("--skip", nargs="+", metavar="NAME", default=[],
                        help="leave these analyses out")
    parser.add_argument("--quick", action="store_true",
                        help=quick_help or "cheaper settings of the expensive analyses (fewer "
                             "Hessian-vector products, rewind points and path points), as "
                             "gauge demo --quick uses")
    add_device_argument(parser)
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="CPU threads for torch (default 1: small networks train fastest "
                             "on one thread, and results are bit-identical between calls with "
                             "the same N; raise it for big models)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, no summary")


def set_threads(n: int) -> None:
    """``--threads``: torch's intra-op CPU threads."""
    if n < 1:
        raise UsageError(f"--threads must be >= 1, got {n}")
    import torch
    torch.set_num_threads(n)


def add_arguments(parser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="IMP run directories")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: report.html, results.json, figures/")
    add_report_arguments(parser)
    add_json_argument(parser)


def run(args) -> int:
    set_threads(args.threads)
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    verbose = not args.quiet and args.json != "-"
    result = build_report(args.runs, args.out, device=device, only=args.only, skip=args.skip,
                          quick=args.quick, progress=progress_enabled(args),
                          log=(lambda m: print(m, file=sys.stderr)) if verbose else None)
    if verbose:
        print_summary(result.results)
        print(f"report: {result.html} ({time.perf_counter() - t0:.1f}s)")
    emit_json(args.json, result.results)
    return 0


if __name__ == "__main__":
    from analyses.cli import run_command
    sys.exit(run_command(sys.modules[__name__]))
