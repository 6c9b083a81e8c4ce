"""gauge drift: how far does training move each layer, for the dense network, the ticket and
its controls?

For every completed level of an IMP run (and of each control branch) reads the level's start
and trained weights and reports the relative distance per prunable layer,

    drift = ||W_T - W_0||_F / ||W_0||_F,

with ``W_0`` the weights the level starts from (the init, or the rewind point theta_k with late
rewinding; pruned weights are zero in both) and ``W_T`` the trained ones. Level 0 is the dense
network. Wide layers of a dense network drift little from their init (Jacot et al. 2018;
Lee et al. 2019, "Wide neural networks of any depth evolve as linear models"); the figure
shows whether a sparse ticket moves further than the dense network, and than its controls
(a random reinitialisation under the same mask, a random mask on the same weights; Frankle &
Carbin 2019).

Example:
  gauge drift runs/s0 --plot drift.png
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from analyses.common import UsageError, add_json_argument, finish, ensure_output_path

HELP = ("relative weight drift ||W_T - W_0|| / ||W_0|| per layer of an IMP run: dense vs ticket "
        "vs controls")


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="IMP run directory (gauge imp --out)")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="drift per layer vs weights remaining (PNG/PDF/SVG by the suffix)")
    add_json_argument(parser)
    parser.add_argument("--quiet", action="store_true")


@dataclass(frozen=True)
class DriftAnalysis:
    """One row per (branch, level): ``branch`` is ``"ticket"`` or a control's name, ``density``
    the fraction of prunable weights left, ``per_layer`` the drift of each prunable weight and
    ``total`` the drift of all of them together."""

    run: str
    layers: tuple[str, ...]
    rewind_iter: int
    rows: tuple[dict, ...]

    def to_dict(self) -> dict:
        return {"run": self.run, "layers": list(self.layers), "rewind_iter": self.rewind_iter,
                "rows": list(self.rows)}


def compute(run_dir: str | Path) -> DriftAnalysis:
    """Drift of every completed level of the ticket and of each control."""
    from gauge.similarity import weight_drift
    from tickets import load_level, open_run
    run = open_run(run_dir)
    if not run.levels:
        raise UsageError(f"{run_dir}: the run has no completed level yet")
    layers = tuple(run.meta.get("prunable") or [])
    rows = []
    branches = [("ticket", None, run.levels)] + [(c, c, lv) for c, lv in run.controls.items()]
    for branch, control, levels in branches:
        for level in levels:
            files = load_level(run, level, control=control)
            keys = layers or tuple(files.mask)
            d = weight_drift(files.init, files.final, keys)
            rows.append({"branch": branch, "level": level,
                         "density": float(files.metrics["density"]),
                         "test_acc": float(files.metrics["test_acc"]),
                         "per_layer": d.per_layer, "total": d.total})
    return DriftAnalysis(run=str(run.path), layers=layers or tuple(rows[0]["per_layer"]),
                         rewind_iter=run.rewind_iter, rows=tuple(rows))


def summary(result: DriftAnalysis) -> list[tuple[str, str]]:
    """One line per (branch, level): density and total drift, then each layer's."""
    out = []
    for r in result.rows:
        layers = ", ".join(f"{k} {v:.3f}" for k, v in r["per_layer"].items())
        out.append((f"{r['branch']} level {r['level']}",
                    f"{100 * r['density']:.1f}% weights, drift {r['total']:.3f} ({layers})"))
    return out


def plot(result: DriftAnalysis, path: str | Path) -> list[Path]:
    """One panel per prunable layer and one for all of them: drift vs weights remaining, the
    ticket's levels (level 0: the dense network, black marker) and each control."""
    from analyses.figures import COLORS, PALETTE, new_figure, save_plot, weights_remaining_axis
    panels = list(result.layers) + ["all layers"]
    cols = min(3, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = new_figure(cols, nrows, width=3.0, height=2.4)
    branches = list(dict.fromkeys(r["branch"] for r in result.rows))
    for idx, name in enumerate(panels):
        ax = axes[idx // cols][idx % cols]
        for b_i, branch in enumerate(branches):
            rows = sorted((r for r in result.rows if r["branch"] == branch),
                          key=lambda r: -r["density"])
            xs = [100 * r["density"] for r in rows]
            ys = [r["total"] if name == "all layers" else r["per_layer"][name] for r in rows]
            ax.plot(xs, ys, marker="o", label=branch.replace("_", " "),
                    color=COLORS.get(branch, PALETTE[b_i % len(PALETTE)]),
                    ls="-" if branch == "ticket" else "--")
            if branch == "ticket" and rows and rows[0]["level"] == 0:
                ax.plot(xs[:1], ys[:1], marker="s", ms=6, ls="none", color=COLORS["dense"],
                        label="dense (level 0)")
        weights_remaining_axis(ax)
        ax.set_ylabel(r"drift $\|W_T - W_0\|_F / \|W_0\|_F$")
        ax.set_title(name)
        ax.set_ylim(bottom=0)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for idx in range(len(panels), nrows * cols):
        axes[idx // cols][idx % cols].set_visible(False)
    if len(panels) < nrows * cols:  # the legend in the first empty panel's place
        spare = axes[-1][-1]
        spare.set_visible(True)
        spare.axis("off")
        spare.legend(handles, labels, loc="center")
    else:
        axes[0][0].legend()
    start = "theta_0" if result.rewind_iter == 0 else f"theta_{result.rewind_iter} (rewind)"
    fig.suptitle(f"Weight drift from each level's start ({start}) to the end of training: "
                 f"{Path(result.run).name}", fontsize=9)
    return save_plot(fig, path)


def run(args) -> int:
    if args.plot:
        from analyses.figures import check_plot_path
        check_plot_path(args.plot)
    if args.json not in (None, "-"):
        ensure_output_path(args.json, "JSON")
    result = compute(args.run_dir)
    out = result.to_dict()
    if args.plot:
        out["figures"] = [str(p) for p in plot(result, args.plot)]
    return finish(args, out, lambda _: summary(result))


if __name__ == "__main__":
    from analyses.cli import run_command
    sys.exit(run_command(sys.modules[__name__]))
