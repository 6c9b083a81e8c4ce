"""Model zoo: ``build_model(name, num_classes=..., input_shape=..., seed=...)``.

Every model is a plain :class:`torch.nn.Module` with readable, stable ``state_dict`` keys
(``fc1.weight``, ``layer1.0.conv1.weight``) and Kaiming-normal weights as in OpenLTH
(He et al. 2015; fan-in, ReLU gain), zero biases, unit norm scales. The init is drawn from a
``torch.Generator`` seeded with ``seed``: no global RNG state is read or changed.

Architectures and their sources:

* ``mlp`` / ``lenet_300_100`` -- fully connected ReLU net, default widths ``[300, 100]``
  (LeCun et al. 1998; Frankle & Carbin 2019). ``norm="layernorm"`` adds LayerNorm after each
  hidden linear layer.
* ``conv2`` / ``conv4`` / ``conv6`` -- the VGG-like CIFAR nets of Frankle & Carbin (2019):
  pairs of 3x3 convs (64, 128, 256 channels) with max-pooling, then FC 256-256-classes.
* ``vgg11`` / ``vgg16`` -- CIFAR VGG as in OpenLTH (Simonyan & Zisserman 2015), BatchNorm
  optional, global average pooling then one linear layer; ``conv_bias=True`` keeps the conv
  biases before BatchNorm, as OpenLTH's checkpoints do.
* ``resnet20`` -- CIFAR ResNet-20 (He et al. 2016) with width multiplier ``width`` and
  projection shortcuts (1x1 conv + norm) where the shape changes, as in OpenLTH; ``norm`` is
  ``"batchnorm"`` (default), ``"layernorm"`` (GroupNorm with one group, as git-re-basin's
  LayerNorm ResNet) or ``"none"``.
* ``cnn1d`` -- a small 1-D conv net for MNIST-1D (Greydanus 2020) with one residual block.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from tickets.errors import ModelError

__all__ = ["build_model", "model_names", "init_params", "MLP", "ConvNet", "VGG", "ResNet20",
           "CNN1d"]


class MLP(nn.Module):
    """ReLU MLP ``input -> widths... -> num_classes``; layers ``fc1..fcK``, norms ``ln1..``."""

    def __init__(self, input_shape, num_classes, widths=(300, 100), norm=None):
        super().__init__()
        self.widths = list(widths)
        dims = [math.prod(input_shape)] + self.widths + [num_classes]
        self.depth = len(dims) - 1
        for i in range(self.depth):
            setattr(self, f"fc{i + 1}", nn.Linear(dims[i], dims[i + 1]))
            if norm == "layernorm" and i < self.depth - 1:
                setattr(self, f"ln{i + 1}", nn.LayerNorm(dims[i + 1]))
        self.norm = norm

    def forward(self, x):
        x = x.flatten(1)
        for i in range(1, self.depth):
            x = getattr(self, f"fc{i}")(x)
            if self.norm == "layernorm":
                x = getattr(self, f"ln{i}")(x)
            x = torch.relu(x)
        return getattr(self, f"fc{self.depth}")(x)


def _conv_hw(input_shape, name):
    if len(input_shape) != 3:
        raise ModelError(f"model {name!r} needs image input (C, H, W), got input_shape "
                         f"{tuple(input_shape)}")
    return input_shape


class ConvNet(nn.Module):
    """Frankle & Carbin's Conv-2/4/6: ``[conv-conv-pool] x k`` then FC 256-256-classes."""

    def __init__(self, input_shape, num_classes, plan, fc_widths=(256, 256)):
        super().__init__()
        c, h, w = _conv_hw(input_shape, f"conv{2 * len(plan)}")
        self.n_conv = 2 * len(plan)
        i = 1
        for width in plan:
            for _ in range(2):
                setattr(self, f"conv{i}", nn.Conv2d(c, width, 3, padding=1))
                c, i = width, i + 1
            h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise ModelError(f"input {tuple(input_shape)} is too small for {self.n_conv} convs")
        dims = [c * h * w, *fc_widths, num_classes]
        self.n_fc = len(dims) - 1
        for j in range(self.n_fc):
            setattr(self, f"fc{j + 1}", nn.Linear(dims[j], dims[j + 1]))

    def forward(self, x):
        for i in range(1, self.n_conv + 1):
            x = torch.relu(getattr(self, f"conv{i}")(x))
            if i % 2 == 0:
                x = nn.functional.max_pool2d(x, 2)
        x = x.flatten(1)
        for j in range(1, self.n_fc):
            x = torch.relu(getattr(self, f"fc{j}")(x))
        return getattr(self, f"fc{self.n_fc}")(x)


class ConvBlock(nn.Module):
    """conv 3x3 -> optional BatchNorm -> ReLU (keys ``conv.weight``, ``bn.weight``).

    The conv has a bias only without BatchNorm (which would cancel it), unless ``conv_bias``:
    OpenLTH's CIFAR VGG keeps that bias, and its checkpoints carry it."""

    def __init__(self, c_in, c_out, batchnorm, conv_bias=False):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=conv_bias or not batchnorm)
        self.bn = nn.BatchNorm2d(c_out) if batchnorm else None

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return torch.relu(x)


_VGG_PLANS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
}


class VGG(nn.Module):
    """CIFAR VGG (OpenLTH's plans): conv blocks ``layers.i``, max-pools, GAP, linear ``fc``."""

    def __init__(self, input_shape, num_classes, plan, batchnorm=True, width=1, conv_bias=False):
        super().__init__()
        c, h, w = _conv_hw(input_shape, "vgg")
        blocks, self.pool_after = [], []
        for item in plan:
            if item == "M":
                self.pool_after.append(len(blocks) - 1)
                h, w = h // 2, w // 2
            else:
                blocks.append(ConvBlock(c, int(item * width), batchnorm, conv_bias))
                c = int(item * width)
        if h < 1 or w < 1:
            raise ModelError(f"input {tuple(input_shape)} is too small for this VGG")
        self.layers = nn.ModuleList(blocks)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        for i, block in enumerate(self.layers):
            x = block(x)
            if i in self.pool_after:
                x = nn.functional.max_pool2d(x, 2)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _norm2d(kind: str, c: int) -> nn.Module:
    if kind == "batchnorm":
        return nn.BatchNorm2d(c)
    if kind == "layernorm":
        return nn.GroupNorm(1, c)
    return nn.Identity()


class Shortcut(nn.Module):
    """Projection shortcut: 1x1 conv (stride s) + norm; keys ``conv.weight``, ``norm.weight``."""

    def __init__(self, c_in, c_out, stride, norm):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=norm == "none")
        self.norm = _norm2d(norm, c_out)

    def forward(self, x):
        return self.norm(self.conv(x))


class BasicBlock(nn.Module):
    """ResNet basic block: ``relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut(x))``."""

    def __init__(self, c_in, c_out, stride, norm):
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = _norm2d(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias)
        self.bn2 = _norm2d(norm, c_out)
        self.shortcut = Shortcut(c_in, c_out, stride, norm) if (stride != 1 or c_in != c_out) \
            else nn.Identity()

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-20 (He et al. 2016): 3 stages x 3 blocks, ``16w, 32w, 64w`` channels."""

    def __init__(self, input_shape, num_classes, width=1, norm="batchnorm", depth=20):
        super().__init__()
        if norm not in ("batchnorm", "layernorm", "none"):
            raise ModelError(f"resnet20: norm must be batchnorm, layernorm or none, got {norm!r}")
        if (depth - 2) % 6:
            raise ModelError(f"resnet depth must be 6n+2, got {depth}")
        c, _, _ = _conv_hw(input_shape, "resnet20")
        n = (depth - 2) // 6
        widths = [int(16 * width), int(32 * width), int(64 * width)]
        self.conv1 = nn.Conv2d(c, widths[0], 3, padding=1, bias=norm == "none")
        self.bn1 = _norm2d(norm, widths[0])
        c = widths[0]
        for s, w in enumerate(widths):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(c, w, 2 if (s > 0 and b == 0) else 1, norm))
                c = w
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class CNN1d(nn.Module):
    """Small 1-D conv net for MNIST-1D with one residual block.

    ``conv1 (k5, s2) -> relu -> [conv2 -> relu -> conv3] + skip -> relu -> conv4 (k3, s2) ->
    relu -> flatten -> fc``; ``batchnorm=True`` adds ``bn1..bn4`` after each conv.
    """

    def __init__(self, input_shape, num_classes, channels=32, batchnorm=False):
        super().__init__()
        if len(input_shape) not in (1, 2):
            raise ModelError(f"cnn1d needs 1-D input (L,) or (C, L), got {tuple(input_shape)}")
        c_in = 1 if len(input_shape) == 1 else input_shape[0]
        length = input_shape[-1]
        self.conv1 = nn.Conv1d(c_in, channels, 5, stride=2, padding=2, bias=not batchnorm)
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=1, bias=not batchnorm)
        self.conv3 = nn.Conv1d(channels, channels, 3, padding=1, bias=not batchnorm)
        self.conv4 = nn.Conv1d(channels, channels, 3, stride=2, padding=1, bias=not batchnorm)
        self.batchnorm = batchnorm
        if batchnorm:
            for i in range(1, 5):
                setattr(self, f"bn{i}", nn.BatchNorm1d(channels))
        length = (length + 2 * 2 - 5) // 2 + 1
        length = (length + 2 - 3) // 2 + 1
        self.fc = nn.Linear(channels * length, num_classes)

    def _norm(self, i, x):
        return getattr(self, f"bn{i}")(x) if self.batchnorm else x

    def forward(self, x):
        if x.dim() == 2:
            x = x.unsqueeze(1)
        x = torch.relu(self._norm(1, self.conv1(x)))
        h = torch.relu(self._norm(2, self.conv2(x)))
        x = torch.relu(x + self._norm(3, self.conv3(h)))
        x = torch.relu(self._norm(4, self.conv4(x)))
        return self.fc(x.flatten(1))


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "mlp": lambda s, k, widths=(300, 100), norm=None: MLP(s, k, widths, norm),
    "lenet_300_100": lambda s, k: MLP(s, k, (300, 100)),
    "conv2": lambda s, k: ConvNet(s, k, [64]),
    "conv4": lambda s, k: ConvNet(s, k, [64, 128]),
    "conv6": lambda s, k: ConvNet(s, k, [64, 128, 256]),
    "vgg11": lambda s, k, batchnorm=True, width=1, conv_bias=False: VGG(
        s, k, _VGG_PLANS["vgg11"], batchnorm, width, conv_bias),
    "vgg16": lambda s, k, batchnorm=True, width=1, conv_bias=False: VGG(
        s, k, _VGG_PLANS["vgg16"], batchnorm, width, conv_bias),
    "resnet20": lambda s, k, width=1, norm="batchnorm": ResNet20(s, k, width, norm),
    "cnn1d": lambda s, k, channels=32, batchnorm=False: CNN1d(s, k, channels, batchnorm),
}


def model_names() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return list(_REGISTRY)


def init_params(model: nn.Module, seed: int) -> nn.Module:
    """Re-initialise ``model`` in place from ``seed``: Kaiming-normal weights (OpenLTH), zero
    biases, unit/zero norm affine parameters. Returns the model."""
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight, generator=gen)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.fill_(1.0)
                    m.bias.zero_()
    return model


def build_model(name: str, *, num_classes: int, input_shape: Sequence[int], seed: int = 0,
                **kwargs) -> nn.Module:
    """Build zoo model ``name`` for inputs of ``input_shape`` (no batch axis), initialised
    from ``seed``. Extra ``kwargs`` are the architecture's options (``widths``, ``width``,
    ``norm``, ``batchnorm``, ``conv_bias``, ``channels``)."""
    if name not in _REGISTRY:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(_REGISTRY)}")
    if "widths" in kwargs and kwargs["widths"] is not None:
        kwargs["widths"] = tuple(int(w) for w in kwargs["widths"])
    try:
        model = _REGISTRY[name](tuple(int(d) for d in input_shape), int(num_classes), **kwargs)
    except TypeError as e:
        raise ModelError(f"model {name!r}: bad options {kwargs} ({e})") from e
    return init_params(model, seed)
