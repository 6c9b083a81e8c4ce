"""A permutation spec as a graph, and what it holds fixed.

The spec (:class:`~gauge.spec.PermutationSpec`) is a bipartite structure: groups of hidden
units on one side, the parameter axes they index on the other. :func:`spec_graph` writes it as
a :class:`networkx.Graph` with

* one node per group (``kind="group"``: ``size``, ``rescalable``, ``members``, ``depth``;
  for a nested group the ``outer`` group whose permutation moves its blocks of ``unit_block``
  units, with an edge ``kind="nested"`` to it),
* one node per axis of every parameter and buffer (``kind="axis"``: ``param``, ``axis``,
  ``size``, ``shape``, ``module``, ``group`` (``""`` if none; ``"a+b+3"`` for an axis
  concatenating the units of ``a``, of ``b`` and 3 fixed ones), ``repeat``/``block`` of its layout,
  ``permuted``, ``depth``, ``reason``: why the axis, or its part outside its groups, is held
  fixed, ``""`` if the spec does not say),
* an edge group--axis for every member (``kind="member"``, the layout and ``role``: ``"out"``
  for axis 0, the producing side, ``"in"`` otherwise) and an edge from axis 0 of a tensor to
  each of its other axes (``kind="tensor"``), so a path group -> weight -> group follows the
  network from input to output.

``depth`` is the position of the parameter's module in ``state_dict`` order (input side first);
a group's depth is that of its first producing member. Every attribute is a string, number or
bool, so the graph writes to GraphML as is (``networkx.write_graphml``).

A hidden unit is a node of the graph of the network; permuting units is an automorphism that
preserves the function (Hecht-Nielsen 1990). Axes with no group are held fixed: the network's
input and output axes, kernel taps, and any axis an op ties to a fixed order. Where the spec
carries the reasons its tracer recorded (``spec.reasons``: ``(param, axis) -> why``), they are
reported with the axis; axes that share a reason are reported together.
"""

from __future__ import annotations


import networkx as nx

from gauge.spec import Axis, PermutationSpec, permuted_fraction, piece_groups

__all__ = ["spec_graph", "fixed_axes", "held_inside", "describe_fixed", "group_node",
           "axis_node"]


def group_node(group: str) -> str:
    """Node id of a group in :func:`spec_graph`."""
    return f"group:{group}"


def axis_node(param: str, axis: int) -> str:
    """Node id of ``param``'s ``axis`` in :func:`spec_graph`."""
    return f"{param}[{axis}]"


def _module(param: str) -> str:
    return param.rpartition(".")[0] or param


def _depths(spec: PermutationSpec) -> dict[str, int]:
    """``module -> position`` in the order the spec lists its params (state_dict order)."""
    out: dict[str, int] = {}
    for k in spec.axes:
        out.setdefault(_module(k), len(out))
    return out


def _entry_label(entry) -> str:
    return "+".join(map(str, entry)) if isinstance(entry, tuple) else (entry or "")


def spec_graph(spec: PermutationSpec) -> nx.Graph:
    """The spec as an undirected graph of groups and parameter axes (see module docstring)."""
    g = nx.Graph(name="permutation spec", groups=len(spec.groups))
    depth = _depths(spec)
    for k, groups in spec.axes.items():
        shape = spec.shapes.get(k, ())
        for ax, entry in enumerate(groups):
            r, b = spec.layout(k, ax)
            g.add_node(axis_node(k, ax), kind="axis", param=k, axis=ax,
                       size=int(shape[ax]) if ax < len(shape) else 0,
                       shape="x".join(map(str, shape)), module=_module(k),
                       group=_entry_label(entry), repeat=r, block=b,
                       permuted=bool(piece_groups(entry)), depth=depth[_module(k)],
                       reason=spec.reasons.get((k, ax), ""))
            if ax > 0:
                g.add_edge(axis_node(k, 0), axis_node(k, ax), kind="tensor")
    blocks = spec.blocks
    for grp in spec.groups:
        members = spec.perm_to_axes[grp]
        producers = [depth[_module(k)] for k, ax in members if ax == 0]
        outer, block = blocks.get(grp, (None, 0))
        g.add_node(group_node(grp), kind="group", name=grp, size=spec.sizes[grp],
                   rescalable=grp in spec.rescalable, members=len(members),
                   outer=outer or "", unit_block=block,
                   depth=min(producers or [depth[_module(k)] for k, _ in members] or [0]))
        for k, ax in members:
            r, b = spec.layout(k, ax)
            g.add_edge(group_node(grp), axis_node(k, ax), kind="member", repeat=r, block=b,
                       role="out" if ax == 0 else "in")
    for grp, (outer, _) in blocks.items():
        if outer is not None:  # blocks of ``grp`` move by ``outer``'s permutation
            g.add_edge(group_node(grp), group_node(outer), kind="nested")
    return g


def fixed_axes(spec: PermutationSpec) -> list[tuple[Axis, int, str]]:
    """``((param, axis), size, reason)`` of every axis of size > 1 that no group permutes, in
    ``state_dict`` order. ``reason`` is the tracer's (``spec.reasons``) or ``""``."""
    reasons = spec.reasons
    out = []
    for k, groups in spec.axes.items():
        shape = spec.shapes.get(k, ())
        for ax, entry in enumerate(groups):
            size = int(shape[ax]) if ax < len(shape) else 0
            if not piece_groups(entry) and size > 1:
                out.append(((k, ax), size, str(reasons.get((k, ax), ""))))
    return out


def held_inside(spec: PermutationSpec) -> list[tuple[Axis, str]]:
    """``((param, axis), reason)`` of every permuted axis whose other part (a layout's repeat
    or block, a fixed piece of a concatenation) the spec says why it stays in place."""
    return [((k, ax), why) for (k, ax), why in spec.reasons.items()
            if piece_groups(spec.axes[k][ax])]


def _by_reason(items: list[tuple[str, str, str]], modules: int = 4) -> list[str]:
    """Lines for ``(reason, param, label)`` items: each reason once, then its axes one line
    per module (at most ``modules`` lines; the rest counted)."""
    groups: dict[str, dict[str, list[str]]] = {}
    for why, k, label in items:
        name = k[len(_module(k)) + 1:] if k != _module(k) else k
        groups.setdefault(why, {}).setdefault(_module(k), []).append(f"{name}{label}")
    lines = []
    for why, mods in groups.items():
        lines.append(f"  {why}")
        lines += [f"    {m}: {', '.join(v)}" for m, v in list(mods.items())[:modules]]
        if len(mods) > modules:
            rest = list(mods.values())[modules:]
            lines.append(f"    ... and {len(rest)} more modules "
                         f"({sum(map(len, rest))} axes)")
    return lines


def describe_fixed(spec: PermutationSpec) -> str:
    """What the spec holds fixed and why: the unpermuted axes (size) under each recorded reason
    (axes without one per module), the permuted axes with a part held in place, then the
    fraction of parameter elements in tensors with a permuted axis."""
    by_module: dict[str, list[str]] = {}
    taps = set()
    known = []
    for (k, ax), size, why in fixed_axes(spec):
        if why:
            known.append((why, k, f"[{ax}] ({size})"))
            continue
        if ax >= 2 and k.endswith("weight") and len(spec.shapes.get(k, ())) >= 3:
            taps.add(k)  # the spatial axes of a conv kernel have an order
            continue
        name = k[len(_module(k)) + 1:] if k != _module(k) else k
        by_module.setdefault(_module(k), []).append(f"{name}[{ax}] ({size})")
    lines = ["held fixed (axes of size > 1 that no group permutes):"]
    lines += _by_reason(known)
    lines += [f"  {m}: {', '.join(items)}" for m, items in by_module.items()]
    if len(lines) == 1:
        lines.append("  none")
    if taps:
        lines.append(f"  (and the kernel taps, axes 2+, of {len(taps)} conv weights)")
    inside = []
    for (k, ax), why in held_inside(spec):
        r, b = spec.layout(k, ax)
        label = "" if (r, b) == (1, 1) else f"blocks of {b}" if r == 1 else f"{r} x blocks of {b}"
        entry = spec.axes[k][ax]
        if isinstance(entry, tuple):
            label = ", ".join(filter(None, ["+".join(map(str, entry)), label]))
        inside.append((why, k, f"[{ax}] ({label})" if label else f"[{ax}]"))
    if inside:
        lines.append("held in place inside permuted axes (a layout's repeat or block, a fixed "
                     "piece):")
        lines += _by_reason(inside)
    lines.append(f"{100 * permuted_fraction(spec):.1f}% of parameter elements are in tensors "
                 "with a permuted axis")
    return "\n".join(lines)
