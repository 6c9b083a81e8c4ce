"""Shared plumbing of the CLI: errors, the shared arguments (``--json``, ``--device``,
``--quiet``, ``--plot``), the one writable-output check, checkpoint loading, JSON output."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

from gauge.errors import GaugeError
from tickets.errors import TicketsError
from tickets.store import dumps_json, save_json

__all__ = ["UsageError", "NotApplicable", "USER_ERRORS", "resolve_device",
           "add_device_argument", "add_json_argument", "add_quiet_argument", "add_plot_argument",
           "add_output_arguments", "emit_json", "ensure_output_path", "check_outputs",
           "figure_stem", "progress_enabled", "load_checkpoint_for_cli", "OneLineParser",
           "percent", "finish"]


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


def check_outputs(args) -> Path | None:
    """Check ``--json FILE`` and ``--plot FILE`` before any work; returns the plot path."""
    if getattr(args, "json", None) not in (None, "-"):
        ensure_output_path(args.json, "JSON")
    plot = getattr(args, "plot", None)
    return ensure_output_path(plot, "plot") if plot else None


def figure_stem(path: Path) -> Path:
    """``fig.png`` -> ``fig``: figures are written as ``stem.png`` and ``stem.pdf``."""
    return path.with_suffix("") if path.suffix else path


def percent(fraction: float | None) -> str:
    """A fraction as a percentage with one decimal ("?" when unknown)."""
    return "?" if fraction is None else f"{100 * fraction:.1f}"


def progress_enabled(args) -> bool:
    """Progress bars only on a TTY and without ``--quiet``."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def load_checkpoint_for_cli(path: str, *, model_name: str | None = None):
    """Load a checkpoint and build its model: ``(model, params, meta)``; errors name the file."""
    from tickets.store import check_params, load_checkpoint, model_from_meta
    params, meta = load_checkpoint(path)
    model = model_from_meta(meta, str(path), model=model_name)
    check_params(model, params, str(path))
    return model, params, meta


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
