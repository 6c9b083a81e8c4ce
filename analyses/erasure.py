"""gauge erasure: how far does each optimizer move the weights? Paint a picture into a layer
and watch it.

A hidden layer's weight matrix is initialised to an image (a built-in smiley by default, or a
PNG given with --image), standardised to the mean and standard deviation of the layer's usual
init so training starts at the normal scale. The network is then trained on MNIST-1D by each
optimizer at its tuned learning rate, and the layer is drawn at a few points of training,
with the relative drift ||W_t - W_0||_F / ||W_0||_F in each title.

Coordinate-wise optimizers (SGD, Adam) move a wide layer little relative to its init: the
picture survives training (Jacot et al. 2018; Chizat et al. 2019, "lazy training"). Muon
(Jordan et al. 2024) orthogonalises each update, moving every singular direction of the matrix
equally; its updates are not small relative to the init in spectral norm (Bernstein & Newhouse
2024, "Old optimizer, new norm"), and the picture is erased.

With --mask RUN_DIR the same is done for a ticket: the run's model, the image in the chosen
layer under the level's mask (pruned pixels are zero), trained under the mask beside the dense
network.

Example:
  gauge erasure --optimizers sgd,adam,muon --plot erasure.png
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from analyses.common import (UsageError, add_device_argument, add_json_argument, finish,
                             ensure_output_path, progress_enabled, resolve_device)

HELP = "paint an image into a hidden layer and see how far each optimizer moves it in training"

#: Learning rate of each optimizer: the best test accuracy of the default setting (MLP
#: 40-128-128-10 on MNIST-1D, smiley in fc2, batch 100, 1500 iterations, seed 0) over the grid
#: {3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1}, swept once with ``--lr`` (docs/similarity.md has the
#: table): SGD 64.5 % at 0.1, Adam 62.9 % at 1e-2, Muon 63.1 % at 1e-2. AdamW without weight
#: decay is Adam. SGD uses momentum 0.9; Muon is paired with AdamW at the same rate.
LRS = {"sgd": 1e-1, "adam": 1e-2, "adamw": 1e-2, "muon": 1e-2}
MOMENTUM = {"sgd": 0.9}


def add_arguments(parser) -> None:
    parser.add_argument("--optimizers", default="sgd,adam,muon",
                        help="comma-separated optimizers (sgd, adam, adamw, muon; default "
                             "sgd,adam,muon)")
    parser.add_argument("--image", default=None, metavar="PATH",
                        help="PNG painted into the layer (default: a built-in smiley)")
    parser.add_argument("--mask", default=None, metavar="RUN_DIR",
                        help="also train a ticket: the run's model under the mask of --level")
    parser.add_argument("--level", type=int, default=None,
                        help="level of --mask (default: the run's last completed level)")
    parser.add_argument("--layer", default=None,
                        help="weight painted (default: the first hidden 2-D weight, e.g. "
                             "fc2.weight)")
    parser.add_argument("--width", type=int, default=128,
                        help="hidden width of the default MLP (two hidden layers; default 128)")
    parser.add_argument("--iters", type=int, default=1500, help="training iterations (1500)")
    parser.add_argument("--points", default=None, metavar="I1,I2,...",
                        help="iterations drawn (default: 0, iters/30, iters/6, iters)")
    parser.add_argument("--lr", type=float, default=None,
                        help="one learning rate for every optimizer (default: the tuned ones)")
    parser.add_argument("--seed", type=int, default=0, help="init and data order seed")
    parser.add_argument("--root", default=None, help="folder with the dataset files")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="the layer at each point, one row per optimizer (PNG/PDF/SVG)")
    add_json_argument(parser)
    add_device_argument(parser)
    parser.add_argument("--quiet", action="store_true")


# --------------------------------------------------------------------------------------------
# the picture


def smiley(size: int = 64) -> np.ndarray:
    """A smiley drawn with numpy: ``(size, size)`` in [0, 1], 1 on the strokes."""
    t = (np.arange(size) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(t, t, indexing="ij")
    r = np.hypot(x, y)
    img = (np.abs(r - 0.8) < 0.07).astype(float)                      # face
    for ex in (-0.32, 0.32):                                          # eyes
        img[np.hypot(x - ex, y + 0.28) < 0.13] = 1.0
    smile = (np.abs(np.hypot(x, y + 0.05) - 0.48) < 0.07) & (y > 0.12)
    img[smile] = 1.0
    return img


def read_image(path: str | Path) -> np.ndarray:
    """A PNG as a grey ``(H, W)`` array in [0, 1]; UsageError naming the file otherwise."""
    import matplotlib.image as mpimg
    try:
        img = np.asarray(mpimg.imread(str(path)), dtype=float)
    except Exception as e:  # PIL/matplotlib raise many types for unreadable files
        raise UsageError(f"--image {path}: cannot read it as an image "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") \
            from e
    if img.ndim == 3:
        img = img[..., :3].mean(-1)
    if img.ndim != 2 or min(img.shape) < 2:
        raise UsageError(f"--image {path}: expected a 2-D picture, got an array of shape "
                         f"{img.shape}")
    if img.max() > 1.0:
        img = img / 255.0
    return img


def paint(img: np.ndarray, like):
    """``img`` resized to the shape of tensor ``like`` (bilinear, antialiased) and standardised
    to ``like``'s mean and standard deviation."""
    import torch
    t = torch.as_tensor(img, dtype=torch.float32)[None, None]
    t = torch.nn.functional.interpolate(t, size=tuple(like.shape), mode="bilinear",
                                        antialias=True, align_corners=False)[0, 0]
    t = (t - t.mean()) / t.std().clamp_min(1e-12)
    return (t * like.float().std() + like.float().mean()).to(like.dtype)


# --------------------------------------------------------------------------------------------
# compute


@dataclass(frozen=True)
class ErasureRow:
    """One training run: the painted layer at ``iters`` and its drift from the start."""

    name: str
    optimizer: str
    lr: float
    masked: bool
    iters: tuple[int, ...]
    drift: tuple[float, ...]
    test_acc: float
    density: float
    snapshots: tuple  # numpy arrays of the layer at each of ``iters``

    def to_dict(self) -> dict:
        return {"name": self.name, "optimizer": self.optimizer, "lr": self.lr,
                "masked": self.masked, "iters": list(self.iters), "drift": list(self.drift),
                "test_acc": self.test_acc, "density": self.density}


@dataclass(frozen=True)
class ErasureResult:
    layer: str
    shape: tuple[int, ...]
    model: str
    image: str
    rows: tuple[ErasureRow, ...]

    def to_dict(self) -> dict:
        return {"layer": self.layer, "shape": list(self.shape), "model": self.model,
                "image": self.image, "rows": [r.to_dict() for r in self.rows]}


def check_optimizers(text: str) -> list[str]:
    from tickets.optim import muon_available
    from tickets.train import OPTIMIZERS
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise UsageError("--optimizers is empty; choose from " + ", ".join(OPTIMIZERS))
    for n in names:
        if n not in OPTIMIZERS:
            raise UsageError(f"--optimizers: unknown optimizer {n!r}; choose from "
                             f"{', '.join(OPTIMIZERS)}")
        if n == "muon" and not muon_available():
            import torch
            raise UsageError(f"--optimizers muon: torch.optim.Muon is not in the installed "
                             f"PyTorch {torch.__version__}")
    return list(dict.fromkeys(names))


def default_layer(params) -> str:
    """The first hidden 2-D weight (2-D weights in order, neither the first nor the last)."""
    mats = [k for k, v in params.items() if v.dim() == 2 and k.endswith("weight")]
    if len(mats) < 3:
        raise UsageError("the model has no hidden layer with a 2-D weight to paint; give "
                         "--layer")
    return mats[1]


def compute(model, params, data, optimizers: Sequence[str], *, layer: str, image: np.ndarray,
            iters: int, points: Sequence[int], seed: int = 0, mask=None,
            lr: float | None = None, image_name: str = "smiley", model_name: str = "",
            device="cpu", progress: bool = False) -> ErasureResult:
    """Paint ``image`` into ``params[layer]``, train a copy per optimizer (and per optimizer
    under ``mask`` if given) for ``iters`` steps, keep the layer at ``points``."""
    from gauge.similarity import weight_drift
    from tickets.prune import apply_mask, sparsity
    from tickets.train import TrainConfig, train
    start = dict(params)
    start[layer] = paint(image, params[layer])
    runs = [(o, None) for o in optimizers]
    if mask is not None:
        runs += [(o, mask) for o in optimizers]
    rows = []
    for opt, m in runs:
        rate = LRS[opt] if lr is None else lr
        cfg = TrainConfig(optimizer=opt, lr=rate, momentum=MOMENTUM.get(opt, 0.0),
                          batch_size=100, iters=iters, eval_every=iters)
        p0 = apply_mask(start, m) if m is not None else start
        net = copy.deepcopy(model)
        net.load_state_dict(p0)
        res = train(net, data, cfg, seed=seed, data_seed=seed, mask=m, checkpoints_at=points,
                    device=device, progress=progress, desc=opt)
        snaps = [res.checkpoints[i][layer] for i in points]
        rows.append(ErasureRow(
            name=opt + (" ticket" if m is not None else ""), optimizer=opt, lr=rate,
            masked=m is not None, iters=tuple(points),
            drift=tuple(weight_drift({layer: p0[layer]}, {layer: s}).total for s in snaps),
            test_acc=res.test_acc,
            density=sparsity(m).density if m is not None else 1.0,
            snapshots=tuple(s.numpy() for s in snaps)))
    return ErasureResult(layer=layer, shape=tuple(params[layer].shape), model=model_name,
                         image=image_name, rows=tuple(rows))


def summary(result: ErasureResult) -> list[tuple[str, str]]:
    """``(name, value)`` lines: final drift and test accuracy per optimizer."""
    return [(f"{r.name} (lr {r.lr:g})",
             f"drift {r.drift[-1]:.3f} at iteration {r.iters[-1]}, test accuracy "
             f"{100 * r.test_acc:.1f}%") for r in result.rows]


def plot(result: ErasureResult, path: str | Path) -> list[Path]:
    """One row per training run, one column per point; each panel the layer as an image on a
    symmetric colour scale fixed per row by the start, drift in the title."""
    from analyses.figures import new_figure, save_plot
    rows, cols = len(result.rows), len(result.rows[0].iters)
    h, w = result.shape
    # panels as wide as the layer is, plus room for the title
    fig, axes = new_figure(cols, rows, width=1.9, height=1.9 * min(1.0, h / w) + 0.45)
    for i, r in enumerate(result.rows):
        lim = float(np.abs(r.snapshots[0]).max()) or 1.0
        for j, (it, d, w) in enumerate(zip(r.iters, r.drift, r.snapshots)):
            ax = axes[i][j]
            ax.imshow(w, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            ax.set_title(f"iter {it}: drift {d:.2f}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{r.name}\nlr {r.lr:g}, acc {100 * r.test_acc:.0f}%", fontsize=8)
    fig.suptitle(f"{result.layer} {tuple(result.shape)} of {result.model}, initialised to "
                 f"{result.image}; drift = ||W_t - W_0||_F / ||W_0||_F", fontsize=9)
    return save_plot(fig, path)


# --------------------------------------------------------------------------------------------
# CLI


def _points(text: str | None, iters: int) -> list[int]:
    if text is None:
        return sorted({0, iters // 30, iters // 6, iters})
    try:
        pts = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError as e:
        raise UsageError(f"--points {text!r}: expected comma-separated iterations") from e
    if not pts or pts[0] < 0 or pts[-1] > iters:
        raise UsageError(f"--points {text!r}: iterations must lie in 0..{iters}")
    return pts


def run(args) -> int:
    optimizers = check_optimizers(args.optimizers)
    if args.iters < 1 or args.width < 1:
        raise UsageError("--iters and --width must be >= 1")
    if args.lr is not None and not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    points = _points(args.points, args.iters)
    if args.plot:
        from analyses.figures import check_plot_path
        check_plot_path(args.plot)
    if args.json not in (None, "-"):
        ensure_output_path(args.json, "JSON")
    image = read_image(args.image) if args.image else smiley()
    device = resolve_device(args.device)
    mask = None
    if args.mask:
        from tickets import build_run_model, load_level, load_run_data, open_run
        run_info = open_run(args.mask)
        if not run_info.levels:
            raise UsageError(f"--mask {args.mask}: the run has no completed level")
        level = run_info.levels[-1] if args.level is None else args.level
        mask = load_level(run_info, level).mask
        model = build_run_model(run_info)
        data = load_run_data(run_info, root=args.root)
        model_name = f"{run_info.meta['model']} (ticket: level {level})"
    else:
        from tickets import build_model, load_dataset
        data = load_dataset("mnist1d", root=args.root)
        model = build_model("mlp", num_classes=data.num_classes, input_shape=data.input_shape,
                            seed=args.seed, widths=[args.width, args.width])
        model_name = f"MLP 40-{args.width}-{args.width}-10"
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    layer = args.layer or default_layer(params)
    if layer not in params or params[layer].dim() != 2:
        raise UsageError(f"--layer {layer!r} is not a 2-D weight of the model (have: "
                         f"{', '.join(k for k, v in params.items() if v.dim() == 2)})")
    result = compute(model, params, data, optimizers, layer=layer, image=image,
                     iters=args.iters, points=points, seed=args.seed, mask=mask, lr=args.lr,
                     image_name=Path(args.image).name if args.image else "a smiley",
                     model_name=model_name, device=device, progress=progress_enabled(args))
    out = result.to_dict()
    if args.plot:
        out["figures"] = [str(p) for p in plot(result, args.plot)]
    return finish(args, out, lambda _: summary(result))


if __name__ == "__main__":
    from analyses.cli import run_command
    sys.exit(run_command(sys.modules[__name__]))
