"""Masks from files: by parameter name, ``_mask`` suffixes, pruned state_dicts, OpenLTH."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch.nn.utils import prune

from tests import openlth_layout as lth
from tests.byo_models import ResMLP
from tickets.errors import CheckpointError, ModelError
from tickets.masks import load_mask, mask_entries


def params():
    torch.manual_seed(0)
    return ResMLP(width=8).state_dict()


def random_mask(p, names=("inp.weight", "out.weight")):
    gen = torch.Generator().manual_seed(1)
    return {k: torch.rand(p[k].shape, generator=gen) > 0.5 for k in names}


def test_safetensors_and_pt_by_name(tmp_path):
    p, m = params(), random_mask(params())
    save_file(m, tmp_path / "m.safetensors")
    torch.save({k: v.int() for k, v in m.items()}, tmp_path / "m.pt")
    for name in ("m.safetensors", "m.pt"):
        got = load_mask(tmp_path / name, p)
        assert got.keys() == m.keys() and all(torch.equal(got[k], m[k]) for k in m)
        assert all(v.dtype == torch.bool for v in got.values())


def test_mask_suffix_stripped(tmp_path):
    m = random_mask(params())
    torch.save({k + "_mask": v.float() for k, v in m.items()}, tmp_path / "m.pt")
    assert set(load_mask(tmp_path / "m.pt", params())) == {"inp.weight", "out.weight"}
    assert set(mask_entries({"a.weight_mask": 1, "a.weight_orig": 2, "a.bias": 3})) == {"a.weight"}


@pytest.mark.parametrize("prefix", ["", "module."])
def test_pruned_state_dict_picked_out(tmp_path, prefix):
    torch.manual_seed(0)
    model = ResMLP(width=8)
    prune.l1_unstructured(model.inp, "weight", amount=0.4)
    prune.l1_unstructured(model.out, "weight", amount=0.2)
    torch.save({prefix + k: v for k, v in model.state_dict().items()}, tmp_path / "p.pt")
    got = load_mask(tmp_path / "p.pt", params())
    assert set(got) == {"inp.weight", "out.weight"}
    assert torch.equal(got["inp.weight"], model.inp.weight_mask.bool())
    assert set(load_mask(tmp_path / "p.pt")) == {"inp.weight", "out.weight"}


def test_mask_for_other_params_names_first_key(tmp_path):
    m = {"inp.weight": torch.ones(8, 40, dtype=torch.bool),
         "fc9.weight": torch.ones(3, 3, dtype=torch.bool)}
    save_file(m, tmp_path / "m.safetensors")
    with pytest.raises(ModelError, match=r"m.safetensors: key 'fc9.weight' is not a parameter"):
        load_mask(tmp_path / "m.safetensors", params())
    save_file({"inp.weight": torch.ones(4, 40, dtype=torch.bool)}, tmp_path / "s.safetensors")
    with pytest.raises(ModelError, match=r"'inp.weight' has shape \(4, 40\).*\(8, 40\)"):
        load_mask(tmp_path / "s.safetensors", params())
    save_file({"inp.weight": torch.full((8, 40), 0.5)}, tmp_path / "v.safetensors")
    with pytest.raises(ModelError, match="values other than 0 and 1"):
        load_mask(tmp_path / "v.safetensors")
    torch.save({"epoch": 1}, tmp_path / "e.pt")
    with pytest.raises(CheckpointError, match="e.pt: not a mask"):
        load_mask(tmp_path / "e.pt")


def test_openlth_mask(tmp_path):
    torch.manual_seed(0)
    model = lth.LeNet([20, 10])
    mask = {k: (torch.rand_like(v) > 0.5).int() for k, v in model.state_dict().items()
            if k.endswith("weight")}
    main = lth.write_level(tmp_path, 1, 0, model, mask=mask, model_name="mnist_lenet_20_10")
    from tickets.models import build_model
    zoo = build_model("mlp", num_classes=10, input_shape=(1, 28, 28), widths=(20, 10))
    for where in (main, main / "mask.pth"):
        got = load_mask(where, zoo.state_dict())
        assert set(got) == {"fc1.weight", "fc2.weight", "fc3.weight"}
        assert torch.equal(got["fc3.weight"], mask["fc.weight"].bool())
    # a model with OpenLTH's own names takes the mask as it is
    assert set(load_mask(main, model.state_dict())) == set(mask)
