"""IMP options: sparsity schedules, what is prunable, pruning at initialization as the
strategy and as controls (Frankle et al. 2021 ablations), resume, CLI and bad input."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import assert_user_error, run_cli
from tests.tiny_runs import tiny_data
from tickets import prune as P
from tickets.errors import ConfigError, RunError
from tickets.imp import run_imp
from tickets.runs import load_level, open_run
from tickets.train import TrainConfig

KW = {"widths": [24, 16]}
CFG = TrainConfig(optimizer="adam", lr=3e-3, batch_size=50, epochs=1)  # 4 iters per level
SIZES = {"fc1.weight": 24 * 40, "fc2.weight": 16 * 24, "fc3.weight": 10 * 16}
N = sum(SIZES.values())


@pytest.fixture(scope="module")
def tiny(mnist1d):
    return tiny_data(mnist1d, n_train=200, n_test=100)


def _imp(tiny, out, **kw):
    args = dict(seed=0, out_dir=out, model_kwargs=KW, ignore=[])
    args.update(kw)
    return run_imp("mlp", tiny, CFG, **args)


def test_schedule_counts_global_and_layerwise(tiny, tmp_path):
    sched = (0.5, 0.8, 0.9)
    _imp(tiny, tmp_path / "g", levels=3, sparsities=sched, strategy="global")
    for lv, s in enumerate(sched, 1):
        # level L keeps exactly N - ceil(s_L * N) weights
        mask = load_level(tmp_path / "g", lv).mask
        assert P.sparsity(mask).remaining == N - -(-int(s * 100) * N // 100)
    _imp(tiny, tmp_path / "l", levels=2, sparsities=(0.3, 0.7), strategy="layerwise")
    mask = load_level(tmp_path / "l", 2).mask
    for n, size in SIZES.items():  # per tensor, no half-rate output layer with a schedule
        assert int(mask[n].sum()) == size - -(-7 * size // 10)
    assert open_run(tmp_path / "l").meta["layer_fractions"] == {}


def test_bad_schedules_and_resume_with_another_schedule(tiny, tmp_path):
    for bad, needle in (((0.5, 0.3), "increasing"), ((0.5, 0.5), "increasing"),
                        ((0.5, 1.0), "(0, 1)"), ((), "empty"),
                        ((0.5, 0.99999),  "leaves nothing")):
        with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            _imp(tiny, tmp_path / "bad", levels=1, sparsities=bad, strategy="global")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ConfigError, match="beyond the sparsity schedule"):
        _imp(tiny, tmp_path / "bad", levels=3, sparsities=(0.5, 0.6))
    with pytest.raises(ConfigError, match="not both"):
        _imp(tiny, tmp_path / "bad", levels=1, sparsities=(0.5,), fraction=0.3)
    out = tmp_path / "run"
    _imp(tiny, out, levels=1, sparsities=(0.5,))
    with pytest.raises(RunError, match="different sparsities"):
        _imp(tiny, out, levels=1, sparsities=(0.6,))
    with pytest.raises(RunError, match="different prune"):
        _imp(tiny, out, levels=1, sparsities=(0.5,), prune="all")
    # a run.json written before these fields existed means the defaults
    fresh = tmp_path / "old"
    _imp(tiny, fresh, levels=1, fraction=0.5)
    meta = json.loads((fresh / "run.json").read_text())
    for k in ("sparsities", "prune", "score_examples"):
        del meta[k]
    (fresh / "run.json").write_text(json.dumps(meta))
    assert _imp(tiny, fresh, levels=1, fraction=0.5).computed == ()


def test_prune_biases_and_all(tiny, tmp_path):
    res = _imp(tiny, tmp_path / "b", levels=1, fraction=0.5, strategy="global",
               prune="weights+biases")
    files = load_level(tmp_path / "b", 1)
    assert set(files.mask) == set(SIZES) | {"fc1.bias", "fc2.bias", "fc3.bias"}
    for n, m in files.mask.items():
        assert bool((files.final[n][~m] == 0).all())
    assert "fc1.bias" in res.levels[1]["layer_density"]
    ln = run_imp("mlp", tiny, CFG, levels=0, seed=0, out_dir=tmp_path / "a", prune="all",
                 model_kwargs={"widths": [8], "norm": "layernorm"})
    assert "ln1.weight" in open_run(ln.path).meta["prunable"]


def test_pruning_at_init_levels_and_controls(tiny, tmp_path):
    out = tmp_path / "snip"
    res = _imp(tiny, out, levels=2, sparsities=(0.5, 0.9), strategy="snip",
               control=["inverted", "random_prune", "synflow", "random_reinit"])
    dense = _imp(tiny, tmp_path / "imp", levels=0)
    assert res.levels[0]["test_acc"] == dense.levels[0]["test_acc"]  # same dense level 0
    init = load_level(out, 0).init
    for lv, keep in ((1, N - N // 2), (2, N - -(-9 * N // 10))):
        files = load_level(out, lv)
        assert P.sparsity(files.mask).remaining == keep
        assert all(torch.equal(files.init[n], init[n] * files.mask[n]) for n in files.mask)
        for ctrl in ("inverted", "random_prune", "synflow", "random_reinit"):
            cm = load_level(out, lv, control=ctrl).mask
            assert P.sparsity(cm).remaining == keep, ctrl
        inv = load_level(out, lv, control="inverted").mask
        assert not any(bool((inv[n] & files.mask[n]).all()) for n in inv)
    row = res.levels[2]
    assert set(row["layer_density"]) == set(SIZES)
    metrics = json.loads((out / "level_02" / "metrics.json").read_text())
    assert metrics["per_layer"]["fc1.weight"]["density"] == row["layer_density"]["fc1.weight"]


def test_cli_pruning_at_init_and_bad_input(tmp_path):
    common = ["--model", "mlp", "--data", "mnist1d", "--model-kwargs", json.dumps(KW),
              "--iters", "4", "--batch-size", "100", "--quiet"]
    proc = run_cli("imp", *common, "--strategy", "synflow", "--sparsities", "0.5,0.8",
                   "--control", "inverted", "--out", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    assert "density % per tensor" in proc.stdout and "fc1.weight" in proc.stdout
    assert [r["level"] for r in json.loads((tmp_path / "run" / "summary.json").read_text())[
        "levels"]] == [0, 1, 2]
    assert_user_error(run_cli("imp", *common, "--strategy", "sideways", "--levels", "1",
                              "--out", tmp_path / "x"), "snip", "grasp", "synflow")
    assert_user_error(run_cli("imp", *common, "--sparsities", "0.5,0.4", "--out",
                              tmp_path / "x"), "increasing")
    assert_user_error(run_cli("imp", *common, "--sparsities", "0.5,1", "--out",
                              tmp_path / "x"), "leaves nothing")
    assert_user_error(run_cli("imp", *common, "--sparsities", "half", "--out",
                              tmp_path / "x"), "--sparsities")
    assert_user_error(run_cli("imp", *common, "--out", tmp_path / "x"), "--levels")
    assert not (tmp_path / "x").exists()


def test_prunable_kinds_and_schedule_counts():
    from tickets.models import build_model
    model = build_model("mlp", num_classes=10, input_shape=(40,), seed=0, widths=[8],
                        norm="layernorm")
    assert P.prunable(model) == ["fc1.weight", "fc2.weight"]
    assert P.prunable(model, kind="weights+biases") == ["fc1.weight", "fc1.bias",
                                                        "fc2.weight", "fc2.bias"]
    assert P.prunable(model, kind="all", ignore=["fc2"]) == ["fc1.weight", "fc1.bias",
                                                             "ln1.weight", "ln1.bias"]
    with pytest.raises(ConfigError, match="weights, weights\\+biases, all"):
        P.prunable(model, kind="everything")
    # level L keeps N - ceil(s_L N): 0.3 * 10 is 3 exactly, 0.25 * 10 rounds up to 3
    assert P.remaining_after(1, 10, sparsities=(0.3,)) == 7
    assert P.remaining_after(1, 10, sparsities=(0.25,)) == 7
    assert P.remaining_after(2, 1000, fraction=0.2) == 640
    assert P.remaining_after(0, 10, sparsities=(0.5,)) == 10
