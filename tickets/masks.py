"""Masks from files: ``mask[name]`` is a bool tensor shaped like ``params[name]``, ``True`` where
the weight survives (the convention of :mod:`tickets.prune`).

:func:`load_mask` reads

* safetensors or ``.pt``/``.pth`` files keyed by parameter name (0/1 or bool values);
* keys with a ``_mask`` suffix (``fc1.weight_mask`` -> ``fc1.weight``), and, in a pruned
  state_dict (``torch.nn.utils.prune`` state: ``W_orig`` beside ``W_mask``), only the
  ``*_mask`` entries; wrapper prefixes (``module.``...) as :mod:`tickets.checkpoints` removes them;
* OpenLTH's ``mask.pth``, or a level folder holding one, renamed to the zoo model
  (:mod:`tickets.openlth`).

Given ``params``, the mask is validated against them with :func:`tickets.prune.check_mask`,
which names the first key that does not fit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch

from tickets.errors import CheckpointError

__all__ = ["load_mask", "mask_entries"]

MASK_SUFFIX = "_mask"


def mask_entries(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The mask in ``tensors``: its ``*_mask`` entries without the suffix if it has any (a
    pruned state_dict holds weights beside them), else all of it."""
    if any(k.endswith(MASK_SUFFIX) for k in tensors):
        return {k[:-len(MASK_SUFFIX)]: v for k, v in tensors.items() if k.endswith(MASK_SUFFIX)}
    return dict(tensors)


def _fit_prefix(mask: dict[str, torch.Tensor], params: Mapping[str, torch.Tensor] | None
                ) -> dict[str, torch.Tensor]:
    from tickets.checkpoints import prefix_chains, strip_known_prefixes, strip_prefix
    if params is None:
        return strip_known_prefixes(mask)
    for chain in prefix_chains(mask):
        stripped = strip_prefix(mask, chain)
        if stripped and all(k in params for k in stripped):
            return stripped
    return mask  # check_mask names the first key that fits no parameter


def _openlth_mask(file: Path, params) -> tuple[dict[str, torch.Tensor], str]:
    from tickets.checkpoints import read_tensor_file
    from tickets.openlth import infer_openlth_name, openlth_model, openlth_name_near, to_zoo_names
    raw = read_tensor_file(file)
    if params is not None and all(k in params for k in raw):
        return raw, str(file)  # the model uses OpenLTH's own names
    name = openlth_name_near(file) or infer_openlth_name(raw)
    try:
        return to_zoo_names(openlth_model(name), raw), f"{file} (OpenLTH {name})"
    except CheckpointError as e:
        raise CheckpointError(f"{file}: {e}") from e


def load_mask(path: str | os.PathLike, params: Mapping[str, torch.Tensor] | None = None
              ) -> dict[str, torch.Tensor]:
    """The mask stored at ``path`` (see the module docstring), as CPU bool tensors.

    With ``params`` (a state_dict), every key must name one of its tensors with the same shape.
    Raises :class:`~tickets.errors.CheckpointError` for unreadable files and
    :class:`~tickets.errors.ModelError` (from ``check_mask``) for a mask that does not fit.
    """
    from tickets.checkpoints import read_tensors, state_dict_candidates
    from tickets.openlth import is_openlth_file, is_openlth_level
    from tickets.prune import check_mask
    path = Path(path)
    if is_openlth_level(path):
        path = path / "mask.pth"
        if not path.is_file():
            raise CheckpointError(f"{path}: no such file (an OpenLTH level keeps its mask there)")
    if is_openlth_file(path):
        mask, source = _openlth_mask(path, params)
    else:
        obj, _, _ = read_tensors(path)
        found = state_dict_candidates(obj)
        if not found:
            raise CheckpointError(f"{path}: not a mask (expected a dict of 0/1 or bool tensors "
                                  "keyed by parameter name)")
        mask, source = _fit_prefix(mask_entries(found[0][1]), params), str(path)
    if not mask:
        raise CheckpointError(f"{path}: holds no mask tensors")
    return check_mask(params if params is not None else mask, mask, source)
