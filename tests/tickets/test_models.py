"""Model zoo: every model builds, runs, has readable keys and a seeded init."""

from __future__ import annotations

import pytest
import torch

from tickets.errors import ModelError
from tickets.models import build_model, model_names

SHAPES = {"mlp": (40,), "lenet_300_100": (1, 28, 28), "conv2": (3, 32, 32), "conv4": (3, 32, 32),
          "conv6": (3, 32, 32), "vgg11": (3, 32, 32), "vgg16": (3, 32, 32),
          "resnet20": (3, 32, 32), "cnn1d": (40,)}
KWARGS = {"vgg11": {"width": 0.125}, "vgg16": {"width": 0.125}}


@pytest.mark.parametrize("name", model_names())
def test_builds_and_runs(name):
    model = build_model(name, num_classes=10, input_shape=SHAPES[name], seed=0,
                        **KWARGS.get(name, {}))
    out = model.eval()(torch.randn(2, *SHAPES[name]))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", model_names())
def test_seeded_init(name):
    kw = KWARGS.get(name, {})
    a = build_model(name, num_classes=10, input_shape=SHAPES[name], seed=3, **kw).state_dict()
    b = build_model(name, num_classes=10, input_shape=SHAPES[name], seed=3, **kw).state_dict()
    c = build_model(name, num_classes=10, input_shape=SHAPES[name], seed=4, **kw).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_readable_keys():
    keys = build_model("mlp", num_classes=10, input_shape=(40,)).state_dict().keys()
    assert list(keys) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight",
                          "fc3.bias"]
    r = build_model("resnet20", num_classes=10, input_shape=(3, 32, 32), width=4).state_dict()
    assert r["layer1.0.conv1.weight"].shape == (64, 64, 3, 3)
    assert "layer2.0.shortcut.conv.weight" in r and "layer2.0.shortcut.norm.running_mean" in r
    assert r["fc.weight"].shape == (10, 256)
    v = build_model("vgg11", num_classes=10, input_shape=(3, 32, 32), batchnorm=False)
    assert "layers.0.conv.bias" in v.state_dict() and "layers.0.bn.weight" not in v.state_dict()


def test_options():
    m = build_model("mlp", num_classes=10, input_shape=(40,), widths=[64, 32, 16], norm="layernorm")
    assert m.fc4.out_features == 10 and m.ln3.normalized_shape == (16,)
    ln = build_model("resnet20", num_classes=10, input_shape=(3, 16, 16), norm="layernorm")
    assert isinstance(ln.bn1, torch.nn.GroupNorm)
    bn = build_model("cnn1d", num_classes=10, input_shape=(40,), batchnorm=True)
    assert "bn4.running_var" in bn.state_dict()


def test_kaiming_normal_scale():
    # He et al. (2015): std = sqrt(2 / fan_in)
    w = build_model("mlp", num_classes=10, input_shape=(400,), widths=[2000]).fc1.weight.detach()
    assert abs(float(w.std()) / (2 / 400) ** 0.5 - 1) < 0.01


def test_bad_names_and_options():
    with pytest.raises(ModelError, match="choose one of"):
        build_model("resnet50", num_classes=10, input_shape=(3, 32, 32))
    with pytest.raises(ModelError, match="bad options"):
        build_model("mlp", num_classes=10, input_shape=(40,), depth=3)
    with pytest.raises(ModelError, match="image input"):
        build_model("resnet20", num_classes=10, input_shape=(40,))
