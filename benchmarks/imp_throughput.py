"""IMP machinery overhead: wall time per IMP level vs the same plain dense training.

One IMP run of ``--levels N`` trains N+1 times (level 0 dense, then N pruned levels rewound to
init) and adds pruning, rewinding, masked gradients, and atomic checkpoint/JSON writes. Peers:
N+1 plain ``tickets.train.train`` calls of the same config with no mask and nothing written,
and the same N+1 trainings under IMP's masks (isolating the IMP machinery from the cost of
masked training, which belongs to ``tickets.train``). All run in this process, interleaved,
``--repeats`` times; medians are reported.

    PYTHONPATH=. python benchmarks/imp_throughput.py [--epochs 60 --levels 3 --repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--data", default="mnist1d")
    ap.add_argument("--epochs", type=float, default=60)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from tickets.data import load_dataset
    from tickets.imp import run_imp
    from tickets.runs import load_level
    from tickets.models import build_model
    from tickets.train import default_config, train

    data = load_dataset(args.data)
    cfg = default_config(args.model, args.data).replace(epochs=args.epochs, iters=None)
    n = args.levels + 1

    def plain() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            model = build_model(args.model, num_classes=data.num_classes,
                                input_shape=data.input_shape, seed=0)
            train(model, data, cfg, seed=0, data_seed=0)
        return time.perf_counter() - t0

    masks: list = []

    def imp() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            run_imp(args.model, data, cfg, levels=args.levels, seed=0, out_dir=Path(tmp) / "r")
            elapsed = time.perf_counter() - t0
            if not masks:
                masks.extend(load_level(Path(tmp) / "r", lv).mask for lv in range(n))
            return elapsed

    def masked() -> float:
        """The same N+1 trainings under IMP's masks, with no pruning, rewinding or I/O."""
        t0 = time.perf_counter()
        for mask in masks:
            model = build_model(args.model, num_classes=data.num_classes,
                                input_shape=data.input_shape, seed=0)
            train(model, data, cfg, seed=0, data_seed=0, mask=mask)
        return time.perf_counter() - t0

    plain()  # warm-up (allocator, first-call costs)
    imp()  # warm-up, and records the masks for masked()
    times: dict = {plain: [], imp: [], masked: []}
    for r in range(args.repeats):
        order = [plain, imp, masked] if r % 2 == 0 else [masked, imp, plain]
        for fn in order:
            times[fn].append(fn())
    t_plain, t_imp, t_masked = times[plain], times[imp], times[masked]
    mp, mi = statistics.median(t_plain), statistics.median(t_imp)
    mm = statistics.median(t_masked)
    print(f"{args.model} on {args.data}, {args.epochs:g} epochs per level, {n} trainings, "
          f"{args.repeats} repeats, {args.threads} thread(s)")
    print(f"plain dense training : {mp / n:7.3f} s per level (median of {t_plain})")
    print(f"IMP                  : {mi / n:7.3f} s per level (median of {t_imp})")
    print(f"masked training only : {mm / n:7.3f} s per level (median of {t_masked})")
    print(f"IMP / plain          : {mi / mp:7.3f}  (overhead {100 * (mi / mp - 1):+.1f}%)")
    print(f"IMP / masked training: {mi / mm:7.3f}  (IMP machinery {100 * (mi / mm - 1):+.1f}%; "
          f"masked-gradient training {100 * (mm / mp - 1):+.1f}% vs dense)")
    print(f"machinery alone      : {1e3 * machinery(args, data):7.1f} ms per level (prune, "
          "rewind, write 3 checkpoints + metrics)")


def machinery(args, data) -> float:
    """Median time of the non-training work of one level, measured directly."""
    from tickets import prune as P
    from tickets.models import build_model
    from tickets.store import save_checkpoint, save_json
    model = build_model(args.model, num_classes=data.num_classes, input_shape=data.input_shape,
                        seed=0)
    params = model.state_dict()
    names = P.prunable(model)
    mask = P.full_mask(params, names)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(20):
            t0 = time.perf_counter()
            mask = P.magnitude_layerwise(params, mask, 0.2, layer_fractions={names[-1]: 0.1})
            start = P.apply_mask(params, mask)
            for f in ("init", "final", "mask"):
                save_checkpoint(Path(tmp) / f"{f}.safetensors", mask if f == "mask" else start,
                                {"model": args.model, "level": i})
            save_json(Path(tmp) / "metrics.json", {"level": i, "curve": [{"a": 1.0}] * 60})
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


if __name__ == "__main__":
    main()
