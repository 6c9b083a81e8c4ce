"""docs/byo.md runs as written: its *file* blocks are written and its *run* blocks executed
with ``bash -e``, in order, in one folder (plus a small OpenLTH run as OpenLTH writes it)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
import torch

from tests.conftest import ROOT
from tests.openlth_layout import LeNet, write_level

BLOCK = re.compile(r"<!-- (file: (?P<file>\S+)|run) -->\n```\w*\n(?P<body>.*?)\n```", re.S)


def doc_blocks(text: str) -> list[tuple[str | None, str]]:
    """``(file name or None for a run block, body)`` of the marked blocks, in order."""
    return [(m["file"], m["body"]) for m in BLOCK.finditer(text)]


def test_marked_blocks_are_found():
    blocks = doc_blocks((ROOT / "docs" / "byo.md").read_text())
    assert blocks[0][0] == "mynets.py" and sum(f is None for f, _ in blocks) >= 6


@pytest.mark.slow
def test_byo_page_runs(tmp_path):
    for rep in (1, 2):
        torch.manual_seed(rep)
        net = LeNet([8, 4])
        write_level(tmp_path / "lottery", rep, 0, net, model_name="mnist_lenet_8_4")
        write_level(tmp_path / "lottery", rep, 1, net, mask={
            k: (torch.rand(v.shape) > 0.5).int() for k, v in net.state_dict().items()
            if k.endswith("weight")})
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}", OMP_NUM_THREADS="1",
               MPLBACKEND="Agg")
    prelude = 'gauge() { python -m analyses.cli "$@"; }\n'
    for name, body in doc_blocks((ROOT / "docs" / "byo.md").read_text()):
        if name is not None:
            (tmp_path / name).write_text(body + "\n")
            continue
        proc = subprocess.run(["bash", "-e", "-c", prelude + body], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (body, proc.stdout[-2000:], proc.stderr[-2000:])
    assert (tmp_path / "path.svg").is_file() and (tmp_path / "runs/s0/run.json").is_file()
