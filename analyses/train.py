"""gauge train: train a model on an offline dataset and save a checkpoint.

--model is a zoo name or the user's own architecture (pkg.module:factory,
path/to/file.py:factory, torchvision:NAME, timm:NAME; docs/byo.md); --data a dataset name, a
.npz/.pt/.safetensors file or pkg.module:factory, which must fit the model. A .safetensors
checkpoint's metadata records the model, its options, the dataset, the seeds and the training
config, so every other subcommand can rebuild the model; --out x.pt writes a plain state_dict.
"""

from __future__ import annotations

import sys

from analyses.common import (UsageError, add_device_argument, add_json_argument,
                             add_model_arguments, check_data_fits, emit_json,
                             ensure_checkpoint_output, load_data, progress_enabled,
                             resolve_device)

HELP = "train a model on an offline dataset and save a checkpoint"


def add_training_arguments(parser) -> None:
    """Model, data and TrainConfig overrides shared by train, imp and instability."""
    from tickets.data import dataset_names
    add_model_arguments(parser, required=True, input_shape=False)
    g = parser.add_argument_group("data")
    g.add_argument("--data", required=True, help=f"dataset: {', '.join(dataset_names())}, a "
                   ".npz/.pt/.safetensors file (x/y or x_train/y_train/x_test/y_test) or "
                   "pkg.module:factory")
    g.add_argument("--root", default=None, help="folder with the dataset files (mnist, "
                   "fashion_mnist, cifar10); nothing is downloaded")
    g.add_argument("--seed", type=int, default=0, help="seed of the weight init (default 0)")
    g.add_argument("--data-seed", type=int, default=None,
                   help="seed of the data order (SGD noise); default: --seed")
    t = parser.add_argument_group("training (defaults follow each model's source paper)")
    t.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    t.add_argument("--lr", type=float)
    t.add_argument("--momentum", type=float)
    t.add_argument("--nesterov", action="store_true", default=None)
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--batch-size", type=int)
    dur = t.add_mutually_exclusive_group()
    dur.add_argument("--epochs", type=float)
    dur.add_argument("--iters", type=int)
    t.add_argument("--warmup-iters", type=int)
    t.add_argument("--schedule", choices=["constant", "milestones", "cosine"])
    t.add_argument("--milestones", type=float, nargs="+", metavar="EPOCH")
    t.add_argument("--gamma", type=float)
    add_device_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args):
    """The dataset, model kwargs and TrainConfig named by the shared training arguments."""
    from tickets.train import default_config
    cfg = default_config(args.model, args.data)
    changes = {}
    for field in ("optimizer", "lr", "momentum", "nesterov", "weight_decay", "batch_size",
                  "warmup_iters", "schedule", "gamma"):
        value = getattr(args, field, None)
        if value is not None:
            changes[field] = value
    if args.epochs is not None:
        changes.update(epochs=args.epochs, iters=None)
    if args.iters is not None:
        changes.update(iters=args.iters, epochs=None)
    if args.milestones is not None:
        changes["milestones"] = tuple(args.milestones)
    return cfg.replace(**changes)


def model_kwargs_from_args(args) -> dict:
    """``--model-kwargs`` as a dict."""
    from tickets.sources import parse_model_kwargs
    return parse_model_kwargs(args.model_kwargs)


def model_and_data_from_args(args):
    """``(source, kwargs, model, data)`` of the shared training arguments: the canonical model
    source (what a run records), its kwargs, the model built from ``--seed`` and the data,
    checked to fit it."""
    from tickets.sources import resolve_model, source_spec
    kwargs = model_kwargs_from_args(args)
    source = source_spec(args.model)
    data = load_data(args.data, root=args.root, seed=args.seed)
    model = resolve_model(source, kwargs=kwargs, num_classes=data.num_classes,
                          input_shape=data.input_shape, seed=args.seed)
    check_data_fits(model, data, data_name=args.data, model_name=args.model)
    return source, kwargs, model, data


def add_arguments(parser) -> None:
    add_training_arguments(parser)
    parser.add_argument("--out", required=True,
                        help="output checkpoint: .safetensors (with metadata) or .pt/.pth")
    add_json_argument(parser)


def run(args) -> int:
    from tickets.sources import model_meta
    from tickets.store import save_params, versions
    from tickets.train import train

    out = ensure_checkpoint_output(args.out)
    device = resolve_device(args.device)
    source, kwargs, model, data = model_and_data_from_args(args)
    cfg = config_from_args(args)
    data_seed = args.seed if args.data_seed is None else args.data_seed
    result = train(model, data, cfg, seed=args.seed, data_seed=data_seed, device=device,
                   progress=progress_enabled(args), desc=f"train {args.model}")
    if result.nonfinite:
        raise UsageError(f"training diverged (non-finite loss at iteration {result.iters}); "
                         f"nothing written to {out}; try a smaller --lr")
    meta = {**model_meta(source, kwargs=kwargs, num_classes=data.num_classes,
                         input_shape=data.input_shape),
            "dataset": data.name, "seed": args.seed,
            "data_seed": data_seed, "iteration": result.iters, "train_config": cfg.to_dict(),
            "versions": versions()}
    save_params(out, result.params, meta)
    summary = {"checkpoint": str(out), "model": args.model, "dataset": args.data,
               "test_acc": result.test_acc, "test_loss": result.test_loss,
               "train_acc": result.train_acc, "train_loss": result.train_loss,
               "iters": result.iters, "wall_time": result.wall_time, "device": str(device)}
    if args.json != "-":
        print(f"{args.model} on {args.data}: test acc {result.test_acc:.4f}, test loss "
              f"{result.test_loss:.4f}, {result.iters} iters in {result.wall_time:.1f}s -> {out}")
    emit_json(args.json, summary)
    return 0


if __name__ == "__main__":
    from analyses.cli import run_command
    sys.exit(run_command(sys.modules[__name__]))
