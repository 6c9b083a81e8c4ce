"""`gauge align` through a real subprocess, including every bad input."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import assert_user_error, run_cli
from tickets.models import build_model
from tickets.store import load_checkpoint, save_checkpoint


def _ckpt(path, seed, widths=(16, 12), meta=True):
    model = build_model("mlp", num_classes=10, input_shape=(40,), seed=seed, widths=widths)
    m = {"model": "mlp", "model_kwargs": {"widths": list(widths)}, "num_classes": 10,
         "input_shape": [40], "dataset": "mnist1d", "seed": seed} if meta else \
        {"num_classes": 10, "input_shape": [40]}
    save_checkpoint(path, model.state_dict(), m)
    return model


@pytest.fixture
def pair(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    model = _ckpt(a, 0)
    _ckpt(b, 1)
    return a, b, model


def test_align_weight_writes_same_function_closer_to_a(pair, tmp_path):
    a, b, model = pair
    out = tmp_path / "sub" / "b_aligned.safetensors"
    proc = run_cli("align", a, b, "--out", out, "--json", "-")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["groups"] == {"fc1": 16, "fc2": 12}
    assert s["l2_after"] < s["l2_before"] and s["objective_after"] > s["objective_before"]
    assert s["function_distance"] < 1e-5
    params, meta = load_checkpoint(out)
    pb, _ = load_checkpoint(b)
    assert meta["model"] == "mlp" and meta["aligned_to"] == str(a) and meta["seed"] == 1
    x = torch.randn(32, 40)
    with torch.no_grad():
        model.load_state_dict(pb)
        yb = model(x)
        model.load_state_dict(params)
        ya = model(x)
    torch.testing.assert_close(ya, yb, atol=1e-5, rtol=0)
    text = run_cli("align", a, b, "--out", tmp_path / "again.safetensors", "--show-spec")
    assert text.returncode == 0 and "L2 distance to A" in text.stdout
    assert "fc1.weight[0]" in text.stdout and "unmoved" in text.stdout


def test_align_activation_and_model_flag(pair, tmp_path):
    a, b, _ = pair
    out = tmp_path / "act.safetensors"
    proc = run_cli("align", a, b, "--method", "activation", "--data", "mnist1d",
                   "--num-examples", "200", "--out", out, "--json", "-")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["method"] == "activation" and s["function_distance"] < 1e-5
    a2, b2 = tmp_path / "a2.safetensors", tmp_path / "b2.safetensors"
    _ckpt(a2, 0, meta=False)
    _ckpt(b2, 1, meta=False)
    assert_user_error(run_cli("align", a2, b2, "--out", out), "--model")


def test_bad_inputs_exit_2_and_write_nothing(pair, tmp_path):
    a, b, _ = pair
    out = tmp_path / "never.safetensors"
    other = tmp_path / "other.safetensors"
    _ckpt(other, 2, widths=(16, 8))
    assert_user_error(run_cli("align", a, other, "--out", out), "'fc2.", "different architectures")
    assert_user_error(run_cli("align", a, b, "--method", "activation", "--out", out),
                      "--data")
    assert_user_error(run_cli("align", a, tmp_path / "missing.safetensors", "--out", out),
                      "no such file")
    assert_user_error(run_cli("align", a, b, "--out", tmp_path), "directory")
    extra = tmp_path / "extra.safetensors"
    model = build_model("mlp", num_classes=10, input_shape=(40,), seed=0, widths=(16, 12))
    sd = dict(model.state_dict())
    sd["fc9.weight"] = torch.zeros(2, 2)
    save_checkpoint(extra, sd, {"model": "mlp", "model_kwargs": {"widths": [16, 12]},
                                "num_classes": 10, "input_shape": [40]})
    assert_user_error(run_cli("align", extra, extra, "--out", out), "fc9.weight")
    assert_user_error(run_cli("align", a, b, "--out", out, "--model", "resnet99"),
                      "resnet99")
    assert_user_error(run_cli("align", a, b, "--method", "activation", "--data", "nope",
                              "--out", out), "nope")
    assert not out.exists()
