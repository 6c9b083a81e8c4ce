"""mkdocs hook: generate the CLI reference and the API page at build time.

* ``cli.md`` holds the marker ``<!-- gauge-cli-reference -->``; it is replaced by the ``--help``
  text of ``gauge`` and of every subcommand, rendered from ``analyses.cli.build_parser()``, so the
  reference can never drift from the parsers.
* ``api.md`` holds ``<!-- gauge-api: module.a module.b ... -->`` markers; each is replaced by
  mkdocstrings ``::: module`` blocks for the modules that exist in this checkout (a module still
  being written is listed as "not in this build" instead of failing the strict build).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
_CLI_MARKER = "<!-- gauge-cli-reference -->"
_API_MARKER = re.compile(r"<!-- gauge-api: ([^>]*?) -->")


def _help_text(parser: argparse.ArgumentParser) -> str:
    # A fixed width keeps the generated page identical on every machine.
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        return parser.format_help()
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def cli_reference() -> str:
    """Markdown for every ``gauge`` subcommand: its one-line summary and its full ``--help``."""
    if str(_ROOT) not in sys.path:
        sys.path.insert(0, str(_ROOT))
    from analyses.cli import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = ["## gauge", "", "```text", _help_text(parser).rstrip(), "```", ""]
    missing = []
    for name in COMMANDS:
        if name not in sub.choices:
            missing.append(name)
            continue
        out += [f"## gauge {name}", "", COMMANDS[name][:1].upper() + COMMANDS[name][1:] + ".",
                "", "```text", _help_text(sub.choices[name]).rstrip(), "```", ""]
    if missing:
        out += ["!!! note \"Not in this build\"",
                "    " + ", ".join(f"`gauge {m}`" for m in missing), ""]
    return "\n".join(out)


def _exists(name: str) -> bool:
    """Whether ``name`` (a module, or ``module.attribute``) exists in this checkout."""
    if str(_ROOT) not in sys.path:
        sys.path.insert(0, str(_ROOT))
    try:
        if importlib.util.find_spec(name) is not None:
            return True
    except (ImportError, ValueError):
        pass
    module, _, attr = name.rpartition(".")
    if not module:
        return False
    try:
        return hasattr(importlib.import_module(module), attr)
    except Exception:  # a module mid-edit must not break the docs build
        return False


def api_blocks(names: str, rendered: set[str]) -> str:
    """``::: name`` blocks; members already rendered higher on the page are filtered out so that
    every object has exactly one anchor (autorefs warns on duplicates)."""
    out = []
    for name in names.split():
        if not _exists(name):
            out += [f"`{name}`: not in this build.", ""]
            continue
        out.append(f"::: {name}")
        skip = [r.rpartition(".")[2] for r in sorted(rendered) if r.rpartition(".")[0] == name]
        if skip:
            filters = ", ".join(['"!^_"'] + [f'"!^{s}$"' for s in skip])
            out += ["    options:", f"      filters: [{filters}]"]
        out.append("")
        rendered.add(name)
    return "\n".join(out)


def on_page_markdown(markdown, page, config, files, **kwargs):
    if _CLI_MARKER in markdown:
        markdown = markdown.replace(_CLI_MARKER, cli_reference())
    rendered: set[str] = set()
    return _API_MARKER.sub(lambda m: api_blocks(m.group(1), rendered), markdown)
