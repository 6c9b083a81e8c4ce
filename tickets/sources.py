"""Where a model comes from: one string, one resolver.

A model source is one of

* a zoo name (:func:`tickets.models.model_names`), built for ``num_classes``/``input_shape``;
* ``pkg.module:factory`` or ``path/to/file.py:factory``: a class or function returning an
  ``nn.Module``, called with ``kwargs``. A factory parameter named ``num_classes`` or
  ``input_shape`` that ``kwargs`` leave unset receives the value given to :func:`resolve_model`;
* ``torchvision:NAME`` / ``timm:NAME``: an architecture of those libraries (optional extras),
  randomly initialised: weights come from checkpoints, nothing is downloaded;
* ``hf:DIR``: a Hugging Face ``save_pretrained`` folder (:mod:`tickets.hf`).

Every model is built from ``seed``: factories run under a forked, seeded torch RNG, so their
initialisation is reproducible and the caller's RNG state is left as it was. A checkpoint
records the canonical source (:meth:`ModelSource.spec`, file and folder paths made absolute)
with its kwargs and shapes (:func:`model_meta`), from which
:func:`tickets.store.model_from_meta` rebuilds the model.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from tickets.errors import ModelError
from tickets.factories import load_factory, one_line, split_factory_spec

__all__ = ["ModelSource", "parse_model_source", "resolve_model", "model_meta",
           "parse_model_kwargs", "source_spec", "SOURCE_FORMS"]

SOURCE_FORMS = ("a zoo name, pkg.module:factory, path/to/file.py:factory, torchvision:NAME, "
                "timm:NAME or hf:DIR")
_LIBRARIES = ("torchvision", "timm", "hf")


@dataclass(frozen=True)
class ModelSource:
    """A parsed model source: ``kind`` is ``zoo``, ``module``, ``file``, ``torchvision``,
    ``timm`` or ``hf``; ``target`` the zoo/library name, module, file or folder; ``factory``
    the attribute called for ``module``/``file``."""

    kind: str
    target: str
    factory: str | None = None

    @property
    def spec(self) -> str:
        """The canonical string, which :func:`parse_model_source` reads back."""
        if self.kind == "zoo":
            return self.target
        if self.kind in ("module", "file"):
            return f"{self.target}:{self.factory}"
        return f"{self.kind}:{self.target}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"spec": self.spec}


def parse_model_source(spec: str) -> ModelSource:
    """Parse ``spec`` (see the module docstring); paths are made absolute.

    :class:`~tickets.errors.ModelError` for a string that is none of the forms.
    """
    from tickets.models import model_names
    spec = str(spec).strip()
    head, sep, rest = spec.partition(":")
    if sep and head in _LIBRARIES:
        if not rest:
            raise ModelError(f"model {spec!r}: {head}: needs a name after the colon")
        target = str(Path(rest).expanduser().resolve()) if head == "hf" else rest
        return ModelSource(head, target)
    if ":" in spec:
        where, attr, is_file = split_factory_spec(spec)
        if not where or not attr:
            raise ModelError(f"model {spec!r}: expected pkg.module:factory or "
                             "path/to/file.py:factory")
        if is_file:
            return ModelSource("file", str(Path(where).expanduser().resolve()), attr)
        return ModelSource("module", where, attr)
    if spec in model_names():
        return ModelSource("zoo", spec)
    from tickets.hf import is_hf_dir
    hint = f" (for a Hugging Face folder write hf:{spec})" if is_hf_dir(spec) else ""
    raise ModelError(f"unknown model {spec!r}{hint}; give {SOURCE_FORMS} (zoo: "
                     f"{', '.join(model_names())})")


def source_spec(model: str | ModelSource | Any) -> str:
    """The canonical source string of ``model``: a source string or :class:`ModelSource`, or a
    class or function importable as ``module:qualname`` (what a run records to rebuild it)."""
    if isinstance(model, ModelSource):
        return model.spec
    if isinstance(model, str):
        return parse_model_source(model).spec
    module, name = getattr(model, "__module__", None), getattr(model, "__qualname__", "")
    if not callable(model) or isinstance(model, nn.Module):
        raise ModelError(f"model {model!r}: expected a source string or a class or function "
                         "that returns an nn.Module")
    if not module or module == "__main__" or "<" in name:
        raise ModelError(f"model {name or model!r}: a factory must be importable (defined at "
                         "the top level of a module, not in __main__ or a function) so that "
                         "the run can rebuild it; or give 'path/to/file.py:factory'")
    return parse_model_source(f"{module}:{name}").spec


def parse_model_kwargs(text: str | None) -> dict[str, Any]:
    """The JSON object of ``--model-kwargs`` (``{}`` for ``None``/empty)."""
    if not text:
        return {}
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelError(f"--model-kwargs: not valid JSON ({e})") from e
    if not isinstance(kwargs, dict):
        raise ModelError(f"--model-kwargs: expected a JSON object, got {type(kwargs).__name__}")
    return kwargs


def _call_factory(source: ModelSource, kwargs: dict, num_classes, input_shape) -> nn.Module:
    spec = source.spec
    factory = load_factory(spec, error=ModelError)
    if isinstance(factory, nn.Module) or not callable(factory):
        raise ModelError(f"model {spec!r}: {source.factory} is a {type(factory).__name__}, not "
                         "a class or function that returns an nn.Module")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins and some C types have no signature
        params = {}
    for name, value in (("num_classes", num_classes), ("input_shape", input_shape)):
        if name in params and name not in kwargs and value is not None:
            kwargs[name] = tuple(value) if name == "input_shape" else int(value)
    if params:
        try:
            inspect.signature(factory).bind(**kwargs)
        except TypeError as e:
            raise ModelError(f"model {spec!r}: {source.factory} rejects the kwargs "
                             f"{sorted(kwargs)} ({e})") from None
    try:
        model = factory(**kwargs)
    except Exception as e:  # the user's code failing on the user's input
        raise ModelError(f"model {spec!r}: {source.factory}(**{kwargs}) raised "
                         f"{one_line(e)}") from e
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {spec!r}: {source.factory} returned a "
                         f"{type(model).__name__}, not a torch.nn.Module")
    return model


def _library(source: ModelSource, kwargs: dict, num_classes) -> nn.Module:
    spec, lib = source.spec, source.kind
    banned = {"weights", "pretrained", "pretrained_cfg_overlay", "checkpoint_path"} & set(kwargs)
    if banned:
        raise ModelError(f"model {spec!r}: {sorted(banned)[0]} is not accepted: weights come "
                         "from checkpoints, nothing is downloaded")
    try:
        module = __import__(lib)
    except Exception as e:  # ImportError, or a build that does not match this torch
        raise ModelError(f"model {spec!r}: needs {lib}, which is not installed or does not "
                         f"import ({one_line(e, 120)}); pip install 'gauge-tickets[{lib}]'") from e
    if num_classes is not None:
        kwargs.setdefault("num_classes", int(num_classes))
    try:
        if lib == "torchvision":
            return module.models.get_model(source.target, weights=None, **kwargs)
        return module.create_model(source.target, pretrained=False, **kwargs)
    except Exception as e:  # unknown names raise ValueError/RuntimeError, bad kwargs TypeError
        raise ModelError(f"model {spec!r}: {lib} cannot build it ({one_line(e)})") from e


def resolve_model(spec: str | ModelSource, *, kwargs: Mapping[str, Any] | None = None,
                  num_classes: int | None = None, input_shape: Sequence[int] | None = None,
                  seed: int = 0) -> nn.Module:
    """Build the model that ``spec`` names, initialised from ``seed``.

    ``kwargs`` are the architecture's options (``--model-kwargs``). Zoo models need
    ``num_classes`` and ``input_shape`` (no batch axis); factories get them only when they
    take parameters of those names; ``hf:DIR`` needs neither and loads the folder's weights.
    Raises :class:`~tickets.errors.ModelError` naming the source and the problem.
    """
    source = spec if isinstance(spec, ModelSource) else parse_model_source(spec)
    kwargs = dict(kwargs or {})
    if source.kind == "zoo":
        from tickets.models import build_model
        if num_classes is None or input_shape is None:
            raise ModelError(f"model {source.spec!r}: a zoo model needs num_classes and "
                             "input_shape (give --input-shape or --data)")
        return build_model(source.target, num_classes=num_classes, input_shape=input_shape,
                           seed=seed, **kwargs)
    if source.kind == "hf":
        if kwargs:
            raise ModelError(f"model {source.spec!r}: takes no kwargs (the folder's config.json "
                             "describes it)")
        from tickets.hf import build_hf_model
        return build_hf_model(source.target, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if source.kind in ("module", "file"):
            return _call_factory(source, kwargs, num_classes, input_shape)
        return _library(source, kwargs, num_classes)


def model_meta(spec: str | ModelSource, *, kwargs: Mapping[str, Any] | None = None,
               num_classes: int | None = None, input_shape: Sequence[int] | None = None
               ) -> dict[str, Any]:
    """What a checkpoint records so that :func:`tickets.store.model_from_meta` rebuilds the
    model: the canonical source, its kwargs and the shapes it was built for."""
    source = spec if isinstance(spec, ModelSource) else parse_model_source(spec)
    meta: dict[str, Any] = {"model": source.spec, "model_kwargs": dict(kwargs or {})}
    if num_classes is not None:
        meta["num_classes"] = int(num_classes)
    if input_shape is not None:
        meta["input_shape"] = [int(d) for d in input_shape]
    return meta
