"""Models as a user would define them in their own module, for the bring-your-own tests."""

from __future__ import annotations

import torch
from torch import nn


class ResMLP(nn.Module):
    """A residual MLP: ``inp -> [x + fc2(relu(fc1(x)))] * depth -> out``."""

    def __init__(self, in_dim: int = 40, width: int = 16, depth: int = 2, num_classes: int = 10):
        super().__init__()
        self.inp = nn.Linear(in_dim, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.ReLU(),
                                                  nn.Linear(width, width)) for _ in range(depth))
        self.out = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.inp(x.flatten(1))
        for block in self.blocks:
            x = x + block(x)
        return self.out(torch.relu(x))


class BNCNN(nn.Module):
    """A small BatchNorm CNN for (C, H, W) images."""

    def __init__(self, channels: int = 8, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def resmlp(width: int = 16, **kwargs) -> ResMLP:
    """A factory function (not a class) for :class:`ResMLP`."""
    return ResMLP(width=width, **kwargs)


def shaped(input_shape, num_classes, width: int = 8) -> ResMLP:
    """A factory that takes the shapes from the data."""
    return ResMLP(in_dim=int(torch.tensor(input_shape).prod()), width=width,
                  num_classes=num_classes)


def not_a_model():
    return 42


def broken(width: int = 4):
    raise ValueError("width must be even")


def tiny_data(seed: int = 0):
    """A data factory: a (train, test) pair of TensorDatasets."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(24, 40, generator=gen)
    y = torch.randint(0, 3, (24,), generator=gen)
    return (torch.utils.data.TensorDataset(x[:16], y[:16]),
            torch.utils.data.TensorDataset(x[16:], y[16:]))
