"""Checkpoints: safetensors round trip, .pt state_dicts, refusal of unsafe or broken files."""

from __future__ import annotations

import pickle

import pytest
import torch

from tickets.errors import CheckpointError
from tickets.models import build_model
from tickets.store import (check_params, load_checkpoint, load_json, model_from_meta,
                           save_checkpoint, save_json)


def params():
    return build_model("mlp", num_classes=10, input_shape=(40,), widths=(8,)).state_dict()


META = {"model": "mlp", "model_kwargs": {"widths": [8]}, "num_classes": 10, "input_shape": [40]}


def test_round_trip_with_meta_and_masks(tmp_path):
    p = params()
    p["mask"] = torch.rand(3, 3) > 0.5
    save_checkpoint(tmp_path / "a.safetensors", p, META)
    loaded, meta = load_checkpoint(tmp_path / "a.safetensors")
    assert all(torch.equal(loaded[k], p[k]) for k in p) and loaded["mask"].dtype == torch.bool
    assert meta["model"] == "mlp" and "torch" in meta["versions"]
    assert not list(tmp_path.glob("*.tmp"))
    model = model_from_meta(meta)
    check_params(model, {k: v for k, v in loaded.items() if k != "mask"})


def test_same_tensors_same_bytes(tmp_path):
    save_checkpoint(tmp_path / "a.safetensors", params(), META)
    save_checkpoint(tmp_path / "b.safetensors", params(), META)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod."])
def test_reads_pt_state_dicts(tmp_path, wrap, prefix):
    p = {prefix + k: v for k, v in params().items()}
    obj = {wrap: p, "epoch": 3} if wrap else p
    torch.save(obj, tmp_path / "a.pt")
    loaded, meta = load_checkpoint(tmp_path / "a.pt")
    assert meta == {} and set(loaded) == set(params())


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED",))


def test_refuses_code_pickle_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"fc1.weight": _Evil()}, f)
    torch.save({"w": _Evil()}, tmp_path / "evil2.pt")
    for name in ("evil.pt", "evil2.pt"):
        with pytest.raises(CheckpointError, match="refused|not a readable"):
            load_checkpoint(tmp_path / name)
    assert not (tmp_path / "PWNED").exists()


def test_corrupt_truncated_and_other_files(tmp_path):
    save_checkpoint(tmp_path / "a.safetensors", params(), META)
    raw = (tmp_path / "a.safetensors").read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(raw[:-100])
    (tmp_path / "text.safetensors").write_text("hello world, not a checkpoint")
    (tmp_path / "empty.pt").write_bytes(b"")
    for name, needle in [("trunc.safetensors", "corrupt or truncated"),
                         ("text.safetensors", "not a readable"), ("empty.pt", "empty file"),
                         ("missing.pt", "no such file")]:
        with pytest.raises(CheckpointError, match=needle) as err:
            load_checkpoint(tmp_path / name)
        assert name in str(err.value)


def test_nan_refused(tmp_path):
    p = params()
    p["fc2.weight"][0, 0] = float("nan")
    save_checkpoint(tmp_path / "nan.safetensors", p, META)
    with pytest.raises(CheckpointError, match="fc2.weight.*non-finite"):
        load_checkpoint(tmp_path / "nan.safetensors")
    assert load_checkpoint(tmp_path / "nan.safetensors", check=False)[0]["fc2.weight"].isnan().any()


def test_check_params_names_first_mismatch():
    model = build_model("mlp", num_classes=10, input_shape=(40,), widths=(8,))
    other = build_model("mlp", num_classes=10, input_shape=(40,), widths=(9,)).state_dict()
    with pytest.raises(CheckpointError, match=r"fc1.weight.*\(9, 40\).*\(8, 40\)"):
        check_params(model, other, "b.safetensors")
    p = params()
    del p["fc2.bias"]
    with pytest.raises(CheckpointError, match="missing key 'fc2.bias'"):
        check_params(model, p)
    p = params()
    p["extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="unexpected key 'extra'"):
        check_params(model, p)


def test_json_strict_and_atomic(tmp_path):
    save_json(tmp_path / "r.json", {"a": float("nan"), "t": torch.tensor([1.5])})
    assert load_json(tmp_path / "r.json") == {"a": None, "t": [1.5]}
