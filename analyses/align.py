"""gauge align: express checkpoint B in checkpoint A's neuron basis.

Hidden units of a network can be permuted without changing its function; two independently
trained networks therefore differ partly by an arbitrary relabelling. This command finds the
permutation of B's units that best matches A -- weight matching (maximise sum <W_A, P W_B>,
coordinate descent over linear assignment problems, Ainsworth et al. 2022) or activation
matching (Pearson correlation of unit activations on data, Li et al. 2015) -- and writes B
permuted accordingly. The output computes exactly the same function as B.

The permutation spec is inferred from the model (printed with --show-spec). The model comes
from the checkpoint metadata, else --model (a zoo name, pkg.module:factory,
path/to/file.py:factory, torchvision:NAME, timm:NAME or hf:DIR; docs/byo.md), with the input
shape from the metadata, --input-shape or --data. The checkpoints may be in any format the
toolkit reads (safetensors, torch.save'd state_dicts and training dicts, pruned modules,
Hugging Face folders, OpenLTH levels). The output's suffix picks its format: .safetensors
records how to rebuild the model, so `gauge connect A OUT` needs no flags; .pt/.pth is a plain
state_dict.
"""

from __future__ import annotations

import sys
from typing import Any

from analyses.common import (UsageError, add_device_argument, add_json_argument,
                             add_model_arguments, check_data_fits, check_outputs, emit_json,
                             ensure_checkpoint_output, load_data, load_model_and_params,
                             resolve_device)

HELP = "align checkpoint B to A under neuron permutations (Hungarian weight/activation matching)"


def add_arguments(parser) -> None:
    parser.add_argument("a", metavar="A", help="reference checkpoint (file or folder)")
    parser.add_argument("b", metavar="B", help="checkpoint to align to A")
    add_model_arguments(parser)
    parser.add_argument("--method", choices=["weight", "activation"], default="weight",
                        help="weight matching (default) or activation matching (needs --data)")
    parser.add_argument("--data", default=None,
                        help="dataset (name, .npz/.pt/.safetensors file or pkg.module:factory) "
                             "whose training inputs drive activation matching")
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
    parser.add_argument("--out", required=True,
                        help="output checkpoint, B aligned to A: .safetensors (with metadata) "
                             "or .pt/.pth (a plain state_dict)")
    add_device_argument(parser)
    add_json_argument(parser)


def _l2(pa, pb) -> float:
    return float(sum(float((pa[k].double() - pb[k].double()).pow(2).sum())
                     for k in pa if pa[k].dtype.is_floating_point)) ** 0.5


def _load(args, device):
    """``(loaded, data)``: both checkpoints on one model (:func:`load_model_and_params`) and
    the ``--data`` dataset (None without it), checked to fit the model."""
    data = None
    if args.data:
        data = load_data(args.data, root=args.root)
    loaded = load_model_and_params([args.a, args.b], args, data)
    if data is not None:
        check_data_fits(loaded.model, data, data_name=args.data, model_name=loaded.name)
    return loaded, data


def _matcher_options(args, data, device) -> tuple[Any, dict]:
    """``(inputs, keyword arguments)`` of ``gauge.align`` for ``--method``."""
    if args.method == "weight":
        return None, {"seed": args.seed, "max_iter": args.max_iter, "restarts": args.restarts,
                      "device": device}
    x = data.train.tensors[0]
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

    from gauge import align, function_distance, infer_spec
    from tickets.store import save_params

    out = ensure_checkpoint_output(args.out, [args.a, args.b])
    check_outputs(args, [args.a, args.b, args.out])
    if args.method == "activation" and not args.data:
        raise UsageError("--method activation needs --data NAME (the inputs to correlate on)")
    if args.num_examples < 1 or args.batch_size < 1 or args.max_iter < 1 or args.restarts < 1:
        raise UsageError("--num-examples, --batch-size, --max-iter and --restarts must be >= 1")
    device = resolve_device(args.device)
    loaded, data = _load(args, device)
    model, (params_a, params_b) = loaded.model, loaded.params
    spec = infer_spec(model, loaded.example_input())
    probe = loaded.example_input(8, seed=0)
    model = model.to(device)
    inputs, kw = _matcher_options(args, data, device)
    aligned, result = align(model, spec, params_a, params_b, method=args.method,
                            inputs=inputs, **kw)
    fdist = function_distance(model, params_b, aligned, probe, device=device)
    out_meta = {**loaded.loaded[1].meta, **loaded.rebuild}
    out_meta["aligned_to"] = str(args.a)
    out_meta["alignment"] = {"method": args.method, "seed": args.seed, "source": str(args.b),
                             "objective_before": result.objective_before,
                             "objective_after": result.objective_after}
    save_params(out, aligned, out_meta)
    summary = {"a": str(args.a), "b": str(args.b), "out": str(out), "method": args.method,
               "model": loaded.name, "read": [l.describe() for l in loaded.loaded],
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
