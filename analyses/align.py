"""gauge align: express checkpoint B in checkpoint A's neuron basis.

Hidden units of a network can be permuted without changing its function; two independently
trained networks therefore differ partly by an arbitrary relabelling. This command finds the
permutation of B's units that best matches A -- weight matching (maximise sum <W_A, P W_B>,
coordinate descent over linear assignment problems, Ainsworth et al. 2022) or activation
matching (Pearson correlation of unit activations on data, Li et al. 2015) -- and writes B
permuted accordingly. The output computes exactly the same function as B.

The permutation spec is inferred from the model (printed with --show-spec). The model comes
from the checkpoint metadata, else --model.
"""

from __future__ import annotations

import sys
from typing import Any

from analyses.common import (UsageError, add_device_argument, add_json_argument, emit_json,
                             ensure_output_path, resolve_device)

HELP = "align checkpoint B to A under neuron permutations (Hungarian weight/activation matching)"


def add_arguments(parser) -> None:
    parser.add_argument("a", metavar="A", help="reference checkpoint (.safetensors)")
    parser.add_argument("b", metavar="B", help="checkpoint to align to A")
    parser.add_argument("--model", default=None,
                        help="zoo model name when the checkpoints carry no metadata")
    parser.add_argument("--method", choices=["weight", "activation"], default="weight",
                        help="weight matching (default) or activation matching (needs --data)")
    parser.add_argument("--data", default=None,
                        help="dataset whose training inputs drive activation matching")
    parser.add_argument("--root", default=None, help="folder with the dataset files")
    parser.add_argument("--num-examples", type=int, default=1000,
                        help="inputs used by activation matching (default 1000)")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="batch size of activation matching (default 256)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the group order in weight matching (default 0)")
    parser.add_argument("--max-iter", type=int, default=100,
                        help="most sweeps of weight matching (default 100)")
    parser.add_argument("--restarts", type=int, default=1,
                        help="weight matching restarts, best objective wins (default 1)")
    parser.add_argument("--show-spec", action="store_true",
                        help="print the inferred permutation spec")
    parser.add_argument("--out", required=True, help="output checkpoint: B aligned to A")
    add_device_argument(parser)
    add_json_argument(parser)


def _l2(pa, pb) -> float:
    return float(sum(float((pa[k].double() - pb[k].double()).pow(2).sum())
                     for k in pa if pa[k].dtype.is_floating_point)) ** 0.5


def _load(args):
    """``(model, params_a, params_b, meta, meta_b, data)``: both checkpoints on one model
    (``meta``: A's metadata, else B's); ``data`` is the ``--data`` dataset (None without it)."""
    from gauge import check_same_keys
    from tickets.store import check_params, load_checkpoint, model_from_meta
    params_a, meta_a = load_checkpoint(args.a)
    params_b, meta_b = load_checkpoint(args.b)
    check_same_keys(params_a, params_b, names=(str(args.a), str(args.b)))
    meta = dict(meta_a or meta_b)
    data = None
    if args.data:
        from tickets.data import load_dataset
        data = load_dataset(args.data, root=args.root)
        meta.setdefault("num_classes", data.num_classes)
        meta.setdefault("input_shape", list(data.input_shape))
    model = model_from_meta(meta, str(args.a), model=args.model)
    check_params(model, params_a, str(args.a))
    check_params(model, params_b, str(args.b))
    return model, params_a, params_b, meta, meta_b, data


def _matcher_options(args, data, input_shape, device) -> tuple[Any, dict]:
    """``(inputs, keyword arguments)`` of ``gauge.align`` for ``--method``."""
    if args.method == "weight":
        return None, {"seed": args.seed, "max_iter": args.max_iter, "restarts": args.restarts,
                      "device": device}
    x = data.train.tensors[0]
    if tuple(x.shape[1:]) != input_shape:
        raise UsageError(f"--data {args.data} has inputs of shape {tuple(x.shape[1:])}, the "
                         f"model expects {input_shape}")
    return x[: args.num_examples], {"batch_size": args.batch_size, "device": device}


def _print(args, spec, result, summary: dict) -> None:
    if args.show_spec:
        print(spec.describe())
    w = max(len(g) for g in spec.groups) if spec.groups else 5
    print(f"{'group':<{w}}  {'size':>5}  {'unmoved':>7}")
    for g in spec.groups:
        print(f"{g:<{w}}  {spec.sizes[g]:>5}  {result.per_group[g]['fixed_points']:>7}")
    what = "sum <W_A, P W_B>" if args.method == "weight" else "mean matched correlation"
    print(f"objective ({what}): {result.objective_before:.6g} -> {result.objective_after:.6g}")
    l2_before, l2_after = summary["l2_before"], summary["l2_after"]
    print(f"L2 distance to A: {l2_before:.6g} -> {l2_after:.6g} "
          f"({100 * (1 - l2_after / max(l2_before, 1e-30)):.1f}% lower)")
    print(f"max |f_B - f_aligned| on 8 random inputs: {summary['function_distance']:.2e}; "
          f"{args.method} matching took {result.time:.2f}s -> {summary['out']}")


def run(args) -> int:
    import torch

    from gauge import align, function_distance, infer_spec
    from tickets.store import save_checkpoint

    out = ensure_output_path(args.out, "checkpoint")
    if args.method == "activation" and not args.data:
        raise UsageError("--method activation needs --data NAME (the inputs to correlate on)")
    if args.num_examples < 1 or args.batch_size < 1 or args.max_iter < 1 or args.restarts < 1:
        raise UsageError("--num-examples, --batch-size, --max-iter and --restarts must be >= 1")
    device = resolve_device(args.device)
    model, params_a, params_b, meta, meta_b, data = _load(args)
    input_shape = tuple(meta["input_shape"])
    spec = infer_spec(model, torch.zeros(2, *input_shape))
    model = model.to(device)
    inputs, kw = _matcher_options(args, data, input_shape, device)
    aligned, result = align(model, spec, params_a, params_b, method=args.method,
                            inputs=inputs, **kw)
    probe = torch.randn((8, *input_shape), generator=torch.Generator().manual_seed(0))
    fdist = function_distance(model, params_b, aligned, probe, device=device)
    out_meta = dict(meta_b or meta)
    out_meta["aligned_to"] = str(args.a)
    out_meta["alignment"] = {"method": args.method, "seed": args.seed, "source": str(args.b),
                             "objective_before": result.objective_before,
                             "objective_after": result.objective_after}
    save_checkpoint(out, aligned, out_meta)
    summary = {"a": str(args.a), "b": str(args.b), "out": str(out), "method": args.method,
               "groups": {g: spec.sizes[g] for g in spec.groups},
               "objective_before": result.objective_before,
               "objective_after": result.objective_after,
               "l2_before": _l2(params_a, params_b), "l2_after": _l2(params_a, aligned),
               "function_distance": fdist,
               "iterations": result.iterations, "time": result.time,
               "per_group": result.per_group}
    if args.json != "-":
        _print(args, spec, result, summary)
    emit_json(args.json, summary)
    return 0


if __name__ == "__main__":
    from analyses.cli import run_command
    sys.exit(run_command(sys.modules[__name__]))
