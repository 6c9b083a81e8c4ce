"""gauge imp: find lottery tickets by iterative magnitude pruning with rewinding.

Level 0 trains the dense network and keeps its weights at the rewind iteration k
(--rewind-iter; 0 = reset to init as in Frankle & Carbin 2019, k > 0 = late rewinding as in
Frankle et al. 2019). Each later level prunes the smallest-magnitude surviving weights of the
previous level (--strategy layerwise or global, --fraction per level), resets the survivors to
the rewind weights and retrains from iteration k with the same schedule and data order.
--control adds OpenLTH-style controls at every level: random_reinit (same mask, fresh init)
and random_prune (random mask with the same per-layer sparsity, rewound weights) -- Frankle et
al. (2021)'s "reinitialise" and "shuffle each layer's mask" ablations -- inverted (the
strategy's scores negated) and any score at init (that score's mask with the ticket's count).

--sparsities S1,S2,... replaces --fraction by a schedule: level L keeps exactly N - ceil(S_L N)
of the N prunable entries (per layer for layerwise). --prune weights+biases or all prunes
biases (and norm parameters) too. --strategy snip|grasp|synflow|magnitude_init|random prunes
at initialization (Frankle et al. 2021): level 0 is the dense network, level L is pruned in
one shot from the init (the rewind weights) to level L's sparsity, then trained. Each level's
per-layer density is in its metrics.json and printed below the table.

Pruning defaults follow the papers: mlp/lenet_300_100 layerwise 20% with the output layer at
half rate (Frankle & Carbin 2019); conv2/4/6 layerwise with their conv/fc/output rates
(ibid., Fig. 2); vgg, resnet20 and cnn1d global 20% with the output layer not pruned
(OpenLTH). Training defaults are those of `gauge train`.

The run directory (--out) holds run.json, level_LL/{init,final,mask}.safetensors,
level_LL/metrics.json, controls/NAME/level_LL/... and summary.json. The same command run
again resumes after the last completed level (bit-identical results); more --levels or a new
--control extend the run; any other different option is refused.
"""

from __future__ import annotations

import sys

from analyses.common import (UsageError, add_json_argument, emit_json, progress_enabled,
                             resolve_device)
from analyses.train import add_training_arguments, config_from_args, model_and_data_from_args

HELP = "find lottery tickets by iterative magnitude pruning with rewinding (Frankle & Carbin 2019)"


def _layer_fraction(text: str) -> tuple[str, float]:
    import argparse
    name, sep, value = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=FRACTION (e.g. fc3=0.1), got {text!r}")


def _sparsities(text: str) -> tuple[float, ...]:
    import argparse
    try:
        return tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions (e.g. "
                                         f"0.5,0.8,0.9), got {text!r}")


def add_arguments(parser) -> None:
    from tickets.imp import ALL_STRATEGIES, CONTROLS
    from tickets.prune import KINDS
    add_training_arguments(parser)
    g = parser.add_argument_group("pruning (defaults follow each model's source paper)")
    g.add_argument("--levels", type=int, default=None,
                   help="pruning rounds: levels 0 (dense) .. N; weights remaining ~ (1-f)^N "
                        "(default with --sparsities: its length)")
    g.add_argument("--sparsities", type=_sparsities, default=None, metavar="S1,S2,...",
                   help="sparsity schedule instead of --fraction: fraction of the prunable "
                        "weights removed at level 1, 2, ... (increasing, < 1)")
    g.add_argument("--prune", choices=list(KINDS), default=None,
                   help="what is prunable: Linear/Conv weights (default), their biases too, "
                        "or every parameter (norm scales and shifts too)")
    g.add_argument("--score-examples", type=int, default=None, metavar="N",
                   help="training examples a data-dependent score at init reads (default 100)")
    g.add_argument("--fraction", type=float, default=None,
                   help="fraction of the surviving weights pruned per level (default 0.2)")
    g.add_argument("--strategy", choices=list(ALL_STRATEGIES), default=None,
                   help="rank weights across all layers (global, OpenLTH sparse_global) or "
                        "within each layer (layerwise, Frankle & Carbin 2019), or prune at "
                        "init by a score (snip, grasp, synflow, magnitude_init, random)")
    g.add_argument("--layer-fraction", type=_layer_fraction, action="append", default=None,
                   metavar="NAME=F", help="per-layer fraction override (layerwise), e.g. fc3=0.1")
    g.add_argument("--ignore", nargs="*", default=None, metavar="NAME",
                   help="layers never pruned (default: the model's paper default; "
                        "--ignore with no name prunes every Linear/Conv weight)")
    g.add_argument("--rewind-iter", type=int, default=0, metavar="K",
                   help="reset survivors to the weights at iteration K (0 = init; K > 0 = late "
                        "rewinding, Frankle et al. 2019)")
    g.add_argument("--control", action="append", choices=list(CONTROLS), default=None,
                   help="add a control at every level (repeatable)")
    g.add_argument("--mask", default=None, metavar="FILE",
                   help="starting mask for level 0: safetensors/.pt keyed by weight name (e.g. "
                        "a transferred ticket), a pruned state_dict or an OpenLTH mask.pth")
    g.add_argument("--eval-every", type=int, default=None, metavar="ITERS",
                   help="evaluate train/test every ITERS iterations (default: once per epoch)")
    parser.add_argument("--out", required=True, metavar="DIR", help="run directory")
    add_json_argument(parser)


def _load_mask(path: str, model):
    from tickets.masks import load_mask
    return load_mask(path, model.state_dict())


def _table(result) -> str:
    ctrls = list(result.controls)
    head = ["level", "weights %", "test acc"] + [f"{c} acc" for c in ctrls]
    by_level = {c: {r["level"]: r for r in rows} for c, rows in result.controls.items()}
    lines = []
    for row in result.levels:
        cells = [str(row["level"]), f"{100 * row['density']:.1f}", f"{row['test_acc']:.4f}"]
        for c in ctrls:
            r = by_level[c].get(row["level"])
            cells.append(f"{r['test_acc']:.4f}" if r else "-")
        lines.append(cells)
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h)
              for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(l) for l in lines])


def _layer_table(result) -> str:
    """Density (% of entries kept) of each pruned tensor at each ticket level."""
    rows = [r for r in result.levels if r.get("layer_density")]
    if not rows:
        return ""
    names = list(rows[0]["layer_density"])
    head = ["density % per tensor"] + [f"L{r['level']}" for r in rows]
    lines = [[n] + [f"{100 * r['layer_density'].get(n, 1.0):.1f}" for r in rows] for n in names]
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(l) for l in lines])


def run(args) -> int:
    from tickets.imp import run_imp

    if args.fraction is not None and not 0.0 < args.fraction < 1.0:
        raise UsageError(f"--fraction must be in (0, 1), got {args.fraction}")
    if args.levels is None:
        if args.sparsities is None:
            raise UsageError("give --levels N (or a --sparsities schedule)")
        args.levels = len(args.sparsities)
    if args.levels < 0:
        raise UsageError(f"--levels must be >= 0, got {args.levels}")
    if args.rewind_iter < 0:
        raise UsageError(f"--rewind-iter must be >= 0, got {args.rewind_iter}")
    device = resolve_device(args.device)
    source, kwargs, model, data = model_and_data_from_args(args)
    cfg = config_from_args(args)
    if args.eval_every is not None:
        if args.eval_every < 0:
            raise UsageError(f"--eval-every must be >= 0, got {args.eval_every}")
        cfg = cfg.replace(eval_every=args.eval_every)
    mask = _load_mask(args.mask, model) if args.mask else None
    progress = progress_enabled(args)

    def on_level(row):
        if progress:
            from tqdm.auto import tqdm
            tag = f"level {row['level']}" + (f" {row['control']}" if row["control"] else "")
            how = "resumed" if row["resumed"] else f"{row['wall_time']:.1f}s"
            tqdm.write(f"{tag}: {100 * row['density']:.1f}% weights, test acc "
                       f"{row['test_acc']:.4f} ({how})", file=sys.stderr)

    result = run_imp(source, data, cfg, levels=args.levels, fraction=args.fraction,
                     strategy=args.strategy, rewind_iter=args.rewind_iter, seed=args.seed,
                     data_seed=args.data_seed, out_dir=args.out, control=args.control,
                     model_kwargs=kwargs,
                     layer_fractions=dict(args.layer_fraction) if args.layer_fraction else None,
                     ignore=args.ignore, mask=mask, dataset_seed=args.seed, root=args.root,
                     sparsities=args.sparsities, prune=args.prune,
                     score_examples=args.score_examples,
                     device=device, progress=progress, on_level=on_level)
    if args.json != "-":
        print(f"IMP {args.model} on {args.data} -> {args.out} "
              f"({len(result.computed)} trained, {len(result.resumed)} resumed, "
              f"{result.wall_time:.1f}s)")
        print(_table(result))
        print(_layer_table(result))
    emit_json(args.json, result)
    return 0


if __name__ == "__main__":
    from analyses.cli import run_command
    sys.exit(run_command(sys.modules[__name__]))
