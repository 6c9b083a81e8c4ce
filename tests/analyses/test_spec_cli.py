"""``gauge spec`` through the real CLI: the printed spec, GraphML, the figure, bad input."""

from __future__ import annotations

import json

import networkx as nx
import pytest

from gauge import TraceError
from tests.conftest import assert_user_error, run_cli


def test_spec_prints_writes_graph_plot_and_json(tmp_path):
    graph, fig, out = tmp_path / "s.graphml", tmp_path / "s.png", tmp_path / "s.json"
    proc = run_cli("spec", "--model", "mlp", "--input-shape", "40", "--model-kwargs",
                   '{"widths": [12, 8]}', "--graph", graph, "--plot", fig, "--json", out)
    assert proc.returncode == 0, proc.stderr
    assert "group" in proc.stdout and "held fixed" in proc.stdout
    assert "  network output\n    fc3: weight[0] (10), bias[0] (10)" in proc.stdout
    assert "  network input\n    fc1: weight[1] (40)" in proc.stdout
    g = nx.read_graphml(graph)
    assert {d["size"] for _, d in g.nodes(data=True) if d["kind"] == "group"} == {12, 8}
    assert fig.read_bytes()[:4] == b"\x89PNG"
    d = json.loads(out.read_text())
    assert 0.98 < d["permuted_fraction"] < 1 and set(d["groups"]) == {"fc1", "fc2"}
    assert {"param": "fc1.weight", "axis": 1, "size": 40, "reason": "network input"} in d["fixed"]
    assert {d["reason"] for _, d in g.nodes(data=True) if d["kind"] == "axis"} == \
        {"", "network input", "network output"}


@pytest.mark.parametrize("args,needle", [
    (["--model", "nope", "--input-shape", "40"], "nope"),
    (["--model", "mlp", "--input-shape", "40", "--model-kwargs", "{"], "--model-kwargs"),
    (["--model", "mlp", "--input-shape", "40", "--plot", "x.txt"], "--plot"),
    (["--model", "mlp", "--input-shape", "0"], "--input-shape"),
])
def test_bad_input_is_one_line(tmp_path, args, needle):
    assert_user_error(run_cli("spec", *args, cwd=tmp_path), needle)
    assert not list(tmp_path.iterdir())


def test_wrong_input_shape_is_a_trace_error():
    from analyses.spec import compute
    from tickets.models import build_model
    model = build_model("mlp", num_classes=10, input_shape=(40,))
    with pytest.raises(TraceError, match="input shape"):
        compute(model, (3, 8, 8))
    assert compute(model, (40,)).spec.groups == ["fc1", "fc2"]
