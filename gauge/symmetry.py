"""The gauge group acting on parameters: neuron permutations and positive rescalings.

Permutations (Hecht-Nielsen 1990). A :data:`Permutation` maps each group of a
:class:`~gauge.spec.PermutationSpec` to a ``LongTensor`` ``perm`` of its size. Applying it follows
git-re-basin's convention (Ainsworth et al. 2022): every axis of the group is re-indexed with
``index_select(axis, perm)``, i.e. unit ``i`` of the result is unit ``perm[i]`` of the input.
For a linear layer ``W' = P W`` on its output axis and ``W'' = W P^T`` on the next layer's input
axis, so ``W''_{l+1} sigma(W'_l x) = W_{l+1} sigma(W_l x)`` for any elementwise ``sigma``.

Rescalings (Neyshabur et al. 2015). For a positively homogeneous activation
(``relu(s z) = s relu(z)`` for ``s > 0``), scaling the incoming weights and bias of a hidden unit
by ``s`` and its outgoing weights by ``1/s`` leaves the function unchanged. Only groups the spec
marks ``rescalable`` are touched: axis 0 of a member (the producing layer) scales by ``s``, any
other axis (the consuming layers) by ``1/s``.

:func:`canonicalize_scale` fixes the rescaling gauge at the minimum-L2 point of the orbit by
Equi-normalization (Stock et al. 2019, "Equi-normalization of neural networks"): for each unit,
``s = (||out||^2 / ||in||^2)^(1/4)`` minimises ``s^2 ||in||^2 + ||out||^2 / s^2``; cycling over the
groups is block coordinate descent on a convex function of ``log s`` and converges to the
balanced point where every unit's incoming and outgoing norms are equal.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Mapping

import torch
from torch import nn

from gauge.batches import as_data, forward, logits_of
from gauge.errors import SpecError, check_same_keys
from gauge.spec import PermutationSpec

__all__ = ["Permutation", "random_permutation", "identity_permutation", "apply_permutation",
           "invert", "compose", "expand_index", "axis_index", "random_scales", "random_rescaling",
           "apply_rescaling", "canonicalize_scale", "function_distance", "check_permutation"]

#: ``group -> LongTensor`` of that group's size.
Permutation = dict[str, torch.Tensor]


def expand_index(perm: torch.Tensor, layout: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """Index over a whole axis of layout ``(repeat, block)`` that moves unit ``i`` to ``perm[i]``
    in every repeat, carrying its block of ``block`` consecutive entries along."""
    r, b = layout
    if (r, b) == (1, 1):
        return perm
    n = perm.numel()
    idx = perm.view(1, n, 1) * b + torch.arange(b, device=perm.device).view(1, 1, b)
    idx = idx + (torch.arange(r, device=perm.device) * n * b).view(r, 1, 1)
    return idx.reshape(-1)


def axis_index(spec: PermutationSpec, perm: Mapping[str, torch.Tensor], name: str, axis: int,
               device: torch.device | str = "cpu") -> torch.Tensor | None:
    """The gather index of ``name``'s ``axis`` under ``perm``: each piece of a concatenated axis
    is re-indexed within its own block, then the axis layout expands units to entries. None when
    no piece of the axis moves."""
    pieces = spec.entry_pieces(name, axis)
    if not any(g is not None and g in perm for g, _, _ in pieces):
        return None
    parts = [perm[g].to(device) + off if g is not None and g in perm
             else torch.arange(off, off + n, device=device) for g, off, n in pieces]
    idx = parts[0] if len(parts) == 1 else torch.cat(parts)
    return expand_index(idx, spec.layout(name, axis))


def _block_map(spec: PermutationSpec, g: str, p: torch.Tensor) -> torch.Tensor | None:
    """The block permutation ``p`` induces on nested group ``g``, or None if ``p`` splits a
    block."""
    c = spec.blocks[g][1]
    q = p.view(-1, c)
    head = q[:, :1] // c
    if not bool((q // c == head).all()):
        return None
    return head.reshape(-1)


def check_permutation(spec: PermutationSpec, perm: Mapping[str, torch.Tensor],
                      source: str = "perm") -> None:
    """Raise :class:`SpecError` unless ``perm`` maps groups of ``spec`` to permutations of the
    right sizes (missing groups mean the identity)."""
    for g, p in perm.items():
        if g not in spec.sizes:
            raise SpecError(f"{source}: group {g!r} is not in the spec (groups: "
                            f"{', '.join(spec.groups[:8])}{'...' if len(spec.groups) > 8 else ''})")
        n = spec.sizes[g]
        if not isinstance(p, torch.Tensor) or p.dim() != 1 or p.numel() != n:
            raise SpecError(f"{source}: group {g!r} needs a 1-D index tensor of size {n}")
        if p.dtype.is_floating_point or p.dtype == torch.bool:
            raise SpecError(f"{source}: group {g!r} is not an integer tensor ({p.dtype})")
        if not torch.equal(torch.sort(p.cpu()).values, torch.arange(n)):
            raise SpecError(f"{source}: group {g!r} is not a permutation of 0..{n - 1}")
    for g, (o, c) in spec.blocks.items():
        if g not in perm:
            if o is not None and o in perm and not torch.equal(
                    perm[o].cpu(), torch.arange(spec.sizes[o])):
                raise SpecError(f"{source}: group {o!r} moves the blocks of group {g!r}, "
                                f"which has no permutation")
            continue
        blocks = _block_map(spec, g, perm[g].cpu())
        want = torch.arange(spec.sizes[g] // c) if o is None or o not in perm else perm[o].cpu()
        if blocks is None or not torch.equal(blocks, want):
            raise SpecError(f"{source}: group {g!r} must move whole blocks of {c} units "
                            f"{'in place' if o is None else f'as group {o!r} does'}")


def random_permutation(spec: PermutationSpec, seed: int) -> Permutation:
    """A uniformly random element of the spec's permutation group, drawn from ``seed``: for a
    nested group, its outer group's permutation moves the blocks and each block gets its own
    uniform permutation of its units."""
    gen = torch.Generator().manual_seed(int(seed))
    out: Permutation = {}
    for g, n in spec.sizes.items():  # outer groups come first
        if g not in spec.blocks:
            out[g] = torch.randperm(n, generator=gen)
            continue
        o, c = spec.blocks[g]
        outer = out[o] if o is not None else torch.arange(n // c)
        inner = torch.argsort(torch.rand(n // c, c, generator=gen), dim=1)
        out[g] = (outer.view(-1, 1) * c + inner).reshape(-1)
    return out


def identity_permutation(spec: PermutationSpec) -> Permutation:
    """The identity permutation of every group."""
    return {g: torch.arange(n) for g, n in spec.sizes.items()}


def apply_permutation(spec: PermutationSpec, perm: Mapping[str, torch.Tensor],
                      params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Permute ``params`` (any dtype, including bool masks) by ``perm``.

    ``params`` may be any subset of the spec's keys (a mask over the weights only, say); a key
    the spec does not know raises :class:`SpecError`. Groups missing from ``perm`` stay put.
    Tensors with no permuted axis are returned as they are (not copied); inputs are not changed.
    """
    check_permutation(spec, perm)
    spec.check_params(params)
    return _like(params, permute_unchecked(spec, perm, params))


def permute_unchecked(spec: PermutationSpec, perm: Mapping[str, torch.Tensor],
                      params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:func:`apply_permutation` without its checks, for callers that permute by a partial
    assignment (a matcher holding one group at the identity)."""
    out: dict[str, torch.Tensor] = {}
    cache: dict[tuple, torch.Tensor] = {}
    for k, t in params.items():
        for ax, g in enumerate(spec.axes[k]):
            if g is None:
                continue
            key = (g, spec.layout(k, ax), t.device)
            if key not in cache:
                cache[key] = axis_index(spec, perm, k, ax, t.device)
            if cache[key] is not None:
                t = t.index_select(ax, cache[key])
        out[k] = t
    return out


def _like(params: Mapping[str, torch.Tensor], out: dict[str, torch.Tensor]) -> dict:
    """``out`` carrying ``params``' ``_metadata`` (the module versions a ``state_dict`` records,
    which ``load_state_dict`` passes to ``_load_from_state_dict``), if it has any."""
    meta = getattr(params, "_metadata", None)
    if meta is None:
        return out
    res = OrderedDict(out)
    res._metadata = copy.deepcopy(meta)
    return res


def invert(perm: Mapping[str, torch.Tensor]) -> Permutation:
    """The inverse permutation: ``apply(invert(p), apply(p, params)) == params``."""
    return {g: torch.argsort(p) for g, p in perm.items()}


def compose(p: Mapping[str, torch.Tensor], q: Mapping[str, torch.Tensor]) -> Permutation:
    """``compose(p, q)`` acts as ``q`` first, then ``p``:
    ``apply(compose(p, q), x) == apply(p, apply(q, x))``; per group the index is ``q[p]``."""
    out = {}
    for g in set(p) | set(q):
        if g in p and g in q:
            out[g] = q[g][p[g].to(q[g].device)]
        else:
            out[g] = p[g] if g in p else q[g]
    return out


# --------------------------------------------------------------------------------------------
# Rescaling


def random_scales(spec: PermutationSpec, seed: int, log_range: float = 1.0
                  ) -> dict[str, torch.Tensor]:
    """Per-unit scales ``exp(U(-log_range, log_range))`` for every rescalable group."""
    gen = torch.Generator().manual_seed(int(seed))
    return {g: torch.exp((torch.rand(spec.sizes[g], generator=gen, dtype=torch.float64) * 2 - 1)
                         * float(log_range))
            for g in spec.groups if g in spec.rescalable}


def apply_rescaling(spec: PermutationSpec, scales: Mapping[str, torch.Tensor],
                    params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rescale the units of rescalable groups: axis 0 of each member by ``s``, other axes by
    ``1/s``. Non-floating tensors (masks) are unchanged: rescaling does not move weights."""
    spec.check_params(params)
    for g, s in scales.items():
        if g not in spec.rescalable:
            raise SpecError(f"group {g!r} is not rescalable in this spec (rescalable: "
                            f"{', '.join(sorted(spec.rescalable)) or 'none'})")
        if s.numel() != spec.sizes[g] or not bool((s > 0).all()):
            raise SpecError(f"scales for group {g!r} must be {spec.sizes[g]} positive numbers")
    out = {}
    for k, t in params.items():
        if t.dtype.is_floating_point:
            factor = None
            for ax, g in enumerate(spec.axes[k]):
                if g is None or g not in scales:  # rescalable groups are never concatenated
                    continue
                s = _expand_values(scales[g].to(t.device, torch.float64), spec.layout(k, ax))
                s = s if ax == 0 else 1.0 / s
                shape = [1] * t.dim()
                shape[ax] = -1
                s = s.view(shape)
                factor = s if factor is None else factor * s
            if factor is not None:
                t = (t.to(torch.float64) * factor).to(t.dtype)
        out[k] = t
    return _like(params, out)


def _expand_values(v: torch.Tensor, layout: tuple[int, int]) -> torch.Tensor:
    r, b = layout
    if (r, b) == (1, 1):
        return v
    return v.view(1, -1, 1).expand(r, -1, b).reshape(-1)


def random_rescaling(spec: PermutationSpec, params: Mapping[str, torch.Tensor], seed: int,
                     log_range: float = 1.0) -> dict[str, torch.Tensor]:
    """``params`` moved to a random point of their rescaling orbit:
    ``apply_rescaling(spec, random_scales(spec, seed, log_range), params)``."""
    return apply_rescaling(spec, random_scales(spec, seed, log_range), params)


def _members_by_role(spec, params, g):
    """Producing (axis 0) and consuming (other axes) floating members of ``g`` in ``params``."""
    prod, cons = [], []
    for k, ax in spec.perm_to_axes[g]:
        if k in params and params[k].dtype.is_floating_point:
            (prod if ax == 0 else cons).append((k, ax, spec.layout(k, ax)))
    return prod, cons


def _sq_norms(work, members, n):
    total = None
    for k, ax, (r, b) in members:
        x = work[k].movedim(ax, 0).reshape(r, n, b, -1)
        x = x.pow(2).sum(dim=(0, 2, 3))
        total = x if total is None else total + x
    return total


def _scale_(work, members, s, n, inverse):
    for k, ax, layout in members:
        v = _expand_values(1.0 / s if inverse else s, layout)
        shape = [1] * work[k].dim()
        shape[ax] = -1
        work[k].mul_(v.view(shape))


def canonicalize_scale(spec: PermutationSpec, params: Mapping[str, torch.Tensor], *,
                       tol: float = 1e-7, max_iter: int = 10_000) -> dict[str, torch.Tensor]:
    """The minimum-L2 point of ``params``' rescaling orbit (Equi-normalization, Stock et al.
    2019), as new params; function preserving and idempotent (up to ``tol``).

    Each sweep balances every rescalable group in turn with ``s = (||out||^2/||in||^2)^(1/4)``
    per unit (units with a zero incoming or outgoing norm are left alone); sweeps stop when no
    unit's ``|log s|`` exceeds ``tol`` or after ``max_iter`` sweeps. Computed in float64.
    """
    spec.check_params(params)
    work = {k: v.to(torch.float64, copy=True) for k, v in params.items()
            if v.dtype.is_floating_point}
    plan = []
    for g in spec.groups:
        if g in spec.rescalable:
            prod, cons = _members_by_role(spec, work, g)
            if prod and cons:
                plan.append((spec.sizes[g], prod, cons))
    for _ in range(max_iter):
        worst = 0.0
        for n, prod, cons in plan:
            a, b = _sq_norms(work, prod, n), _sq_norms(work, cons, n)
            ok = (a > 0) & (b > 0)
            s = torch.where(ok, (b / torch.where(ok, a, 1.0)) ** 0.25, torch.ones_like(a))
            worst = max(worst, float(s.log().abs().max()))
            _scale_(work, prod, s, n, inverse=False)
            _scale_(work, cons, s, n, inverse=True)
        if worst <= tol:
            break
    return {k: work[k].to(v.dtype) if k in work else v for k, v in params.items()}


# --------------------------------------------------------------------------------------------


def function_distance(model: nn.Module, params_a: Mapping[str, torch.Tensor],
                      params_b: Mapping[str, torch.Tensor], inputs, *,
                      batch_size: int = 1024, device: str | torch.device | None = None) -> float:
    """``max |f(x; params_a) - f(x; params_b)|`` of the logits (:func:`gauge.batches.logits_of`)
    over ``inputs``, a tensor or data in any form of :mod:`gauge.batches` (eval mode; the
    model's own weights and mode are left unchanged). Raises :class:`MismatchError` for
    different keys or shapes."""
    check_same_keys(params_a, params_b)
    data = as_data(inputs, "inputs")
    device = torch.device(device) if device is not None else data.device or torch.device("cpu")
    was = model.training
    model.eval()
    worst = 0.0
    try:
        pa = {k: v.to(device) for k, v in params_a.items()}
        pb = {k: v.to(device) for k, v in params_b.items()}
        with torch.no_grad():
            for batch in data.batches(batch_size, device):
                ya = logits_of(forward(model, batch, pa, name=data.name))
                yb = logits_of(forward(model, batch, pb, name=data.name))
                worst = max(worst, float((ya - yb).abs().max()))
    finally:
        model.train(was)
    return worst
