"""Reading the checkpoints people have: fixtures written with the real writers of each format."""

from __future__ import annotations

import os

import pytest
import torch
from torch.nn.utils import prune

from tests import openlth_layout as lth
from tests.byo_models import BNCNN, ResMLP
from tickets.checkpoints import read_params
from tickets.errors import CheckpointError
from tickets.models import build_model
from tickets.store import check_params, load_checkpoint, model_from_meta, save_params


def net(seed=0):
    torch.manual_seed(seed)
    return ResMLP(width=8)


def equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
def test_prefixes_removed(tmp_path, prefix):
    sd = net().state_dict()
    torch.save({prefix + k: v for k, v in sd.items()}, tmp_path / "a.pt")
    loaded = read_params(tmp_path / "a.pt", net(1))
    assert equal(loaded.params, sd) and loaded.prefix_stripped == prefix
    assert loaded.source_key is None and loaded.format == "torch"


@pytest.mark.slow  # importing torch's compiler takes ~20 s on a busy 2-core machine
def test_torch_compile_prefix(tmp_path):
    model = net()
    compiled = torch.compile(model)  # compiling is lazy: nothing runs until called
    torch.save(compiled.state_dict(), tmp_path / "c.pt")
    assert read_params(tmp_path / "c.pt", net(1)).prefix_stripped == "_orig_mod."


def test_lightning_dict(tmp_path):
    sd = net().state_dict()
    ckpt = {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.2.0",
            "state_dict": {**{"model." + k: v for k, v in sd.items()},
                           "criterion.weight": torch.ones(10)},
            "optimizer_states": [{"state": {}, "param_groups": []}], "lr_schedulers": []}
    torch.save(ckpt, tmp_path / "last.ckpt")
    loaded = read_params(tmp_path / "last.ckpt", net(1))
    assert equal(loaded.params, sd)
    assert (loaded.source_key, loaded.prefix_stripped) == ("state_dict", "model.")
    assert "state_dict under 'state_dict'" in loaded.describe()


def test_model_whose_own_keys_start_with_model(tmp_path):
    wrapper = torch.nn.Module()
    wrapper.model = net()
    torch.save(wrapper.state_dict(), tmp_path / "w.pt")
    fresh = torch.nn.Module()
    fresh.model = net(1)
    assert read_params(tmp_path / "w.pt", fresh).prefix_stripped == ""


def test_training_dict_picks_the_fitting_state_dict(tmp_path):
    model, ema = net(0), net(1)
    other = build_model("mlp", num_classes=10, input_shape=(40,), widths=(8,)).state_dict()
    # an SGD state_dict as written after a step (stepping here would import torch's compiler)
    opt = {"state": {i: {"momentum_buffer": torch.zeros_like(p)}
                     for i, p in enumerate(model.parameters())},
           "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": list(range(8))}]}
    torch.save({"epoch": 5, "net": other, "ema": ema.state_dict(), "optimizer": opt},
               tmp_path / "train.pt")
    loaded = read_params(tmp_path / "train.pt", net(2))
    assert loaded.source_key == "ema" and equal(loaded.params, ema.state_dict())
    # without a model the first in preference order is taken
    assert read_params(tmp_path / "train.pt").source_key == "net"


def test_nothing_fits_names_file_and_keys(tmp_path):
    other = build_model("mlp", num_classes=10, input_shape=(40,), widths=(8,)).state_dict()
    torch.save({"model_state_dict": other, "ema": other, "epoch": 1}, tmp_path / "t.pt")
    with pytest.raises(CheckpointError) as err:
        read_params(tmp_path / "t.pt", net())
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 't.pt'}: no state_dict in it fits the model")
    assert "'model_state_dict', 'ema'" in msg
    torch.save({"epoch": 1, "lr": 0.1}, tmp_path / "no.pt")
    with pytest.raises(CheckpointError, match="not a state_dict.*holds keys 'epoch', 'lr'"):
        read_params(tmp_path / "no.pt")
    torch.save(other, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="bare.pt: missing key 'inp.weight'"):
        read_params(tmp_path / "bare.pt", net())


def pruned_net():
    model = net()
    prune.l1_unstructured(model.inp, "weight", amount=0.5)
    prune.random_unstructured(model.blocks[0][0], "weight", amount=0.3)
    return model


def test_torch_prune_state(tmp_path):
    model = pruned_net()
    torch.save(model.state_dict(), tmp_path / "pruned.pt")
    assert "inp.weight_orig" in model.state_dict()
    for fitted in (net(1), None):
        loaded = read_params(tmp_path / "pruned.pt", fitted)
        assert torch.equal(loaded.params["inp.weight"], model.inp.weight)
        assert set(loaded.mask) == {"inp.weight", "blocks.0.0.weight"} == set(loaded.folded)
        assert torch.equal(loaded.mask["inp.weight"], model.inp.weight_mask)
    check_params(net(), loaded.params)
    params, _ = load_checkpoint(tmp_path / "pruned.pt")  # the old entry point folds too
    assert "inp.weight" in params and "inp.weight_orig" not in params


def test_safetensors_without_metadata(tmp_path):
    from safetensors.torch import save_file
    model = BNCNN()
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    loaded = read_params(tmp_path / "m.safetensors", BNCNN())
    assert loaded.meta == {} and loaded.format == "safetensors"
    assert equal(loaded.params, model.state_dict())


class Evil(torch.nn.Linear):
    def __setstate__(self, state):
        open(os.environ["PWN_FILE"], "w").close()
        super().__setstate__(state)


def test_whole_pickled_module_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PWN_FILE", str(tmp_path / "PWNED"))
    torch.save(Evil(3, 2), tmp_path / "whole.pt")
    with open(tmp_path / "whole.pt", "rb") as f:
        assert b"Evil" in f.read()
    with pytest.raises(CheckpointError) as err:
        read_params(tmp_path / "whole.pt")
    assert "torch.save(model.state_dict(), path)" in str(err.value)
    assert "test_checkpoints.Evil" in str(err.value)
    assert str(tmp_path / "whole.pt") in str(err.value)
    assert not (tmp_path / "PWNED").exists()


# --------------------------------------------------------------------------- writing

def test_save_params_by_suffix(tmp_path):
    sd = net().state_dict()
    meta = {"model": "tests.byo_models:ResMLP", "model_kwargs": {"width": 8}}
    save_params(tmp_path / "a.safetensors", sd, meta)
    save_params(tmp_path / "a.pt", sd, meta)
    assert load_checkpoint(tmp_path / "a.safetensors")[1]["model"] == meta["model"]
    assert equal(torch.load(tmp_path / "a.pt", weights_only=True), sd)
    assert (tmp_path / "a.pt").read_bytes()[:2] == b"PK"  # a torch zip, not safetensors
    assert equal(model_from_meta(load_checkpoint(tmp_path / "a.safetensors")[1]).state_dict()
                 .keys() and sd, sd)
    with pytest.raises(CheckpointError, match=r"a.bin: unknown checkpoint format '.bin'"):
        save_params(tmp_path / "a.bin", sd)
    assert not (tmp_path / "a.bin").exists()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_umask_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        save_params(tmp_path / "a.pt", net().state_dict())
        save_params(tmp_path / "a.safetensors", net().state_dict())
    finally:
        os.umask(old)
    for name in ("a.pt", "a.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


# --------------------------------------------------------------------------- HF folders

def test_hf_folder_params_fill_tied_weights(tmp_path):
    pytest.importorskip("transformers")
    from tests.hf_models import save, tiny_gpt2
    from tickets.sources import resolve_model
    model = tiny_gpt2()
    save(model, tmp_path / "gpt2", max_shard_size="4KB")
    loaded = read_params(tmp_path / "gpt2")
    assert loaded.format == "hf" and equal(loaded.params, model.state_dict())
    rebuilt = model_from_meta(loaded.meta)
    check_params(rebuilt, loaded.params)
    other = resolve_model(f"hf:{tmp_path / 'gpt2'}")
    assert equal(read_params(tmp_path / "gpt2", other).params, model.state_dict())


# --------------------------------------------------------------------------- OpenLTH

def forward_equal(openlth_model, zoo_model, params, x):
    out = torch.func.functional_call(zoo_model.eval(), params, (x,))
    return torch.allclose(openlth_model.eval()(x), out, atol=1e-5)


def test_openlth_lenet_tree(tmp_path):
    torch.manual_seed(0)
    model = lth.LeNet([20, 10])
    mask = {k: (torch.rand_like(v) > 0.3).int() for k, v in model.state_dict().items()
            if k.endswith("weight")}
    lth.write_level(tmp_path, 1, 0, model, model_name="mnist_lenet_20_10")
    main = lth.write_level(tmp_path, 1, 1, model, mask=mask)
    loaded = read_params(main)  # a level folder: its trained (last) model
    assert loaded.path.endswith("model_ep2_it0.pth") and loaded.format == "openlth"
    assert loaded.meta["model"] == "mlp" and loaded.meta["model_kwargs"] == {"widths": [20, 10]}
    assert loaded.meta["openlth_model"] == "mnist_lenet_20_10"
    zoo = model_from_meta(loaded.meta)
    check_params(zoo, loaded.params)
    assert forward_equal(model, zoo, loaded.params, torch.randn(3, 1, 28, 28))
    assert set(loaded.mask) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert torch.equal(loaded.mask["fc2.weight"], mask["fc_layers.1.weight"].bool())
    init = read_params(main / "model_ep0_it0.pth", zoo)
    assert torch.equal(init.params["fc3.bias"], model.fc.bias * 0.5)
    with pytest.raises(CheckpointError, match="an OpenLTH run with 2 levels; name one"):
        read_params(tmp_path)


def test_openlth_lenet_name_inferred_without_hparams(tmp_path):
    model = lth.LeNet([12])
    main = lth.write_level(tmp_path, 2, 0, model)
    assert read_params(main / "model_ep2_it0.pth").meta["openlth_model"] == "mnist_lenet_12"


def test_openlth_model_ported_by_the_user_keeps_its_names(tmp_path):
    model = lth.LeNet([12])
    main = lth.write_level(tmp_path, 1, 0, model)
    loaded = read_params(main, lth.LeNet([12]))
    assert equal(loaded.params, model.state_dict()) and "fc_layers.0.weight" in loaded.mask


@pytest.mark.parametrize("width", [16, 4])
def test_openlth_resnet20(tmp_path, width):
    torch.manual_seed(0)
    model = lth.randomise_norms(lth.ResNet(20, width))
    name = "cifar_resnet_20" if width == 16 else f"cifar_resnet_20_{width}"
    main = lth.write_level(tmp_path, 1, 0, model, model_name=name)
    loaded = read_params(main)
    assert loaded.meta["model"] == "resnet20"
    assert loaded.meta["model_kwargs"] == ({} if width == 16 else {"width": width / 16})
    zoo = model_from_meta(loaded.meta)
    check_params(zoo, loaded.params, allow_missing_buffers=False)
    assert forward_equal(model, zoo, loaded.params, torch.randn(2, 3, 32, 32))
    assert "layer2.0.shortcut.conv.weight" in loaded.mask


@pytest.mark.parametrize("depth", [11, pytest.param(16, marks=pytest.mark.slow)])
def test_openlth_vgg(tmp_path, depth):
    from tickets.openlth import _VGG_PLANS
    torch.manual_seed(0)
    model = lth.randomise_norms(lth.VGG(_VGG_PLANS[depth]))
    main = lth.write_level(tmp_path, 1, 0, model)  # no hparams.log: name read off the tensors
    loaded = read_params(main)
    assert loaded.meta["openlth_model"] == f"cifar_vgg_{depth}"
    zoo = model_from_meta(loaded.meta)
    check_params(zoo, loaded.params, allow_missing_buffers=False)
    assert forward_equal(model, zoo, loaded.params, torch.randn(2, 3, 32, 32))


def test_openlth_unsupported_model(tmp_path):
    main = lth.write_level(tmp_path, 1, 0, lth.ResNet(14, 4), model_name="cifar_resnet_14_4")
    with pytest.raises(CheckpointError, match="cifar_resnet_14_4' has no zoo equivalent"):
        read_params(main)
