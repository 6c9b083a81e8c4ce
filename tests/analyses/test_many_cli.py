"""gauge align-many / merge / quotient / curve / overlap --common-basis through the real CLI."""

from __future__ import annotations

import json

import pytest

from tests.conftest import assert_user_error, run_cli
from tests.tiny_runs import files_under, make_checkpoint, make_seed_runs, tiny_data


@pytest.fixture(scope="module")
def ckpts(mnist1d, tmp_path_factory):
    base = tmp_path_factory.mktemp("ckpts")
    data = tiny_data(mnist1d)
    out = {f"s{s}": make_checkpoint(base / f"s{s}.safetensors", data, seed=s, widths=[16])
           for s in range(3)}
    out["wide"] = make_checkpoint(base / "wide.safetensors", data, seed=4, widths=[24])
    return out


@pytest.fixture(scope="module")
def runs(mnist1d, tmp_path_factory):
    return make_seed_runs(tmp_path_factory.mktemp("runs"), tiny_data(mnist1d))


def test_align_many_cli(ckpts, tmp_path):
    out, js, fig = tmp_path / "al", tmp_path / "a.json", tmp_path / "cycle.png"
    proc = run_cli("align-many", ckpts["s0"], ckpts["s1"], ckpts["s2"], "--out", out,
                   "--json", js, "--plot", fig, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(js.read_text())
    assert r["cycle"]["synchronised_cycle_error"] == 0.0
    assert 0 <= r["cycle"]["cycle_error"] <= 1 and r["alignment"]["n"] == 3
    assert {p.name for p in out.iterdir()} == {"aligned_00.safetensors", "aligned_01.safetensors",
                                               "aligned_02.safetensors", "perms.json",
                                               "cycle.json"}
    assert fig.exists() and "pairwise cycle error" in proc.stdout


def test_quotient_cli(ckpts, tmp_path):
    fig = tmp_path / "q.png"
    proc = run_cli("quotient", ckpts["s0"], ckpts["s1"], "--json", "-", "--plot", fig)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["permutation"] <= r["raw"] and r["quotient"] <= r["canonical_permutation"] + 1e-9
    assert fig.exists()
    proc = run_cli("quotient", ckpts["s0"], ckpts["s0"], "--json", "-")
    assert json.loads(proc.stdout)["quotient"] == pytest.approx(0.0, abs=1e-9)


def test_merge_cli(ckpts, runs, tmp_path):
    out, fig = tmp_path / "m.safetensors", tmp_path / "m.png"
    proc = run_cli("merge", ckpts["s0"], ckpts["s1"], ckpts["s2"], "--out", out, "--bn",
                   "repair", "--json", "-", "--plot", fig)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["aligned"]["n"] == 3 and 0 <= r["aligned"]["merged_error"] <= 1
    assert out.exists() and fig.exists()
    masks = [runs[k] / "level_02" / "mask.safetensors" for k in ("r0", "r1")]
    finals = [runs[k] / "level_02" / "final.safetensors" for k in ("r0", "r1")]
    proc = run_cli("merge", *finals, "--masks", *masks, "--consensus", "1", "--out",
                   tmp_path / "t.safetensors", "--json", "-")
    assert proc.returncode == 0, proc.stderr
    c = json.loads(proc.stdout)["consensus"]
    assert c["k"] == 1 and 0 < c["density"] <= 1


def test_curve_cli(ckpts, tmp_path):
    fig = tmp_path / "c.png"
    proc = run_cli("curve", ckpts["s0"], ckpts["s1"], "--align", "weight", "--steps", "30",
                   "--points", "5", "--train-samples", "200", "--json", "-", "--plot", fig)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    for key in ("linear_naive", "curve_naive", "linear_aligned", "curve_aligned"):
        assert r[key]["loss_barrier"] >= 0 and len(r[key]["alphas"]) == 5
    assert r["curve_naive"]["kind"] == "bezier" and fig.exists()


def test_overlap_common_basis_cli(runs, tmp_path):
    fig = tmp_path / "h.png"
    proc = run_cli("overlap", runs["r0"], runs["r1"], "--level", "2", "--common-basis",
                   "--json", "-", "--plot", fig)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    lv = r["levels"]["2"]
    assert sum(lv["aligned"]["overall"]["observed"]) == lv["aligned"]["overall"]["size"]
    assert lv["raw"]["overall"]["expected"] == lv["aligned"]["overall"]["expected"]
    assert fig.exists()


@pytest.mark.parametrize("case", ["one", "mixed", "bends", "no_train", "masks", "runs"])
def test_bad_input(ckpts, runs, tmp_path, case):
    out = tmp_path / "out"
    args, needle = {
        "one": (["align-many", ckpts["s0"], "--out", out / "d"], "at least two"),
        "mixed": (["align-many", ckpts["s0"], ckpts["s1"], ckpts["wide"], "--out", out / "d"],
                  "wide.safetensors"),
        "bends": (["curve", ckpts["s0"], ckpts["s1"], "--bends", "0", "--json", out / "c.json"],
                  "--bends"),
        "no_train": (["curve", ckpts["s0"], ckpts["s1"], "--train-samples", "0", "--json",
                      out / "c.json"], "train"),
        "masks": (["merge", ckpts["s0"], ckpts["s1"], "--masks",
                   runs["other"] / "level_01" / "mask.safetensors",
                   runs["other"] / "level_01" / "mask.safetensors", "--out",
                   out / "m.safetensors"], "different run family"),
        "runs": (["overlap", runs["r0"], runs["other"], "--level", "1", "--common-basis",
                  "--json", out / "o.json"], "not the same architecture"),
    }[case]
    assert_user_error(run_cli(*args), needle)
    assert not out.exists() or not files_under(out)
