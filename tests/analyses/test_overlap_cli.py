"""gauge overlap (CLI and compute/plot for the report) on tiny IMP runs of two seeds."""

from __future__ import annotations

import json

import pytest

from tests.tiny_runs import files_under, make_seed_runs, tiny_data
from tests.conftest import assert_user_error, run_cli


@pytest.fixture(scope="module")
def runs(mnist1d, tmp_path_factory):
    return make_seed_runs(tmp_path_factory.mktemp("runs"), tiny_data(mnist1d))


def test_overlap_cli(runs, tmp_path):
    out, fig = tmp_path / "ov.json", tmp_path / "heat.png"
    proc = run_cli("overlap", runs["r0"], runs["r1"], "--level", "2", "--align", "weight",
                   "--json", out, "--plot", fig, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    row = r["table"][0]
    assert row["level"] == 2 and 0 < row["density"] < 1
    assert 0 <= row["jaccard_raw"] <= 1 and 0 <= row["jaccard_aligned"] <= 1
    m = r["levels"]["2"]["matrix"]
    assert m["raw"][0][0] == 1.0 and m["aligned"][1][1] == 1.0
    assert "fc1.weight" in r["levels"]["2"]["pairs"]["0-1"]["aligned"]["per_layer"]
    assert fig.exists() and fig.with_suffix(".pdf").exists()


def test_overlap_compute_cached_and_plot(runs, tmp_path):
    from analyses.overlap import compute, plot
    res = compute([runs["r0"], runs["r1"]], align="weight")
    assert sorted(res.levels) == ["1", "2"]
    cache = list((runs["r0"] / "analyses").glob("overlap-*.json"))
    assert cache
    again = compute([runs["r0"], runs["r1"]], align="weight")
    assert again.to_dict() == res.to_dict()
    paths = plot(res, tmp_path)
    assert {p.name for p in paths} >= {"overlap_heatmap.png", "overlap_vs_level.png"}


@pytest.mark.parametrize("case", ["level", "models", "one_run", "not_a_run"])
def test_overlap_bad_input(runs, tmp_path, case):
    out = tmp_path / "out"
    args, needle = {
        "level": ([runs["r0"], runs["r1"], "--level", "7"], "level 7"),
        "models": ([runs["r0"], runs["other"], "--level", "1"], "not the same architecture"),
        "one_run": ([runs["r0"], "--level", "1"], "two"),
        "not_a_run": ([runs["r0"], tmp_path, "--level", "1"], "run.json"),
    }[case]
    proc = run_cli("overlap", *args, "--json", out / "o.json", "--plot", out / "h.png")
    assert_user_error(proc, needle)
    assert not out.exists() or not files_under(out)
