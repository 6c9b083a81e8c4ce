"""One figure style for every analysis: colour-blind safe palette, labelled axes, PNG + PDF
(or the one format a ``--plot`` suffix names: ``.png``, ``.pdf``, ``.svg``).

The palette is Okabe & Ito's (2008) eight colours, safe for the common colour-vision
deficiencies. ``save_figure`` writes them atomically. The backend is chosen once, by
``analyses.cli.main`` (Agg unless MPLBACKEND says otherwise).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt

from tickets.store import atomic_write_bytes

__all__ = ["PALETTE", "COLORS", "style", "new_figure", "save_figure", "weights_remaining_axis"]

#: Okabe-Ito palette, in the order lines are drawn.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442",
           "#000000"]
#: Fixed colours for recurring meanings, so a colour means the same thing in every figure.
COLORS = {"ticket": "#0072B2", "random_reinit": "#D55E00", "random_prune": "#009E73",
          "dense": "#000000", "naive": "#D55E00", "aligned": "#0072B2", "chance": "#7f7f7f",
          "raw": "#D55E00", "gauge_fixed": "#0072B2", "adam": "#0072B2", "sgd": "#D55E00",
          "rewind": "#009E73"}

_RC = {
    "figure.dpi": 110, "savefig.dpi": 200, "font.size": 9, "axes.titlesize": 10,
    "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
    "grid.alpha": 0.3, "lines.linewidth": 1.6, "lines.markersize": 4,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE), "savefig.bbox": "tight",
    "pdf.fonttype": 42,
}


def style():
    """Context manager applying the house style: ``with style(): fig, ax = ...``."""
    return matplotlib.rc_context(_RC)


def new_figure(ncols: int = 1, nrows: int = 1, *, width: float = 3.4, height: float = 2.6,
               **kwargs):
    """``(fig, axes)`` sized per panel (inches), in the house style."""
    with style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows),
                                 squeeze=False, constrained_layout=True, **kwargs)
    return fig, axes


def save_figure(fig, stem: str | os.PathLike, formats=("png", "pdf")) -> list[Path]:
    """Save ``fig`` atomically and close it. A ``stem`` ending ``.svg`` or ``.pdf`` is written
    as named; one ending ``.png`` as named and beside it as ``.pdf`` (the vector copy for
    papers); any other ``stem`` as ``stem.png`` and ``stem.pdf`` (``formats``). The files get
    the permissions the umask gives."""
    stem = Path(stem)
    suffix = stem.suffix.lower().lstrip(".")
    if suffix in ("png", "pdf", "svg"):
        formats = (suffix, "pdf") if suffix == "png" else (suffix,)
        stem = stem.with_suffix("")
    paths = []
    with style():
        for fmt in formats:
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt)
            path = stem.with_name(f"{stem.name}.{fmt}")
            atomic_write_bytes(path, buf.getvalue())
            paths.append(path)
    plt.close(fig)
    return paths


def weights_remaining_axis(ax, label: str = "weights remaining (%)", max_ticks: int = 7) -> None:
    """Log-x axis of the percentage of weights remaining, dense (100 %) on the left as in the
    lottery-ticket papers (Frankle & Carbin 2019), with ticks at the measured levels (read from
    the lines already drawn, thinned to ``max_ticks``). Call it after plotting the data."""
    import math

    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
    xs = sorted({round(float(x), 3) for line in ax.get_lines() for x in line.get_xdata()
                 if x > 0}, reverse=True)
    ax.set_xscale("log")
    if xs:
        step = max(1, math.ceil(len(xs) / max_ticks))
        ax.xaxis.set_major_locator(FixedLocator(xs[::step]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    if not ax.xaxis_inverted():
        ax.invert_xaxis()
    ax.set_xlabel(label)


#: Formats a ``--plot FILE`` may name by its suffix.
PLOT_FORMATS = ("png", "pdf", "svg")


def check_plot_path(path) -> Path:
    """``--plot FILE``: writable, with a .png, .pdf or .svg suffix (none: PNG)."""
    from analyses.common import UsageError, ensure_output_path
    p = ensure_output_path(path, "plot")
    if p.suffix and p.suffix.lower().lstrip(".") not in PLOT_FORMATS:
        raise UsageError(f"--plot {path}: use a .png, .pdf or .svg file")
    return p


def save_plot(fig, path) -> list[Path]:
    """Save ``fig`` to ``path`` in the format its suffix names (PNG without one)."""
    p = Path(path)
    fmt = p.suffix.lstrip(".").lower() or "png"
    return save_figure(fig, p.with_suffix(""), formats=(fmt,))
