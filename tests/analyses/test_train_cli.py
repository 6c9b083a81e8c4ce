"""`gauge train` through a real subprocess, including every bad input."""

from __future__ import annotations

import json
import pickle

import torch

from tests.conftest import assert_user_error, run_cli
from tickets.store import load_checkpoint


def test_help_explains_every_command():
    proc = run_cli("--help")
    assert proc.returncode == 0 and "train" in proc.stdout
    assert run_cli("train", "--help").returncode == 0


def test_train_writes_checkpoint_and_json(tmp_path):
    out = tmp_path / "runs" / "dense.safetensors"
    proc = run_cli("train", "--model", "mlp", "--model-kwargs", '{"widths": [16]}', "--data",
                   "mnist1d", "--iters", "50", "--out", out, "--json", "-", "--quiet")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert 0 <= summary["test_acc"] <= 1 and summary["iters"] == 50
    params, meta = load_checkpoint(out)
    assert meta["model"] == "mlp" and meta["model_kwargs"] == {"widths": [16]}
    assert meta["train_config"]["iters"] == 50 and params["fc1.weight"].shape == (16, 40)
    again = tmp_path / "again.safetensors"
    run_cli("train", "--model", "mlp", "--model-kwargs", '{"widths": [16]}', "--data", "mnist1d",
            "--iters", "50", "--out", again, "--quiet")
    p2, _ = load_checkpoint(again)
    assert all(torch.equal(params[k], p2[k]) for k in params)


def test_bad_names(tmp_path):
    out = tmp_path / "x.safetensors"
    assert_user_error(run_cli("train", "--model", "resnet99", "--data", "mnist1d", "--out", out),
                      "unknown model", "cnn1d")
    assert_user_error(run_cli("train", "--model", "mlp", "--data", "imagenet", "--out", out),
                      "unknown dataset", "mnist1d")
    assert_user_error(run_cli("train", "--model", "mlp", "--data", "mnist", "--out", out),
                      "--root")
    assert_user_error(run_cli("train", "--model", "mlp", "--data", "mnist", "--root",
                              tmp_path / "none", "--out", out), "not a directory")
    assert_user_error(run_cli("train", "--model", "mlp", "--data", "mnist1d", "--lr", "-1",
                              "--out", out), "lr")
    assert_user_error(run_cli("train", "--model", "mlp", "--data", "mnist1d", "--model-kwargs",
                              "{bad", "--out", out), "--model-kwargs")
    assert_user_error(run_cli("train", "--mdl", "mlp"), "error")
    assert not out.exists()


def test_out_is_directory_or_under_file(tmp_path):
    (tmp_path / "f").write_text("x")
    assert_user_error(run_cli("train", "--model", "mlp", "--data", "mnist1d", "--out", tmp_path),
                      "directory")
    assert_user_error(run_cli("train", "--model", "mlp", "--data", "mnist1d", "--out",
                              tmp_path / "f" / "x.safetensors"), "is a file")


def test_diverging_run_writes_nothing(tmp_path):
    out = tmp_path / "x.safetensors"
    proc = run_cli("train", "--model", "mlp", "--data", "mnist1d", "--optimizer", "sgd", "--lr",
                   "1e30", "--iters", "20", "--out", out, "--quiet")
    assert_user_error(proc, "diverged")
    assert not out.exists() and not list(tmp_path.iterdir())


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED",))


def test_bad_checkpoints_through_cli_loader(tmp_path):
    """The loader the analyses use: one line, naming the file, for each kind of bad file."""
    from analyses.common import load_model_and_params
    from tickets.errors import CheckpointError
    import pytest
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump(_Evil(), f)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 50)
    for name in ("evil.pt", "junk.safetensors"):
        with pytest.raises(CheckpointError, match=name):
            load_model_and_params(str(tmp_path / name))
    assert not (tmp_path / "PWNED").exists()
