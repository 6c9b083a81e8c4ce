"""Data in one convention: every function of :mod:`gauge` and :mod:`tickets` that takes data
resolves it here, with :func:`as_data`.

Accepted forms (``data``):

* an ``(x, y)`` pair of tensors (or a bare input tensor ``x`` where no loss is computed);
* a mapping of equal-length tensors, ``{"input_ids": ..., "attention_mask": ..., "labels": ...}``
  or ``{"x": ..., "y": ...}`` (a Hugging Face ``BatchEncoding`` with ``labels`` added);
* any map-style dataset (``len`` and ``[i]``): ``TensorDataset``, ``Subset``,
  ``ConcatDataset``, the user's own class returning tuples, dicts or tensors. Examples are
  collated with ``torch.utils.data.default_collate``; datasets made of tensors (``TensorDataset``
  and their ``Subset``/``ConcatDataset``) are sliced directly;
* a ``DataLoader``, an ``IterableDataset`` or any *re-iterable* of batches (a list of
  ``(x, y)`` tuples or dicts). Such a stream keeps its own batching and order: ``batch_size``
  applies to the forms above only. A one-shot iterator (a generator) is refused: every function
  here passes over the data more than once, and a second pass over a generator is empty.

A batch (:class:`Batch`) is a tuple ``(x, y)`` (``(x,)`` or a bare tensor: no targets) or a dict.
In a dict the target is the entry ``labels``, ``label`` or ``y`` (the first present) and the
model's inputs are all other entries: the model is called ``model(**inputs)``, or ``model(x)``
when the only input is ``x``; a tuple batch calls ``model(x)``. Calls go through
:func:`torch.func.functional_call` when ``params`` are given (:func:`forward`); a model that
rejects the data (shape, dtype, keyword) raises :class:`~gauge.errors.DataError` naming the
data and the model's complaint.

Outputs and losses:

* logits (:func:`logits_of`): the ``logits`` attribute or key when the output has one (Hugging
  Face ``ModelOutput``, dicts), else the first element of a tuple/list, else the output tensor;
  ``logits_fn(outputs) -> Tensor`` overrides the rule;
* ``loss_fn(logits, target) -> batch mean`` (``target`` is the batch's ``y`` or ``labels``), so
  ``torch.nn.functional`` losses work as they are. The default is the cross-entropy, and for a
  dict batch whose ``labels`` have sequence shape ``(batch, length)`` the causal language-model
  loss (:func:`causal_lm_loss`: next-token cross-entropy, positions labelled -100 ignored, as
  Hugging Face's ``*ForCausalLM`` models compute it);
* ``error_fn(logits, target) -> batch mean error``; the default is the top-1 error
  (1 - accuracy), per token for the language-model loss.

A mean over several batches weights each batch by its number of examples (rows).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import (ConcatDataset, DataLoader, Dataset, IterableDataset, Subset,
                              TensorDataset, default_collate)

from gauge.errors import DataError, GaugeError, one_line

__all__ = ["Batch", "Data", "as_data", "pick_split", "make_batch", "forward", "logits_of",
           "causal_lm_loss", "batch_loss", "loss_sum", "error_sum", "LABEL_KEYS", "IGNORE_INDEX"]

#: Keys naming the target of a dict batch, in order of preference.
LABEL_KEYS = ("labels", "label", "y")
#: Label value the language-model loss skips (Hugging Face's convention).
IGNORE_INDEX = -100

Inputs = Any  # a tensor, or a dict of model keyword arguments

_FORMS = ("an (x, y) pair of tensors, a dict of tensors, a map-style Dataset, a DataLoader or "
          "a list of batches")
# Errors a model raises when the data does not fit it (wrong shape, dtype, keyword; models
# often assert their input shape).
_MISFIT = (RuntimeError, TypeError, ValueError, IndexError, KeyError, AssertionError)


def _map(fn, obj):
    if isinstance(obj, Mapping):
        return {k: _map(fn, v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map(fn, v) for v in obj)
    return fn(obj) if isinstance(obj, torch.Tensor) else obj


def _first_tensor(obj) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    values = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, (tuple, list)) \
        else ()
    for v in values:
        t = _first_tensor(v)
        if t is not None:
            return t
    return None


# ----------------------------------------------------------------------------- batches

@dataclass(frozen=True)
class Batch:
    """One batch: the model's ``inputs`` (a tensor, or a dict of keyword arguments), the
    ``target`` (``None`` when unlabelled), the number of examples ``n`` and whether the target
    is next-token labels (``lm``: a dict batch with ``labels`` of shape ``(batch, length)``)."""

    inputs: Inputs
    target: torch.Tensor | None
    n: int
    lm: bool = False

    def to(self, device) -> "Batch":
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        target = None if self.target is None else move(self.target)
        return replace(self, inputs=_map(move, self.inputs), target=target)

    def head(self, k: int) -> "Batch":
        """The first ``k`` examples."""
        cut = lambda t: t[:k]  # noqa: E731
        target = None if self.target is None else self.target[:k]
        return replace(self, inputs=_map(cut, self.inputs), target=target, n=min(k, self.n))

    @staticmethod
    def cat(batches: list["Batch"]) -> "Batch":
        """The examples of ``batches`` as one batch (their inputs must concatenate)."""
        first = batches[0]
        if isinstance(first.inputs, Mapping):
            inputs = {k: torch.cat([b.inputs[k] for b in batches]) for k in first.inputs}
        else:
            inputs = torch.cat([b.inputs for b in batches])
        target = None if first.target is None else torch.cat([b.target for b in batches])
        return replace(first, inputs=inputs, target=target, n=sum(b.n for b in batches))

    def split(self, m: int) -> list["Batch"]:
        """``m`` consecutive chunks of nearly equal size (:func:`torch.tensor_split`)."""
        def parts(t):
            return torch.tensor_split(t, m)
        if isinstance(self.inputs, Mapping):
            cols = {k: parts(v) for k, v in self.inputs.items()}
            inputs = [{k: cols[k][i] for k in cols} for i in range(m)]
        else:
            inputs = list(parts(self.inputs))
        targets = [None] * m if self.target is None else list(parts(self.target))
        return [replace(self, inputs=x, target=y, n=len(y) if y is not None else len(
            _first_tensor(x))) for x, y in zip(inputs, targets)]


def _is_lm(key: str, target) -> bool:
    return key == "labels" and isinstance(target, torch.Tensor) and target.ndim >= 2 \
        and not target.is_floating_point()


def make_batch(raw, name: str = "data") -> Batch:
    """A collated batch (``(x, y)``, ``(x,)``, a tensor, a dict, or a :class:`Batch`) as a
    :class:`Batch` (see the module docstring for the rules)."""
    if isinstance(raw, Batch):
        return raw
    lm = False
    if isinstance(raw, torch.Tensor):
        inputs, target = raw, None
    elif isinstance(raw, Mapping):
        key = next((k for k in LABEL_KEYS if k in raw), None)
        target = raw[key] if key is not None else None
        inputs = {k: v for k, v in raw.items() if k != key}
        if not inputs:
            raise DataError(f"{name}: a batch has only the target {key!r}, no model inputs")
        if set(inputs) == {"x"}:
            inputs = inputs["x"]
        lm = _is_lm(key, target)
    elif isinstance(raw, (tuple, list)) and len(raw) in (1, 2):
        inputs, target = raw[0], (raw[1] if len(raw) == 2 else None)
    else:
        what = f"a {len(raw)}-tuple" if isinstance(raw, (tuple, list)) else type(raw).__name__
        raise DataError(f"{name}: a batch is {what}; expected (x, y), (x,), a tensor or a dict "
                        f"with {'/'.join(LABEL_KEYS)} as the target")
    if target is not None and not isinstance(target, torch.Tensor):
        target = torch.as_tensor(target)
    rows = target if target is not None else _first_tensor(inputs)
    if rows is None:
        raise DataError(f"{name}: a batch holds no tensor")
    return Batch(inputs=inputs, target=target, n=len(rows), lm=lm)


# ----------------------------------------------------------------------------- data

def _columns(ds):
    """The tensors behind a dataset made of tensors (``TensorDataset`` and their ``Subset`` /
    ``ConcatDataset``), as a tuple; ``None`` for any other dataset."""
    if isinstance(ds, TensorDataset):
        return tuple(ds.tensors)
    if isinstance(ds, Subset):
        inner = _columns(ds.dataset)
        if inner is None:
            return None
        idx = torch.as_tensor(list(ds.indices), dtype=torch.long)
        return tuple(t[idx] for t in inner)
    if isinstance(ds, ConcatDataset):
        parts = [_columns(d) for d in ds.datasets]
        if not parts or any(p is None or len(p) != len(parts[0]) for p in parts):
            return None
        try:
            return tuple(torch.cat(ts) for ts in zip(*parts))
        except RuntimeError:
            return None  # parts of different shapes: collate them example by example
    return None


def _as_tensor(a):
    return a if isinstance(a, torch.Tensor) else torch.as_tensor(a)


class Data:
    """Data in one of the accepted forms (build it with :func:`as_data`), re-iterable.

    ``batches(batch_size, device, limit)`` yields :class:`Batch` es: consecutive slices of
    ``batch_size`` examples (``None``: one batch) of the first ``limit`` examples for tensors and
    datasets, the stream's own batches (cut after ``limit`` examples) for streams. ``take(idx)``
    collates the examples at ``idx`` (map-style data only). ``n`` is the number of examples
    (``None`` for a stream without a length).
    """

    def __init__(self, name: str, *, columns=None, dataset=None, stream=None):
        self.name = name
        self.columns = columns  # tuple or dict of equal-length tensors
        self.dataset = dataset  # map-style: len and [i]
        self.stream = stream  # re-iterable of batches

    @property
    def map_style(self) -> bool:
        return self.stream is None

    @property
    def n(self) -> int | None:
        if self.columns is not None:
            return len(_first_tensor(self.columns))
        if self.dataset is not None:
            return len(self.dataset)
        return None

    @property
    def device(self) -> torch.device | None:
        """Where the tensors are (tensor data), else ``None``."""
        return _first_tensor(self.columns).device if self.columns is not None else None

    def to(self, device) -> "Data":
        """Tensor data moved to ``device`` once (other forms move batch by batch)."""
        if self.columns is None:
            return self
        return Data(self.name, columns=_map(lambda t: t.to(device), self.columns))

    def _rows(self, index) -> Batch:
        if self.columns is not None:
            return make_batch(_map(lambda t: t[index], self.columns), self.name)
        if isinstance(index, slice):
            index = range(*index.indices(len(self.dataset)))
        try:
            items = [self.dataset[int(i)] for i in index]
            return make_batch(default_collate(items), self.name)
        except GaugeError:
            raise
        except _MISFIT as e:
            raise DataError(f"{self.name}: cannot collate its examples into a batch: "
                            f"{one_line(e)}") from e

    def take(self, index: torch.Tensor) -> Batch:
        """The examples at ``index`` (a 1-D index tensor) as one batch (map-style data)."""
        if not self.map_style:
            raise DataError(f"{self.name} is a stream of batches: it cannot be indexed")
        return self._rows(index)

    def batches(self, batch_size: int | None = None, device=None, limit: int | None = None
                ) -> Iterator[Batch]:
        if batch_size is not None and batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        move = (lambda b: b.to(device)) if device is not None else (lambda b: b)  # noqa: E731
        if self.map_style:
            n = self.n if limit is None else min(self.n, limit)
            step = n if batch_size is None else batch_size
            for i in range(0, n, step):
                yield move(self._rows(slice(i, min(i + step, n))))
            return
        stream = self.stream
        if isinstance(stream, IterableDataset):
            stream = DataLoader(stream, batch_size=batch_size or 1)
        seen, count = 0, 0
        for raw in stream:
            b = make_batch(raw, self.name)
            if limit is not None and seen + b.n > limit:
                b = b.head(limit - seen)
            count += 1
            seen += b.n
            yield move(b)
            if limit is not None and seen >= limit:
                break
        if count == 0:
            raise DataError(f"{self.name} yielded no batches")

    def example_inputs(self, k: int = 2) -> Inputs:
        """The model inputs of the first ``k`` examples (e.g. to trace the model)."""
        return next(iter(self.batches(k, limit=k))).inputs


def _is_map_style(data) -> bool:
    """A dataset with ``len`` and ``[i]`` (a torch ``Dataset`` or any such object), not a
    stream and not a container of batches."""
    if isinstance(data, IterableDataset) or isinstance(data, (tuple, list, Mapping, str, bytes)):
        return False
    return isinstance(data, Dataset) or (hasattr(data, "__len__") and hasattr(data, "__getitem__"))


def _describe(data) -> str:
    return f"data ({type(data).__name__})"


def as_data(data, name: str | None = None) -> Data:
    """``data`` in any accepted form (see the module docstring) as :class:`Data`; ``name``
    names it in error messages. Raises :class:`~gauge.errors.DataError` for another form,
    a one-shot iterator, empty data or tensors of different lengths."""
    if isinstance(data, Data):
        return data
    name = name or _describe(data)
    columns = None
    if isinstance(data, torch.Tensor):
        columns = (data,)
    elif isinstance(data, (tuple, list)) and len(data) == 2 and all(
            isinstance(t, torch.Tensor) or hasattr(t, "__array__") for t in data) and not any(
            isinstance(t, (tuple, list, Mapping)) for t in data):
        columns = tuple(_as_tensor(t) for t in data)
    elif isinstance(data, Mapping) and data and all(isinstance(v, torch.Tensor)
                                                    for v in data.values()):
        columns = dict(data)
    elif _is_map_style(data):
        cols = _columns(data)
        if cols is not None:
            if len(cols) > 2:
                raise DataError(f"{name} holds {len(cols)} tensors; expected (inputs, targets)")
            columns = cols
        else:
            if len(data) == 0:
                raise DataError(f"{name} is empty")
            return Data(name, dataset=data)
    elif isinstance(data, (tuple, list)):
        if not data:
            raise DataError(f"{name} is an empty list; expected {_FORMS}")
        return Data(name, stream=list(data))
    elif isinstance(data, Mapping):
        raise DataError(f"{name} is a dict whose values are not all tensors (keys: "
                        f"{', '.join(map(str, data))}); expected {_FORMS}")
    elif hasattr(data, "__iter__"):
        if iter(data) is data:
            raise DataError(f"{name} is a one-shot iterator ({type(data).__name__}): it would "
                            f"be empty on the second pass; pass a list of batches or a "
                            f"DataLoader")
        return Data(name, stream=data)
    else:
        raise DataError(f"{name} is not data; expected {_FORMS}")
    lengths = {k: len(v) for k, v in (columns.items() if isinstance(columns, dict)
                                      else enumerate(columns))}
    if len(set(lengths.values())) > 1:
        what = ", ".join(f"{k}: {v}" for k, v in lengths.items())
        raise DataError(f"{name}: its tensors differ in length ({what} rows)")
    if not next(iter(lengths.values())):
        raise DataError(f"{name} is empty")
    return Data(name, columns=columns)


def pick_split(data, split: str):
    """``data``'s ``split`` (``"train"``/``"test"``) when ``data`` holds splits (``.train`` /
    ``.test`` attributes as in ``tickets.data.DataSplits``, or a ``{"train": ..., "test":
    ...}`` mapping): ``(that split or None, its name)``. Any other data is its own split:
    ``(data, name)``."""
    if isinstance(data, Mapping) and ("train" in data or "test" in data):
        part = data.get(split)
        return part, f"data[{split!r}]"
    if hasattr(data, "train") and hasattr(data, "test") and not isinstance(data, nn.Module):
        label = getattr(data, "name", None) or "data"
        return getattr(data, split), f"{label} ({split} split)"
    return data, None


# ----------------------------------------------------------------------------- the model

def _tied_aliases(model: nn.Module) -> set[str]:
    """Second names of tied tensors (a language model's output layer sharing the embedding):
    a state_dict lists both, and the tensor takes the value under its first name."""
    names = set()
    for named in (model.named_parameters, model.named_buffers):
        names |= set(dict(named(remove_duplicate=False))) - set(dict(named()))
    return names


def forward(model: nn.Module, batch: Batch, params: Mapping[str, torch.Tensor] | None = None,
            *, name: str = "data"):
    """``model(batch.inputs)`` (keyword arguments for dict inputs), with ``params`` through
    :func:`torch.func.functional_call` when given (tied tensors take the value under their
    first name, so a gradient reaches every use). A model that rejects the data raises
    :class:`~gauge.errors.DataError` naming ``name`` and the model's complaint."""
    args, kwargs = ((), dict(batch.inputs)) if isinstance(batch.inputs, Mapping) \
        else ((batch.inputs,), {})
    try:
        if params is None:
            return model(*args, **kwargs)
        aliases = _tied_aliases(model)
        params = {k: v for k, v in params.items() if k not in aliases}
        return torch.func.functional_call(model, params, args, kwargs)
    except GaugeError:
        raise
    except _MISFIT as e:
        raise DataError(f"{name} does not fit the model: {one_line(e)}") from e


def logits_of(outputs, logits_fn: Callable | None = None) -> torch.Tensor:
    """The logits in a model's ``outputs``: ``logits_fn(outputs)`` when given, else the
    ``logits`` attribute or key, else the first element of a tuple/list, else ``outputs``."""
    if logits_fn is not None:
        return logits_fn(outputs)
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping) and "logits" in outputs:
        return outputs["logits"]
    if getattr(outputs, "logits", None) is not None:
        return outputs.logits
    if isinstance(outputs, (tuple, list)) and outputs:
        return logits_of(outputs[0])
    raise DataError(f"the model returned a {type(outputs).__name__} with no logits; pass "
                    f"logits_fn=... to pick them")


# ----------------------------------------------------------------------------- losses

def _shifted(logits: torch.Tensor, labels: torch.Tensor):
    """Next-token pairs: the logits at positions ``0..T-2`` and the labels at ``1..T-1``."""
    return (logits[..., :-1, :].reshape(-1, logits.shape[-1]),
            labels[..., 1:].reshape(-1).to(logits.device))


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Causal language-model loss: the mean next-token cross-entropy
    ``-mean_{t: labels_{t+1} != -100} log softmax(logits_t)[labels_{t+1}]``, in float32, as
    Hugging Face's ``*ForCausalLM`` models compute it from ``labels``."""
    z, y = _shifted(logits, labels)
    return F.cross_entropy(z.float(), y, ignore_index=IGNORE_INDEX)


def _lm_error(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    z, y = _shifted(logits, labels)
    keep = y != IGNORE_INDEX
    return ((z.argmax(-1) != y) & keep).sum() / keep.sum().clamp_min(1)


def _target(batch: Batch, name: str) -> torch.Tensor:
    if batch.target is None:
        raise DataError(f"{name} has no targets: a loss needs (x, y) batches or a "
                        f"{'/'.join(LABEL_KEYS)} entry")
    return batch.target


def _checked(fn, logits, batch, name):
    try:
        return fn()
    except GaugeError:
        raise
    except _MISFIT as e:
        raise DataError(f"{name}: the targets do not fit the model's outputs (logits "
                        f"{tuple(logits.shape)}, targets {tuple(batch.target.shape)}): "
                        f"{one_line(e)}") from e


def batch_loss(logits: torch.Tensor, batch: Batch, loss_fn: Callable | None = None, *,
               name: str = "data") -> torch.Tensor:
    """The batch-mean loss: ``loss_fn(logits, target)``, by default the cross-entropy (the
    causal language-model loss for next-token labels)."""
    y = _target(batch, name)
    if loss_fn is not None:
        fn = lambda: loss_fn(logits, y)  # noqa: E731
    elif batch.lm:
        fn = lambda: causal_lm_loss(logits, y)  # noqa: E731
    else:
        fn = lambda: F.cross_entropy(logits, y)  # noqa: E731
    return _checked(fn, logits, batch, name)


def loss_sum(logits: torch.Tensor, batch: Batch, loss_fn: Callable | None = None, *,
             name: str = "data") -> float:
    """``batch.n`` times the batch-mean loss (the default cross-entropy is summed directly,
    in float32)."""
    if loss_fn is None and not batch.lm:
        y = _target(batch, name)
        return float(_checked(lambda: F.cross_entropy(logits.float(), y, reduction="sum"),
                              logits, batch, name))
    return float(batch_loss(logits, batch, loss_fn, name=name)) * batch.n


def error_sum(logits: torch.Tensor, batch: Batch, error_fn: Callable | None = None, *,
              name: str = "data") -> float | int:
    """``batch.n`` times the batch-mean error: ``error_fn(logits, target)``, by default the
    top-1 error (an exact count of wrong examples; per token for next-token labels)."""
    y = _target(batch, name)
    if error_fn is not None:
        return float(_checked(lambda: error_fn(logits, y), logits, batch, name)) * batch.n
    if batch.lm:
        return float(_checked(lambda: _lm_error(logits, y), logits, batch, name)) * batch.n
    return int(_checked(lambda: (logits.argmax(1) != y).sum(), logits, batch, name))
