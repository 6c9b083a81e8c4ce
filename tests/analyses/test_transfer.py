"""gauge transfer (sparse re-basin) and the report interface of connect/transfer/instability."""

from __future__ import annotations

import json

import pytest

from tests.tiny_runs import files_under, make_seed_runs, tiny_data
from tests.conftest import assert_user_error, run_cli


@pytest.fixture(scope="module")
def runs(mnist1d, tmp_path_factory):
    return make_seed_runs(tmp_path_factory.mktemp("runs"), tiny_data(mnist1d))


def test_transfer_library(runs):
    """Four variants from the same rewind weights; every mask keeps the ticket's sparsity."""
    from analyses.transfer import transfer
    res = transfer(runs["r0"], runs["r1"], 1)
    names = [r["mask"] for r in res.rows]
    assert names == ["permuted", "naive", "random", "own"]
    assert all(0 <= r["test_acc"] <= 1 for r in res.rows)
    assert 0 < res.density < 1
    ov = res.overlap_with_own
    assert set(ov) == {"permuted", "naive", "random"}
    # the permuted mask keeps A's per-layer survivor counts
    assert ov["permuted"]["kept_a"] == ov["naive"]["kept_a"] == ov["random"]["kept_a"]


def test_transfer_cli(runs, tmp_path):
    out, fig = tmp_path / "t.json", tmp_path / "t.png"
    proc = run_cli("transfer", "--ticket", runs["r0"], "--level", "2", "--to", runs["r1"],
                   "--json", out, "--plot", fig, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert [row["mask"] for row in r["rows"]] == ["permuted", "naive", "random", "own"]
    assert fig.exists()
    assert "permuted" in proc.stdout


@pytest.mark.parametrize("case", ["level", "models", "same"])
def test_transfer_bad_input(runs, tmp_path, case):
    out = tmp_path / "out"
    args, needle = {
        "level": (["--ticket", runs["r0"], "--level", "5", "--to", runs["r1"]], "level 5"),
        "models": (["--ticket", runs["r0"], "--level", "1", "--to", runs["other"]],
                   "not the same architecture"),
        "same": (["--ticket", runs["r0"], "--level", "1", "--to", runs["r0"]], "same run"),
    }[case]
    proc = run_cli("transfer", *args, "--json", out / "t.json")
    assert_user_error(proc, needle)
    assert not out.exists() or not files_under(out)


def test_connect_compute_and_plot(runs, tmp_path):
    from analyses.connect import compute, plot
    res = compute([runs["r0"], runs["r1"]], points=3)
    assert {(r["pair"], r["level"]) for r in res.rows} == {("0-1", 0), ("0-1", 1), ("0-1", 2)}
    assert all(r["aligned_loss_barrier"] >= 0 for r in res.rows)
    assert compute([runs["r0"], runs["r1"]], points=3).rows == res.rows  # from the cache
    assert len(res.table()) == 3
    names = {p.name for p in plot(res, tmp_path)}
    assert {"connect_barriers.png", "connect_path.png"} <= names


def test_transfer_and_instability_compute(runs, tmp_path):
    from analyses import instability as inst
    from analyses import transfer as tr
    t = tr.compute([runs["r0"], runs["r1"]])
    assert t.level == 2 and tr.compute([runs["r0"], runs["r1"]]).to_dict() == t.to_dict()
    assert tr.plot(t, tmp_path)
    i = inst.compute([runs["r0"]], rewind_iters=(0, 60, 10_000), points=3)
    assert i.level == 2 and set(i.results) == {"dense", "level_2"}
    assert [row["rewind_iter"] for row in i.table()] == [0, 60]   # past the end: dropped
    assert {p.name for p in inst.plot(i, tmp_path)} == {"instability.png", "instability.pdf"}
