"""The docs: the CLI reference is generated from the parsers; ``mkdocs build --strict`` is clean."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _hook():
    spec = importlib.util.spec_from_file_location("docs_hook", ROOT / "docs/hooks/reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_generated_from_every_parser():
    import argparse

    from analyses.cli import build_parser
    text = _hook().cli_reference()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        assert f"## gauge {name}" in text
        for action in parser._actions:
            for opt in action.option_strings:
                assert opt in text, (name, opt)
    assert "--quick" in text and "RUN_DIR" in text


def test_api_page_lists_missing_modules_instead_of_failing():
    hook = _hook()
    rendered: set[str] = set()
    text = hook.api_blocks("tickets.train gauge.no_such_module", rendered)
    assert "::: tickets.train" in text
    assert "`gauge.no_such_module`: not in this build." in text
    # an object rendered earlier on the page is filtered from its module's block
    text = hook.api_blocks("tickets.train.train tickets.train", set())
    assert '"!^train$"' in text


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("mkdocs not installed (pip install -e '.[docs]')")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()
    assert "gauge report" in cli and "gauge demo" in cli
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "weight_matching" in api and "infer_spec" in api and "apply_permutation" in api
