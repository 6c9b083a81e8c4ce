"""gauge flatness: Hessian spectrum, trace, sharpness and loss landscapes of a checkpoint, raw
and gauge-fixed.

All measures use a fixed subset of the training split (--subset, default the first 1000
examples), the model in eval mode (BatchNorm uses its running statistics) and the mean
cross-entropy. --top-k: extreme Hessian eigenvalues by Lanczos (ARPACK); --trace: Hutch++
(Meyer et al. 2021); --density: spectral density by stochastic Lanczos quadrature (Ghorbani et
al. 2019); --sharpness: worst- or average-case adaptive sharpness (Andriushchenko et al. 2023);
--landscape: loss along filter-normalised random directions (Li et al. 2018).

The checkpoint may be in any format the toolkit reads (docs/byo.md); the model is the one its
metadata records, else --model SOURCE (with --model-kwargs, --input-shape). --data takes a
dataset name, a .npz/.pt/.safetensors file or pkg.module:factory, and must fit the model.

--per-layer: the top eigenvalue and Hutch++ trace of each layer's diagonal Hessian block H_bb
(the curvature in that layer's parameters with the others fixed), with a bar figure under
--plot. --curvature ggn measures the generalised Gauss-Newton matrix J^T H_out J (positive
semi-definite) instead of the Hessian.

--mask FILE restricts everything to a ticket's unpruned weights (pruned entries are zero): a
mask file (safetensors or .pt keyed by parameter name, `_mask` suffixes stripped), a pruned
state_dict (its `*_mask` entries), an OpenLTH level or its mask.pth; a checkpoint saved with
torch.nn.utils.prune active carries its own mask, used unless --mask is given.
--gauge-fixed also evaluates each measure at the balanced point of the ReLU-rescaling orbit
(canonicalize_scale): raw Hessian numbers change arbitrarily under rescaling (Dinh et al.
2017), the gauge-fixed ones do not.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from analyses.common import (UsageError, add_device_argument, add_json_argument,
                             add_model_arguments, add_plot_argument, add_quiet_argument,
                             check_not_input,
                             emit_json, ensure_output_path, percent, progress_enabled,
                             resolve_device)
from gauge.batches import as_data
from tickets.runs import cache_file, read_cache, write_cache

HELP = "Hessian spectrum, trace, sharpness and landscapes, raw and gauge-fixed"


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint, file or folder (e.g. "
                        "RUN/level_03/final.safetensors, a torch.save'd state_dict)")
    add_model_arguments(parser)
    parser.add_argument("--data", default=None,
                        help="dataset: a name, a .npz/.pt/.safetensors file or "
                             "pkg.module:factory (default: the checkpoint's)")
    parser.add_argument("--root", default=None, help="folder with the dataset files")
    parser.add_argument("--subset", type=int, default=1000, metavar="N",
                        help="use the first N training examples (a fixed set; default 1000)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="HVP batch size (default: the whole subset in one batch)")
    parser.add_argument("--top-k", type=int, default=5, metavar="K",
                        help="number of top Hessian eigenvalues (default 5; 0 = skip)")
    parser.add_argument("--negative", action="store_true",
                        help="also the K smallest (most negative) eigenvalues")
    parser.add_argument("--trace", action="store_true", help="Hutch++ estimate of tr(H)")
    parser.add_argument("--trace-samples", type=int, default=60, metavar="M",
                        help="HVPs for --trace (default 60)")
    parser.add_argument("--density", action="store_true",
                        help="spectral density by stochastic Lanczos quadrature")
    parser.add_argument("--density-runs", type=int, default=4)
    parser.add_argument("--lanczos-steps", type=int, default=60)
    parser.add_argument("--per-layer", action="store_true",
                        help="top eigenvalue and trace of each layer's diagonal Hessian block")
    parser.add_argument("--curvature", choices=["hessian", "ggn"], default="hessian",
                        help="Hessian (default) or generalised Gauss-Newton J^T H_out J")
    parser.add_argument("--sharpness", choices=["worst", "average"], default=None,
                        help="adaptive sharpness (Andriushchenko et al. 2023); needs --rho")
    parser.add_argument("--rho", type=float, default=None, help="sharpness radius (> 0)")
    parser.add_argument("--no-adaptive", action="store_true",
                        help="plain (non-adaptive) sharpness, not rescaling invariant")
    parser.add_argument("--norm", choices=["l2", "linf"], default="l2")
    parser.add_argument("--landscape", choices=["1d", "2d"], default=None,
                        help="loss along filter-normalised random direction(s)")
    parser.add_argument("--steps", type=int, default=None,
                        help="landscape points per axis (default 41 for 1d, 21 for 2d)")
    parser.add_argument("--mask", default=None, metavar="FILE",
                        help="ticket mask: safetensors/.pt keyed by parameter name (e.g. "
                             "RUN/level_03/mask.safetensors), a pruned state_dict, an OpenLTH "
                             "mask.pth (default: the checkpoint's own pruning mask, if any)")
    parser.add_argument("--weights-only", action="store_true",
                        help="exclude biases and norm parameters")
    parser.add_argument("--gauge-fixed", action="store_true",
                        help="also measure at canonicalize_scale(params) and report both")
    parser.add_argument("--seed", type=int, default=0, help="seed of probes and directions")
    add_plot_argument(parser, "write figures (density, landscape) as PNG+PDF into DIR",
                      metavar="DIR")
    add_device_argument(parser)
    add_quiet_argument(parser, "no progress bar")
    add_json_argument(parser)


def _load_mask(path: str, params) -> dict:
    from tickets.masks import load_mask
    return load_mask(path, params)


def _own_mask(checkpoint):
    """The mask a checkpoint carries (pruning state, an OpenLTH level's mask.pth), or None."""
    from tickets.prune import check_mask
    if checkpoint.mask is None:
        return None
    return check_mask(checkpoint.params, checkpoint.mask, f"{checkpoint.path} (its mask)")


def _validate(args) -> None:
    if args.sharpness is not None and args.rho is None:
        raise UsageError("--sharpness needs --rho R (R > 0)")
    if args.rho is not None and not args.rho > 0:
        raise UsageError(f"--rho must be > 0, got {args.rho}")
    if args.top_k < 0:
        raise UsageError(f"--top-k must be >= 0, got {args.top_k}")
    if args.subset < 1:
        raise UsageError(f"--subset must be >= 1, got {args.subset}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.trace_samples < 6:
        raise UsageError(f"--trace-samples must be >= 6, got {args.trace_samples}")
    if args.density_runs < 1 or args.lanczos_steps < 2:
        raise UsageError("--density-runs must be >= 1 and --lanczos-steps >= 2")
    if args.steps is not None and args.steps < 2:
        raise UsageError(f"--steps must be >= 2, got {args.steps}")
    if args.json not in (None, "-"):
        ensure_output_path(args.json, "--json")
    if args.plot is not None:
        ensure_output_path(args.plot, "--plot", directory=True)


def _subset(data, n):
    """The first ``n`` training examples, as tensors: an ``(x, y)`` pair, or a dict batch
    (token data) as collated."""
    from torch.utils.data import TensorDataset
    if isinstance(data.train, TensorDataset):
        x, y = data.train.tensors
        return x[:n], y[:n]
    from analyses.common import example_batch
    batch = example_batch(data.train, n)
    return batch if isinstance(batch, dict) else tuple(batch)


@contextmanager
def _hvp_progress(args):
    """A callback counting Hessian-vector products on a progress bar (none with --quiet)."""
    if not progress_enabled(args):
        yield lambda _n: None
        return
    from tqdm import tqdm
    bar = tqdm(unit="HVP", desc="flatness", file=sys.stderr, leave=False)
    try:
        yield lambda _n: bar.update(1)
    finally:
        bar.close()


def _landscape(args, model, params, xy, **kw):
    import numpy as np

    from gauge import landscape_1d, landscape_2d
    if args.landscape == "1d":
        return landscape_1d(model, params, xy, alphas=np.linspace(-1, 1, args.steps or 41), **kw)
    if args.landscape == "2d":
        return landscape_2d(model, params, xy, alphas=np.linspace(-1, 1, args.steps or 21), **kw)
    return None


def _measure(args, model, params, xy, mask, device, tick) -> tuple[dict, Any, Any, Any]:
    """The measures the options ask for: ``(json entries, density, landscape, per-layer
    curvature)``."""
    from gauge import (SharpnessResult, hessian_eigenvalues, hessian_trace, loss_at, sharpness,
                       spectral_density, weights_only)
    kw = dict(mask=mask, device=device, seed=args.seed, batch_size=args.batch_size,
              param_filter=weights_only if args.weights_only else None,
              gauge_fixed=args.gauge_fixed)
    curv = dict(kw, curvature=args.curvature, callback=tick)
    out: dict[str, Any] = {"loss": loss_at(model, dict(params, **({} if mask is None else {
        k: params[k] * mask[k] for k in mask})), xy, device=device)}
    if args.top_k > 0:
        out["eigenvalues"] = hessian_eigenvalues(
            model, params, xy, k=args.top_k, which="both" if args.negative else "LA",
            **curv).to_dict()
    if args.trace:
        out["trace"] = hessian_trace(model, params, xy, n_samples=args.trace_samples,
                                     method="hutch++", **curv).to_dict()
    per_layer = None
    if args.per_layer:
        per_layer = {"eigenvalues": hessian_eigenvalues(model, params, xy, k=1, blocks="layer",
                                                        **curv),
                     "trace": hessian_trace(model, params, xy, n_samples=args.trace_samples,
                                            method="hutch++", blocks="layer", **curv)}
        out["per_layer"] = {k: v.to_dict() for k, v in per_layer.items()}
    density = None
    if args.density:
        density = spectral_density(model, params, xy, n_runs=args.density_runs,
                                   lanczos_steps=args.lanczos_steps, **curv)
        out["density"] = density.to_dict()
    if args.sharpness:
        res = sharpness(model, params, xy, rho=args.rho, kind=args.sharpness,
                        adaptive=not args.no_adaptive, norm=args.norm, **kw)
        out["sharpness"] = {"kind": args.sharpness, "rho": args.rho, "norm": args.norm,
                            "adaptive": not args.no_adaptive,
                            "value": res.value if isinstance(res, SharpnessResult) else
                            {"raw": res.raw.value, "gauge_fixed": res.gauge_fixed.value}}
    land = _landscape(args, model, params, xy, **kw)
    if land is not None:
        out["landscape"] = land.to_dict()
    return out, density, land, per_layer


def run(args) -> int:
    from analyses.connect import load_checkpoints_and_data

    _validate(args)
    if args.json not in (None, "-"):
        check_not_input(args.json, [args.checkpoint], "--json")
    device = resolve_device(args.device)
    loaded, data = load_checkpoints_and_data([args.checkpoint], args)
    model, params = loaded.model, loaded.params[0]
    mask = _load_mask(args.mask, params) if args.mask else _own_mask(loaded.loaded[0])
    name = args.data or data.name
    xy = _subset(data, args.subset)
    out: dict[str, Any] = {"checkpoint": str(args.checkpoint), "dataset": name,
                           "n_data": as_data(xy).n, "gauge_fixed": args.gauge_fixed,
                           "mask": args.mask or ("pruning state of the checkpoint"
                                                 if mask is not None else None),
                           "model": loaded.name, "device": str(device),
                           "curvature": args.curvature}
    with _hvp_progress(args) as tick:
        measures, density, land, per_layer = _measure(args, model, params, xy, mask, device,
                                                      tick)
    out.update(measures)
    if args.plot is not None:
        folder, stem = Path(args.plot), Path(args.checkpoint).stem
        figures = []
        if density is not None:
            figures += _plot_density(density, folder / f"{stem}-density")
        if land is not None:
            figures += _plot_landscape(land, folder / f"{stem}-landscape-{args.landscape}")
        if per_layer is not None:
            figures += _plot_per_layer(per_layer, args.curvature, folder / f"{stem}-per-layer")
        out["figures"] = [str(p) for p in figures]
    if args.json != "-":
        print(_summary(out))
    emit_json(args.json, out)
    return 0


def _pick(d, key="raw"):
    return d[key] if isinstance(d, dict) and "raw" in d else d


def _summary(out: dict) -> str:
    lines = [f"{out['checkpoint']} on {out['dataset']} ({out['n_data']} examples): "
             f"loss {out['loss']:.4f}"]
    views = ["raw", "gauge_fixed"] if out["gauge_fixed"] else [None]
    for view in views:
        tag = f" [{view}]" if view else ""
        if "eigenvalues" in out:
            e = out["eigenvalues"][view] if view else out["eigenvalues"]
            vals = ", ".join(f"{v:.5g}" for v in reversed(e["values"]))
            lines.append(f"  eigenvalues{tag}: {vals}  ({e['n_hvp']} HVPs)")
        if "trace" in out:
            t = out["trace"][view] if view else out["trace"]
            lines.append(f"  trace{tag}: {t['estimate']:.5g} +- {t['stderr']:.2g}  "
                         f"({t['n_hvp']} HVPs)")
        if "sharpness" in out:
            s = out["sharpness"]["value"]
            s = s[view] if view else s
            lines.append(f"  sharpness{tag} ({out['sharpness']['kind']}, rho "
                         f"{out['sharpness']['rho']}): {s:.5g}")
    if "per_layer" in out:
        lines += _per_layer_lines(out["per_layer"])
    for p in out.get("figures", []):
        if p.endswith(".png"):
            lines.append(f"  figure: {p}")
    return "\n".join(lines)


def _per_layer_views(result) -> list[tuple[str, Any]]:
    """[(label, BlockCurvature)] of a per-block measure, raw first."""
    if isinstance(result, dict):
        if "raw" in result and "blocks" not in result:
            return [("raw", result["raw"]), ("gauge-fixed", result["gauge_fixed"])]
        return [("raw", result)]
    if hasattr(result, "raw"):
        return [("raw", result.raw), ("gauge-fixed", result.gauge_fixed)]
    return [("raw", result)]


def _per_layer_lines(per_layer: dict) -> list[str]:
    eig, tr = _per_layer_views(per_layer["eigenvalues"]), _per_layer_views(per_layer["trace"])
    names = list(eig[0][1]["blocks"])
    width = max(len(n) for n in names)
    head = f"  {'per layer':<{width + 2}}" + "".join(
        f"  {'top eig ' + lab:>20}  {'trace ' + lab:>20}" for lab, _ in eig)
    lines = [head]
    for n in names:
        cells = "".join(f"  {e['blocks'][n]['values'][-1]:>20.5g}  "
                        f"{t['blocks'][n]['estimate']:>20.5g}"
                        for (_, e), (_, t) in zip(eig, tr))
        lines.append(f"    {n:<{width}}{cells}")
    return lines


# ----------------------------------------------------------------------------- figures

def _plot_per_layer(per_layer: dict, curvature: str, stem: Path) -> list[Path]:
    """Bars per layer: top eigenvalue and trace of the diagonal block, raw and gauge-fixed."""
    import numpy as np

    from analyses.figures import COLORS, new_figure, save_figure
    what = "Hessian" if curvature == "hessian" else "Gauss-Newton"
    panels = [("eigenvalues", rf"Top eigenvalue of each layer's {what} block",
               "top eigenvalue", lambda r: r.values[-1]),
              ("trace", f"Trace of each layer's {what} block (Hutch++)", "trace",
               lambda r: r.estimate)]
    views = _per_layer_views(per_layer["eigenvalues"])
    names = list(views[0][1].blocks)
    fig, axes = new_figure(2, 1, width=max(3.4, 0.55 * len(names) * len(views) + 1.2),
                           height=2.8)
    x = np.arange(len(names))
    w = 0.8 / len(views)
    for ax, (key, title, ylabel, value) in zip(axes[0], panels):
        vals_all = []
        for i, (label, res) in enumerate(_per_layer_views(per_layer[key])):
            vals = [float(value(res.blocks[n])) for n in names]
            vals_all += vals
            ax.bar(x + (i - (len(views) - 1) / 2) * w, vals, w, label=label,
                   color=COLORS["gauge_fixed"] if label == "gauge-fixed" else COLORS["raw"])
        # linear axis: bar heights are the values; headroom keeps the legend off the bars
        ax.axhline(0, color="black", linewidth=0.6)
        if max(vals_all) > 0:
            ax.set_ylim(top=1.3 * max(vals_all))
        ax.set_xticks(x, names, rotation=30 if len(names) > 4 else 0)
        ax.set_xlabel("layer (parameter block)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(loc="upper left", ncol=len(views))
    return save_figure(fig, stem)


def _plot_density(density, stem: Path) -> list[Path]:
    import numpy as np

    from analyses.figures import COLORS, new_figure, save_figure
    views = ([("raw", density.raw), ("gauge-fixed", density.gauge_fixed)]
             if hasattr(density, "raw") else [("raw", density)])
    fig, axes = new_figure(len(views), 1, width=3.6, height=2.6)
    for ax, (label, d) in zip(axes[0], views):
        color = COLORS["gauge_fixed"] if label == "gauge-fixed" else COLORS["raw"]
        ax.semilogy(d.grid, np.maximum(d.density, 1e-12), color=color)
        ax.set_ylim(max(1e-8, float(d.density.max()) * 1e-8), float(d.density.max()) * 3)
        ax.set_xlabel("Hessian eigenvalue")
        ax.set_ylabel("density (SLQ)")
        ax.set_title(f"Spectral density, {label}")
    return save_figure(fig, stem)


def _plot_landscape(land, stem: Path) -> list[Path]:
    from analyses.figures import COLORS, new_figure, save_figure
    views = ([("raw", land.raw), ("gauge-fixed", land.gauge_fixed)]
             if hasattr(land, "raw") else [("raw", land)])
    if hasattr(views[0][1], "betas"):
        fig, axes = new_figure(len(views), 1, width=3.4, height=3.0)
        for ax, (label, l2) in zip(axes[0], views):
            cs = ax.contourf(l2.alphas, l2.betas, l2.losses, levels=20, cmap="viridis")
            ax.contour(l2.alphas, l2.betas, l2.losses, levels=10, colors="white",
                       linewidths=0.5)
            fig.colorbar(cs, ax=ax, label="loss")
            ax.plot([0], [0], marker="*", color="white")
            ax.set_xlabel(r"$\alpha$ (direction 1)")
            ax.set_ylabel(r"$\beta$ (direction 2)")
            ax.set_title(f"Loss landscape, {label}")
            ax.grid(False)
        return save_figure(fig, stem)
    fig, axes = new_figure(1, 1, width=3.6, height=2.6)
    ax = axes[0][0]
    for label, l1 in views:
        ax.plot(l1.alphas, l1.losses, label=label,
                color=COLORS["gauge_fixed"] if label == "gauge-fixed" else COLORS["raw"])
    ax.set_xlabel(r"$\alpha$ (filter-normalised random direction)")
    ax.set_ylabel("training loss")
    ax.set_title("1-D loss landscape")
    ax.legend()
    return save_figure(fig, stem)


# ----------------------------------------------------------------------------- report API

@dataclass(frozen=True)
class FlatnessResult:
    """Flatness per IMP level: one row per (run, level[, control]) with the density (fraction
    of weights remaining), test accuracy, top Hessian eigenvalue raw and gauge-fixed, Hutch++
    trace raw and gauge-fixed, and adaptive worst-case sharpness."""

    rows: tuple[dict, ...]
    options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"rows": list(self.rows), "options": self.options}

    def table(self) -> list[dict]:
        keys = ["run", "level", "control", "density", "test_acc", "top_eig_raw",
                "top_eig_gauge_fixed", "trace_raw", "trace_gauge_fixed", "sharpness_adaptive"]
        return [{k: r.get(k) for k in keys} for r in self.rows]


def _level_row(run, level, control, model, xy, options, device) -> dict:
    from gauge import hessian_eigenvalues, hessian_trace, sharpness
    from tickets import load_level
    files = load_level(run, level, control=control)
    params, mask = files.final, files.mask
    common = dict(mask=mask, device=device, seed=options["seed"])
    eig = hessian_eigenvalues(model, params, xy, k=1, gauge_fixed=True, **common)
    tr = hessian_trace(model, params, xy, n_samples=options["trace_samples"],
                       method="hutch++", gauge_fixed=True, **common)
    sharp = sharpness(model, params, xy, rho=options["rho"], kind="worst", adaptive=True,
                      steps=options["sharpness_steps"], **common)
    return {"run": str(run.path), "level": int(level), "control": control,
            "density": files.metrics["density"], "test_acc": files.metrics["test_acc"],
            "top_eig_raw": float(eig.raw.values[-1]),
            "top_eig_gauge_fixed": float(eig.gauge_fixed.values[-1]),
            "trace_raw": tr.raw.estimate, "trace_raw_stderr": tr.raw.stderr,
            "trace_gauge_fixed": tr.gauge_fixed.estimate,
            "trace_gauge_fixed_stderr": tr.gauge_fixed.stderr,
            "sharpness_adaptive": sharp.value,
            "n_hvp": eig.raw.n_hvp + eig.gauge_fixed.n_hvp + tr.raw.n_hvp + tr.gauge_fixed.n_hvp}


def compute(run_dirs: Sequence[Path], *, levels: Sequence[int] | None = None,
            controls: bool = False, subset: int = 1000, rho: float = 0.1,
            sharpness_steps: int = 10, trace_samples: int = 30, seed: int = 0, device=None,
            progress: bool = False) -> FlatnessResult:
    """Per IMP level (ticket; with ``controls`` also each control) of each run: top Hessian
    eigenvalue raw and gauge-fixed, Hutch++ trace raw and gauge-fixed (``trace_samples``
    HVPs), adaptive worst-case l2 sharpness at radius ``rho`` (rescaling invariant by itself),
    on the first ``subset`` training examples. The dense network is level 0. Each row is
    cached in ``RUN/analyses/flatness-<key>.json`` (``key`` hashes the options), so a second
    call only reads JSON."""
    import torch

    from analyses.study import open_runs
    if not rho > 0:
        raise UsageError(f"rho must be > 0, got {rho}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    options = {"subset": int(subset), "rho": float(rho), "sharpness_steps": int(sharpness_steps),
               "trace_samples": int(trace_samples), "seed": int(seed), "version": 1}
    rows = []
    for run in open_runs(run_dirs):
        todo = [(lv, None) for lv in run.levels if levels is None or lv in levels]
        if controls:
            todo += [(lv, c) for c, lvs in run.controls.items() for lv in lvs
                     if levels is None or lv in levels]
        rows += _run_rows(run, todo, options, device)
    return FlatnessResult(rows=tuple(rows), options=options)


def _run_rows(run, todo, options: dict, device) -> list[dict]:
    """The rows of one run's (level, control) pairs, read from its cache or computed (and the
    cache rewritten)."""
    from tickets import build_run_model, load_run_data
    cache_path = cache_file(run.path, "flatness", options)
    cache = (read_cache(cache_path) or {}).get("rows", {})
    xy = model = None
    rows, changed = [], False
    for lv, control in todo:
        ck = f"{control or 'ticket'}/{lv}"
        if ck not in cache:
            if model is None:
                model = build_run_model(run)
                xy = _subset(load_run_data(run), options["subset"])
            cache[ck] = _level_row(run, lv, control, model, xy, options, device)
            changed = True
        rows.append(cache[ck])
    if changed:
        write_cache(cache_path, {"options": options, "rows": cache})
    return rows


def summary(result: FlatnessResult) -> list[tuple[str, str]]:
    """Top eigenvalue raw / gauge-fixed and adaptive sharpness at the densest and sparsest
    level (mean over runs)."""
    rows = [r for r in result.rows if r["control"] is None]
    levels = sorted({r["level"] for r in rows})
    out = []
    for lv in levels[:1] + levels[-1:] if len(levels) > 1 else levels:
        at = [r for r in rows if r["level"] == lv]

        def mean(key):
            return sum(float(r[key]) for r in at) / len(at)
        dens = percent(mean("density"))
        out.append((f"top eigenvalue raw / gauge-fixed, {dens}% weights",
                    f"{mean('top_eig_raw'):.3g} / {mean('top_eig_gauge_fixed'):.3g}"))
        out.append((f"adaptive sharpness, {dens}% weights", f"{mean('sharpness_adaptive'):.3g}"))
    return out


def plot(result: FlatnessResult, out_dir: Path) -> list[Path]:
    """Top eigenvalue (raw vs gauge-fixed), trace and adaptive sharpness against the fraction of
    weights remaining (log x axis, dense on the left)."""

    from analyses.figures import COLORS, PALETTE, new_figure, save_figure, weights_remaining_axis
    rows = [r for r in result.rows if r.get("control") is None]
    if not rows:
        return []
    fig, axes = new_figure(3, 1, width=3.0, height=2.5)
    ax_e, ax_t, ax_s = axes[0]
    runs = sorted({r["run"] for r in rows})
    for i, run in enumerate(runs):
        rr = sorted((r for r in rows if r["run"] == run), key=lambda r: -r["density"])
        d = [100 * r["density"] for r in rr]
        lab = (lambda s: s if i == 0 else None)
        ax_e.plot(d, [r["top_eig_raw"] for r in rr], "o-", color=COLORS["raw"], label=lab("raw"))
        ax_e.plot(d, [r["top_eig_gauge_fixed"] for r in rr], "s-", color=COLORS["gauge_fixed"],
                  label=lab("gauge-fixed"))
        ax_t.errorbar(d, [r["trace_raw"] for r in rr],
                      yerr=[r["trace_raw_stderr"] for r in rr], fmt="o-",
                      color=COLORS["raw"], label=lab("raw"))
        ax_t.errorbar(d, [r["trace_gauge_fixed"] for r in rr],
                      yerr=[r["trace_gauge_fixed_stderr"] for r in rr], fmt="s-",
                      color=COLORS["gauge_fixed"], label=lab("gauge-fixed"))
        ax_s.plot(d, [r["sharpness_adaptive"] for r in rr], "o-", color=PALETTE[2],
                  label=lab("adaptive (invariant)"))
    for ax, title in ((ax_e, r"Top Hessian eigenvalue $\lambda_{max}$"),
                      (ax_t, "Hessian trace (Hutch++)"),
                      (ax_s, rf"Adaptive sharpness, $\rho$={result.options.get('rho')}")):
        weights_remaining_axis(ax)
        ax.set_title(title)
        ax.legend()
    ax_e.set_ylabel("eigenvalue")
    ax_t.set_ylabel("trace")
    ax_s.set_ylabel("loss increase")
    return save_figure(fig, Path(out_dir) / "flatness")


if __name__ == "__main__":
    from analyses.cli import run_command
    sys.exit(run_command(sys.modules[__name__]))
