"""The loss a flatness measure looks at: a fixed dataset, the one mean loss, the free
parameters, and the point they are taken at (raw or gauge-fixed).

* ``data`` is a *fixed* dataset in any form :func:`gauge.batches.as_data` accepts (tensors,
  datasets, loaders, lists of batches, dict batches). Every evaluation uses all of it, so a
  Hessian-vector product is the same linear map at every call (which Lanczos needs).
* :func:`mean_loss` is the mean of the loss over the examples, ``L = sum_b |b| l_b / sum_b |b|``,
  for every measure in :mod:`gauge` and :mod:`tickets` (flatness, linear paths, evaluation),
  with ``loss_fn``/``error_fn``/``logits_fn`` as in :mod:`gauge.batches`.
* :class:`Objective` is ``L`` as a function of the *free* parameter entries: ``nn.Parameter``
  tensors kept by ``param_filter`` (e.g. :func:`weights_only`), restricted to the unpruned
  entries of ``mask``. The model runs in eval mode (BatchNorm uses the running statistics in
  ``params``), its training flag restored afterwards.
* :func:`gauge_fix` moves ``params`` to the balanced point of its ReLU-rescaling orbit;
  :func:`raw_and_gauge_fixed` measures at both points and returns :class:`GaugeFixed`. Dinh et
  al. (2017) showed that raw curvature can be made arbitrarily large by rescaling without
  changing the function; the gauge-fixed value depends on the function's orbit only.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from gauge.batches import as_data, batch_loss, error_sum, forward, logits_of, loss_sum, make_batch
from gauge.errors import (EmptyParamsError, FlatnessError, FlatnessOptionError, NonFiniteLossError,
                          one_line)
from gauge.results import Result

__all__ = ["ParamFilter", "weights_only", "eval_mode", "loss_totals", "mean_loss", "Objective",
           "GaugeFixed", "gauge_fix", "raw_and_gauge_fixed"]

ParamFilter = Callable[[str, torch.Tensor], bool]


def weights_only(name: str, tensor: torch.Tensor) -> bool:
    """``param_filter`` keeping weight matrices/kernels only (no biases, no norm scales)."""
    return tensor.ndim > 1


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Run ``model`` in eval mode, restoring every submodule's training flag afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in modes:
            m.train(flag)


def loss_totals(model: nn.Module, params: Mapping[str, torch.Tensor] | None, batches,
                loss_fn=None, *, error_fn=None, logits_fn=None, error: bool = True,
                name: str = "data") -> tuple[float, float | int, int]:
    """``(sum_b |b| l_b, sum_b |b| e_b, sum_b |b|)`` over ``batches`` (an iterable of batches,
    see :func:`gauge.batches.make_batch`): the summed loss and error (an exact count of wrong
    examples for the default top-1 error) and the number of examples, with ``model`` run on
    ``params`` (``None``: its own) as it is (the caller picks the mode and ``torch.no_grad``).
    """
    total, wrong, n = 0.0, 0, 0
    for raw in batches:
        batch = make_batch(raw, name)
        logits = logits_of(forward(model, batch, params, name=name), logits_fn)
        total += loss_sum(logits, batch, loss_fn, name=name)
        if error:
            wrong += error_sum(logits, batch, error_fn, name=name)
        n += batch.n
    return total, wrong, n


def mean_loss(model: nn.Module, params: Mapping[str, torch.Tensor] | None, batches,
              loss_fn=None, *, error: bool = False, error_fn=None, logits_fn=None,
              name: str = "data"):
    """``L = sum_b |b| l_b / sum_b |b|``, the mean loss over the examples of ``batches`` (an
    iterable of batches: ``(x, y)`` tuples, dicts or :class:`~gauge.batches.Batch` es), with
    ``model`` run on ``params`` as it is (the caller picks the mode and ``torch.no_grad``).

    ``loss_fn(logits, targets)`` returns a batch mean; ``None`` sums the cross-entropy of each
    batch in float32 (the causal language-model loss for next-token labels). ``error=True``
    returns ``(L, E)`` with ``E`` the mean of ``error_fn`` (default: the top-1 error,
    1 - accuracy). ``name`` names the data in errors.
    """
    total, wrong, n = loss_totals(model, params, batches, loss_fn, error_fn=error_fn,
                                  logits_fn=logits_fn, error=error, name=name)
    return (total / n, wrong / n) if error else total / n


def _masked_base(params, mask, device) -> dict[str, torch.Tensor]:
    """``params`` on ``device`` with pruned entries exactly 0 (the ticket)."""
    unknown = sorted(set(mask) - set(params))
    if unknown:
        raise FlatnessOptionError(f"mask has tensors not in params: {unknown[:3]}")
    if mask and not any(bool(m.any()) for m in mask.values()):
        raise EmptyParamsError(f"the mask prunes everything: all {len(mask)} mask tensors "
                               f"are all-False, no weight left to measure")
    base = {}
    for k, v in params.items():
        v = v.detach().to(device)
        if k in mask:
            m = mask[k].to(device)
            if m.shape != v.shape:
                raise FlatnessOptionError(f"mask[{k!r}] has shape {tuple(m.shape)}, "
                                          f"params[{k!r}] {tuple(v.shape)}")
            v = v * m.to(v.dtype)
        base[k] = v
    return base


class Objective:
    """The mean loss as a function of the free (selected, unpruned) parameter entries.

    ``names`` are the free tensors, ``sizes`` their free entry counts, ``n`` the total: a
    free-coordinate vector has ``n`` entries (:meth:`flatten` / :meth:`unflatten`). ``hvp``
    counts Hessian-vector products in ``n_hvp``.
    """

    def __init__(self, model, params, data, loss_fn, *, mask=None, param_filter=None,
                 device="cpu", batch_size=None, logits_fn=None):
        self.device = torch.device(device)
        self.model = model
        self.loss_fn, self.logits_fn = loss_fn, logits_fn
        if batch_size is not None and batch_size < 1:
            raise FlatnessOptionError(f"batch_size must be >= 1, got {batch_size}")
        data = as_data(data)
        self.name = data.name
        self.batches = list(data.batches(batch_size, self.device))
        self.n_data = sum(b.n for b in self.batches)
        mask = dict(mask or {})
        self.base = _masked_base(params, mask, self.device)
        trainable = {n for n, _ in model.named_parameters()}
        self.names = [k for k in params if k in trainable and params[k].is_floating_point()
                      and (param_filter is None or param_filter(k, params[k]))]
        self.masks = {k: mask[k].to(self.device).bool() for k in self.names if k in mask}
        self.sizes = [int(self.masks[k].sum()) if k in self.masks else self.base[k].numel()
                      for k in self.names]
        self.n = sum(self.sizes)
        if self.n == 0:
            what = "the mask prunes every selected parameter" if mask else \
                "param_filter excludes every parameter"
            raise EmptyParamsError(f"no parameter left to measure: {what}")
        self.dtype = self.base[self.names[0]].dtype
        self.n_hvp = 0
        self._graph = None  # (leaves, grads) reused across HVPs when there is one batch

    # -- vectors <-> tensors
    def unflatten(self, vec: torch.Tensor) -> list[torch.Tensor]:
        """Free-coordinate vector -> full-shape tensors (zero at pruned entries)."""
        out = []
        for k, seg in zip(self.names, vec.to(self.dtype).split(self.sizes)):
            if k in self.masks:
                full = torch.zeros(self.base[k].shape, dtype=self.dtype, device=self.device)
                full[self.masks[k]] = seg
                out.append(full)
            else:
                out.append(seg.view(self.base[k].shape))
        return out

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t[self.masks[k]] if k in self.masks else t.reshape(-1)
                          for k, t in zip(self.names, tensors)])

    def free_tensors(self) -> list[torch.Tensor]:
        return [self.base[k] for k in self.names]

    def free_values(self) -> torch.Tensor:
        return self.flatten(self.free_tensors())

    # -- loss
    def params_with(self, tensors) -> dict[str, torch.Tensor]:
        """``base`` with ``tensors`` in place of the free tensors."""
        p = dict(self.base)
        p.update(zip(self.names, tensors))
        return p

    def _batch_loss(self, tensors, batch):
        out = forward(self.model, batch, self.params_with(tensors), name=self.name)
        return batch_loss(logits_of(out, self.logits_fn), batch, self.loss_fn, name=self.name)

    def loss(self, tensors=None, batches=None) -> float:
        """The mean loss ``sum_b |b| l_b / sum_b |b|`` over ``batches`` (default: all data) at
        ``base`` with ``tensors`` replacing the free tensors, each ``l_b`` the batch loss whose
        gradient and Hessian the other methods take."""
        tensors = self.free_tensors() if tensors is None else tensors
        batches = self.batches if batches is None else batches
        with torch.no_grad(), eval_mode(self.model):
            total = sum(float(self._batch_loss(tensors, b)) * b.n for b in batches)
        return total / sum(b.n for b in batches)

    def loss_and_grad(self, tensors, batches=None):
        """Mean loss and its gradient w.r.t. ``tensors`` (list) over ``batches``."""
        batches = self.batches if batches is None else batches
        n = sum(b.n for b in batches)
        leaves = [t.detach().requires_grad_(True) for t in tensors]
        total, grads = 0.0, [torch.zeros_like(t) for t in leaves]
        with eval_mode(self.model):
            for batch in batches:
                loss = self._batch_loss(leaves, batch) * (batch.n / n)
                g = torch.autograd.grad(loss, leaves)
                total += float(loss.detach())
                grads = [a + b for a, b in zip(grads, g)]
        return total, grads

    def check_finite(self) -> float:
        value = self.loss()
        if not math.isfinite(value):
            raise NonFiniteLossError(f"loss at the checkpoint is {value}: the Hessian is "
                                     f"undefined there (not iterating)")
        return value

    def gradient(self) -> torch.Tensor:
        """The mean loss's gradient in the free coordinates (from the HVP graph when there is
        one batch, else one extra pass over the data)."""
        if len(self.batches) == 1:
            grads = [g.detach() for g in self.graph()[1]]
        else:
            grads = self.loss_and_grad(self.free_tensors())[1]
        return self.flatten(grads)

    # -- Hessian-vector product
    def graph(self):
        """``(leaves, grads)`` of the one batch with ``create_graph=True``, built once; raises
        :class:`NonFiniteLossError` when the loss or gradient is not finite."""
        if self._graph is None:
            leaves = [t.detach().clone().requires_grad_(True) for t in self.free_tensors()]
            with eval_mode(self.model):
                loss = self._batch_loss(leaves, self.batches[0])
                if not math.isfinite(float(loss.detach())):
                    raise NonFiniteLossError(f"loss at the checkpoint is {float(loss.detach())}: "
                                             f"the Hessian is undefined there (not iterating)")
                grads = torch.autograd.grad(loss, leaves, create_graph=True)
            if not all(bool(torch.isfinite(g).all()) for g in grads):
                raise NonFiniteLossError("gradient at the checkpoint is not finite: the Hessian "
                                         "is undefined there (not iterating)")
            self._graph = (leaves, grads)
        return self._graph

    def hvp(self, vec: torch.Tensor) -> torch.Tensor:
        """``H v`` for a free-coordinate vector ``vec`` (any float dtype; returns self.dtype),
        by double backprop (Pearlmutter 1994)."""
        try:
            return self._hvp(vec)
        except RuntimeError as e:
            if "derivative for" not in str(e):
                raise
            # fused kernels (flash / memory-efficient attention) have no double backward
            raise FlatnessError(f"the model uses an op without a second derivative, so "
                                f"Hessian-vector products are impossible: {one_line(e)} (build "
                                f"a Hugging Face model with attn_implementation='eager')") from e

    def _hvp(self, vec: torch.Tensor) -> torch.Tensor:
        v = self.unflatten(vec)
        if len(self.batches) == 1:
            leaves, grads = self.graph()
            hv = torch.autograd.grad(grads, leaves, grad_outputs=v, retain_graph=True,
                                     allow_unused=True)
        else:
            hv = [torch.zeros_like(t) for t in v]
            with eval_mode(self.model):
                for batch in self.batches:
                    leaves = [t.detach().clone().requires_grad_(True)
                              for t in self.free_tensors()]
                    loss = self._batch_loss(leaves, batch) * (batch.n / self.n_data)
                    grads = torch.autograd.grad(loss, leaves, create_graph=True)
                    part = torch.autograd.grad(grads, leaves, grad_outputs=v, allow_unused=True)
                    hv = [a + (b if b is not None else 0) for a, b in zip(hv, part)]
        hv = [torch.zeros_like(t) if h is None else h for h, t in zip(hv, v)]
        self.n_hvp += 1
        return self.flatten(hv).detach()


# ----------------------------------------------------------------------------- gauge fixing

@dataclass(frozen=True)
class GaugeFixed(Result):
    """A measure at ``params`` (``raw``) and at ``canonicalize_scale(params)`` (``gauge_fixed``)."""

    raw: Any
    gauge_fixed: Any


def gauge_fix(model: nn.Module, params: Mapping[str, torch.Tensor], example_input: torch.Tensor,
              *, spec=None, mask=None, **canon_kwargs) -> dict[str, torch.Tensor]:
    """``canonicalize_scale(spec, params)``: the balanced point of the ReLU-rescaling orbit.

    ``spec`` defaults to ``infer_spec(model, example_input)``. Masked-out entries stay 0
    (rescaling multiplies entries, so zeros stay zeros).
    """
    from gauge.infer import infer_spec
    from gauge.symmetry import canonicalize_scale
    if spec is None:
        spec = infer_spec(model, example_input)
    p = {k: v.detach() for k, v in params.items()}
    if mask:
        p = {k: (v * mask[k].to(v.device, v.dtype) if k in mask else v) for k, v in p.items()}
    return canonicalize_scale(spec, p, **canon_kwargs)


def raw_and_gauge_fixed(measure, model, params, data, gauge_fixed: bool, spec, mask,
                        canon_kwargs):
    """``measure(params)``, or with ``gauge_fixed`` :class:`GaugeFixed` of ``measure`` at
    ``params`` and at :func:`gauge_fix` of them."""
    if not gauge_fixed:
        return measure(params)
    raw = measure(params)
    fixed_params = gauge_fix(model, params, as_data(data).example_inputs(2), spec=spec,
                             mask=mask, **(canon_kwargs or {}))
    return GaugeFixed(raw=raw, gauge_fixed=measure(fixed_params))
