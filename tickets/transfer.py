"""A lottery ticket moved from one seed to another: training under a permuted mask.

A ticket found in run A is a mask in A's basis of hidden units; to use it in run B it must be
expressed in B's basis (sparse re-basin, Adnan et al. 2025). Given the permutation ``P`` that
maps B onto A (weight or activation matching, Ainsworth et al. 2023, computed by the caller),
A's level-L mask ``m_A`` becomes ``P^-1(m_A)`` in B's basis. :func:`transfer_ticket` trains B's
rewind weights (its level-0 init: ``theta_0``, or ``theta_k`` with late rewinding) under that
mask with B's training config and data order, and next to it, from the same rewind weights,
under A's mask unpermuted ("naive") and under a random mask with the same per-layer survivor
counts; B's own ticket at level L is read from B's run directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from tickets.data import DataSplits
from tickets.errors import ConfigError
from tickets.prune import Mask, random_mask, sparsity
from tickets.runs import RunInfo, build_run_model, load_level, load_run_data
from tickets.train import train

__all__ = ["TransferResult", "moved_masks", "transfer_ticket", "transfer_mask", "VARIANTS"]

#: The rows of a :class:`TransferResult`, in order.
VARIANTS = ("permuted", "naive", "random", "own")


@dataclass(frozen=True)
class TransferResult:
    """Test accuracy of B's rewind weights trained under A's permuted mask, A's naive mask, a
    random mask of the same per-layer sparsity, and B's own ticket; mask overlaps with B's
    own ticket (Jaccard, :func:`gauge.overlap.mask_overlap`) for the permuted and naive masks."""

    ticket: str
    to: str
    level: int
    align: str
    density: float
    rows: list[dict]
    overlap_with_own: dict

    def table(self) -> list[dict]:
        return [dict(r) for r in self.rows]

    def to_dict(self) -> dict:
        return {"ticket": self.ticket, "to": self.to, "level": self.level, "align": self.align,
                "density": self.density, "rows": self.rows,
                "overlap_with_own": self.overlap_with_own}


def moved_masks(spec, perm: Mapping[str, torch.Tensor], mask: Mask, *,
                seed: int) -> dict[str, Mask]:
    """The masks :func:`transfer_ticket` trains under: ``permuted`` = ``P^-1(mask)`` (``perm``
    maps B onto A, so its inverse carries A's mask into B's basis), ``naive`` = ``mask`` as is,
    ``random`` = the same per-layer survivor counts placed at random from ``seed``."""
    from gauge.symmetry import apply_permutation, invert
    return {"permuted": apply_permutation(spec, invert(perm), mask), "naive": dict(mask),
            "random": random_mask(mask, seed=seed, per_layer=True)}


def transfer_ticket(run_a: RunInfo, run_b: RunInfo, level: int, spec,
                    perm: Mapping[str, torch.Tensor], *, align: str = "weight", seed: int = 0,
                    data: DataSplits | None = None, device="cpu") -> TransferResult:
    """Move A's level-``level`` ticket into B's basis with ``perm`` (B onto A, for ``spec`` of
    B's model) and train B's rewind weights under it and under the naive and random masks of
    :func:`moved_masks` (see the module docstring). ``align`` names how ``perm`` was found (for
    the record); ``data``: B's dataset (default :func:`tickets.runs.load_run_data`).
    Raises :class:`RunError` for a missing level, :class:`ConfigError` when the two tickets
    cover different weights."""
    return transfer_mask(load_level(run_a, level).mask, str(run_a.path), run_b, level, spec,
                         perm, align=align, seed=seed, data=data, device=device)


def transfer_mask(mask: Mask, ticket: str, run_b: RunInfo, level: int, spec,
                  perm: Mapping[str, torch.Tensor], *, align: str = "weight", seed: int = 0,
                  data: DataSplits | None = None, device="cpu") -> TransferResult:
    """:func:`transfer_ticket` for a ticket given as its ``mask`` (in A's basis; ``ticket``
    names where it came from: a mask file, an OpenLTH level), compared with B's own ticket at
    ``level``."""
    from gauge.overlap import mask_overlap
    own = load_level(run_b, level)
    if set(mask) != set(own.mask):
        raise ConfigError(f"the masks of {ticket} and {run_b.path} cover different weights "
                          f"({sorted(set(mask) ^ set(own.mask))[0]!r} is in one only)")
    mask = {k: mask[k] for k in own.mask}  # B's order, so the random control is reproducible
    rewind = load_level(run_b, 0).init  # level 0's init holds B's rewind point theta_k
    data = load_run_data(run_b) if data is None else data
    masks = moved_masks(spec, perm, mask, seed=seed)
    rows = [_train_under(run_b, rewind, data, name, m, device) for name, m in masks.items()]
    rows.append({"mask": "own", "test_acc": own.metrics.get("test_acc"),
                 "test_loss": own.metrics.get("test_loss"),
                 "train_acc": own.metrics.get("train_acc"), "source": str(own.path)})
    overlap = {name: mask_overlap(m, own.mask).overall.to_dict() for name, m in masks.items()}
    return TransferResult(ticket=ticket, to=str(run_b.path), level=int(level),
                          align=align, density=sparsity(mask).density, rows=rows,
                          overlap_with_own=overlap)


def _train_under(run: RunInfo, rewind: dict, data: DataSplits, name: str, mask: Mask,
                 device) -> dict:
    """One row: ``run``'s rewind weights trained from its rewind iteration under ``mask``."""
    model = build_run_model(run)
    model.load_state_dict(rewind)
    res = train(model, data, run.config, seed=run.seed, data_seed=run.data_seed, mask=mask,
                start_iter=run.rewind_iter, device=device)
    return {"mask": name, "test_acc": res.test_acc, "test_loss": res.test_loss,
            "train_acc": res.train_acc, "source": "trained here"}
