"""gauge train: train a zoo model on an offline dataset and save a checkpoint.

The checkpoint is a safetensors file whose metadata records the model, its options, the
dataset, the seeds and the training config, so every other subcommand can rebuild the model.
"""

from __future__ import annotations

import json
import sys

from analyses.common import (UsageError, add_device_argument, add_json_argument, emit_json,
                             ensure_output_path, progress_enabled, resolve_device)

HELP = "train a zoo model on an offline dataset and save a safetensors checkpoint"


def add_training_arguments(parser) -> None:
    """Model, data and TrainConfig overrides shared by train, imp and instability."""
    from tickets.data import dataset_names
    from tickets.models import model_names
    g = parser.add_argument_group("model and data")
    g.add_argument("--model", required=True, help=f"zoo model: {', '.join(model_names())}")
    g.add_argument("--model-kwargs", default=None, metavar="JSON",
                   help='architecture options as JSON, e.g. \'{"widths": [100, 100]}\'')
    g.add_argument("--data", required=True, help=f"dataset: {', '.join(dataset_names())}")
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
    if not args.model_kwargs:
        return {}
    try:
        kwargs = json.loads(args.model_kwargs)
    except json.JSONDecodeError as e:
        raise UsageError(f"--model-kwargs is not valid JSON ({e})") from e
    if not isinstance(kwargs, dict):
        raise UsageError("--model-kwargs must be a JSON object")
    return kwargs


def add_arguments(parser) -> None:
    add_training_arguments(parser)
    parser.add_argument("--out", required=True, help="output checkpoint (.safetensors)")
    add_json_argument(parser)


def run(args) -> int:
    from tickets.data import load_dataset
    from tickets.models import build_model
    from tickets.store import save_checkpoint, versions
    from tickets.train import train

    out = ensure_output_path(args.out, "checkpoint")
    device = resolve_device(args.device)
    kwargs = model_kwargs_from_args(args)
    data = load_dataset(args.data, root=args.root, seed=args.seed)
    cfg = config_from_args(args)
    model = build_model(args.model, num_classes=data.num_classes, input_shape=data.input_shape,
                        seed=args.seed, **kwargs)
    data_seed = args.seed if args.data_seed is None else args.data_seed
    result = train(model, data, cfg, seed=args.seed, data_seed=data_seed, device=device,
                   progress=progress_enabled(args), desc=f"train {args.model}")
    if result.nonfinite:
        raise UsageError(f"training diverged (non-finite loss at iteration {result.iters}); "
                         f"nothing written to {out}; try a smaller --lr")
    meta = {"model": args.model, "model_kwargs": kwargs, "num_classes": data.num_classes,
            "input_shape": list(data.input_shape), "dataset": args.data, "seed": args.seed,
            "data_seed": data_seed, "iteration": result.iters, "train_config": cfg.to_dict(),
            "versions": versions()}
    save_checkpoint(out, result.params, meta)
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
