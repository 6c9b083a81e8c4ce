"""The spec as a graph: nodes, edges and attributes; GraphML round trip; what is held fixed."""

from __future__ import annotations

import networkx as nx
import torch

from gauge import PermutationSpec, infer_spec
from gauge.spec_graph import axis_node, fixed_axes, group_node, permuted_fraction
from tests.gauge_models import MHABlock

AXES = {"fc1.weight": ("h1", None), "fc1.bias": ("h1",),
        "fc2.weight": ("h2", "h1"), "fc2.bias": ("h2",),
        "fc3.weight": (None, "h2"), "fc3.bias": (None,)}
SHAPES = {"fc1.weight": (4, 3), "fc1.bias": (4,), "fc2.weight": (5, 4), "fc2.bias": (5,),
          "fc3.weight": (2, 5), "fc3.bias": (2,)}


def _spec():
    return PermutationSpec.from_axes(AXES, SHAPES, rescalable=["h1"])


def test_nodes_edges_and_attributes_follow_the_spec():
    g = _spec().to_networkx()
    groups = [n for n, d in g.nodes(data=True) if d["kind"] == "group"]
    axes = [n for n, d in g.nodes(data=True) if d["kind"] == "axis"]
    assert sorted(groups) == [group_node("h1"), group_node("h2")]
    assert len(axes) == sum(len(v) for v in AXES.values())
    h1 = g.nodes[group_node("h1")]
    assert (h1["size"], h1["rescalable"], h1["members"], h1["depth"]) == (4, True, 3, 0)
    assert g.nodes[group_node("h2")]["depth"] == 1
    member = g.edges[group_node("h1"), axis_node("fc2.weight", 1)]
    assert (member["kind"], member["role"]) == ("member", "in")
    assert g.edges[group_node("h2"), axis_node("fc2.weight", 0)]["role"] == "out"
    assert g.edges[axis_node("fc2.weight", 0), axis_node("fc2.weight", 1)]["kind"] == "tensor"
    fixed = g.nodes[axis_node("fc3.weight", 0)]
    assert (fixed["permuted"], fixed["group"], fixed["size"], fixed["shape"]) == \
        (False, "", 2, "2x5")
    # a path input -> output runs through both groups
    assert nx.has_path(g, axis_node("fc1.weight", 1), axis_node("fc3.weight", 0))


def test_graphml_round_trip_keeps_layouts(tmp_path):
    model = MHABlock()
    spec = infer_spec(model, torch.zeros(2, 5, 6), nested=False)
    g = spec.to_networkx()
    path = tmp_path / "spec.graphml"
    nx.write_graphml(g, path)
    back = nx.read_graphml(path)
    assert back.number_of_nodes() == g.number_of_nodes()
    assert back.number_of_edges() == g.number_of_edges()
    blocks = [d for _, d in back.nodes(data=True) if d.get("block", 1) > 1]
    assert blocks, "the attention heads' block layout is carried as node attributes"


def test_fixed_axes_and_permuted_fraction():
    spec = _spec()
    fixed = [a for a, _, _ in fixed_axes(spec)]
    assert fixed == [("fc1.weight", 1), ("fc3.weight", 0), ("fc3.bias", 0)]
    total = sum(torch.Size(s).numel() for s in SHAPES.values())
    assert permuted_fraction(spec) == (total - 2) / total
    text = spec.describe_fixed()
    assert "fc3: weight[0] (2), bias[0] (2)" in text and "fc1: weight[1] (3)" in text
