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

Two extensions keep real architectures' symmetry in the same data:

* *Concatenation*: an axis entry may be a tuple of pieces, ``("a", "b", 3)``, meaning the axis
  is the concatenation of group ``a``'s units, group ``b``'s units and 3 units held fixed (an int
  is a fixed piece); the layout ``(repeat, block)`` of the axis applies to the concatenated whole.
  A group may appear twice (the q and k thirds of a stacked ``in_proj_weight``). Each piece is
  permuted within its own block of the axis (DenseNet, Inception, SqueezeNet; Huang et al. 2017).
* *Nested groups*: ``blocks[g] = (outer, c)`` says group ``g`` (size ``B * c``) is ``B`` blocks of
  ``c`` units that move as whole blocks by the permutation of group ``outer`` (size ``B``), while
  the units inside each block are permuted independently per block; ``outer`` ``None`` keeps the
  blocks in place. This is the wreath product ``S_c wr S_B`` of attention heads (heads permute,
  and inside each head the value/output and query/key dims permute; Vaswani et al. 2017) and of
  grouped convolutions (groups permute, channels permute within a group; Xie et al. 2017).
  Several groups may share one outer group (the q/k dims and the v dims of the same heads); an
  outer group needs no member axis of its own. A permutation of ``g`` is still one index over
  its ``B * c`` units; it maps block ``b`` onto block ``perm[outer][b]``.

A spec is data: write one by hand with :meth:`PermutationSpec.from_axes`, or let
:func:`gauge.infer.infer_spec` find a model's by tracing it.

A group is *rescalable* (positive rescaling symmetry of ReLU networks, Neyshabur et al. 2015)
when it is produced by linear/conv layers and reaches its consumers only through positively
homogeneous ops (ReLU, LeakyReLU, pooling, reshapes, residual adds of streams that scale
together); a normalization layer, a bounded activation or attention on the way excludes it.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch

from gauge.errors import SpecError

__all__ = ["PermutationSpec", "axis_layout", "permuted_fraction"]

Axis = tuple[str, int]
def piece_groups(entry) -> list[str]:
    """The groups named by an axis entry (in order, repeats kept)."""
    if entry is None:
        return []
    if isinstance(entry, tuple):
        return [p for p in entry if isinstance(p, str)]
    return [entry]


def _norm_entry(entry):
    if entry is None:
        return None
    if isinstance(entry, (tuple, list)):
        pieces = tuple(p if isinstance(p, int) and not isinstance(p, bool) else str(p)
                       for p in entry)
        if not pieces:
            raise SpecError("an empty concatenation is not an axis entry")
        return pieces
    return str(entry)


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


def _entry_units(entry, sizes) -> int | None:
    """Number of units of an axis entry, or None if a group's size is unknown."""
    pieces = entry if isinstance(entry, tuple) else (entry,)
    total = 0
    for p in pieces:
        if isinstance(p, int):
            total += p
        elif p in sizes:
            total += sizes[p]
        else:
            return None
    return total


def _group_sizes(axes, perm_to_axes, shapes, layouts, sizes, blocks) -> dict[str, int]:
    """Each group's size: given, read off a plain member (the smallest, as flatten layouts only
    enlarge an axis), solved from a concatenation with one unknown piece, or from blocks."""
    out: dict[str, int] = {str(g): int(n) for g, n in (sizes or {}).items()
                           if str(g) in perm_to_axes}
    for g, members in perm_to_axes.items():
        if g in out:
            continue
        plain = [shapes[k][ax] // math.prod(layouts.get((k, ax), (1, 1))) for k, ax in members
                 if k in shapes and not isinstance(axes[k][ax], tuple)]
        if plain:
            out[g] = min(plain)
    progress = True
    while progress and len(out) < len(perm_to_axes):
        progress = False
        for g, (o, c) in blocks.items():
            if o is not None and o not in out and g in out:
                out[o], progress = out[g] // c, True
            if g not in out and o is not None and o in out:
                out[g], progress = out[o] * c, True
        for k, groups in axes.items():
            for ax, entry in enumerate(groups):
                if not isinstance(entry, tuple) or k not in shapes:
                    continue
                unknown = {p for p in entry if isinstance(p, str) and p not in out}
                if len(unknown) != 1:
                    continue
                g = unknown.pop()
                r, b = layouts.get((k, ax), (1, 1))
                known = sum(p if isinstance(p, int) else out[p] for p in entry if p != g)
                n, rest = divmod(shapes[k][ax] // (r * b) - known, entry.count(g))
                if n > 0 and not rest:
                    out[g], progress = n, True
    missing = [g for g in perm_to_axes if g not in out]
    if missing:
        raise SpecError(f"size of group {missing[0]!r} unknown: pass params or sizes")
    return out


def _fit_layouts(axes, sizes, shapes, layouts) -> None:
    """Check each axis against its entry's size, adding the flatten layout ``(1, size // n)``
    (in place) where an axis is larger than its entry and has no layout."""
    for k, groups in axes.items():
        if k not in shapes:
            continue
        for ax, entry in enumerate(groups):
            if entry is None:
                continue
            n = _entry_units(entry, sizes)
            size = shapes[k][ax]
            what = f"group {entry!r}" if isinstance(entry, str) else f"concatenation {entry!r}"
            if (k, ax) not in layouts and size != n:
                if n <= 0 or size % n:
                    raise SpecError(f"axis {ax} of {k!r} has size {size}, which is not a "
                                    f"multiple of {what}'s size {n}")
                layouts[(k, ax)] = (1, size // n)
            r, b = layouts.get((k, ax), (1, 1))
            if r * n * b != size:
                raise SpecError(f"axis {ax} of {k!r} has size {size} but {what} "
                                f"(size {n}) with layout {(r, b)} needs {r * n * b}")


def _check_blocks(blocks, sizes) -> None:
    for g, (o, c) in blocks.items():
        if c < 1 or sizes[g] % c:
            raise SpecError(f"group {g!r} (size {sizes[g]}) is not made of blocks of {c}")
        if o is not None:
            if o not in sizes or sizes[o] * c != sizes[g]:
                raise SpecError(f"group {g!r} has {sizes[g] // c} blocks of {c} but its outer "
                                f"group {o!r} has size {sizes.get(o)}")
            seen, h = {g}, o
            while h is not None:
                if h in seen:
                    raise SpecError(f"blocks of group {g!r} nest in a cycle")
                seen.add(h)
                h = blocks.get(h, (None, 1))[0]


def _depth(g, blocks) -> int:
    d = 0
    while g in blocks and blocks[g][0] is not None and d < 64:
        g, d = blocks[g][0], d + 1
    return d


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
        blocks: ``group -> (outer | None, block size)`` for nested groups (module docstring).
        reasons: ``(param_name, axis) -> why`` an axis of size > 1 is held fixed, or, for an
            axis a group permutes, why its other part (a layout's repeat or block, a fixed
            piece) stays in place; recorded by :func:`gauge.infer.infer_spec`, optional for a
            spec written by hand. Reasons explain the spec; they do not change what it permutes.
    """

    axes: dict[str, tuple[str | None, ...]]
    perm_to_axes: dict[str, list[Axis]]
    sizes: dict[str, int]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    layouts: dict[Axis, tuple[int, int]] = field(default_factory=dict)
    rescalable: frozenset = frozenset()
    blocks: dict[str, tuple[str | None, int]] = field(default_factory=dict)
    reasons: dict[Axis, str] = field(default_factory=dict)

    @property
    def groups(self) -> list[str]:
        """Group names in a stable order (input side first for inferred specs)."""
        return list(self.sizes)

    def layout(self, name: str, axis: int) -> tuple[int, int]:
        """``(repeat, block)`` of ``name``'s ``axis`` (``(1, 1)`` for a plain axis)."""
        return self.layouts.get((name, axis), (1, 1))

    @classmethod
    def from_axes(cls, axes: Mapping[str, Sequence],
                  params: Mapping[str, Any] | None = None, *,
                  sizes: Mapping[str, int] | None = None,
                  layouts: Mapping[Axis, tuple[int, int]] | None = None,
                  rescalable: Iterable[str] = (),
                  blocks: Mapping[str, tuple[str | None, int]] | None = None,
                  reasons: Mapping[Axis, str] | None = None
                  ) -> "PermutationSpec":
        """Build a spec from ``param_name -> (entry, ...)`` written by hand, one entry per axis:
        a group, ``None``, or a tuple of pieces (groups and fixed sizes) for a concatenated axis.

        ``params`` (tensors or shapes) gives each group's size and checks that every axis fits;
        without it pass ``sizes``. An axis larger than its group (its pieces) with no explicit
        ``layouts`` entry is read as the flatten layout ``(1, size // n)``. ``blocks`` makes
        groups nested (see the module docstring); an outer group's size follows from it.
        ``reasons`` maps ``(param_name, axis)`` to why that axis (or its unpermuted part) is
        held fixed. Raises :class:`SpecError` for inconsistent sizes or unknown groups.
        """
        axes = {str(k): tuple(_norm_entry(g) for g in v) for k, v in axes.items()}
        layouts = dict(layouts or {})
        blocks = {str(g): (None if o is None else str(o), int(c))
                  for g, (o, c) in (blocks or {}).items()}
        shapes = {k: _shape_of(v) for k, v in (params or {}).items()}
        if params is not None:
            _check_axes_cover(axes, shapes)
        perm_to_axes: dict[str, list[Axis]] = {}
        for k, groups in axes.items():
            for ax, entry in enumerate(groups):
                for g in piece_groups(entry):
                    if (k, ax) not in perm_to_axes.setdefault(g, []):
                        perm_to_axes[g].append((k, ax))
        for g, (o, _) in blocks.items():
            if g not in perm_to_axes:
                raise SpecError(f"blocks names group {g!r}, which no axis uses")
            if o is not None:
                perm_to_axes.setdefault(o, [])
        out_sizes = _group_sizes(axes, perm_to_axes, shapes, layouts, sizes, blocks)
        _fit_layouts(axes, out_sizes, shapes, layouts)
        _check_blocks(blocks, out_sizes)
        if sizes is not None:
            unknown = [g for g in sizes if g not in perm_to_axes]
            if unknown:
                raise SpecError(f"sizes name group {unknown[0]!r}, which no axis uses")
        rescalable = frozenset(rescalable)
        unknown = [g for g in rescalable if g not in perm_to_axes]
        if unknown:
            raise SpecError(f"rescalable names group {unknown[0]!r}, which no axis uses")
        for g in rescalable:
            if g in blocks or any(o == g for o, _ in blocks.values()) or any(
                    isinstance(axes[k][ax], tuple) for k, ax in perm_to_axes[g]):
                raise SpecError(f"rescalable group {g!r} must be a plain group (no blocks, no "
                                f"concatenated member axis)")
        layouts = {a: tuple(v) for a, v in layouts.items() if tuple(v) != (1, 1)}
        reasons = {(str(k), int(ax)): str(why) for (k, ax), why in (reasons or {}).items()}
        bad = [(k, ax) for k, ax in reasons if k not in axes or not 0 <= ax < len(axes[k])]
        if bad:
            raise SpecError(f"reasons name axis {bad[0][1]} of {bad[0][0]!r}, which the spec "
                            f"does not have")
        # outer groups come before the groups nested in them (random_permutation draws them first)
        order = sorted(out_sizes, key=lambda g: _depth(g, blocks))
        return cls(axes=axes, perm_to_axes={g: perm_to_axes[g] for g in order},
                   sizes={g: out_sizes[g] for g in order}, shapes=shapes,
                   layouts=layouts, rescalable=rescalable, blocks=blocks, reasons=reasons)

    def entry_pieces(self, name: str, axis: int) -> list[tuple[str | None, int, int]]:
        """``[(group | None, offset, n), ...]``: the pieces of ``name``'s ``axis`` in units
        (before its layout): a plain axis is one piece at offset 0."""
        entry = self.axes[name][axis]
        if entry is None:
            return []
        pieces = entry if isinstance(entry, tuple) else (entry,)
        out, off = [], 0
        for p in pieces:
            n = p if isinstance(p, int) else self.sizes[p]
            out.append((None if isinstance(p, int) else p, off, n))
            off += n
        return out

    @property
    def is_plain(self) -> bool:
        """True when no group is nested and no axis is a concatenation (the original format)."""
        return not self.blocks and not any(isinstance(e, tuple) for v in self.axes.values()
                                           for e in v)

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
        """A readable table: group, size, rescalable, members (``param[axis]``, layouts noted),
        then what is held fixed and why (:meth:`describe_fixed`)."""
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
        lines.append(self.describe_fixed())
        return "\n".join(lines)

    def to_dict(self) -> dict:
        out = {"groups": {g: {"size": self.sizes[g], "rescalable": g in self.rescalable,
                              "members": [[k, ax, *self.layout(k, ax)]
                                          for k, ax in self.perm_to_axes[g]]}
                          for g in self.groups}}
        for g, (o, c) in self.blocks.items():
            out["groups"][g]["blocks"] = {"outer": o, "size": c}
        concat = {k: {ax: list(e) for ax, e in enumerate(v) if isinstance(e, tuple)}
                  for k, v in self.axes.items()}
        if any(concat.values()):
            out["concatenated"] = {k: v for k, v in concat.items() if v}
        if self.reasons:
            out["reasons"] = [[k, ax, why] for (k, ax), why in self.reasons.items()]
        return out

    def permuted_fraction(self, params: Mapping[str, Any] | None = None,
                          exclude: Iterable[str] = ()) -> float:
        """See :func:`permuted_fraction`."""
        return permuted_fraction(self, params, exclude)

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


def permuted_fraction(spec: PermutationSpec, params: Mapping[str, Any] | None = None,
                      exclude: Iterable[str] = ()) -> float:
    """Fraction, by element count, of the floating tensors of ``params`` (default: every tensor
    of ``spec.shapes``) that have at least one permuted axis:
    ``sum_{k permuted} numel(k) / sum_k numel(k)``. ``exclude`` holds ``fnmatch`` patterns of
    names left out of both sums (e.g. the input stem and the classifier, whose input/output
    axes can never be permuted)."""
    patterns = list(exclude)
    sizes = ({k: math.prod(shape) for k, shape in spec.shapes.items()} if params is None else
             {k: v.numel() for k, v in params.items()
              if isinstance(v, torch.Tensor) and v.dtype.is_floating_point})
    if params is not None:
        spec.check_params({k: params[k] for k in sizes})
    total = permuted = 0
    for k, n in sizes.items():
        if any(fnmatch.fnmatchcase(k, p) for p in patterns):
            continue
        total += n
        if any(piece_groups(e) for e in spec.axes[k]):
            permuted += n
    return permuted / total if total else 0.0
