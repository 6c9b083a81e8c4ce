"""gauge connect through a real subprocess: outputs and every bad input (exit 2, one line)."""

from __future__ import annotations

import json

import pytest

from tests.tiny_runs import files_under, make_checkpoint, tiny_data
from tests.conftest import assert_user_error, run_cli


@pytest.fixture(scope="module")
def ckpts(mnist1d, tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    data = tiny_data(mnist1d)
    return {"a": make_checkpoint(d / "a.safetensors", data, seed=0, widths=[16]),
            "b": make_checkpoint(d / "b.safetensors", data, seed=1, widths=[16]),
            "bn": make_checkpoint(d / "bn.safetensors", data, model="cnn1d", seed=0,
                                  train=False, channels=4, batchnorm=True)}


def test_connect_naive_and_aligned(ckpts, tmp_path):
    out, fig = tmp_path / "r.json", tmp_path / "figs" / "curve.png"
    proc = run_cli("connect", ckpts["a"], ckpts["b"], "--align", "weight", "--points", "5",
                   "--bn", "none", "--json", out, "--plot", fig, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert r["align"] == "weight" and len(r["naive"]["alphas"]) == 5
    for kind in ("naive", "aligned"):
        assert r[kind]["loss_barrier"] >= 0 and r[kind]["error_barrier"] >= 0
    assert fig.exists() and fig.with_suffix(".pdf").exists()
    assert "loss barrier" in proc.stdout


def test_connect_self_barrier_zero_json_stdout(ckpts):
    proc = run_cli("connect", ckpts["a"], ckpts["a"], "--points", "3", "--json", "-",
                   "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["naive"]["loss_barrier"] == pytest.approx(0, abs=1e-6) and r["aligned"] is None


@pytest.mark.parametrize("case", ["points", "models", "bn_no_train", "missing", "dir"])
def test_connect_bad_input(ckpts, tmp_path, case):
    out = tmp_path / "out"
    common = ["--json", out / "r.json", "--plot", out / "c.png", "--device", "cpu"]
    args, needle = {
        "points": ([ckpts["a"], ckpts["b"], "--points", "1"], "--points"),
        "models": ([ckpts["a"], ckpts["bn"]], "not the same architecture"),
        "bn_no_train": ([ckpts["bn"], ckpts["bn"], "--bn", "reset", "--stats-samples", "0"],
                        "training data"),
        "missing": ([ckpts["a"], tmp_path / "nope.safetensors"], "nope.safetensors"),
        "dir": ([ckpts["a"], tmp_path], "directory"),
    }[case]
    proc = run_cli("connect", *args, *common)
    assert_user_error(proc, needle)
    assert not out.exists() or not files_under(out)
