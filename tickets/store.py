"""Checkpoints, masks and JSON on disk: the explicit I/O of :mod:`tickets`.

A checkpoint is a safetensors file of a ``state_dict`` plus JSON metadata (model name and
kwargs, dataset, seeds, iteration, versions) stored in the safetensors header under the key
``"gauge"``. Every write is atomic (temp file in the same folder, fsync, rename), so a killed
process never leaves a half-written file. ``load_checkpoint`` also reads PyTorch ``.pt``/``.pth``
state_dicts, only through ``torch.load(weights_only=True)``: a pickle that would run code is
refused without running it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from tickets.errors import CheckpointError, ModelError

__all__ = ["save_checkpoint", "load_checkpoint", "atomic_write_bytes", "atomic_write_text",
           "save_json", "load_json", "check_params", "check_finite", "model_from_meta",
           "versions", "cache_key"]

META_KEY = "gauge"


def versions() -> dict[str, str]:
    """Versions of the packages a result depends on (stored with every checkpoint and run)."""
    import numpy
    import scipy

    from tickets import __version__
    return {"gauge_tickets": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "scipy": scipy.__version__, "python": platform.python_version()}


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    try:
        import numpy as np
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _finite_json(obj):
    """Replace NaN/inf floats by None so the file is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_json(v) for v in obj]
    return obj


def dumps_json(obj: Any) -> str:
    """Strict JSON (NaN -> null) of results, dataclasses with ``to_dict`` and tensors."""
    plain = json.loads(json.dumps(obj, default=_json_default))
    return json.dumps(_finite_json(plain), indent=2, sort_keys=False, allow_nan=False) + "\n"


def cache_key(key: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``key`` (sorted keys): names a cached result by
    everything it depends on."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def save_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented strict JSON, atomically."""
    atomic_write_text(path, dumps_json(obj))


def load_json(path: str | os.PathLike) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: no such file") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e


def save_checkpoint(path: str | os.PathLike, params: Mapping[str, torch.Tensor],
                    meta: Mapping[str, Any] | None = None) -> None:
    """Save ``params`` (a state_dict; bool masks too) and JSON ``meta`` as safetensors, atomically."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in params.items()}
    meta = dict(meta or {})
    meta.setdefault("versions", versions())
    data = save(tensors, metadata={META_KEY: json.dumps(meta, default=_json_default)})
    atomic_write_bytes(path, data)


def _strip_prefixes(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def _load_torch(path: Path) -> dict:
    import pickle
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # protocol notes from the weights-only unpickler
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe pickle"
        raise CheckpointError(f"{path}: refused to load: the pickle needs code that a "
                              f"weights-only load does not allow ({first[:200]})") from e
    except Exception as e:  # torch.load raises many types (incl. safetensors' on some files)
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({str(e)[:200]})") from e
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict", "params"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor)
                                                        for v in obj.values()):
        raise CheckpointError(f"{path}: not a state_dict (expected a dict of tensors, "
                              "possibly under 'state_dict' or 'model')")
    return _strip_prefixes(obj)


def check_finite(params: Mapping[str, torch.Tensor], source: str = "params") -> None:
    """Raise :class:`CheckpointError` naming the first tensor with a NaN or infinite entry."""
    for k, v in params.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            n_bad = int((~torch.isfinite(v)).sum())
            raise CheckpointError(f"{source}: tensor {k!r} has {n_bad} non-finite value(s) (NaN/inf)")


def load_checkpoint(path: str | os.PathLike, *, check: bool = True
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load ``(params, meta)`` from a safetensors checkpoint or a ``.pt``/``.pth`` state_dict.

    ``meta`` is empty for files without our metadata. With ``check`` (default), non-finite
    floating-point weights are refused. Errors are :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) == 0:
        raise CheckpointError(f"{path}: empty file")
    is_safetensors = len(head) >= 9 and head[8:9] == b"{"
    if is_safetensors:
        from safetensors.torch import load as st_load
        raw = path.read_bytes()
        try:
            params = st_load(raw)
        except Exception as e:  # safetensors raises its own (Rust) error types
            raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from e
        header_len = int.from_bytes(raw[:8], "little")
        try:
            header = json.loads(raw[8:8 + header_len])
            meta = json.loads(header.get("__metadata__", {}).get(META_KEY, "{}"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: unreadable metadata ({e})") from e
        # safetensors returns its tensors in a per-process random (hash map) order; code that
        # flattens params in dict order (Hessian probes, Lanczos) must see the same order in
        # every process, so order them as they lie in the file.
        params = {k: params[k] for k in sorted(
            params, key=lambda k: (header.get(k, {}).get("data_offsets", [0])[0], k))}
    else:
        params, meta = _load_torch(path), {}
    if not params:
        raise CheckpointError(f"{path}: holds no tensors")
    if check:
        check_finite(params, str(path))
    return params, meta


def check_params(model: nn.Module, params: Mapping[str, torch.Tensor], source: str = "params",
                 *, allow_missing_buffers: bool = True) -> None:
    """Raise :class:`CheckpointError` if ``params`` does not fit ``model``'s state_dict,
    naming the first missing, unexpected or mis-shaped key."""
    expected = model.state_dict()
    for k, v in expected.items():
        if k not in params:
            if allow_missing_buffers and k.endswith("num_batches_tracked"):
                continue
            raise CheckpointError(f"{source}: missing key {k!r} (shape {tuple(v.shape)}) "
                                  f"that the model needs")
        if tuple(params[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{source}: key {k!r} has shape {tuple(params[k].shape)}, "
                                  f"the model expects {tuple(v.shape)}")
    extra = [k for k in params if k not in expected]
    if extra:
        raise CheckpointError(f"{source}: unexpected key {extra[0]!r} that the model does not "
                              "have (different architecture?)")


def model_from_meta(meta: Mapping[str, Any], source: str = "checkpoint", *,
                    model: str | None = None, seed: int = 0) -> nn.Module:
    """Build the zoo model a checkpoint was made from (its ``meta``), or ``model`` if given."""
    from tickets.models import build_model
    name = model or meta.get("model")
    if not name:
        raise CheckpointError(f"{source}: no model name in the metadata; pass --model NAME")
    if "num_classes" not in meta or "input_shape" not in meta:
        raise CheckpointError(f"{source}: metadata lacks num_classes/input_shape; "
                              "it was not written by gauge")
    kwargs = dict(meta.get("model_kwargs") or {}) if name == meta.get("model") else {}
    try:
        return build_model(name, num_classes=meta["num_classes"],
                           input_shape=meta["input_shape"], seed=seed, **kwargs)
    except ModelError as e:
        raise CheckpointError(f"{source}: {e}") from e
