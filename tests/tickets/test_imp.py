"""IMP: run directory format, readers, rewinding, controls, resume, refusals, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from tests.conftest import ROOT, assert_user_error, assert_user_errors, run_cli
from tickets import prune as P
from tickets.data import DataSplits
from tickets.errors import ConfigError, ModelError, RunError
from tickets.imp import run_imp
from tickets.runs import (LevelFiles, RunInfo, build_run_model, load_level, load_run_data,
                          open_run)
from tickets.store import check_params, load_checkpoint, model_from_meta, save_checkpoint
from tickets.train import TrainConfig

KW = {"widths": [24, 16]}
CFG = TrainConfig(optimizer="adam", lr=3e-3, batch_size=50, epochs=2)  # 8 iters per level


@pytest.fixture(scope="module")
def tiny(mnist1d):
    x, y = mnist1d.train.tensors
    xt, yt = mnist1d.test.tensors
    return DataSplits("mnist1d", TensorDataset(x[:200], y[:200]),
                      TensorDataset(xt[:100], yt[:100]), mnist1d.num_classes,
                      mnist1d.input_shape)


def _imp(tiny, out, **kw):
    args = dict(levels=3, seed=0, out_dir=out, model_kwargs=KW)
    args.update(kw)
    return run_imp("mlp", tiny, CFG, **args)


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("imp") / "run"
    _imp(tiny, out, control=["random_reinit", "random_prune"])
    return out


def test_run_directory_format(run_dir, tiny):
    run = open_run(run_dir)
    assert isinstance(run, RunInfo)
    assert run.levels == (0, 1, 2, 3)
    assert run.controls == {"random_reinit": (1, 2, 3), "random_prune": (1, 2, 3)}
    meta = run.meta
    for key in ("model", "model_kwargs", "num_classes", "input_shape", "dataset", "seed",
                "data_seed", "train_config", "versions", "strategy", "fraction",
                "layer_fractions", "rewind_iter", "prunable"):
        assert key in meta, key
    # paper default for mlp: layerwise 20%, output layer at half rate
    assert meta["strategy"] == "layerwise" and meta["fraction"] == 0.2
    assert meta["layer_fractions"] == {"fc3.weight": 0.1}
    for level in run.levels:
        d = run_dir / f"level_{level:02d}"
        assert {p.name for p in d.iterdir()} == {"init.safetensors", "final.safetensors",
                                                  "mask.safetensors", "metrics.json"}
        # every checkpoint carries the standard meta: the model can be rebuilt from it
        params, cmeta = load_checkpoint(d / "final.safetensors")
        check_params(model_from_meta(cmeta, str(d)), params, str(d))
        assert cmeta["iteration"] == CFG.total_iters(200) and cmeta["imp"]["level"] == level
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [r["level"] for r in summary["levels"]] == [0, 1, 2, 3]
    assert [r["level"] for r in summary["controls"]["random_reinit"]] == [1, 2, 3]
    model = build_run_model(run)
    check_params(model, load_level(run, 2).final)
    assert load_run_data(run_dir).name == "mnist1d"
    assert not list(run_dir.rglob("*.tmp"))


def test_levels_nested_rewound_and_sparse(run_dir):
    run = open_run(run_dir)
    levels = [load_level(run, lv) for lv in run.levels]
    assert isinstance(levels[0], LevelFiles)
    assert all(bool(m.all()) for m in levels[0].mask.values())
    theta0 = levels[0].init
    for prev, cur in zip(levels, levels[1:]):
        for n in cur.mask:
            assert not bool((cur.mask[n] & ~prev.mask[n]).any())  # nested
            r = int(prev.mask[n].sum())
            f = 0.1 if n == "fc3.weight" else 0.2
            assert int(cur.mask[n].sum()) == r - P.prune_count(f, r)
        rewound = P.apply_mask(theta0, cur.mask)  # reset to init (rewind_iter = 0)
        assert all(torch.equal(cur.init[k], rewound[k]) for k in rewound)
        for n, m in cur.mask.items():  # pruned weights stay exactly zero through training
            assert bool((cur.final[n][~m] == 0).all())
        assert cur.metrics["density"] == pytest.approx(P.sparsity(cur.mask).density)


def test_controls(run_dir):
    run = open_run(run_dir)
    theta0 = load_level(run, 0).init
    for level in (1, 3):
        ticket = load_level(run, level)
        reinit = load_level(run, level, control="random_reinit")
        rprune = load_level(run, level, control="random_prune")
        assert all(torch.equal(reinit.mask[n], ticket.mask[n]) for n in ticket.mask)
        assert not torch.equal(reinit.init["fc1.weight"], ticket.init["fc1.weight"])
        for n in ticket.mask:
            assert int(rprune.mask[n].sum()) == int(ticket.mask[n].sum())
        assert not torch.equal(rprune.mask["fc1.weight"], ticket.mask["fc1.weight"])
        rewound = P.apply_mask(theta0, rprune.mask)
        assert all(torch.equal(rprune.init[k], rewound[k]) for k in rewound)
    with pytest.raises(RunError, match="not complete"):
        load_level(run, 7)
    with pytest.raises(RunError, match="no control"):
        load_level(run, 1, control="nonsense")


def test_late_rewinding(tiny, tmp_path):
    out = tmp_path / "late"
    _imp(tiny, out, levels=1, rewind_iter=3)
    run = open_run(out)
    l0, l1 = load_level(run, 0), load_level(run, 1)
    _, meta0 = load_checkpoint(out / "level_00" / "init.safetensors")
    assert meta0["iteration"] == 3
    model = build_run_model(run)
    assert not torch.equal(l0.init["fc1.weight"], model.state_dict()["fc1.weight"])
    rewound = P.apply_mask(l0.init, l1.mask)
    assert all(torch.equal(l1.init[k], rewound[k]) for k in rewound)
    assert l1.metrics["start_iter"] == 3 and l1.metrics["iters"] == CFG.total_iters(200)


def test_resume_is_bit_identical_and_refusals(run_dir, tiny, tmp_path):
    import shutil
    out = tmp_path / "resumed"
    shutil.copytree(run_dir, out)
    reference = _snapshot(run_dir)
    # simulate a kill: level 3 and a control of level 2 unfinished (metrics missing, stale files)
    (out / "level_03" / "metrics.json").unlink()
    (out / "controls" / "random_prune" / "level_02" / "metrics.json").unlink()
    (out / "level_03" / "final.safetensors").write_bytes(b"garbage")
    res = _imp(tiny, out, control=["random_reinit", "random_prune"])
    assert res.computed == ("random_prune:2", "ticket:3")
    assert "ticket:2" in res.resumed
    again = _snapshot(out)
    for name, data in reference.items():
        if name.endswith(".safetensors"):
            assert again[name] == data, name
    # a different configuration is refused, naming the field, and nothing changes
    before = _snapshot(out)
    with pytest.raises(RunError, match="train_config.lr"):
        run_imp("mlp", tiny, CFG.replace(lr=1e-2), levels=3, seed=0, out_dir=out,
                model_kwargs=KW)
    with pytest.raises(RunError, match="rewind_iter"):
        _imp(tiny, out, rewind_iter=2)
    with pytest.raises(RunError, match="already holds"):
        _imp(tiny, out, resume=False)
    assert _snapshot(out) == before
    # more levels extend the run, controls recorded in run.json included
    res = _imp(tiny, out, levels=4)
    assert res.computed == ("ticket:4", "random_reinit:4", "random_prune:4")
    assert open_run(out).levels == (0, 1, 2, 3, 4)


def test_imp_config_is_the_run_identity(run_dir, tiny, tmp_path):
    import shutil
    from dataclasses import replace
    from tickets.imp import ImpConfig
    meta = open_run(run_dir).meta
    config = ImpConfig.from_dict(meta)
    assert config.difference(meta) is None
    assert {k: meta[k] for k in config.to_dict()} == config.to_dict()
    assert replace(config, fraction=0.3).difference(meta) == "fraction"
    assert replace(config, train_config=CFG.replace(lr=1.0)).difference(meta) == \
        "train_config.lr"
    assert replace(config, root="elsewhere").difference(meta) is None  # informative only
    out = tmp_path / "again"
    shutil.copytree(run_dir, out)
    res = run_imp(config, tiny, levels=3, out_dir=out, control=["random_reinit"])
    assert res.computed == () and "ticket:3" in res.resumed
    with pytest.raises(ConfigError, match="seed"):
        run_imp(config, tiny, levels=3, out_dir=out, seed=1)


def test_bad_inputs_write_nothing(tiny, tmp_path):
    out = tmp_path / "x"
    for kw, exc, needle in [(dict(levels=-1), ConfigError, "levels"),
                            (dict(fraction=1.0), ConfigError, "fraction"),
                            (dict(fraction=0.0), ConfigError, "fraction"),
                            (dict(rewind_iter=8), ConfigError, "rewind"),
                            (dict(control="nope"), ConfigError, "control"),
                            (dict(mask={"fc1.weight": torch.ones(3, 3, dtype=torch.bool)}),
                             ModelError, "fc1.weight")]:
        with pytest.raises(exc, match=needle):
            _imp(tiny, out, **kw)
        assert not out.exists()
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(RunError, match="is a file"):
        _imp(tiny, afile)
    with pytest.raises(RunError, match="is a file"):
        _imp(tiny, afile / "sub")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "other.txt").write_text("x")
    with pytest.raises(RunError, match="not empty"):
        _imp(tiny, busy)
    with pytest.raises(RunError, match="no run.json"):
        open_run(busy)


def test_starting_mask(tiny, tmp_path, run_dir):
    ticket = load_level(run_dir, 2)
    res = _imp(tiny, tmp_path / "m", levels=1, mask=ticket.mask)
    l0 = load_level(tmp_path / "m", 0)
    assert all(torch.equal(l0.mask[n], ticket.mask[n]) for n in ticket.mask)
    assert res.levels[0]["density"] == pytest.approx(P.sparsity(ticket.mask).density)


# ----------------------------------------------------------------------------- CLI

CLI = ["imp", "--model", "mlp", "--model-kwargs", json.dumps(KW), "--data", "mnist1d",
       "--epochs", "1", "--quiet"]


def test_cli_bad_inputs(tmp_path, run_dir):
    out = tmp_path / "out"
    bad_mask = tmp_path / "bad_mask.safetensors"
    save_checkpoint(bad_mask, {"fc1.weight": torch.ones(5, 40, dtype=torch.bool)})
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [(["--levels", "-1"], "levels"), (["--levels", "1", "--fraction", "1.2"], "fraction"),
             (["--levels", "1", "--rewind-iter", "999"], "rewind"),
             (["--levels", "1", "--mask", bad_mask], "fc1.weight")]
    assert_user_errors([([*CLI, *extra, "--out", out], [needle]) for extra, needle in cases]
                       + [([*CLI, "--levels", "1", "--out", afile], ["is a file"])])
    assert not out.exists()
    before = _snapshot(run_dir)
    proc = run_cli("imp", "--model", "mlp", "--model-kwargs", json.dumps(KW), "--data",
                   "mnist1d", "--epochs", "3", "--levels", "3", "--out", run_dir, "--quiet")
    assert_user_error(proc, "train_config")
    assert _snapshot(run_dir) == before


@pytest.mark.slow
def test_cli_kill_mid_level_and_resume_bit_identical(tmp_path):
    args = ["imp", "--model", "mlp", "--model-kwargs", '{"widths": [64, 32]}', "--data",
            "mnist1d", "--epochs", "3", "--levels", "3", "--control", "random_reinit",
            "--quiet"]
    env = {"OMP_NUM_THREADS": "1"}
    ref, run = tmp_path / "ref", tmp_path / "run"
    proc = run_cli(*args, "--out", ref, "--json", "-", env=env)
    assert proc.returncode == 0, proc.stderr
    assert [r["level"] for r in json.loads(proc.stdout)["levels"]] == [0, 1, 2, 3]

    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    child = subprocess.Popen([sys.executable, "-m", "analyses.cli", *args, "--out", str(run)],
                             env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = run / "level_01" / "metrics.json"
    deadline = time.monotonic() + 300
    while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    # half a level later: inside level 1's random_reinit control or level 2
    level_time = json.loads(marker.read_text())["wall_time"]
    time.sleep(level_time / 2)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not (run / "level_03" / "metrics.json").exists()  # killed before the end

    proc = run_cli(*args, "--out", run, "--json", "-", env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert "ticket:0" in result["resumed"] and "ticket:3" in result["computed"]
    a, b = _snapshot(ref), _snapshot(run)
    weights = [k for k in a if k.endswith(".safetensors")]
    assert len(weights) == 4 * 3 + 3 * 3
    assert set(weights) == {k for k in b if k.endswith(".safetensors")}
    for k in weights:
        pa, _ = load_checkpoint(ref / k, check=False)
        pb, _ = load_checkpoint(run / k, check=False)
        assert pa.keys() == pb.keys()
        assert all(torch.equal(pa[t], pb[t]) for t in pa), k


def test_default_pruning_follows_papers():
    from tickets.imp import default_pruning
    from tickets.models import build_model
    mlp = default_pruning("mlp", ["fc1.weight", "fc2.weight", "fc3.weight"])
    assert mlp == {"strategy": "layerwise", "fraction": 0.2,
                   "layer_fractions": {"fc3.weight": 0.1}, "ignore": []}
    assert default_pruning("mlp", ["fc1.weight", "fc3.weight"], 0.4)["layer_fractions"] == \
        {"fc3.weight": 0.2}
    assert default_pruning("mlp", ["fc1.weight", "fc3.weight"], strategy="global")[
        "layer_fractions"] == {}
    conv6 = build_model("conv6", num_classes=10, input_shape=(3, 8, 8))
    d = default_pruning("conv6", P.prunable(conv6))
    assert d["layer_fractions"]["conv1.weight"] == pytest.approx(0.15)
    assert d["layer_fractions"][P.prunable(conv6)[-1]] == pytest.approx(0.1)
    res = build_model("resnet20", num_classes=10, input_shape=(3, 8, 8))
    d = default_pruning("resnet20", P.prunable(res))
    assert d["strategy"] == "global" and d["ignore"] == ["fc.weight"]
