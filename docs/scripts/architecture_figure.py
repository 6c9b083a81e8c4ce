"""Draw docs/img/architecture.png: the three layers and the data flow of one analysis.

    PYTHONPATH=. MPLBACKEND=Agg python docs/scripts/architecture_figure.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from analyses.figures import COLORS, PALETTE, save_figure, style

OUT = Path(__file__).resolve().parents[1] / "img" / "architecture"

LAYERS = [  # (name, what it holds, files, colour)
    ("analyses", "the CLI: one module per subcommand; files, figures, printing",
     "cli · common · study · connect · overlap · transfer · instability · flatness · align\n"
     "train · imp · report (registry) · sections · html · figures · demo", PALETTE[0]),
    ("tickets", "training, pruning, runs: finds lottery tickets",
     "data · models · prune · train · store · runs · imp · instability · transfer", PALETTE[2]),
    ("gauge", "symmetry math over params; depends on torch / numpy / scipy only",
     "errors · spec · infer · symmetry · match · connect · overlap · hessian · flatness",
     PALETTE[1]),
]

FLOW = ["checkpoint\n(.safetensors or\nRUN/level_LL/)",
        "model + params\n(nn.Module,\ndict[str, Tensor])", "gauge / tickets\nfunctions",
        "result\ndataclass", "JSON + figure\n(--json, --plot,\nreport)"]


def _box(ax, x, y, w, h, text, color, *, size=8, weight="normal"):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.04",
                                facecolor=color + "22", edgecolor=color, linewidth=1.4))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size,
            weight=weight, wrap=True)


def _arrow(ax, start, end, color="#444444"):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12,
                                 color=color, linewidth=1.2))


def main() -> None:
    with style():
        fig, ax = plt.subplots(figsize=(9.0, 6.2), constrained_layout=True)
        ax.set_xlim(0, 10)
        ax.set_ylim(0, 7)
        ax.axis("off")
        for i, (name, what, files, color) in enumerate(LAYERS):
            y = 5.6 - 1.45 * i
            _box(ax, 0.2, y, 9.6, 1.1, "", color)
            ax.text(0.4, y + 0.82, name, fontsize=11, weight="bold", va="center")
            ax.text(1.9, y + 0.82, what, fontsize=8, va="center", style="italic")
            ax.text(0.4, y + 0.35, files, fontsize=7.5, va="center", family="monospace")
        _arrow(ax, (8.8, 5.6), (8.8, 4.15 + 1.1))   # analyses -> tickets
        _arrow(ax, (9.5, 5.6), (9.5, 2.7 + 1.1))    # analyses -> gauge
        _arrow(ax, (8.1, 4.15), (8.1, 2.7 + 1.1))   # tickets -> gauge
        ax.text(5.0, 2.35, "imports point down only: gauge never imports tickets or analyses; "
                "tickets never imports analyses", ha="center", fontsize=8, color="#444444")
        w, gap = 1.62, 0.37
        for i, text in enumerate(FLOW):
            x = 0.2 + i * (w + gap)
            _box(ax, x, 0.45, w, 1.3, text, COLORS["dense"], size=7.5)
            if i:
                _arrow(ax, (x - gap, 1.1), (x, 1.1))
        ax.text(0.2, 1.95, "one analysis, end to end", fontsize=9, weight="bold")
        ax.set_title("gauge-tickets: three layers and the data flow of an analysis")
    save_figure(fig, OUT, formats=("png",))


if __name__ == "__main__":
    main()
