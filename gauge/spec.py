"""Permutation specs: which axes of which parameters share one neuron permutation.

A hidden unit of a network can be moved to another position without changing the function,
provided every tensor axis that indexes that unit moves with it: the output row of the layer
that produces it (weight axis 0, bias, BatchNorm affine params and running statistics) and the
input column of every layer that consumes it. A :class:`PermutationSpec` lists those tied axes
as *groups* (Hecht-Nielsen 1990; the ``axes_to_perm`` dicts of Ainsworth et al. 2022 "Git
Re-Basin"). The permutation group of the network is the product of ``S_n`` over the groups.

Some axes carry a group with a *layout*: a flattened ``(C, H, W)`` feature map feeding a
linear layer indexes channel ``c`` by the contiguous block ``c*H*W .. (c+1)*H*W - 1``, and the
stacked ``in_proj_weight`` of multi-head attention indexes head ``h`` by one block of
``head_dim`` rows in each of the q, k and v thirds. A layout ``(repeat, block)`` says the axis
has size ``repeat * n * block`` and unit ``i`` of the group owns, in each of the ``repeat``
copies, the ``block`` consecutive entries starting at ``i * block``.

A spec is data: write one by hand with :meth:`PermutationSpec.from_axes`, or let
:func:`gauge.infer.infer_spec` find a model's by tracing it.

A group is *rescalable* (positive rescaling symmetry of ReLU networks, Neyshabur et al. 2015)
when it is produced by linear/conv layers and reaches its consumers only through positively
homogeneous ops (ReLU, LeakyReLU, pooling, reshapes, residual adds of streams that scale
together); a normalization layer, a bounded activation or attention on the way excludes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch

from gauge.errors import SpecError

__all__ = ["PermutationSpec", "axis_layout"]

Axis = tuple[str, int]


def _shape_of(value) -> tuple[int, ...]:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    return tuple(int(d) for d in value)


def _check_axes_cover(axes: Mapping[str, tuple], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Every param has an axes entry with one entry per dimension, and no other key does."""
    missing = [k for k in axes if k not in shapes]
    if missing:
        raise SpecError(f"spec names {missing[0]!r}, which is not among the params")
    uncovered = [k for k in shapes if k not in axes]
    if uncovered:
        raise SpecError(f"the spec does not cover param {uncovered[0]!r} "
                        f"(every state_dict entry needs an axes entry)")
    for k, groups in axes.items():
        if len(groups) != len(shapes[k]):
            raise SpecError(f"spec gives {len(groups)} axes for {k!r}, whose shape is "
                            f"{shapes[k]}")


def _fit_layouts(perm_to_axes, sizes, shapes, layouts) -> None:
    """Check each member axis against its group's size, adding the flatten layout
    ``(1, size // n)`` (in place) where an axis is larger than its group and has none."""
    for g, members in perm_to_axes.items():
        n = sizes[g]
        for k, ax in members:
            if k not in shapes:
                continue
            size = shapes[k][ax]
            if (k, ax) not in layouts and size != n:
                if n <= 0 or size % n:
                    raise SpecError(f"axis {ax} of {k!r} has size {size}, which is not a "
                                    f"multiple of group {g!r}'s size {n}")
                layouts[(k, ax)] = (1, size // n)
            r, b = layouts.get((k, ax), (1, 1))
            if r * n * b != size:
                raise SpecError(f"axis {ax} of {k!r} has size {size} but group {g!r} "
                                f"(size {n}) with layout {(r, b)} needs {r * n * b}")


@dataclass(frozen=True, eq=False)
class PermutationSpec:
    """Groups of tied axes over the keys of a ``state_dict``.

    Attributes:
        axes: ``param_name -> (group | None, ...)``, one entry per axis of every entry of the
            state_dict (buffers included; scalars such as ``num_batches_tracked`` get ``()``).
        perm_to_axes: ``group -> [(param_name, axis), ...]``, the inverse of ``axes``.
        sizes: ``group -> n``, the number of units the group permutes.
        shapes: ``param_name -> shape`` the spec was built for.
        layouts: ``(param_name, axis) -> (repeat, block)`` for axes whose size is not ``n``;
            see the module docstring. Missing entries mean ``(1, 1)``.
        rescalable: groups on which positive per-unit rescaling is a symmetry; for those, axis 0
            of a member scales by ``s`` (the producing layer) and any other axis by ``1/s``.
    """

    axes: dict[str, tuple[str | None, ...]]
    perm_to_axes: dict[str, list[Axis]]
    sizes: dict[str, int]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    layouts: dict[Axis, tuple[int, int]] = field(default_factory=dict)
    rescalable: frozenset = frozenset()

    @property
    def groups(self) -> list[str]:
        """Group names in a stable order (input side first for inferred specs)."""
        return list(self.sizes)

    def layout(self, name: str, axis: int) -> tuple[int, int]:
        """``(repeat, block)`` of ``name``'s ``axis`` (``(1, 1)`` for a plain axis)."""
        return self.layouts.get((name, axis), (1, 1))

    @classmethod
    def from_axes(cls, axes: Mapping[str, Sequence[str | None]],
                  params: Mapping[str, Any] | None = None, *,
                  sizes: Mapping[str, int] | None = None,
                  layouts: Mapping[Axis, tuple[int, int]] | None = None,
                  rescalable: Iterable[str] = ()) -> "PermutationSpec":
        """Build a spec from ``param_name -> (group | None, ...)`` written by hand.

        ``params`` (tensors or shapes) gives each group's size and checks that every axis fits;
        without it pass ``sizes``. An axis larger than its group with no explicit ``layouts``
        entry is read as the flatten layout ``(1, size // n)``.
        Raises :class:`SpecError` for inconsistent sizes or unknown groups.
        """
        axes = {str(k): tuple(None if g is None else str(g) for g in v) for k, v in axes.items()}
        layouts = dict(layouts or {})
        shapes = {k: _shape_of(v) for k, v in (params or {}).items()}
        if params is not None:
            _check_axes_cover(axes, shapes)
        perm_to_axes: dict[str, list[Axis]] = {}
        for k, groups in axes.items():
            for ax, g in enumerate(groups):
                if g is not None:
                    perm_to_axes.setdefault(g, []).append((k, ax))
        out_sizes: dict[str, int] = {}
        for g, members in perm_to_axes.items():
            if sizes is not None and g in sizes:
                out_sizes[g] = int(sizes[g])
                continue
            if not shapes:
                raise SpecError(f"size of group {g!r} unknown: pass params or sizes")
            plain = [shapes[k][ax] // math.prod(layouts[(k, ax)]) if (k, ax) in layouts
                     else shapes[k][ax] for k, ax in members]
            out_sizes[g] = min(plain)
        _fit_layouts(perm_to_axes, out_sizes, shapes, layouts)
        if sizes is not None:
            unknown = [g for g in sizes if g not in perm_to_axes]
            if unknown:
                raise SpecError(f"sizes name group {unknown[0]!r}, which no axis uses")
        rescalable = frozenset(rescalable)
        unknown = [g for g in rescalable if g not in perm_to_axes]
        if unknown:
            raise SpecError(f"rescalable names group {unknown[0]!r}, which no axis uses")
        layouts = {a: tuple(v) for a, v in layouts.items() if tuple(v) != (1, 1)}
        return cls(axes=axes, perm_to_axes=perm_to_axes, sizes=out_sizes, shapes=shapes,
                   layouts=layouts, rescalable=rescalable)

    def check_params(self, params: Mapping[str, Any], source: str = "params") -> None:
        """Raise :class:`SpecError` unless every key of ``params`` is in the spec with the shape
        the spec was built for (``params`` may be a subset, e.g. a mask over weights only)."""
        for k, v in params.items():
            if k not in self.axes:
                raise SpecError(f"{source}: {k!r} is not covered by the permutation spec")
            shape = _shape_of(v)
            if k in self.shapes and shape != self.shapes[k]:
                raise SpecError(f"{source}: {k!r} has shape {shape}, the spec expects "
                                f"{self.shapes[k]}")
            if not self.shapes and len(shape) != len(self.axes[k]):
                raise SpecError(f"{source}: {k!r} has {len(shape)} axes, the spec gives "
                                f"{len(self.axes[k])}")

    def describe(self) -> str:
        """A readable table: group, size, rescalable, members (``param[axis]``, layouts noted)."""
        rows = []
        for g in self.groups:
            members = []
            for k, ax in self.perm_to_axes[g]:
                r, b = self.layout(k, ax)
                extra = "" if (r, b) == (1, 1) else (
                    f" (blocks of {b})" if r == 1 else f" ({r} x blocks of {b})")
                members.append(f"{k}[{ax}]{extra}")
            rows.append((g, str(self.sizes[g]), "yes" if g in self.rescalable else "no",
                         ", ".join(members)))
        head = ("group", "size", "rescalable", "members")
        w = [max([len(head[i])] + [len(r[i]) for r in rows]) for i in range(3)]
        lines = [f"{head[0]:<{w[0]}}  {head[1]:>{w[1]}}  {head[2]:<{w[2]}}  {head[3]}"]
        lines += [f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:<{w[2]}}  {r[3]}" for r in rows]
        fixed = [k for k, v in self.axes.items() if all(g is None for g in v)]
        lines.append(f"{len(self.groups)} groups; {len(fixed)} of {len(self.axes)} tensors are "
                     f"never permuted")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"groups": {g: {"size": self.sizes[g], "rescalable": g in self.rescalable,
                               "members": [[k, ax, *self.layout(k, ax)]
                                           for k, ax in self.perm_to_axes[g]]}
                           for g in self.groups}}

    def to_networkx(self):
        """The spec as a graph of groups and parameter axes
        (:func:`gauge.spec_graph.spec_graph`)."""
        from gauge.spec_graph import spec_graph
        return spec_graph(self)

    def describe_fixed(self) -> str:
        """The axes no group permutes, by module (:func:`gauge.spec_graph.describe_fixed`)."""
        from gauge.spec_graph import describe_fixed
        return describe_fixed(self)


def axis_layout(spec: PermutationSpec, name: str, axis: int) -> tuple[int, int]:
    """``(repeat, block)`` of an axis (module-level alias of :meth:`PermutationSpec.layout`)."""
    return spec.layout(name, axis)
