"""Muon paired with AdamW, the way Muon is used (Jordan et al. 2024, "Muon: an optimizer for
hidden layers in neural networks").

Muon (``torch.optim.Muon``) replaces the momentum update ``B`` of a weight matrix by its
orthogonalisation ``UV^T`` (``B = U S V^T``, by Newton-Schulz iterations): every singular
direction moves by the same amount. It is defined for 2-D hidden-layer weights only; the
input layer, the classifier, biases, norms and convolution filters are trained by AdamW.
The update is scaled to AdamW's RMS (``adjust_lr_fn="match_rms_adamw"``, Liu et al. 2025,
"Muon is scalable for LLM training") so one learning rate serves both.
"""

from __future__ import annotations

import torch

from tickets.errors import ConfigError

__all__ = ["muon_available", "MuonAdamW"]


def muon_available() -> bool:
    """Whether the installed PyTorch has ``torch.optim.Muon``."""
    return hasattr(torch.optim, "Muon")


class MuonAdamW:
    """Muon on the 2-D weights of hidden layers (every 2-D parameter but the first and the
    last, in registration order), AdamW on the rest; quacks like one optimiser
    (``param_groups``, ``zero_grad``, ``step``)."""

    def __init__(self, params: list[torch.Tensor], *, lr: float, weight_decay: float = 0.0):
        if not muon_available():
            raise ConfigError(f"optimizer 'muon' needs torch.optim.Muon, which PyTorch "
                              f"{torch.__version__} does not have")
        matrices = [i for i, p in enumerate(params) if p.dim() == 2]
        hidden = set(matrices[1:-1])
        if not hidden:
            raise ConfigError("optimizer 'muon' needs a hidden layer with a 2-D weight (the "
                              "first and the last layer are trained by AdamW)")
        self.muon = torch.optim.Muon([params[i] for i in sorted(hidden)], lr=lr,
                                     weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
        rest = [p for i, p in enumerate(params) if i not in hidden]
        self.adamw = torch.optim.AdamW(rest, lr=lr, weight_decay=weight_decay,
                                       foreach=True) if rest else None
        self.hidden = [params[i] for i in sorted(hidden)]

    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups + (self.adamw.param_groups if self.adamw else [])

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in (self.muon, self.adamw):
            if opt is not None:
                opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.muon.step()
        if self.adamw is not None:
            self.adamw.step()
