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
import io
import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from tickets.checkpoints import META_KEY, read_params
from tickets.errors import CheckpointError, ModelError

__all__ = ["save_checkpoint", "save_params", "load_checkpoint", "atomic_write_bytes",
           "atomic_write_text",
           "save_json", "load_json", "check_params", "check_finite", "model_from_meta",
           "versions", "cache_key"]


def versions() -> dict[str, str]:
    """Versions of the packages a result depends on (stored with every checkpoint and run)."""
    import numpy
    import scipy

    from tickets import __version__
    return {"gauge_tickets": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "scipy": scipy.__version__, "python": platform.python_version()}


def _umask() -> int:
    try:  # Linux reports it without changing it
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere it can only be read by setting it; set it straight back
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would (0666 - umask).
        os.fchmod(fd, 0o666 & ~_umask())
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
    :func:`tickets.checkpoints.read_params` reads the same files (and folders), fitted to a
    model, and says how it read them.
    """
    loaded = read_params(path, check=check)
    return loaded.params, loaded.meta


def save_params(path: str | os.PathLike, params: Mapping[str, torch.Tensor],
                meta: Mapping[str, Any] | None = None) -> None:
    """Save ``params`` in the format the suffix of ``path`` names, atomically.

    ``.safetensors``: with ``meta`` (:func:`save_checkpoint`). ``.pt``/``.pth``: a plain
    state_dict through ``torch.save``, which any PyTorch code loads with
    ``torch.load(path, weights_only=True)``; ``meta`` is not stored. Any other suffix raises
    :class:`CheckpointError`.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".safetensors":
        save_checkpoint(path, params, meta)
    elif suffix in (".pt", ".pth"):
        buf = io.BytesIO()
        torch.save({k: v.detach().to("cpu").contiguous().clone() for k, v in params.items()}, buf)
        atomic_write_bytes(path, buf.getvalue())
    else:
        raise CheckpointError(f"{path}: unknown checkpoint format {suffix or '(no suffix)'!r}; "
                              "use .safetensors (with metadata) or .pt/.pth (a plain state_dict)")


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


def _parsed_or_none(spec: str):
    from tickets.sources import parse_model_source
    try:
        return parse_model_source(spec)
    except ModelError:
        return None


def model_from_meta(meta: Mapping[str, Any], source: str = "checkpoint", *,
                    model: str | None = None, model_kwargs: Mapping[str, Any] | None = None,
                    num_classes: int | None = None, input_shape: Sequence[int] | None = None,
                    seed: int = 0) -> nn.Module:
    """Build the model a checkpoint was made from (its ``meta``, see
    :func:`tickets.sources.model_meta`), or the source ``model`` if given.

    ``model_kwargs``, ``num_classes`` and ``input_shape`` override the recorded ones; the
    recorded kwargs apply only to the recorded source. Errors are :class:`CheckpointError`
    naming ``source`` (the checkpoint).
    """
    from tickets.sources import parse_model_source, resolve_model
    spec = model or meta.get("model")
    if not spec:
        raise CheckpointError(f"{source}: no model recorded in the metadata; pass --model")
    num_classes = num_classes if num_classes is not None else meta.get("num_classes")
    input_shape = input_shape if input_shape is not None else meta.get("input_shape")
    try:
        parsed = parse_model_source(spec)
        if model_kwargs is None:  # the recorded kwargs belong to the recorded source only
            recorded = meta.get("model")
            same = spec == recorded or (model is not None and recorded is not None
                                        and parsed == _parsed_or_none(recorded))
            model_kwargs = dict(meta.get("model_kwargs") or {}) if same else {}
        if parsed.kind == "zoo" and (num_classes is None or input_shape is None):
            raise CheckpointError(f"{source}: metadata lacks num_classes/input_shape for zoo "
                                  f"model {spec!r}; give --input-shape or --data")
        return resolve_model(parsed, kwargs=model_kwargs, num_classes=num_classes,
                             input_shape=input_shape, seed=seed)
    except ModelError as e:
        raise CheckpointError(f"{source}: {e}") from e
