"""gauge instability through a real subprocess."""

from __future__ import annotations

import json

import pytest

from tests.tiny_runs import files_under, make_run, tiny_data
from tests.conftest import assert_user_error, run_cli

BASE = ["--model", "mlp", "--model-kwargs", '{"widths": [8]}', "--data", "mnist1d",
        "--iters", "40", "--batch-size", "100", "--device", "cpu", "--rewind-iters", "0"]


def test_instability_cli(tmp_path):
    out, fig = tmp_path / "i.json", tmp_path / "i.png"
    proc = run_cli("instability", *BASE, "--rewind-iters", "0", "20", "--points", "3",
                   "--json", out, "--plot", fig)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert [row["rewind_iter"] for row in r["rows"]] == [0, 20]
    assert r["subnetwork"] == "dense" and fig.exists()
    assert "error barrier" in proc.stdout


@pytest.fixture(scope="module")
def run16(mnist1d, tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("r") / "r", tiny_data(mnist1d), seed=0, levels=1)


@pytest.mark.parametrize("case", ["points", "rewind", "seeds", "ticket_model", "ticket_level"])
def test_instability_bad_input(run16, tmp_path, case):
    out = tmp_path / "out"
    args, needle = {
        "points": (["--points", "1"], "--points"),
        "rewind": (["--rewind-iters", "0", "40"], "rewind iteration 40"),
        "seeds": (["--data-seeds", "3", "3"], "two different"),
        "ticket_model": (["--ticket", run16, "--level", "1"], "mask"),
        "ticket_level": (["--ticket", run16, "--level", "4"], "level 4"),
    }[case]
    proc = run_cli("instability", *BASE, *args, "--json", out / "i.json", "--plot", out / "p.png")
    assert_user_error(proc, needle)
    assert not out.exists() or not files_under(out)
