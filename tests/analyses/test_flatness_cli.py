"""`gauge flatness` through a real subprocess: one full run and every bad input."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import assert_user_error
from tests.conftest import run_cli as _run_cli
from tests.tiny_runs import make_run
from tickets.models import build_model
from tickets.store import save_checkpoint, versions


def run_cli(*args):
    # tiny models: one intra-op thread avoids contention on the shared 2-core machine
    return _run_cli(*args, env={"OMP_NUM_THREADS": "1"})


def _meta():
    return {"model": "mlp", "model_kwargs": {"widths": [8]}, "num_classes": 10,
            "input_shape": [40], "dataset": "mnist1d", "seed": 0, "data_seed": 0,
            "iteration": 0, "versions": versions()}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("flat")
    model = build_model("mlp", num_classes=10, input_shape=(40,), seed=0, widths=[8])
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    path = d / "net.safetensors"
    save_checkpoint(path, params, _meta())
    return d, path, params


def test_full_run_writes_json_and_figures(ckpt, mnist1d):
    d, path, _ = ckpt
    out = d / "figs"
    proc = run_cli("flatness", path, "--subset", "200", "--top-k", "2", "--trace",
                   "--trace-samples", "6", "--density", "--density-runs", "1",
                   "--lanczos-steps", "8", "--sharpness", "worst", "--rho", "0.1",
                   "--landscape", "1d", "--steps", "3", "--gauge-fixed", "--plot", out,
                   "--json", "-", "--quiet")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    eig = res["eigenvalues"]
    assert len(eig["raw"]["values"]) == 2 and len(eig["gauge_fixed"]["values"]) == 2
    assert res["trace"]["raw"]["n_hvp"] == 6 and res["n_data"] == 200
    assert res["sharpness"]["value"]["raw"] >= 0
    assert len(res["landscape"]["raw"]["losses"]) == 3
    for stem in ("net-density", "net-landscape-1d"):
        assert (out / f"{stem}.png").is_file() and (out / f"{stem}.pdf").is_file()


def test_bad_inputs(ckpt, tmp_path):
    d, path, params = ckpt
    js = tmp_path / "out.json"
    assert_user_error(run_cli("flatness", path, "--sharpness", "worst", "--rho", "0",
                              "--json", js), "--rho", "> 0")
    assert_user_error(run_cli("flatness", path, "--sharpness", "average", "--json", js),
                      "--rho")
    assert_user_error(run_cli("flatness", tmp_path / "none.safetensors", "--json", js),
                      "no such file")
    # k larger than the parameter count (418 here)
    assert_user_error(run_cli("flatness", path, "--top-k", "500", "--subset", "50",
                              "--json", js), "k=500", "larger than the number of parameters")
    # a mask that prunes everything
    empty = tmp_path / "empty.safetensors"
    save_checkpoint(empty, {k: torch.zeros_like(v, dtype=torch.bool) for k, v in params.items()
                            if k.endswith("weight")}, {})
    assert_user_error(run_cli("flatness", path, "--mask", empty, "--subset", "50", "--json",
                              js), "prunes everything")
    wrong = tmp_path / "wrong.safetensors"
    save_checkpoint(wrong, {"fc1.weight": torch.ones(3, 3, dtype=torch.bool)}, {})
    assert_user_error(run_cli("flatness", path, "--mask", wrong, "--json", js), "fc1.weight",
                      "shape")
    # non-finite loss at the checkpoint: finite weights, overflowing logits
    huge = tmp_path / "huge.safetensors"
    save_checkpoint(huge, dict(params, **{"fc1.weight": params["fc1.weight"] * 1e36,
                                          "fc2.weight": params["fc2.weight"] * 1e36}), _meta())
    assert_user_error(run_cli("flatness", huge, "--subset", "50", "--json", js),
                      "not iterating")
    (tmp_path / "file").write_text("x")
    assert_user_error(run_cli("flatness", path, "--landscape", "1d", "--plot",
                              tmp_path / "file", "--json", js), "--plot")
    assert not js.exists()


@pytest.mark.slow
def test_compute_per_level_is_cached_and_plots(tmp_path, mnist1d):
    from analyses.flatness import compute, plot
    from tickets.train import default_config
    cfg = default_config("mlp", "mnist1d").replace(iters=30, epochs=None)
    make_run(tmp_path / "run", mnist1d, seed=0, cfg=cfg, levels=1, fraction=None, widths=[8])
    res = compute([tmp_path / "run"], subset=100, trace_samples=6, sharpness_steps=2)
    assert [r["level"] for r in res.rows] == [0, 1]
    assert res.rows[1]["density"] < res.rows[0]["density"] == 1.0
    for r in res.rows:
        assert r["top_eig_raw"] > 0 and r["top_eig_gauge_fixed"] > 0
    cached = list((tmp_path / "run" / "analyses").glob("flatness-*.json"))
    assert len(cached) == 1
    again = compute([tmp_path / "run"], subset=100, trace_samples=6, sharpness_steps=2)
    assert again.rows == res.rows
    paths = plot(res, tmp_path / "figs")
    assert {p.suffix for p in paths} == {".png", ".pdf"} and all(p.is_file() for p in paths)
    assert res.table()[0]["level"] == 0
