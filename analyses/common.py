"""Shared plumbing of the CLI: errors, devices, data/checkpoint loading, JSON output."""

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

__all__ = ["UsageError", "USER_ERRORS", "resolve_device", "add_device_argument",
           "add_json_argument", "emit_json", "ensure_output_path", "progress_enabled",
           "load_checkpoint_for_cli", "OneLineParser", "emit_result"]


class UsageError(Exception):
    """A bad command-line input the parser cannot catch (files, combinations of options)."""


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


def emit_json(target: str | None, obj: Any) -> None:
    """Write ``obj`` as JSON to ``target`` (a path, atomically, or '-' for stdout)."""
    if target is None:
        return
    if target == "-":
        sys.stdout.write(dumps_json(obj))
        sys.stdout.flush()
    else:
        save_json(target, obj)


def ensure_output_path(path: str | os.PathLike, what: str = "output") -> Path:
    """Check early that ``path`` can be written (its parent is not a file, it is not a dir)."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{p}: {what} path is a directory")
    for parent in p.parents:
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"{p}: cannot write {what}: {parent} is a file")
    return p


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


def emit_result(args, out: Any, lines) -> int:
    """Print a subcommand's ``(name, text)`` summary lines (unless ``--json -`` takes stdout),
    write ``out`` as JSON where ``--json`` says, and return exit code 0."""
    if args.json != "-":
        for name, text in lines:
            print(f"{name}: {text}")
    emit_json(args.json, out)
    return 0
