"""Result objects as JSON: one conversion for every frozen result dataclass of :mod:`gauge`.

A result holds tensors, numpy arrays, tuples and nested results; :func:`to_dict` turns it into
plain lists, numbers and dicts (scipy.optimize's ``OptimizeResult`` idea, made JSON-ready).
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any, ClassVar

import numpy as np
import torch

__all__ = ["Result", "to_dict", "plain"]


def plain(value: Any, *, nan_as_none: bool = False) -> Any:
    """``value`` with tensors/arrays as (nested) lists, numpy scalars as Python numbers, tuples
    as lists and results as their ``to_dict()``; ``nan_as_none`` maps non-finite floats to
    ``None`` (JSON has no NaN)."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, (np.ndarray, np.generic)):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: plain(v, nan_as_none=nan_as_none) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, nan_as_none=nan_as_none) for v in value]
    if nan_as_none and isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_dict(obj, *, exclude: tuple[str, ...] = (), nan_as_none: bool = False) -> dict[str, Any]:
    """The dataclass ``obj`` as a JSON-ready dict of its fields (see :func:`plain`), without
    the fields named in ``exclude``."""
    return {f.name: plain(getattr(obj, f.name), nan_as_none=nan_as_none)
            for f in fields(obj) if f.name not in exclude}


class Result:
    """Mixin giving a result dataclass ``to_dict()``; ``_exclude`` names fields left out of the
    JSON (large arrays such as eigenvectors), ``_nan_as_none`` writes NaN as ``null``."""

    _exclude: ClassVar[tuple[str, ...]] = ()
    _nan_as_none: ClassVar[bool] = False

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self, exclude=self._exclude, nan_as_none=self._nan_as_none)
