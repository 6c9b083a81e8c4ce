"""Top Hessian eigenvalue: gauge.hessian (Lanczos, ARPACK) vs PyHessian (power iteration).

Same model (MLP 40-32-32-10 trained on MNIST-1D), same fixed data (1000 training examples),
both on CPU in float32 with one thread. The exact value comes from the dense float64 Hessian
(built column by column from float64 HVPs) and numpy.linalg.eigvalsh. Each repeat runs ours
at every ``--tol`` and PyHessian back to back with the same seed; we report medians over the
repeats of HVP count, wall time and relative error, and their ratios (ours / PyHessian).

Run from /work/main with the benchmark venv (PyHessian is never a project dependency):

    PYTHONPATH=/work/main /work/bench-venv/bin/python benchmarks/hessian_bench.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn


def trained_mlp(iters: int, widths):
    from tickets.data import load_dataset
    from tickets.models import build_model
    from tickets.train import default_config, train
    data = load_dataset("mnist1d")
    model = build_model("mlp", num_classes=10, input_shape=(40,), seed=0, widths=widths)
    cfg = default_config("mlp", "mnist1d").replace(iters=iters, epochs=None)
    result = train(model, data, cfg, seed=0, data_seed=0)
    model.load_state_dict(result.params)
    return model, result.params, data


def exact_top_eigenvalue(model, params, x, y, dense_limit=4000) -> tuple[float, str]:
    """lambda_max in float64: dense eigvalsh up to ``dense_limit`` params, else ARPACK on
    float64 HVPs to tol 1e-12 (cross-checked against the dense value on the small model)."""
    from gauge.hessian import hessian_eigenvalues, hvp
    p64 = {k: v.double() for k, v in params.items()}
    op = hvp(model.double(), p64, (x.double(), y), nn.functional.cross_entropy)
    n = op.shape[0]
    if n > dense_limit:
        res = hessian_eigenvalues(model, p64, (x.double(), y), nn.functional.cross_entropy,
                                  k=1, method="arpack", tol=1e-12, seed=123)
        model.float()
        return float(res.values[-1]), "float64 HVPs, ARPACK tol 1e-12"
    h = np.empty((n, n))
    eye = torch.eye(n, dtype=torch.float64)
    for i in range(n):
        h[:, i] = op.problem.hvp(eye[i]).numpy()
    model.float()
    return float(np.linalg.eigvalsh((h + h.T) / 2)[-1]), "dense float64 Hessian, eigvalsh"


def run_ours(model, params, x, y, seed, tol):
    from gauge.hessian import hessian_eigenvalues
    t = time.perf_counter()
    res = hessian_eigenvalues(model, params, (x, y), nn.functional.cross_entropy, k=1,
                              tol=tol, seed=seed, residuals=False)
    return float(res.values[-1]), res.n_hvp, time.perf_counter() - t


def run_pyhessian(model, x, y, seed, max_iter, tol):
    import sys

    import pyhessian  # noqa: F401 - registers the submodule
    ph = sys.modules["pyhessian.hessian"]  # the package re-exports the class under that name
    count = [0]
    original = ph.hessian_vector_product

    def counted(*a, **k):
        count[0] += 1
        return original(*a, **k)
    ph.hessian_vector_product = counted
    try:
        torch.manual_seed(seed)  # PyHessian draws its start vector from the global RNG
        model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        h = ph.hessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=False)
        values, _ = h.eigenvalues(maxIter=max_iter, tol=tol, top_n=1)
        wall = time.perf_counter() - t
    finally:
        ph.hessian_vector_product = original
        model.zero_grad(set_to_none=True)
    return float(values[0]), count[0], wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--n-data", type=int, default=1000)
    ap.add_argument("--iters", type=int, default=1500)
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 32])
    ap.add_argument("--tol", type=float, nargs="+", default=[1e-6, 1e-5],
                    help="our relative eigenvalue tolerances, each run as its own method "
                         "(default: 1e-6, the library default, and 1e-5, still 100x below "
                         "PyHessian's typical error)")
    ap.add_argument("--pyhessian-tol", type=float, default=1e-3,
                    help="PyHessian's own default (1e-3)")
    ap.add_argument("--pyhessian-max-iter", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)

    model, params, data = trained_mlp(args.iters, args.widths)
    model.eval()
    x, y = data.train.tensors
    x, y = x[:args.n_data], y[:args.n_data]
    n_params = sum(p.numel() for p in model.parameters())
    t = time.perf_counter()
    exact, how = exact_top_eigenvalue(model, params, x, y)
    print(f"model MLP 40-{'-'.join(map(str, args.widths))}-10 ({n_params} params), "
          f"{len(y)} MNIST-1D examples; exact lambda_max = {exact:.10g} "
          f"({how}, {time.perf_counter() - t:.1f}s)")

    ours = [f"ours tol={tol:g}" for tol in args.tol]
    rows = {name: [] for name in ours + ["pyhessian"]}
    for r in range(args.repeats):
        # interleave the methods so that background load hits them alike
        for name, tol in zip(ours, args.tol):
            v, n, w = run_ours(model, params, x, y, seed=r, tol=tol)
            rows[name].append((abs(v - exact) / abs(exact), n, w))
        v, n, w = run_pyhessian(model, x, y, r, args.pyhessian_max_iter, args.pyhessian_tol)
        rows["pyhessian"].append((abs(v - exact) / abs(exact), n, w))

    med = {k: tuple(statistics.median(c) for c in zip(*v)) for k, v in rows.items()}
    print(f"{'method':<18}{'rel. error':>12}{'max error':>12}{'HVPs':>6}{'wall (s)':>10}"
          f"   (medians of {args.repeats} repeats; max error over them)")
    for k, (err, n, w) in med.items():
        worst = max(e for e, _, _ in rows[k])
        print(f"{k:<18}{err:>12.3e}{worst:>12.3e}{n:>6.0f}{w:>10.4f}")
    e2, n2, w2 = med["pyhessian"]
    for name in ours:
        e1, n1, w1 = med[name]
        print(f"{name}: error ratio pyhessian/ours = {e2 / max(e1, 1e-300):.3g}x (target "
              f">= 100x), HVP ratio ours/pyhessian = {n1 / n2:.3f} (target <= 1), wall ratio "
              f"ours/pyhessian = {w1 / w2:.3f} (target <= 0.7)")


if __name__ == "__main__":
    main()
