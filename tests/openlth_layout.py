"""Modules with OpenLTH's state_dict layout (facebookresearch/open_lth, ``models/``), written
here from its documented structure, so tests can save checkpoints as OpenLTH does
(``torch.save(model.state_dict(), 'model_ep{E}_it{I}.pth')``) without OpenLTH installed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LeNet(nn.Module):
    """``mnist_lenet_N1_N2...``: ``fc_layers`` (a ModuleList) then the output ``fc``."""

    def __init__(self, plan, outputs=10):
        super().__init__()
        dims = [784, *plan]
        self.fc_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.fc = nn.Linear(dims[-1], outputs)

    def forward(self, x):
        x = x.view(x.size(0), -1)
        for layer in self.fc_layers:
            x = F.relu(layer(x))
        return self.fc(x)


class Block(nn.Module):
    def __init__(self, f_in, f_out, downsample):
        super().__init__()
        stride = 2 if downsample else 1
        self.conv1 = nn.Conv2d(f_in, f_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(f_out)
        self.conv2 = nn.Conv2d(f_out, f_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)
        self.shortcut = (nn.Sequential(nn.Conv2d(f_in, f_out, 1, stride=2, bias=False),
                                       nn.BatchNorm2d(f_out))
                         if downsample or f_in != f_out else nn.Sequential())

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """``cifar_resnet_N_W``: ``conv``, ``bn``, ``blocks`` (a Sequential), ``fc``."""

    def __init__(self, depth=20, width=16, outputs=10):
        super().__init__()
        d = (depth - 2) // 6
        self.conv = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        blocks, f = [], width
        for s, filters in enumerate([width, 2 * width, 4 * width]):
            for b in range(d):
                blocks.append(Block(f, filters, s > 0 and b == 0))
                f = filters
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(4 * width, outputs)

    def forward(self, x):
        out = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(F.avg_pool2d(out, out.size()[3]).flatten(1))


class ConvModule(nn.Module):
    def __init__(self, f_in, f_out):
        super().__init__()
        self.conv = nn.Conv2d(f_in, f_out, 3, padding=1)
        self.bn = nn.BatchNorm2d(f_out)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class VGG(nn.Module):
    """``cifar_vgg_N``: ``layers`` (a Sequential counting its max-pools), ``fc``."""

    def __init__(self, plan, outputs=10):
        super().__init__()
        layers, f = [], 3
        for item in plan:
            layers.append(nn.MaxPool2d(2, 2) if item == "M" else ConvModule(f, item))
            f = f if item == "M" else item
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, outputs)

    def forward(self, x):
        return self.fc(nn.AvgPool2d(2)(self.layers(x)).flatten(1))


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so a wrong map shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(1 + torch.rand(m.running_var.shape, generator=gen))
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    return model.eval()


def write_level(root, replicate, level, model: nn.Module, mask: dict | None = None,
                model_name: str | None = None, end_ep: int = 2):
    """One ``replicate_R/level_L/main`` folder as OpenLTH's LotteryRunner leaves it."""
    main = root / f"replicate_{replicate}" / f"level_{level}" / "main"
    main.mkdir(parents=True)
    sd = model.state_dict()
    if mask is None:
        mask = {k: torch.ones_like(v) for k, v in sd.items()
                if k.endswith("weight") and v.dim() > 1}
    torch.save({k: v.cpu().int() for k, v in mask.items()}, main / "mask.pth")
    (main / "sparsity_report.json").write_text('{"total": 1.0, "unpruned": 1.0}')
    torch.save({k: v * 0.5 if v.is_floating_point() else v for k, v in sd.items()},
               main / "model_ep0_it0.pth")
    torch.save(sd, main / f"model_ep{end_ep}_it0.pth")
    if level == 0 and model_name:
        (main / "hparams.log").write_text(
            "Dataset Hyperparameters\n    * dataset_name => cifar10\n    * batch_size => 128\n"
            f"Model Hyperparameters\n    * model_name => {model_name}\n"
            "    * model_init => kaiming_normal\n    * batchnorm_init => uniform")
    return main
