"""OpenLTH run trees (facebookresearch/open_lth; Frankle et al. 2020), read as zoo models.

OpenLTH writes a lottery run as ``ROOT/replicate_R/level_L/main/`` holding
``model_ep{E}_it{I}.pth`` (plain ``torch.save``'d state_dicts: the rewound start of the level
and its trained end), ``mask.pth`` (0/1 int tensors keyed by weight name) and, at level 0,
``hparams.log`` (``* model_name => cifar_resnet_20``).

Its models have the same functions and tensors as zoo models, under other names; the maps
below were checked against OpenLTH's ``models/mnist_lenet.py``, ``models/cifar_resnet.py`` and
``models/cifar_vgg.py``:

* ``mnist_lenet_N1_N2...`` -> ``mlp`` with ``widths=(N1, N2, ...)``:
  ``fc_layers.i.*`` -> ``fc{i+1}.*``, the output ``fc.*`` -> ``fc{K+1}.*``.
* ``cifar_resnet_20[_W]`` -> ``resnet20`` with ``width=W/16`` (W defaults to 16):
  ``conv``/``bn`` -> ``conv1``/``bn1``; block ``blocks.k`` -> ``layer{k//3+1}.{k%3}``, its
  ``shortcut.0``/``shortcut.1`` (1x1 stride-2 conv, BatchNorm) ->
  ``shortcut.conv``/``shortcut.norm``.
* ``cifar_vgg_11`` / ``cifar_vgg_16`` -> ``vgg11`` / ``vgg16`` with ``conv_bias=True``:
  ``layers.j`` (a ``Sequential`` that counts its max-pools) -> ``layers.i`` (the i-th conv block).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from tickets.errors import CheckpointError

__all__ = ["OpenLTHModel", "OpenLTHLevel", "OpenLTHTree", "openlth_model", "infer_openlth_name",
           "is_openlth_file", "is_openlth_level", "open_openlth", "openlth_name_near",
           "to_zoo_names", "read_openlth_logger", "write_openlth_run"]

MODEL_FILE = re.compile(r"model_ep(\d+)_it(\d+)\.pth$")
_LEVEL = re.compile(r"level_(\d+)$")
_REPLICATE = re.compile(r"replicate_(\d+)$")
_VGG_PLANS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
}
SUPPORTED = "mnist_lenet_N1[_N2...], cifar_resnet_20[_W], cifar_vgg_11, cifar_vgg_16"


@dataclass(frozen=True)
class OpenLTHModel:
    """An OpenLTH model name and the zoo model with the same tensors."""

    name: str
    zoo: str
    kwargs: dict[str, Any]
    input_shape: tuple[int, ...]
    num_classes: int = 10

    def meta(self) -> dict[str, Any]:
        """Checkpoint metadata that :func:`tickets.store.model_from_meta` rebuilds."""
        return {"model": self.zoo, "model_kwargs": dict(self.kwargs),
                "num_classes": self.num_classes, "input_shape": list(self.input_shape),
                "openlth_model": self.name}

    def zoo_name(self, key: str) -> str:
        """The zoo name of OpenLTH tensor ``key``."""
        kind = self.name.split("_")[1]
        if kind == "lenet":
            m = re.fullmatch(r"fc_layers\.(\d+)\.(.+)", key)
            if m:
                return f"fc{int(m[1]) + 1}.{m[2]}"
            if key.startswith("fc."):
                return f"fc{len(self.kwargs['widths']) + 1}.{key[3:]}"
        elif kind == "resnet":
            if key.startswith(("conv.", "bn.")):
                head, rest = key.split(".", 1)
                return f"{head}1.{rest}"
            m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
            if m:
                k, rest = int(m[1]), m[2]
                rest = re.sub(r"^shortcut\.0\.", "shortcut.conv.", rest)
                rest = re.sub(r"^shortcut\.1\.", "shortcut.norm.", rest)
                return f"layer{k // 3 + 1}.{k % 3}.{rest}"
            if key.startswith("fc."):
                return key
        elif kind == "vgg":
            m = re.fullmatch(r"layers\.(\d+)\.(.+)", key)
            plan = _VGG_PLANS[int(self.name.split("_")[2])]
            if m and int(m[1]) < len(plan) and plan[int(m[1])] != "M":
                block = sum(1 for item in plan[:int(m[1])] if item != "M")
                return f"layers.{block}.{m[2]}"
            if key.startswith("fc."):
                return key
        raise CheckpointError(f"tensor {key!r} is not part of OpenLTH's {self.name}")


def openlth_model(name: str, num_classes: int = 10) -> OpenLTHModel:
    """The zoo equivalent of OpenLTH model ``name``; :class:`CheckpointError` if none."""
    parts = name.split("_")
    nums = [int(p) for p in parts[2:] if p.isdigit()]
    ok_nums = len(nums) == len(parts) - 2 and nums and all(n > 0 for n in nums)
    if name.startswith("mnist_lenet_") and ok_nums:
        return OpenLTHModel(name, "mlp", {"widths": nums}, (1, 28, 28), num_classes)
    if name.startswith("cifar_resnet_") and ok_nums and nums[0] == 20 and len(nums) <= 2:
        width = (nums[1] if len(nums) == 2 else 16) / 16
        kwargs = {} if width == 1 else {"width": width}
        return OpenLTHModel(name, "resnet20", kwargs, (3, 32, 32), num_classes)
    if name.startswith("cifar_vgg_") and ok_nums and len(nums) == 1 and nums[0] in _VGG_PLANS:
        return OpenLTHModel(name, f"vgg{nums[0]}", {"conv_bias": True}, (3, 32, 32),
                            num_classes)
    raise CheckpointError(f"OpenLTH model {name!r} has no zoo equivalent (supported: "
                          f"{SUPPORTED})")


def infer_openlth_name(shapes: Mapping[str, Any]) -> str:
    """The OpenLTH model name that tensors named and shaped as ``shapes`` (a state_dict or a
    mask) come from, read off their names and sizes."""
    shape = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v)
             for k, v in shapes.items()}
    if "fc_layers.0.weight" in shape:
        widths, i = [], 0
        while f"fc_layers.{i}.weight" in shape:
            widths.append(shape[f"fc_layers.{i}.weight"][0])
            i += 1
        return "mnist_lenet_" + "_".join(map(str, widths))
    if "blocks.0.conv1.weight" in shape and "conv.weight" in shape:
        n_blocks = len({k.split(".")[1] for k in shape if k.startswith("blocks.")})
        return f"cifar_resnet_{2 * n_blocks + 2}_{shape['conv.weight'][0]}"
    convs = {k for k in shape if re.fullmatch(r"layers\.\d+\.conv\.weight", k)}
    if convs:
        return f"cifar_vgg_{len(convs) + 3}"
    raise CheckpointError(f"tensors {', '.join(list(shape)[:3])}... match no OpenLTH model "
                          f"({SUPPORTED})")


def to_zoo_names(model: OpenLTHModel, tensors: Mapping[str, torch.Tensor]
                 ) -> dict[str, torch.Tensor]:
    """``tensors`` (a state_dict or mask of OpenLTH's ``model``) under zoo names."""
    return {model.zoo_name(k): v for k, v in tensors.items()}


def is_openlth_level(path: str | os.PathLike) -> bool:
    """True for an OpenLTH level folder ``.../level_L/main`` holding ``model_ep*_it*.pth``."""
    path = Path(path)
    return (path.is_dir() and path.name == "main" and bool(_LEVEL.match(path.parent.name))
            and any(MODEL_FILE.match(p.name) for p in path.iterdir()))


def is_openlth_file(path: str | os.PathLike) -> bool:
    """True for ``model_ep*_it*.pth`` or ``mask.pth`` inside an OpenLTH level folder."""
    path = Path(path)
    return ((bool(MODEL_FILE.match(path.name)) or path.name == "mask.pth")
            and is_openlth_level(path.parent))


def openlth_name_near(path: str | os.PathLike) -> str | None:
    """The ``model_name`` of the ``hparams.log`` of the replicate ``path`` lies in, if any."""
    path = Path(path).resolve()
    for folder in [path, *path.parents]:
        if _REPLICATE.match(folder.name):
            for log in [folder / "level_0" / "main" / "hparams.log",
                        *sorted(folder.glob("level_*/main/hparams.log"))]:
                if log.is_file():
                    m = re.search(r"\*\s*model_name\s*=>\s*(\S+)", log.read_text(errors="replace"))
                    if m:
                        return m[1]
            return None
    return None


@dataclass(frozen=True)
class OpenLTHLevel:
    """One level of one replicate: its model files in training order and its mask."""

    replicate: int
    level: int
    path: Path
    models: tuple[Path, ...]
    mask: Path | None

    @property
    def init(self) -> Path:
        """The level's start (the rewound, masked weights)."""
        return self.models[0]

    @property
    def final(self) -> Path:
        """The level's trained weights."""
        return self.models[-1]


def _level(path: Path, replicate: int) -> OpenLTHLevel:
    files = [(int(m[1]), int(m[2]), p) for p in path.iterdir() if (m := MODEL_FILE.match(p.name))]
    mask = path / "mask.pth"
    return OpenLTHLevel(replicate=replicate, level=int(_LEVEL.match(path.parent.name)[1]),
                        path=path, models=tuple(p for *_, p in sorted(files)),
                        mask=mask if mask.is_file() else None)


@dataclass(frozen=True)
class OpenLTHTree:
    """An OpenLTH lottery run: its levels per replicate and the model name it records."""

    root: Path
    model_name: str | None
    levels: tuple[OpenLTHLevel, ...] = field(repr=False)

    def replicates(self) -> list[int]:
        return sorted({lv.replicate for lv in self.levels})

    def level(self, replicate: int, level: int) -> OpenLTHLevel:
        for lv in self.levels:
            if lv.replicate == replicate and lv.level == level:
                return lv
        raise CheckpointError(f"{self.root}: no level {level} in replicate {replicate}")


def _level_dirs(root: Path) -> Iterable[tuple[int, Path]]:
    if is_openlth_level(root):
        rep = next((p for p in root.parents if _REPLICATE.match(p.name)), None)
        yield (int(_REPLICATE.match(rep.name)[1]) if rep else 1), root
        return
    reps = [root] if _REPLICATE.match(root.name) else sorted(root.glob("replicate_*"))
    for rep in reps:
        if _REPLICATE.match(rep.name):
            for main in sorted(rep.glob("level_*/main")):
                if is_openlth_level(main):
                    yield int(_REPLICATE.match(rep.name)[1]), main


def open_openlth(path: str | os.PathLike) -> OpenLTHTree:
    """The OpenLTH run at ``path``: a run folder holding ``replicate_*``, one replicate, or one
    ``level_L/main`` folder. :class:`CheckpointError` if it holds no level."""
    root = Path(path)
    levels = tuple(_level(main, rep) for rep, main in _level_dirs(root)) if root.is_dir() else ()
    if not levels:
        raise CheckpointError(f"{root}: not an OpenLTH run (expected "
                              "replicate_R/level_L/main/model_ep*_it*.pth)")
    levels = tuple(sorted(levels, key=lambda lv: (lv.replicate, lv.level)))
    return OpenLTHTree(root=root, model_name=openlth_name_near(levels[0].path), levels=levels)


_HPARAM = re.compile(r"\*\s*(\w+)\s*=>\s*(\S+)")


def _hparams(replicate_dir: Path) -> dict[str, str]:
    """``name => value`` pairs of the replicate's ``hparams.log`` files (level 0 first)."""
    out: dict[str, str] = {}
    for log in sorted(replicate_dir.glob("level_*/main/hparams.log"), reverse=True):
        out.update(dict(_HPARAM.findall(log.read_text(errors="replace"))))
    return out


def read_openlth_logger(level_dir: str | os.PathLike) -> dict[str, float]:
    """The last value of each series in the level's OpenLTH ``logger`` file (lines
    ``name,iteration,value``, e.g. ``test_accuracy,1000,0.97``); ``{}`` if it has none."""
    log = Path(level_dir) / "logger"
    last: dict[str, tuple[int, float]] = {}
    if log.is_file():
        for line in log.read_text(errors="replace").splitlines():
            parts = line.strip().split(",")
            try:
                name, it, value = parts[0], int(parts[1]), float(parts[2])
            except (IndexError, ValueError):
                continue
            if name not in last or it >= last[name][0]:
                last[name] = (it, value)
    return {k: v for k, (_, v) in last.items()}


def write_openlth_run(tree: OpenLTHTree, replicate: int, out: str | os.PathLike) -> Path:
    """Write replicate ``replicate`` of ``tree`` as a toolkit IMP run directory at ``out``
    (layout of :mod:`tickets.runs`: zoo names (:func:`tickets.masks.load_mask` renames a
    ``mask.pth`` itself), safetensors, ``metrics.json`` from OpenLTH's
    ``logger``), so every reader of toolkit runs reads it. The tree itself is only read.

    ``run.json`` records what the tree knows: the zoo model, the seed (the replicate number),
    ``dataset`` ``None`` (the tree names its dataset, ``openlth_dataset``, but not its files:
    analyses that need data do not apply), the optimizer and learning rate of ``hparams.log``."""
    from tickets.masks import load_mask
    from tickets.runs import FORMAT, FORMAT_VERSION, level_dir
    from tickets.store import save_checkpoint, save_json
    levels = [lv for lv in tree.levels if lv.replicate == replicate]
    if not levels:
        raise CheckpointError(f"{tree.root}: no replicate {replicate}")
    first = torch.load(levels[0].final, map_location="cpu", weights_only=True)
    model = openlth_model(tree.model_name or infer_openlth_name(first))
    hp = _hparams(levels[0].path.parent.parent)
    optimizer = hp.get("optimizer_name", "sgd")
    train_config = {"optimizer": optimizer if optimizer in ("sgd", "adam") else "sgd",
                    "lr": float(hp.get("lr", 0.1)),
                    "momentum": float(hp.get("momentum", 0.0)),
                    "batch_size": int(hp.get("batch_size", 128))}
    dataset = hp.get("dataset_name")
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **model.meta(),
            "seed": int(replicate), "dataset": None,
            "openlth_dataset": dataset, "openlth_run": str(tree.root),
            "train_config": train_config, "rewind_iter": 0,
            "prunable": list(load_mask(levels[0].mask)) if levels[0].mask is not None else []}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for lv in levels:
        d = level_dir(out, lv.level)
        d.mkdir(parents=True, exist_ok=True)
        init = to_zoo_names(model, torch.load(lv.init, map_location="cpu", weights_only=True))
        final = to_zoo_names(model, torch.load(lv.final, map_location="cpu", weights_only=True))
        mask = ({k: torch.ones_like(final[k], dtype=torch.bool) for k in meta["prunable"]}
                if lv.mask is None else load_mask(lv.mask))
        kept = sum(int(m.sum()) for m in mask.values())
        total = sum(m.numel() for m in mask.values()) or 1
        logged = read_openlth_logger(lv.path)
        save_checkpoint(d / "init.safetensors", init, meta)
        save_checkpoint(d / "final.safetensors", final, meta)
        save_checkpoint(d / "mask.safetensors", mask, meta)
        save_json(d / "metrics.json", {
            "level": lv.level, "density": kept / total, "sparsity": 1 - kept / total,
            "test_acc": logged.get("test_accuracy"), "test_loss": logged.get("test_loss"),
            "train_acc": logged.get("train_accuracy"), "train_loss": logged.get("train_loss"),
            "curve": [], "source": str(lv.path)})
    save_json(out / "run.json", meta)
    return out
