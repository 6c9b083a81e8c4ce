"""Hugging Face ``save_pretrained`` directories, read offline and without remote code.

A directory holds ``config.json`` and its weights as ``model.safetensors``, a sharded
``model.safetensors.index.json`` (its ``weight_map`` names the shard of every tensor), or
``pytorch_model.bin`` (read only through ``torch.load(weights_only=True)``; sharded
``pytorch_model.bin.index.json`` too). The model is the class that ``config.architectures``
names in ``transformers`` (``AutoModel`` when it names none), built from the config and filled
with the directory's weights. A config that needs code from outside ``transformers``
(``auto_map``, an unknown ``model_type`` or architecture) is refused: ``trust_remote_code`` is
never set. Attention is built in its ``eager`` form: the same function as the fused kernels,
and the only form with second derivatives, which Hessian-vector products need.

Tied weights (a language-model head sharing the embedding) are stored once; :func:`tie_params`
fills the other names from the module's own ties.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from tickets.errors import CheckpointError, ModelError
from tickets.factories import one_line

__all__ = ["is_hf_dir", "hf_weight_files", "read_hf_weights", "build_hf_model", "tie_params"]

_SAFE = "model.safetensors"
_SAFE_INDEX = "model.safetensors.index.json"
_BIN = "pytorch_model.bin"
_BIN_INDEX = "pytorch_model.bin.index.json"
_EXTRA = "pip install 'gauge-tickets[hf]'"


def is_hf_dir(path: str | os.PathLike) -> bool:
    """True if ``path`` is a directory with a ``config.json`` (a ``save_pretrained`` output)."""
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def _shards(root: Path, index: str) -> list[Path]:
    try:
        weight_map = json.loads((root / index).read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{root / index}: not a weight index ({one_line(e)})") from e
    files = [root / f for f in dict.fromkeys(weight_map.values())]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{root / index}: names shard {missing[0].name}, which is missing")
    return files


def hf_weight_files(path: str | os.PathLike) -> list[Path]:
    """The weight files of a ``save_pretrained`` directory, safetensors first."""
    root = Path(path)
    if (root / _SAFE).is_file():
        return [root / _SAFE]
    if (root / _SAFE_INDEX).is_file():
        return _shards(root, _SAFE_INDEX)
    if (root / _BIN).is_file():
        return [root / _BIN]
    if (root / _BIN_INDEX).is_file():
        return _shards(root, _BIN_INDEX)
    raise CheckpointError(f"{root}: Hugging Face directory without weights (expected {_SAFE}, "
                          f"{_SAFE_INDEX}, {_BIN} or {_BIN_INDEX})")


def read_hf_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors stored in the directory's weight files (shards merged), as written."""
    from tickets.checkpoints import read_tensor_file
    params: dict[str, torch.Tensor] = {}
    for f in hf_weight_files(path):
        params.update(read_tensor_file(f))
    return params


def _config(root: Path):
    try:
        from transformers import AutoConfig
    except ImportError as e:
        raise ModelError(f"{root}: reading a Hugging Face directory needs transformers, which "
                         f"is not installed ({_EXTRA})") from e
    raw = json.loads((root / "config.json").read_text(encoding="utf-8"))
    if raw.get("auto_map"):
        raise ModelError(f"{root}/config.json: the model needs code from outside transformers "
                         "(auto_map); remote code is never run")
    try:
        return AutoConfig.from_pretrained(str(root), local_files_only=True,
                                          trust_remote_code=False, attn_implementation="eager")
    except Exception as e:  # transformers raises ValueError/OSError/KeyError for bad configs
        raise ModelError(f"{root}/config.json: not a config transformers can build without "
                         f"remote code ({one_line(e)})") from e


def tie_params(model: nn.Module, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``params`` plus the entries of ``model``'s state_dict that share storage with one of them
    (tied weights, saved once), taken from that entry."""
    state = model.state_dict()
    by_storage: dict[int, str] = {}
    for k, v in state.items():
        if k in params:
            by_storage.setdefault(v.untyped_storage().data_ptr(), k)
    out = dict(params)
    for k, v in state.items():
        if k not in out:
            twin = by_storage.get(v.untyped_storage().data_ptr())
            if twin is not None and tuple(state[twin].shape) == tuple(v.shape):
                out[k] = params[twin]
    return out


def build_hf_model(path: str | os.PathLike, *, weights: bool = True, seed: int = 0) -> nn.Module:
    """The model of a ``save_pretrained`` directory, in eval mode (as ``from_pretrained``),
    with the directory's weights (``weights=True``) or freshly initialised from ``seed``.

    Raises :class:`~tickets.errors.ModelError` for a config that needs remote code and
    :class:`~tickets.errors.CheckpointError` for missing or unfitting weights, naming the path.
    """
    from tickets.store import check_params
    root = Path(path).expanduser().resolve()
    if not is_hf_dir(root):
        raise ModelError(f"{root}: not a Hugging Face directory (no config.json)")
    config = _config(root)
    import transformers
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else transformers.AutoModel
    if cls is None:
        raise ModelError(f"{root}/config.json: architecture {arch!r} is not part of "
                         f"transformers {transformers.__version__}; remote code is never run")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        try:
            model = cls.from_config(config) if cls is transformers.AutoModel else cls(config)
        except Exception as e:
            raise ModelError(f"{root}: transformers cannot build {arch or 'AutoModel'} from "
                             f"config.json ({one_line(e)})") from e
    if weights:
        params = tie_params(model, read_hf_weights(root))
        buffers = {k for k, _ in model.named_buffers()}
        params = {k: v for k, v in params.items() if k in model.state_dict() or k not in buffers}
        check_params(model, params, str(root))
        model.load_state_dict(params)
    return model.eval()
