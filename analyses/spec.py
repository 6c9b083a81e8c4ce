"""gauge spec: which axes of a model the permutation symmetry acts on, and which it cannot.

Hidden units can be relabelled without changing the function when every tensor axis indexing a
unit moves with it (Hecht-Nielsen 1990). The spec lists those tied axes as groups (Ainsworth et
al. 2022 "Git Re-Basin"); it is inferred by tracing the model once on an example input. This
command prints the groups (size, whether ReLU rescaling also acts, members), the axes held
fixed with the op and module that fix them, and the share of parameters that a permutation
moves; it can draw the spec as a graph (groups and the layers they connect, from input to
output) and write it as GraphML for other tools.

Examples:
  gauge spec --model resnet20 --data cifar10 --plot spec.png --graph spec.graphml
  gauge spec --model mlp --input-shape 40 --num-classes 10 --json spec.json
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from analyses.common import UsageError, add_json_argument, emit_json, ensure_output_path

HELP = "show the permutation spec of a model: groups, members, what is held fixed, as a graph"


def add_arguments(parser) -> None:
    from tickets.models import model_names
    parser.add_argument("--model", required=True, metavar="SOURCE",
                        help=f"a zoo name ({', '.join(model_names())}), pkg.module:factory, "
                             "path/to/file.py:factory, torchvision:NAME, timm:NAME or hf:DIR")
    parser.add_argument("--model-kwargs", default=None, metavar="JSON",
                        help='architecture options as JSON, e.g. \'{"width": 2}\'')
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--data", default=None,
                       help="dataset whose input shape and classes the model is built for")
    shape.add_argument("--input-shape", type=int, nargs="+", metavar="D",
                       help="input shape without the batch axis, e.g. 3 32 32 (a hf: model "
                            "reads token ids, length 8 by default)")
    parser.add_argument("--num-classes", type=int, default=10,
                        help="outputs of the model with --input-shape (default 10)")
    parser.add_argument("--root", default=None, help="folder with the dataset files")
    parser.add_argument("--graph", default=None, metavar="FILE.graphml",
                        help="write the spec graph (groups and parameter axes) as GraphML")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="draw the spec graph layered by depth (PNG, PDF or SVG)")
    add_json_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")


@dataclass(frozen=True)
class SpecAnalysis:
    """A model's inferred spec with the numbers the command reports."""

    model: str
    input_shape: tuple
    spec: object  # gauge.spec.PermutationSpec
    infer_time: float
    params: int
    permuted_fraction: float

    def to_dict(self) -> dict:
        from gauge.spec_graph import fixed_axes
        return {"model": self.model, "input_shape": list(self.input_shape),
                "infer_time": self.infer_time, "params": self.params,
                "permuted_fraction": self.permuted_fraction,
                "groups": self.spec.to_dict()["groups"],
                "fixed": [{"param": k, "axis": ax, "size": n, "reason": why}
                          for (k, ax), n, why in fixed_axes(self.spec)]}


def build(args):
    """``(model, input_shape)`` named by the arguments (the one place a model is built)."""
    import json

    from tickets.store import model_from_meta
    try:
        kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    except json.JSONDecodeError as e:
        raise UsageError(f"--model-kwargs is not JSON: {e}") from e
    if args.data:
        from tickets.data import load_dataset
        data = load_dataset(args.data, root=args.root)
        meta = {"num_classes": data.num_classes, "input_shape": list(data.input_shape)}
    elif args.input_shape is None and not args.model.startswith("hf:"):
        raise UsageError("give --input-shape or --data: the model is traced on an example input")
    else:
        shape = args.input_shape or [8]
        if any(d < 1 for d in shape) or args.num_classes < 1:
            raise UsageError("--input-shape and --num-classes must be positive")
        meta = {"num_classes": args.num_classes, "input_shape": list(shape)}
    meta.update(model=args.model, model_kwargs=kwargs)
    return model_from_meta(meta, "--model"), tuple(meta["input_shape"])


def compute(model, input_shape, name: str = "") -> SpecAnalysis:
    """Infer ``model``'s spec on a zero batch of two inputs of ``input_shape`` (token ids
    for a ``hf:`` model, :func:`analyses.common.example_input`)."""
    from analyses.common import example_input
    from gauge.infer import infer_spec
    from gauge.spec import permuted_fraction
    t0 = time.perf_counter()
    spec = infer_spec(model, example_input(name, model, input_shape))
    return SpecAnalysis(model=name or type(model).__name__, input_shape=tuple(input_shape),
                        spec=spec, infer_time=time.perf_counter() - t0,
                        params=sum(p.numel() for p in model.parameters()),
                        permuted_fraction=permuted_fraction(spec))


def summary(result: SpecAnalysis) -> str:
    s = result.spec
    return "\n".join([
        f"{result.model}: {result.params:,} parameters, input {tuple(result.input_shape)}; "
        f"spec inferred in {result.infer_time:.2f} s",
        s.describe()])


def _layout(graph):
    """Positions of the drawn graph: layers (modules) left to right in depth order, each
    group centred over the layers it connects, stacked so parallel groups do not overlap."""
    mods = {d["module"]: d["depth"] for _, d in graph.nodes(data=True) if d["kind"] == "axis"}
    pos = {m: (float(x), 0.0) for m, x in mods.items()}
    groups = [(n, d) for n, d in graph.nodes(data=True) if d["kind"] == "group"]
    spans = []
    for n, d in groups:
        xs = [mods[graph.nodes[a]["module"]] for a in graph.neighbors(n)
              if graph.nodes[a]["kind"] == "axis"] or [0]
        spans.append((min(xs), max(xs), n))
    rows: list[float] = []  # right end of the last group in each row
    for lo, hi, n in sorted(spans):
        row = next((i for i, end in enumerate(rows) if end < lo - 0.5), None)
        if row is None:
            rows.append(hi)
            row = len(rows) - 1
        rows[row] = hi
        pos[n] = ((lo + hi) / 2, 1.0 + row)
    return pos


def plot(result: SpecAnalysis, path) -> None:
    """Draw the spec: a square per module (red if it has an unpermuted non-kernel axis), a
    circle per group (area ~ log size; filled if rescalable), solid edges to the producing
    axis 0 and dashed edges to consuming axes."""
    from pathlib import Path

    import networkx as nx

    from analyses.figures import COLORS, new_figure, save_figure
    from gauge.spec_graph import fixed_axes, group_node

    graph = result.spec.to_networkx()
    pos = _layout(graph)
    fixed_mods = {k.rpartition(".")[0] or k for (k, ax), _, why in fixed_axes(result.spec)
                  if not (ax >= 2 and k.endswith("weight") and not why)}
    mods = sorted({d["module"] for _, d in graph.nodes(data=True) if d["kind"] == "axis"},
                  key=lambda m: pos[m][0])
    view = nx.Graph()
    for n, d in graph.nodes(data=True):
        if d["kind"] == "group":
            for a in graph.neighbors(n):
                if graph.nodes[a]["kind"] != "axis":
                    continue
                view.add_edge(n, graph.nodes[a]["module"], role=graph.edges[n, a]["role"])
    n_rows = 1 + max([y for _, y in pos.values()] + [0])
    fig, axes = new_figure(width=max(6.0, 0.28 * len(mods)), height=max(3.0, 0.45 * n_rows + 1.6))
    ax = axes[0][0]
    for role, style in (("in", "dashed"), ("out", "solid")):
        edges = [(u, v) for u, v, d in view.edges(data=True) if d["role"] == role]
        nx.draw_networkx_edges(view, pos, edgelist=edges, ax=ax, style=style, width=0.7,
                               alpha=0.55, edge_color=COLORS["aligned"] if role == "out"
                               else "#7f7f7f")
    groups = result.spec.groups
    sizes = [60 + 40 * max(0.0, math.log2(result.spec.sizes[g])) for g in groups]
    ids = [group_node(g) for g in groups]
    resc = [g in result.spec.rescalable for g in groups]
    nx.draw_networkx_nodes(view, pos, nodelist=ids, node_size=sizes, ax=ax, edgecolors="black",
                           linewidths=0.6,
                           node_color=[COLORS["aligned"] if r else "white" for r in resc])
    nx.draw_networkx_nodes(view, pos, nodelist=mods, node_shape="s", node_size=28, ax=ax,
                           node_color=[COLORS["naive"] if m in fixed_mods else "#555555"
                                       for m in mods])
    for g, i in zip(groups, ids):
        x, y = pos[i]
        ax.annotate(f"{result.spec.sizes[g]}", (x, y), ha="center", va="center", fontsize=5,
                    color="white" if g in result.spec.rescalable else "black")
        ax.annotate(g, (x, y), xytext=(0, 9), textcoords="offset points", ha="center",
                    va="bottom", fontsize=5, color="#333333")
    ax.tick_params(axis="x", bottom=True, labelbottom=True)
    ax.set_xticks([pos[m][0] for m in mods])
    ax.set_xticklabels(mods, rotation=90, fontsize=6)
    ax.set_yticks([])
    ax.set_xlabel("module (state_dict order, input side left)")
    ax.set_ylabel("groups (stacked where they overlap)")
    ax.set_title(f"Permutation spec of {result.model}: {len(groups)} groups, "
                 f"{100 * result.permuted_fraction:.1f}% of parameters permuted")
    ax.grid(False)
    ax.margins(y=0.15)
    from matplotlib.lines import Line2D
    fig.legend(handles=[
        Line2D([], [], marker="o", ls="", mfc=COLORS["aligned"], mec="black",
               label="group (units; number = size), rescalable"),
        Line2D([], [], marker="o", ls="", mfc="white", mec="black", label="group, not rescalable"),
        Line2D([], [], marker="s", ls="", color="#555555", label="module"),
        Line2D([], [], marker="s", ls="", color=COLORS["naive"],
               label="module with an axis held fixed"),
        Line2D([], [], color=COLORS["aligned"], label="produces the group (axis 0)"),
        Line2D([], [], color="#7f7f7f", ls="dashed", label="consumes the group (axis > 0)")],
        loc="outside lower center", ncol=3, frameon=False, fontsize=7)
    path = Path(path)
    save_figure(fig, path.with_suffix(""), formats=(path.suffix.lstrip(".") or "png",))


def run(args) -> int:
    import networkx as nx

    from tickets.store import atomic_write_bytes
    for p, what, suffixes in ((args.plot, "plot", (".png", ".pdf", ".svg")),
                              (args.graph, "graph", (".graphml",))):
        if p is not None:
            ensure_output_path(p, what)
            if not p.lower().endswith(suffixes):
                raise UsageError(f"--{what} {p}: use one of {', '.join(suffixes)}")
    model, shape = build(args)
    result = compute(model, shape, name=args.model)
    if not args.quiet:
        print(summary(result))
    if args.graph:
        lines = nx.generate_graphml(result.spec.to_networkx())
        atomic_write_bytes(args.graph, ("\n".join(lines) + "\n").encode())
    if args.plot:
        plot(result, args.plot)
    emit_json(args.json, result.to_dict())
    return 0


if __name__ == "__main__":
    import sys

    from analyses.cli import run_command
    sys.exit(run_command(sys.modules[__name__]))
