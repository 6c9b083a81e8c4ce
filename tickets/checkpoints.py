"""Reading the checkpoints people have, executing nothing.

:func:`read_params` turns a file or folder into ``params`` (a state_dict) and says how it got
them (:class:`LoadedCheckpoint`). Files are read through safetensors or
``torch.load(weights_only=True)`` only; a pickle that needs code (a whole pickled
``nn.Module``) is refused without running it. Accepted:

* safetensors, with the toolkit's metadata or without any;
* a bare ``torch.save``'d state_dict, or a training dict holding one under ``state_dict``,
  ``model``, ``model_state_dict``, ``net``, ``ema``, ``state_dict_ema``... (any key whose
  value is a dict of tensors, one level down too): given the model, the first that fits it
  is taken, else the first in :data:`WRAPPER_KEYS` order;
* wrapper prefixes ``module.`` (DataParallel), ``_orig_mod.`` (``torch.compile``) and
  ``model.`` (Lightning): given the model, the shortest chain of them whose removal makes the
  keys fit it; without one, ``module.`` and ``_orig_mod.`` are removed;
* ``torch.nn.utils.prune`` state: ``W_orig`` and ``W_mask`` become ``W = W_orig * W_mask``,
  and the masks are kept as :attr:`LoadedCheckpoint.mask`;
* a Hugging Face ``save_pretrained`` folder (:mod:`tickets.hf`);
* OpenLTH files and level folders (:mod:`tickets.openlth`), renamed to the zoo model with the
  same tensors; the level's ``mask.pth`` becomes the mask.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from tickets.errors import CheckpointError

__all__ = ["LoadedCheckpoint", "read_params", "read_tensor_file", "read_tensors",
           "state_dict_candidates", "fold_pruning", "prefix_chains", "strip_prefix",
           "strip_known_prefixes", "WRAPPER_KEYS", "WRAPPER_PREFIXES"]

#: Keys of training dicts that hold a state_dict, in the order they are preferred.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net", "network", "module", "params",
                "weights", "ema", "model_ema", "state_dict_ema", "ema_state_dict")
#: Prefixes that wrappers add to every key: DataParallel, torch.compile, Lightning.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
META_KEY = "gauge"


@dataclass(frozen=True)
class LoadedCheckpoint:
    """``params`` read from ``path`` and how: the ``format`` (``safetensors``, ``torch``,
    ``hf``, ``openlth``), the training-dict key picked (``source_key``, ``None`` for a bare
    state_dict), the wrapper prefix removed, the weights computed from pruning state
    (``folded``), and the ``mask`` found beside them (pruning state or OpenLTH ``mask.pth``)."""

    path: str
    params: dict[str, torch.Tensor]
    meta: dict[str, Any]
    format: str
    source_key: str | None = None
    prefix_stripped: str = ""
    folded: tuple[str, ...] = ()
    mask: dict[str, torch.Tensor] | None = None

    def describe(self) -> str:
        """One line: what was read and which choices were made."""
        parts = [f"{self.path}: {len(self.params)} tensors ({self.format})"]
        if self.source_key:
            parts.append(f"state_dict under {self.source_key!r}")
        if self.prefix_stripped:
            parts.append(f"prefix {self.prefix_stripped!r} removed")
        if self.folded:
            parts.append(f"{len(self.folded)} pruned weights = orig * mask")
        if self.meta.get("openlth_model"):
            parts.append(f"OpenLTH {self.meta['openlth_model']} as zoo {self.meta['model']}")
        if self.mask is not None:
            parts.append(f"mask of {len(self.mask)} tensors")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "source_key": self.source_key,
                "prefix_stripped": self.prefix_stripped, "folded": list(self.folded),
                "n_tensors": len(self.params), "mask": sorted(self.mask or {}),
                "meta": self.meta}


# --------------------------------------------------------------------------- raw files

def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise CheckpointError(f"{path}: empty file")
    return len(head) >= 9 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors.torch import load as st_load
    raw = path.read_bytes()
    try:
        params = st_load(raw)
    except Exception as e:  # safetensors raises its own (Rust) error types
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from e
    header_len = int.from_bytes(raw[:8], "little")
    try:
        header = json.loads(raw[8:8 + header_len])
        meta = json.loads((header.get("__metadata__") or {}).get(META_KEY, "{}"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable metadata ({e})") from e
    # safetensors returns its tensors in a per-process random (hash map) order; code that
    # flattens params in dict order (Hessian probes, Lanczos) must see the same order in
    # every process, so order them as they lie in the file.
    params = {k: params[k] for k in sorted(
        params, key=lambda k: (header.get(k, {}).get("data_offsets", [0])[0], k))}
    return params, meta if isinstance(meta, dict) else {}


def _torch_load(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # protocol notes from the weights-only unpickler
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise CheckpointError(
                f"{path}: refused to load: the pickle needs {found[1]} (a whole pickled model "
                "or other object), which would run code; save the weights instead with "
                "torch.save(model.state_dict(), path)") from e
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe pickle"
        raise CheckpointError(f"{path}: refused to load: the pickle needs code that a "
                              f"weights-only load does not allow ({first[:200]})") from e
    except Exception as e:  # torch.load raises many types (incl. safetensors' on some files)
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({str(e)[:200]})") from e


def read_tensors(path: str | os.PathLike) -> tuple[Any, dict[str, Any], str]:
    """``(object, meta, format)`` of a safetensors or PyTorch file, read safely; ``object`` is
    the dict of tensors of a safetensors file or whatever ``torch.load`` returned."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    if _is_safetensors(path):
        params, meta = _read_safetensors(path)
        return params, meta, "safetensors"
    return _torch_load(path), {}, "torch"


def _is_tensor_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and bool(obj)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def state_dict_candidates(obj: Any) -> list[tuple[str | None, dict[str, torch.Tensor]]]:
    """The dicts of tensors in ``obj``: ``obj`` itself (key ``None``), else its values (and
    their values, as ``outer/inner``) in :data:`WRAPPER_KEYS` order, then the rest."""
    if _is_tensor_dict(obj):
        return [(None, dict(obj))]
    if not isinstance(obj, Mapping):
        return []
    keys = [k for k in WRAPPER_KEYS if k in obj] + [k for k in obj if k not in WRAPPER_KEYS]
    found: list[tuple[str | None, dict[str, torch.Tensor]]] = []
    for k in keys:
        if _is_tensor_dict(obj[k]):
            found.append((str(k), dict(obj[k])))
        elif isinstance(obj[k], Mapping):
            found += [(f"{k}/{inner}", sd) for inner, sd in state_dict_candidates(obj[k])
                      if inner is not None]
    return found


def read_tensor_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The dict of tensors in a file: safetensors, a bare state_dict, or the first in a
    training dict. :class:`CheckpointError` naming the file if it holds none."""
    obj, _, _ = read_tensors(path)
    found = state_dict_candidates(obj)
    if not found:
        raise CheckpointError(_not_a_state_dict(Path(path), obj))
    return found[0][1]


def _not_a_state_dict(path: Path, obj: Any) -> str:
    keys = f"; it holds keys {', '.join(map(repr, list(obj)[:6]))}" \
        if isinstance(obj, Mapping) and obj else ""
    return (f"{path}: not a state_dict (expected a dict of tensors, possibly under "
            f"{', '.join(repr(k) for k in WRAPPER_KEYS[:5])}...{keys})")


# --------------------------------------------------------------------------- fitting

def fold_pruning(sd: Mapping[str, torch.Tensor]
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``torch.nn.utils.prune`` state to ``(params, mask)``: each ``W_orig``/``W_mask`` pair
    becomes ``W = W_orig * W_mask`` (what the pruned module computes) and ``mask[W] = W_mask``."""
    params: dict[str, torch.Tensor] = {}
    mask: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.endswith("_orig") and k[:-5] + "_mask" in sd:
            m = sd[k[:-5] + "_mask"]
            params[k[:-5]] = v * m.to(v.dtype)
            mask[k[:-5]] = m
        elif not (k.endswith("_mask") and k[:-5] + "_orig" in sd):
            params[k] = v
    return params, mask


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix``, without it (all entries for ``prefix=""``)."""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def prefix_chains(keys) -> list[str]:
    """Every chain of wrapper prefixes that starts some key, shortest first ("" included)."""
    chains = {""}
    for k in keys:
        chain = ""
        while True:
            rest = k[len(chain):]
            step = next((p for p in WRAPPER_PREFIXES if rest.startswith(p)), None)
            if step is None:
                break
            chain += step
            chains.add(chain)
    return sorted(chains, key=lambda c: (len(c), c))


def strip_known_prefixes(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Without a model: remove ``module.`` and ``_orig_mod.``, which never name a layer."""
    out = {}
    for k, v in sd.items():
        while k.startswith(("module.", "_orig_mod.")):
            k = k.split(".", 1)[1]
        out[k] = v
    return out


@dataclass(frozen=True)
class _Fit:
    key: str | None
    prefix: str
    params: dict[str, torch.Tensor]
    mask: dict[str, torch.Tensor]
    error: str | None  # why it does not fit, None if it does
    matched: int


def _fit(key, sd, model: nn.Module, source: str) -> _Fit:
    from tickets.store import check_params
    expected = model.state_dict()
    best = None
    for chain in prefix_chains(sd):
        params, mask = fold_pruning(strip_prefix(sd, chain))
        try:
            check_params(model, params, source)
            return _Fit(key, chain, params, mask, None, len(params))
        except CheckpointError as e:
            matched = sum(1 for k in params if k in expected)
            if best is None or matched > best.matched:
                best = _Fit(key, chain, params, mask, str(e), matched)
    return best


def _pick(path: Path, candidates, model: nn.Module | None) -> _Fit:
    if model is None:
        key, sd = candidates[0]
        params, mask = fold_pruning(strip_known_prefixes(sd))
        return _Fit(key, "", params, mask, None, len(params))
    fits = [_fit(key, sd, model, str(path) if key is None else f"{path} [{key}]")
            for key, sd in candidates]
    good = next((f for f in fits if f.error is None), None)
    if good is not None:
        return good
    closest = max(fits, key=lambda f: f.matched)
    if len(fits) == 1 and closest.key is None:
        raise CheckpointError(closest.error)
    tried = ", ".join(repr(f.key) for f in fits)
    raise CheckpointError(f"{path}: no state_dict in it fits the model (tried {tried}); "
                          f"closest: {closest.error}")


# --------------------------------------------------------------------------- entry point

def _read_hf(path: Path, model: nn.Module | None) -> LoadedCheckpoint:
    from tickets.hf import build_hf_model, read_hf_weights, tie_params
    from tickets.store import check_params
    if model is None:
        model = build_hf_model(path, weights=False)
    params = tie_params(model, read_hf_weights(path))
    state = model.state_dict()
    params = {k: v for k, v in params.items() if k in state}  # drop legacy non-persistent buffers
    check_params(model, params, str(path))
    return LoadedCheckpoint(str(path), params, {"model": f"hf:{path.resolve()}"}, "hf")


def _read_openlth(path: Path, model: nn.Module | None, file_path: Path | None = None
                  ) -> LoadedCheckpoint:
    from tickets.openlth import (infer_openlth_name, open_openlth, openlth_model,
                                 openlth_name_near, to_zoo_names)
    from tickets.prune import check_mask
    if file_path is None:
        file_path = open_openlth(path).levels[0].final
    raw = read_tensor_file(file_path)
    name = openlth_name_near(file_path) or infer_openlth_name(raw)
    lth = openlth_model(name, num_classes=int(raw["fc.weight"].shape[0]) if "fc.weight" in raw
                        else 10)
    mask_file = file_path.parent / "mask.pth"
    raw_mask = read_tensor_file(mask_file) if mask_file.is_file() else None
    try:
        params = to_zoo_names(lth, raw)
        mask = to_zoo_names(lth, raw_mask) if raw_mask is not None else None
    except CheckpointError as e:
        raise CheckpointError(f"{file_path}: {e}") from e
    if model is not None:
        # A model with OpenLTH's own names (the user's port of its code) takes the file as is.
        fit_raw = _fit(None, raw, model, str(file_path))
        if fit_raw.error is None:
            return LoadedCheckpoint(str(file_path), raw, {"openlth_model": name}, "openlth",
                                    mask=raw_mask and check_mask(raw, raw_mask, str(mask_file)))
        from tickets.store import check_params
        check_params(model, params, f"{file_path} (as zoo {lth.zoo})")
    if mask is not None:
        mask = check_mask(params, mask, str(mask_file))
    return LoadedCheckpoint(str(file_path), params, lth.meta(), "openlth", mask=mask)


def read_params(path: str | os.PathLike, model: nn.Module | None = None, *,
                check: bool = True) -> LoadedCheckpoint:
    """Read the params of checkpoint ``path`` (file or folder; see the module docstring),
    fitted to ``model``'s state_dict when given.

    With ``check`` (default), non-finite floating-point weights are refused. Errors are
    :class:`~tickets.errors.CheckpointError` naming the file and the problem.
    """
    from tickets.hf import is_hf_dir
    from tickets.openlth import is_openlth_file, is_openlth_level, open_openlth
    from tickets.store import check_finite
    path = Path(path)
    if path.is_dir() and is_hf_dir(path):
        loaded = _read_hf(path, model)
    elif path.is_dir() and is_openlth_level(path):
        loaded = _read_openlth(path, model)
    elif path.is_dir() and (any(path.glob("replicate_*")) or path.name.startswith("replicate_")):
        tree = open_openlth(path)
        raise CheckpointError(f"{path}: an OpenLTH run with {len(tree.levels)} levels; name one "
                              f"level's folder, e.g. {tree.levels[-1].path}")
    elif path.is_file() and is_openlth_file(path) and path.name != "mask.pth":
        loaded = _read_openlth(path, model, file_path=path)
    else:
        obj, meta, fmt = read_tensors(path)
        candidates = state_dict_candidates(obj)
        if not candidates:
            raise CheckpointError(_not_a_state_dict(path, obj))
        fit = _pick(path, candidates, model)
        loaded = LoadedCheckpoint(str(path), fit.params, meta, fmt, source_key=fit.key,
                                  prefix_stripped=fit.prefix,
                                  folded=tuple(fit.mask), mask=fit.mask or None)
    if not loaded.params:
        raise CheckpointError(f"{path}: holds no tensors")
    if check:
        check_finite(loaded.params, str(path))
    return loaded
