"""The user's own code, named ``pkg.module:attr`` or ``path/to/file.py:attr``.

One resolver for every place that takes a factory (models, datasets): the module is imported
(a file path is executed as a module, as ``python path/to/file.py`` would, with its folder on
the import path so that it can import its neighbours), and ``attr`` (dots allowed:
``Class.method``) is looked up in it. Errors name the spec and say in one line why.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from gauge.errors import one_line
from tickets.errors import TicketsError

__all__ = ["is_factory_spec", "split_factory_spec", "load_factory", "one_line"]


def is_factory_spec(spec: str) -> bool:
    """True for ``module:attr`` and ``file.py:attr`` (both sides of the last colon non-empty)."""
    where, sep, attr = spec.rpartition(":")
    return bool(sep and where and attr)


def split_factory_spec(spec: str) -> tuple[str, str, bool]:
    """``(module or file path, attr, is_file)``; a target ending ``.py`` or holding a path
    separator is a file."""
    where, _, attr = spec.rpartition(":")
    is_file = where.endswith(".py") or "/" in where or "\\" in where
    return where, attr, is_file


def _import_file(path: Path, spec: str, error: type[TicketsError]):
    if not path.is_file():
        raise error(f"{spec!r}: {path}: no such file")
    # A stable, unique module name per file, so classes defined there pickle and compare alike
    # across calls, and two files called model.py do not shadow each other.
    name = f"_gauge_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise error(f"{spec!r}: {path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    folder = str(path.parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        module_spec.loader.exec_module(module)
    except BaseException as e:
        del sys.modules[name]
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise error(f"{spec!r}: {path} does not import ({one_line(e)})") from e
    finally:
        if added:
            sys.path.remove(folder)
    return module


def load_factory(spec: str, *, error: type[TicketsError] = TicketsError) -> Any:
    """Import ``spec`` (``pkg.module:attr`` or ``path/to/file.py:attr``) and return ``attr``.

    Raises ``error`` naming the spec when the module does not import (with the reason) or has
    no such attribute.
    """
    if not is_factory_spec(spec):
        raise error(f"{spec!r}: expected pkg.module:factory or path/to/file.py:factory")
    where, attr, is_file = split_factory_spec(spec)
    if is_file:
        module = _import_file(Path(where).expanduser().resolve(), spec, error)
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:  # user code may raise anything while importing
            raise error(f"{spec!r}: module {where!r} does not import ({one_line(e)})") from e
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise error(f"{spec!r}: {where} has no attribute {attr!r}") from None
    return obj
