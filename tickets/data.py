"""Datasets, all offline.

``load_dataset(name, root=..., seed=...)`` returns standardised train/test splits as in-memory
:class:`~torch.utils.data.TensorDataset` objects. Nothing is ever downloaded:

* ``mnist1d`` is generated procedurally (Greydanus 2020) with the paper's canonical arguments
  and cached as ``.npz`` under the user cache dir (``$XDG_CACHE_HOME/gauge-tickets``).
* ``digits`` is scikit-learn's bundled 8x8 digits with a stratified split fixed by ``seed``.
* ``mnist``, ``fashion_mnist`` (IDX files) and ``cifar10`` (python pickle batches) are read from
  a folder the user points at with ``root``.

Besides these names, ``load_dataset`` takes the user's own data:

* a file ``.npz`` (read without pickles), ``.pt``/``.pth`` (``torch.load(weights_only=True)``)
  or ``.safetensors`` holding ``x``/``y`` or ``x_train``/``y_train``/``x_test``/``y_test``.
  Without a test split the train split is used for both (``DataSplits.test_is_train``).
  Floating-point ``x`` becomes float32 and integer ``y`` int64; values are used as stored
  (standardise them yourself). Token data for language models holds ``input_ids`` (and
  optionally ``attention_mask``, ``token_type_ids``, ``labels``; each also with ``_train`` /
  ``_test`` suffixes): its examples are dicts the model is called with as keyword arguments.
  Without ``labels`` a causal language model's next-token labels are the ``input_ids``
  themselves, with padding (``attention_mask == 0``) set to -100 so the loss skips it, as
  Hugging Face's ``DataCollatorForLanguageModeling(mlm=False)`` builds them; ``labels`` of
  shape ``(n,)`` are one class per sequence (a sequence classifier);
* ``pkg.module:factory`` or ``path/to/file.py:factory`` returning a :class:`DataSplits`, a
  ``(train, test)`` pair of map-style datasets, or one dataset (used for both). A factory
  parameter named ``root`` or ``seed`` receives those arguments.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from tickets.errors import DataError
from tickets.store import cache_key

__all__ = ["DataSplits", "load_dataset", "load_data_file", "load_data_factory", "dataset_names",
           "cache_dir"]


@dataclass(frozen=True)
class DataSplits:
    """A dataset's train and test splits.

    For named datasets and data files, in-memory tensors: ``train.tensors == (x, y)`` with
    ``x`` of shape ``(n, *input_shape)`` (float32 for the named datasets, standardised) and
    ``y`` int64. A factory may return any map-style datasets. ``num_classes`` is one more than
    the largest integer label (0 when the labels are not integers). ``test_is_train`` marks
    data that came without a test split, whose train split stands in for it.
    """

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    test_is_train: bool = False

    def describe(self) -> str:
        test = "test = train" if self.test_is_train else f"{len(self.test)} test"
        return (f"{self.name}: {len(self.train)} train / {test}, "
                f"input {tuple(self.input_shape)}, {self.num_classes} classes")


def cache_dir() -> Path:
    """The user cache dir for generated data (``$XDG_CACHE_HOME/gauge-tickets``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gauge-tickets"


def _splits(name, x_train, y_train, x_test, y_test, num_classes, mean, std) -> DataSplits:
    """Standardise with fixed (mean, std) and wrap into TensorDatasets."""
    def to_x(a):
        return ((torch.tensor(np.asarray(a), dtype=torch.float32) - torch.as_tensor(mean))
                / torch.as_tensor(std)).contiguous()

    xtr, xte = to_x(x_train), to_x(x_test)
    ytr = torch.tensor(np.asarray(y_train), dtype=torch.int64)
    yte = torch.tensor(np.asarray(y_test), dtype=torch.int64)
    return DataSplits(name=name, train=TensorDataset(xtr, ytr), test=TensorDataset(xte, yte),
                      num_classes=num_classes, input_shape=tuple(xtr.shape[1:]))


# --------------------------------------------------------------------------- mnist1d

def _atomic_save_npz(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _load_mnist1d(root, seed) -> DataSplits:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:  # pragma: no cover - mnist1d is a hard dependency
        raise DataError("mnist1d: the 'mnist1d' package is not installed (pip install mnist1d)") from e
    args = get_dataset_args()
    # The canonical MNIST-1D (Greydanus 2020) is generated with seed 42; keep it so numbers
    # compare with the paper. The split is fixed by that generator, not by `seed`.
    key_fields = {k: v for k, v in sorted(vars(args).items()) if k != "url"}
    path = cache_dir() / f"mnist1d-{cache_key(key_fields)[:16]}.npz"
    arrays = None
    if path.exists():
        try:
            with np.load(path) as z:
                arrays = {k: z[k] for k in ("x", "y", "x_test", "y_test")}
        except Exception:  # a corrupt cache file is regenerated, never trusted
            arrays = None
    if arrays is None:
        d = make_dataset(args)
        arrays = {k: np.asarray(d[k]) for k in ("x", "y", "x_test", "y_test")}
        try:
            _atomic_save_npz(path, **arrays)
        except OSError:
            pass  # a read-only cache dir only costs a regeneration next time
    mean, std = float(arrays["x"].mean()), float(arrays["x"].std())
    return _splits("mnist1d", arrays["x"], arrays["y"], arrays["x_test"], arrays["y_test"], 10,
                   mean, std)


# --------------------------------------------------------------------------- digits

def _load_digits(root, seed) -> DataSplits:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError("digits: needs scikit-learn, which is not installed "
                        "(pip install 'gauge-tickets[digits]')") from e
    d = load_digits()
    x = d.data.reshape(-1, 1, 8, 8).astype(np.float32)
    y = d.target.astype(np.int64)
    # Stratified 80/20 split, fixed by seed: the same seed gives the same split everywhere.
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        n_test = int(round(0.2 * len(idx)))
        test_idx.extend(idx[:n_test])
        train_idx.extend(idx[n_test:])
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    mean, std = float(x[train_idx].mean()), float(x[train_idx].std())
    return _splits("digits", x[train_idx], y[train_idx], x[test_idx], y[test_idx], 10, mean, std)


# --------------------------------------------------------------------------- IDX (MNIST)

_IDX_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format, optionally gzip-compressed) into an array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(">" + "I" * ndim, raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(shape)) if shape else 1
    if len(raw) - header != count * dtype.itemsize:
        raise DataError(f"{path}: IDX payload has {len(raw) - header} bytes, "
                        f"expected {count * dtype.itemsize} for shape {shape}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find(root: Path, names: list[str], dataset: str, expected: str) -> Path:
    for name in names:
        if (root / name).is_file():
            return root / name
    raise DataError(f"{dataset}: {root} does not contain {names[0]} (expected {expected}; "
                    "nothing is downloaded, put the files there yourself)")


def _require_root(root, dataset: str, expected: str) -> Path:
    if root is None:
        raise DataError(f"{dataset}: needs --root DIR holding {expected} (nothing is downloaded)")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{dataset}: data root {root} is not a directory (expected it to hold "
                        f"{expected})")
    return root


def _idx_loader(dataset: str, mean: float, std: float) -> Callable:
    subdirs = ["", "raw", "MNIST/raw" if dataset == "mnist" else "FashionMNIST/raw"]
    expected = ", ".join(_IDX_FILES.values()) + " (optionally .gz)"

    def load(root, seed) -> DataSplits:
        root = _require_root(root, dataset, expected)
        base = next((root / s for s in subdirs if (root / s / _IDX_FILES["train_x"]).is_file()
                     or (root / s / (_IDX_FILES["train_x"] + ".gz")).is_file()), root)
        arrays = {k: read_idx(_find(base, [f, f + ".gz"], dataset, expected))
                  for k, f in _IDX_FILES.items()}
        for split in ("train", "test"):
            x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
            if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
                raise DataError(f"{dataset}: {split} images {x.shape} and labels {y.shape} "
                                "do not match")
        fx = lambda a: a[:, None].astype(np.float32) / 255.0  # noqa: E731
        return _splits(dataset, fx(arrays["train_x"]), arrays["train_y"], fx(arrays["test_x"]),
                       arrays["test_y"], 10, mean, std)

    return load


# --------------------------------------------------------------------------- CIFAR-10

class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10 batches only: dicts, lists, bytes and plain numpy arrays.

    Any other global (the way a malicious pickle runs code) is refused before it is called.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch: ``(images uint8 (n, 3, 32, 32), labels int64 (n,))``."""
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, OSError) as e:
        raise DataError(f"{path}: not a CIFAR-10 batch ({e})") from e
    if not isinstance(d, dict):
        raise DataError(f"{path}: not a CIFAR-10 batch (top level is {type(d).__name__})")
    data = d.get(b"data", d.get("data"))
    labels = d.get(b"labels", d.get("labels"))
    if data is None or labels is None:
        raise DataError(f"{path}: not a CIFAR-10 batch (no 'data'/'labels' entries)")
    data = np.asarray(data, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataError(f"{path}: CIFAR-10 data has shape {data.shape} with {len(labels)} labels, "
                        "expected (n, 3072)")
    return data.reshape(-1, 3, 32, 32), labels


_CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32).reshape(3, 1, 1)
_CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32).reshape(3, 1, 1)


def _load_cifar10(root, seed) -> DataSplits:
    expected = "cifar-10-batches-py/data_batch_1..5 and test_batch (the python version)"
    root = _require_root(root, "cifar10", expected)
    base = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    train = [read_cifar_batch(_find(base, [f"data_batch_{i}"], "cifar10", expected))
             for i in range(1, 6)]
    x_test, y_test = read_cifar_batch(_find(base, ["test_batch"], "cifar10", expected))
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return _splits("cifar10", x_train.astype(np.float32) / 255.0, y_train,
                   x_test.astype(np.float32) / 255.0, y_test, 10, _CIFAR_MEAN, _CIFAR_STD)


_LOADERS: dict[str, Callable] = {
    "mnist1d": _load_mnist1d,
    "digits": _load_digits,
    # Standardisation constants as in the reference codebases (OpenLTH, torchvision examples).
    "mnist": _idx_loader("mnist", 0.1307, 0.3081),
    "fashion_mnist": _idx_loader("fashion_mnist", 0.2860, 0.3530),
    "cifar10": _load_cifar10,
}


def dataset_names() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return list(_LOADERS)


# --------------------------------------------------------------------------- the user's data

DATA_SUFFIXES = (".npz", ".pt", ".pth", ".safetensors")
_SPLIT_KEYS = (("x_train", "y_train"), ("x", "y"))


def _read_arrays(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: torch.from_numpy(np.array(z[k])) for k in z.files}
        except (OSError, ValueError, EOFError) as e:
            raise DataError(f"{path}: not a readable .npz file ({e})") from e
    from tickets.checkpoints import read_tensors
    from tickets.errors import CheckpointError
    try:
        obj, _, _ = read_tensors(path)
    except CheckpointError as e:
        raise DataError(str(e)) from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict of tensors x/y or x_train/y_train/x_test/"
                        f"y_test, found a {type(obj).__name__}")
    return {k: torch.as_tensor(v) for k, v in obj.items()
            if isinstance(v, (torch.Tensor, np.ndarray))}


def _xy(path: Path, arrays: dict, x_key: str, y_key: str) -> TensorDataset:
    if y_key not in arrays:
        raise DataError(f"{path}: has {x_key!r} but no {y_key!r} (its keys: "
                        f"{', '.join(sorted(arrays))})")
    x, y = arrays[x_key], arrays[y_key]
    if len(x) != len(y):
        raise DataError(f"{path}: {x_key!r} has {len(x)} rows but {y_key!r} has {len(y)}")
    x = x.float() if x.is_floating_point() else x
    y = y.long() if not y.is_floating_point() else y
    return TensorDataset(x.contiguous(), y.contiguous())


#: Entries of a token data file passed to the model, besides ``input_ids``.
TOKEN_INPUTS = ("attention_mask", "token_type_ids")


class TokenDataset(Dataset):
    """Equal-length token tensors (``input_ids``, ``attention_mask``, ``labels``, ...) whose
    example ``i`` is the dict of their rows ``i``."""

    def __init__(self, columns: dict[str, torch.Tensor]):
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns["input_ids"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.columns.items()}

    @property
    def targets(self) -> torch.Tensor:
        return self.columns["labels"]


def _tokens(path: Path, arrays: dict, suffix: str) -> TokenDataset:
    names = ("input_ids", *TOKEN_INPUTS, "labels")
    cols = {k: arrays[k + suffix] for k in names if k + suffix in arrays}
    ids = cols["input_ids"]
    if ids.is_floating_point() or ids.ndim != 2:
        raise DataError(f"{path}: 'input_ids{suffix}' must be integer token ids of shape "
                        f"(examples, length), found {str(ids.dtype).replace('torch.', '')} "
                        f"{tuple(ids.shape)}")
    for k, v in cols.items():
        if len(v) != len(ids):
            raise DataError(f"{path}: '{k}{suffix}' has {len(v)} rows but 'input_ids{suffix}' "
                            f"has {len(ids)}")
        cols[k] = v.long().contiguous()
    if "labels" not in cols:
        labels = ids.clone()
        if "attention_mask" in cols:
            labels[cols["attention_mask"] == 0] = -100
        cols["labels"] = labels
    return TokenDataset(cols)


def _token_splits(path: Path, arrays: dict) -> DataSplits:
    suffix = "_train" if "input_ids_train" in arrays else ""
    train = _tokens(path, arrays, suffix)
    has_test = "input_ids_test" in arrays
    test = _tokens(path, arrays, "_test") if has_test else train
    labels = torch.cat([train.targets.flatten(), test.targets.flatten()])
    num_classes = int(labels.max()) + 1 if train.targets.ndim == 1 and len(labels) else 0
    return DataSplits(name=path.name, train=train, test=test, num_classes=num_classes,
                      input_shape=tuple(train.columns["input_ids"].shape[1:]),
                      test_is_train=not has_test)


def load_data_file(path: str | os.PathLike) -> DataSplits:
    """The splits stored in a ``.npz``, ``.pt``/``.pth`` or ``.safetensors`` file (keys
    ``x``/``y`` or ``x_train``/``y_train``, optionally ``x_test``/``y_test``; or token data
    with ``input_ids``, see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    arrays = _read_arrays(path)
    if "input_ids" in arrays or "input_ids_train" in arrays:
        return _token_splits(path, arrays)
    keys = next((pair for pair in _SPLIT_KEYS if pair[0] in arrays), None)
    if keys is None:
        raise DataError(f"{path}: no 'x', 'x_train' or 'input_ids' array (its keys: "
                        f"{', '.join(sorted(arrays)) or 'none'})")
    train = _xy(path, arrays, *keys)
    has_test = "x_test" in arrays
    test = _xy(path, arrays, "x_test", "y_test") if has_test else train
    ys = torch.cat([train.tensors[1].flatten(), test.tensors[1].flatten()])
    num_classes = int(ys.max()) + 1 if not ys.is_floating_point() and len(ys) else 0
    return DataSplits(name=path.name, train=train, test=test, num_classes=num_classes,
                      input_shape=tuple(train.tensors[0].shape[1:]), test_is_train=not has_test)


def _first_input(item):
    if isinstance(item, dict):
        return item.get("input_ids", next(iter(item.values())))
    return item[0] if isinstance(item, (tuple, list)) else item


def _labels(ds: Dataset) -> torch.Tensor | None:
    if isinstance(ds, TensorDataset) and len(ds.tensors) > 1:
        return ds.tensors[1]
    for attr in ("targets", "labels"):
        if hasattr(ds, attr):
            return torch.as_tensor(np.asarray(getattr(ds, attr)))
    ys = []
    for i in range(len(ds)):  # a dataset without a label array: read every label once
        item = ds[i]
        if isinstance(item, dict):
            if "labels" not in item:
                return None
            ys.append(torch.as_tensor(item["labels"]).flatten())
        elif isinstance(item, (tuple, list)) and len(item) > 1:
            ys.append(torch.as_tensor(item[1]).flatten())
        else:
            return None
    return torch.cat(ys) if ys else None


def _splits_of(spec: str, obj) -> DataSplits:
    if isinstance(obj, DataSplits):
        return obj
    if isinstance(obj, Dataset):
        train, test, same = obj, obj, True
    elif isinstance(obj, (tuple, list)) and len(obj) == 2 and all(
            isinstance(d, Dataset) for d in obj):
        (train, test), same = obj, False
    else:
        raise DataError(f"data {spec!r}: the factory returned a {type(obj).__name__}; expected "
                        "a DataSplits, a (train, test) pair of Datasets, or one Dataset")
    try:
        if len(train) == 0:
            raise DataError(f"data {spec!r}: the train split is empty")
        shape = tuple(torch.as_tensor(_first_input(train[0])).shape)
    except TypeError as e:
        raise DataError(f"data {spec!r}: the datasets must be map-style (len and [i]): "
                        f"{e}") from e
    labels = [y for y in (_labels(train), None if same else _labels(test)) if y is not None]
    ys = torch.cat([y.flatten() for y in labels]) if labels else torch.zeros(0)
    num_classes = int(ys.max()) + 1 if len(ys) and not ys.is_floating_point() else 0
    return DataSplits(name=spec, train=train, test=test, num_classes=num_classes,
                      input_shape=shape, test_is_train=same)


def load_data_factory(spec: str, *, root: str | os.PathLike | None = None,
                      seed: int = 0) -> DataSplits:
    """The splits a ``pkg.module:factory`` or ``path/to/file.py:factory`` returns."""
    import inspect
    from tickets.factories import load_factory, one_line
    factory = load_factory(spec, error=DataError)
    if not callable(factory):
        raise DataError(f"data {spec!r}: not a function or class")
    try:
        names = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        names = {}
    kwargs = {k: v for k, v in (("root", root), ("seed", seed)) if k in names}
    try:
        obj = factory(**kwargs)
    except Exception as e:  # the user's code failing on the user's input
        raise DataError(f"data {spec!r}: the factory raised {one_line(e)}") from e
    return _splits_of(spec, obj)


def load_dataset(name: str, *, root: str | os.PathLike | None = None, seed: int = 0) -> DataSplits:
    """Load dataset ``name``: one of :func:`dataset_names` (standardised, as in-memory tensors),
    a data file, or a factory (see the module docstring).

    ``root`` is the folder holding the files of ``mnist``/``fashion_mnist``/``cifar10``;
    ``seed`` fixes the train/test split where the dataset has no canonical one (``digits``).
    Raises :class:`~tickets.errors.DataError` naming what is missing.
    """
    from tickets.factories import is_factory_spec
    if name in _LOADERS:
        return _LOADERS[name](root, seed)
    if Path(name).suffix.lower() in DATA_SUFFIXES or Path(name).is_file():
        return load_data_file(name)
    if is_factory_spec(name):
        return load_data_factory(name, root=root, seed=seed)
    raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(_LOADERS)}, a file "
                    f"({', '.join(DATA_SUFFIXES)}) or pkg.module:factory")
