"""Shared plumbing of the CLI: errors, the shared arguments (``--json``, ``--device``,
``--quiet``, ``--plot``, ``--model``/``--model-kwargs``/``--input-shape``), the one
writable-output check, checkpoint loading onto one model, the one data-fits-model check, JSON
output."""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from gauge.errors import GaugeError
from tickets.errors import TicketsError
from tickets.store import dumps_json, save_json

__all__ = ["UsageError", "NotApplicable", "USER_ERRORS", "resolve_device",
           "add_device_argument", "add_json_argument", "add_quiet_argument", "add_plot_argument",
           "add_output_arguments", "emit_json", "ensure_output_path", "check_outputs",
           "figure_stem", "progress_enabled", "OneLineParser", "percent",
           "add_model_arguments", "parse_input_shape", "CliModel", "load_model_and_params",
           "check_data_fits", "ensure_checkpoint_output", "example_batch", "check_not_input",
           "load_data", "load_checkpoint_for_cli", "finish", "example_input"]


class UsageError(Exception):
    """A bad command-line input the parser cannot catch (files, combinations of options)."""


class NotApplicable(UsageError):
    """An analysis that does not apply to the runs it was given (one seed where it compares
    seeds, no pruned level, ...). The message says why in a user's words; ``gauge report``
    shows it next to the section and writes the others, a subcommand exits with it."""


#: Exceptions that mean "the user gave bad input": one line on stderr and exit code 2.
USER_ERRORS = (UsageError, GaugeError, TicketsError)


class OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (``gauge sub: error: ...``) and exit code 2."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def resolve_device(name: str | None) -> torch.device:
    """``--device``: default cuda when available, else cpu; a clear error for a missing CUDA."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise UsageError(f"--device {name!r} is not a device ({e})") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    return dev


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None,
                        help="torch device (default: cuda when available, else cpu)")


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="also write the results as JSON to FILE ('-' for stdout)")


def add_quiet_argument(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    parser.add_argument("--quiet", action="store_true",
                        help=help or "no progress bars (results are still printed)")


def add_plot_argument(parser: argparse.ArgumentParser, help: str,
                      metavar: str = "FILE.png") -> None:
    parser.add_argument("--plot", default=None, metavar=metavar, help=help)


def add_output_arguments(parser: argparse.ArgumentParser, *, plot: str | None = None) -> None:
    """``--plot`` (when ``plot`` gives its help), ``--json``, ``--device`` and ``--quiet``: the
    output options every analysis of run directories or checkpoints takes."""
    if plot is not None:
        add_plot_argument(parser, plot)
    add_json_argument(parser)
    add_device_argument(parser)
    add_quiet_argument(parser)


def emit_json(target: str | None, obj: Any) -> None:
    """Write ``obj`` as JSON to ``target`` (a path, atomically, or '-' for stdout)."""
    if target is None:
        return
    if target == "-":
        sys.stdout.write(dumps_json(obj))
        sys.stdout.flush()
    else:
        save_json(target, obj)


def ensure_output_path(path: str | os.PathLike, what: str = "output", *,
                       directory: bool = False) -> Path:
    """Check early, before any work, that ``path`` can be written: a file path must not be a
    directory, a directory path (``directory=True``) must not be a file, and no parent may be
    a file. Returns ``Path(path)``."""
    p = Path(path)
    if directory and p.exists() and not p.is_dir():
        raise UsageError(f"{p}: {what} is a file, expected a directory")
    if not directory and p.is_dir():
        raise UsageError(f"{p}: {what} path is a directory")
    for parent in p.parents:
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"{p}: cannot write {what}: {parent} is a file")
    return p


#: Figure formats ``--plot`` writes, by the suffix of the path given.
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
#: Checkpoint formats ``--out`` writes (:func:`tickets.store.save_params`), by suffix.
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")


def check_outputs(args, inputs: Sequence[str | os.PathLike] = ()) -> Path | None:
    """Check ``--json FILE`` and ``--plot FILE`` before any work (neither may be one of
    ``inputs``; the plot's suffix must name a figure format); returns the plot path."""
    if getattr(args, "json", None) not in (None, "-"):
        check_not_input(ensure_output_path(args.json, "JSON"), inputs, "--json")
    plot = getattr(args, "plot", None)
    if not plot:
        return None
    path = check_not_input(ensure_output_path(plot, "plot"), inputs, "--plot")
    if path.suffix and path.suffix.lower() not in FIGURE_SUFFIXES:
        raise UsageError(f"--plot {path}: unknown figure format {path.suffix!r}; use "
                         f"{', '.join(FIGURE_SUFFIXES)}")
    return path


def check_not_input(path: str | os.PathLike, inputs: Sequence[str | os.PathLike],
                    option: str) -> Path:
    """``Path(path)``; UsageError when it resolves to one of ``inputs`` (writing it would
    destroy an input)."""
    path = Path(path)
    target = path.expanduser().resolve()
    for given in inputs:
        if given is not None and Path(given).expanduser().resolve() == target:
            raise UsageError(f"{option} {path} is also an input; write the output elsewhere")
    return path


def ensure_checkpoint_output(path: str | os.PathLike, inputs: Sequence[str | os.PathLike] = (),
                             option: str = "--out") -> Path:
    """Check, before any work, that checkpoint ``path`` can be written: not a directory, not
    one of ``inputs``, and a suffix that names a format (``.safetensors`` with metadata,
    ``.pt``/``.pth`` a plain state_dict)."""
    p = check_not_input(ensure_output_path(path, "checkpoint"), inputs, option)
    if p.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise UsageError(f"{option} {p}: unknown checkpoint format "
                         f"{p.suffix or '(no suffix)'!r}; use .safetensors (with metadata) or "
                         ".pt/.pth (a plain state_dict)")
    return p


def figure_stem(path: Path) -> Path:
    """The ``--plot`` path handed to :func:`analyses.figures.save_figure`: ``fig.svg`` and
    ``fig.pdf`` are written as named, ``fig.png`` also as ``fig.pdf``, ``fig`` as both."""
    return Path(path)
def percent(fraction: float | None) -> str:
    """A fraction as a percentage with one decimal ("?" when unknown)."""
    return "?" if fraction is None else f"{100 * fraction:.1f}"


def progress_enabled(args) -> bool:
    """Progress bars only on a TTY and without ``--quiet``."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


# --------------------------------------------------------------------------------------------
# Models: one --model for every subcommand, checkpoints fitted to it


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``--input-shape``: ``40``, ``1,28,28`` or ``1x28x28`` (no batch axis)."""
    parts = [p for p in re.split(r"[,x\s]+", str(text).strip()) if p]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"expected positive sizes such as 40 or 1,28,28, got "
                                         f"{text!r}")
    return dims


def add_model_arguments(parser: argparse.ArgumentParser, *, required: bool = False,
                        input_shape: bool = True) -> None:
    """``--model SOURCE``, ``--model-kwargs JSON`` and (with ``input_shape``) ``--input-shape``:
    the one way every subcommand names an architecture (docs/byo.md)."""
    from tickets.models import model_names
    g = parser.add_argument_group("model")
    default = "" if required else "; default: the model the checkpoint records"
    g.add_argument("--model", required=required, default=None, metavar="SOURCE",
                   help=f"a zoo name ({', '.join(model_names())}), pkg.module:factory, "
                        f"path/to/file.py:factory, torchvision:NAME, timm:NAME or hf:DIR{default}")
    g.add_argument("--model-kwargs", default=None, metavar="JSON",
                   help='keyword arguments of the model or factory, e.g. \'{"widths": [100]}\'')
    if input_shape:
        g.add_argument("--input-shape", type=parse_input_shape, default=None, metavar="SHAPE",
                       help="one input's shape without the batch axis, e.g. 40 or 1,28,28 "
                            "(default: the checkpoint's, else the data's)")


@dataclass(frozen=True)
class CliModel:
    """Checkpoints read onto one model: ``params[i]`` of ``paths[i]`` (``loaded[i]`` says how
    each was read), and ``meta``: the first checkpoint's metadata completed with how to rebuild
    the model (:func:`tickets.sources.model_meta`), which is what outputs record."""

    model: Any
    params: list
    loaded: list
    meta: dict

    @property
    def rebuild(self) -> dict:
        """The metadata an output needs to rebuild the model: source, kwargs, shapes, and the
        dataset when known."""
        keys = ("model", "model_kwargs", "num_classes", "input_shape", "dataset")
        return {k: self.meta[k] for k in keys if k in self.meta}

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        shape = self.meta.get("input_shape")
        return tuple(int(d) for d in shape) if shape else None

    @property
    def name(self) -> str:
        return str(self.meta.get("model", "the model"))

    def example_input(self, n: int = 2, seed: int | None = None):
        """``n`` inputs of the model (:func:`example_input`)."""
        return example_input(self.name, self.model, self.input_shape, n, seed)


def example_input(source: str, model, input_shape, n: int = 2, seed: int | None = None):
    """``n`` inputs for the model built from ``source``: zeros (enough for ``infer_spec`` to
    trace the model), or with ``seed`` random ones (probes of the function). A Hugging Face
    model gets token ids (length 8 unless ``input_shape`` says otherwise)."""
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    if source.startswith("hf:"):
        shape = tuple(input_shape or (8,))
        high = int(getattr(getattr(model, "config", None), "vocab_size", 2) or 2)
        return (torch.zeros((n, *shape), dtype=torch.long) if gen is None
                else torch.randint(0, high, (n, *shape), generator=gen))
    if input_shape is None:
        raise UsageError(f"the input shape of {source} is unknown; give --input-shape "
                         "(e.g. 40 or 1,28,28) or --data")
    return (torch.zeros(n, *input_shape) if gen is None
            else torch.randn((n, *input_shape), generator=gen))


def _same_source(a: str | None, b: str | None) -> bool:
    from tickets.errors import ModelError
    from tickets.sources import parse_model_source
    if a is None or b is None:
        return False
    try:
        return parse_model_source(a) == parse_model_source(b)
    except ModelError:
        return a == b


def _checkpoint_num_classes(source, kwargs: dict, input_shape, params: dict) -> int | None:
    """The classes of a checkpoint without metadata for a zoo, torchvision or timm model, read
    off the tensor whose shape depends on them (the output layer)."""
    from tickets.sources import resolve_model
    one, two = (resolve_model(source, kwargs=kwargs, num_classes=n, input_shape=input_shape)
                .state_dict() for n in (1, 2))
    for key, t in one.items():
        if tuple(t.shape) != tuple(two[key].shape):
            axis = next(i for i, (x, y) in enumerate(zip(t.shape, two[key].shape)) if x != y)
            found = [v for k, v in params.items() if k == key or k.endswith("." + key)]
            return int(found[0].shape[axis]) if found and found[0].dim() > axis else None
    return None


def _build(meta: dict, path: str, args, data, raw: dict):
    """The model of checkpoint ``path`` (its ``meta``, overridden by ``--model``,
    ``--model-kwargs``, ``--input-shape``; shapes the checkpoint lacks from ``data``), and the
    metadata that rebuilds it."""
    from tickets.errors import ModelError
    from tickets.sources import model_meta, parse_model_kwargs, parse_model_source
    from tickets.store import model_from_meta
    spec = getattr(args, "model", None) or meta.get("model")
    if not spec:
        from tickets.errors import CheckpointError
        raise CheckpointError(f"{path}: no model recorded in the metadata; pass --model SOURCE "
                              "(and --input-shape)")
    text = getattr(args, "model_kwargs", None)
    if text:
        kwargs = parse_model_kwargs(text)
    elif _same_source(spec, meta.get("model")):
        kwargs = dict(meta.get("model_kwargs") or {})
    else:
        kwargs = {}
    input_shape = (getattr(args, "input_shape", None) or meta.get("input_shape")
                   or (tuple(data.input_shape) if data is not None else None))
    num_classes = meta.get("num_classes") or (data.num_classes if data is not None and
                                              data.num_classes else None)
    try:
        source = parse_model_source(spec)
    except ModelError as e:
        raise UsageError(f"--model: {e}") from e
    if num_classes is None and "num_classes" not in kwargs and (
            source.kind in ("torchvision", "timm") or
            (source.kind == "zoo" and input_shape is not None)):
        num_classes = _checkpoint_num_classes(source, kwargs, input_shape, raw)
    model = model_from_meta({**meta, "model": source.spec}, path, model_kwargs=kwargs,
                            num_classes=num_classes, input_shape=input_shape)
    return model, model_meta(source, kwargs=kwargs, num_classes=num_classes,
                             input_shape=input_shape)


def load_model_and_params(paths: str | os.PathLike | Sequence[str | os.PathLike], args=None,
                          data=None) -> CliModel:
    """Read the checkpoints ``paths`` (files or folders, any format
    :func:`tickets.checkpoints.read_params` reads) onto one model.

    The model is the one ``--model`` names, else the first recorded in a checkpoint's metadata;
    ``--model-kwargs`` and ``--input-shape`` override the recorded ones, and ``data`` supplies
    the input shape and classes a checkpoint does not record. Each checkpoint is then read again
    fitted to the model (wrapper keys, prefixes, pruning state). Checkpoints recording different
    architectures are refused, naming both.
    """
    from gauge import check_same_keys
    from tickets.checkpoints import read_params
    from analyses.study import same_architecture
    paths = [str(paths)] if isinstance(paths, (str, os.PathLike)) else [str(p) for p in paths]
    raw = [read_params(p) for p in paths]
    if len(raw) > 1 and all(set(r.params) == set(raw[0].params) for r in raw[1:]):
        for r, p in zip(raw[1:], paths[1:]):
            check_same_keys(raw[0].params, r.params, names=(paths[0], p))
    recorded = [(r.meta, p) for r, p in zip(raw, paths) if r.meta.get("model")]
    # A Hugging Face folder records itself as its source; fitting compares its tensors.
    comparable = [(m, p) for m, p in recorded if not str(m["model"]).startswith("hf:")]
    if len(comparable) > 1:
        same_architecture([m for m, _ in comparable], [p for _, p in comparable])
    first, path = recorded[0] if recorded else (raw[0].meta, paths[0])
    model, rebuild = _build(dict(first), path, args, data, raw[0].params)
    loaded = [read_params(p, model) for p in paths]
    meta = {**first, **rebuild}
    return CliModel(model=model, params=[l.params for l in loaded], loaded=loaded, meta=meta)


# --------------------------------------------------------------------------------------------
# Data that fits the model


def load_data(text: str, root=None, seed: int = 0):
    """``--data``: :func:`tickets.data.load_dataset` of a name, a data file or a factory, named
    so that it reloads from anywhere (files and ``file.py:factory`` by absolute path): that
    name is what checkpoints and run directories record."""
    from dataclasses import replace

    from tickets.data import load_dataset
    from tickets.factories import is_factory_spec, split_factory_spec
    data = load_dataset(text, root=root, seed=seed)
    ref = text
    if Path(text).is_file():
        ref = str(Path(text).resolve())
    elif is_factory_spec(text):
        where, attr, is_file = split_factory_spec(text)
        ref = f"{Path(where).resolve()}:{attr}" if is_file else text
    return data if data.name == ref else replace(data, name=ref)


def example_batch(dataset, n: int = 2):
    """The first ``n`` examples of ``dataset``, collated as a DataLoader would."""
    from torch.utils.data import default_collate
    return default_collate([dataset[i] for i in range(min(n, len(dataset)))])


def check_data_fits(model, data, *, data_name: str, model_name: str) -> None:
    """UsageError naming the data and the model unless one forward pass (on the model's device,
    in eval mode) of the first two training examples runs, its targets fit the logits under the
    default loss, and a classifier gives at least one logit per class of the data."""
    from gauge.batches import as_data, batch_loss, forward, logits_of
    from gauge.errors import DataError
    from tickets.factories import one_line
    name = f"--data {data_name}"
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batch = next(iter(as_data(data.train, name=name).batches(2, limit=2))).to(device)
    try:
        model.eval()
        with torch.no_grad():
            logits = logits_of(forward(model, batch, name=name))
    except DataError as e:
        raise UsageError(f"{name}: inputs of shape {tuple(data.input_shape)} do not fit the "
                         f"model {model_name} ({one_line(e.__cause__ or e, 160)})") from e
    finally:
        model.train(was_training)
    classes = int(data.num_classes or 0)
    if logits.dim() == 2 and classes and not batch.lm and logits.shape[-1] < classes:
        raise UsageError(f"{name} has {classes} classes, the model {model_name} "
                         f"gives {logits.shape[-1]} outputs")
    if batch.target is not None:
        try:
            batch_loss(logits, batch, name=name)
        except DataError as e:
            raise UsageError(f"{e} (model {model_name})") from e


def load_checkpoint_for_cli(path: str | os.PathLike, args=None):
    """One checkpoint read as :func:`load_model_and_params` reads it: ``(model, params,
    meta)``."""
    cli = load_model_and_params(path, args)
    return cli.model, cli.params[0], cli.meta


def finish(args, result: dict, summary, plot=None, plot_path: Path | None = None) -> int:
    """The end of a subcommand: draw ``plot(result, plot_path)`` (its files are listed in
    ``result["figures"]``), print ``summary(result)`` as aligned rows unless ``--json -`` or
    ``--quiet``, write ``--json``."""
    if plot is not None and plot_path is not None:
        result["figures"] = [str(p) for p in plot(result, plot_path)]
    if getattr(args, "json", None) != "-" and not getattr(args, "quiet", False):
        rows = summary(result)
        w = max((len(k) for k, _ in rows), default=0)
        for k, v in rows:
            print(f"{k:<{w}}  {v}")
    emit_json(getattr(args, "json", None), result)
    return 0
