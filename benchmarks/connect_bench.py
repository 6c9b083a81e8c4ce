"""Cost of a 25-point linear path with BatchNorm reset vs the floor of that work.

The floor: for each of the 25 alphas, one statistics pass over the training set (BatchNorm in
training mode, cumulative running statistics) and one evaluation pass over the test set, on a
model that already holds the weights -- the forward passes the measurement cannot avoid.
``gauge.connect.linear_path(..., bn="reset")`` adds the interpolation of the weights and
everything else; target: <= 1.3x the floor. Variants are interleaved in one process and
medians reported, because the CPU is shared.

Run from the repository root:
    PYTHONPATH=. python benchmarks/connect_bench.py [--model cnn1d] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from gauge.connect import linear_path
from tickets.data import load_dataset
from tickets.models import build_model


def floor(model: nn.Module, params_list, data, batch_size: int) -> None:
    """25 x (stats pass + eval pass) with the weights already in place (no interpolation)."""
    x_tr = data.train.tensors[0]
    x_te, y_te = data.test.tensors
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.momentum = None
    with torch.no_grad():
        for params in params_list:
            model.load_state_dict(params)  # stands in for "weights in place": a memcpy
            for m in bns:
                m.reset_running_stats()
                m.train()
            for i in range(0, len(x_tr), batch_size):
                model(x_tr[i:i + batch_size])
            model.eval()
            loss = wrong = 0.0
            for i in range(0, len(y_te), batch_size):
                out = model(x_te[i:i + batch_size])
                loss += float(nn.functional.cross_entropy(out, y_te[i:i + batch_size],
                                                          reduction="sum"))
                wrong += int((out.argmax(1) != y_te[i:i + batch_size]).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn1d")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--points", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist1d")
    kw = {"batchnorm": True} if args.model == "cnn1d" else {}
    a = build_model(args.model, num_classes=10, input_shape=data.input_shape, seed=0, **kw)
    b = build_model(args.model, num_classes=10, input_shape=data.input_shape, seed=1, **kw)
    pa, pb = a.state_dict(), b.state_dict()
    # give the floor the same weights the path visits (computed outside the timing)
    from gauge.connect import interpolate
    alphas = [i / (args.points - 1) for i in range(args.points)]
    plist = [interpolate(pa, pb, t) for t in alphas]
    fmodel = copy.deepcopy(a)
    t_path, t_floor = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        r = linear_path(a, pa, pb, data, n_points=args.points, bn="reset",
                        batch_size=args.batch_size)
        t_path.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        floor(fmodel, plist, data, args.batch_size)
        t_floor.append(time.perf_counter() - t0)
    mp, mf = statistics.median(t_path), statistics.median(t_floor)
    print(f"model {args.model} (batchnorm), {len(r.alphas)} alphas, train {len(data.train)} / "
          f"test {len(data.test)}, batch {args.batch_size}, {args.threads} thread(s), "
          f"{args.repeats} repeats (median)")
    print(f"  linear_path bn=reset : {mp:7.3f} s  ({r.n_stats} stats + {r.n_eval} eval passes)")
    print(f"  floor                : {mf:7.3f} s  ({len(plist)} stats + {len(plist)} eval passes)")
    print(f"  ratio path / floor   : {mp / mf:7.3f}x  (target <= 1.3x)")


if __name__ == "__main__":
    main()
