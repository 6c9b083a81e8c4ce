"""align_many on N networks vs pairwise weight matching: time, cycle error, objective.

Networks: ``init`` = N Kaiming inits of the zoo ResNet20x4 (seeds 0..N-1, BatchNorm stats
randomised as in the tests); ``planted`` = N noisy permuted copies of one network,
``theta_i = P_i (theta + sigma eps_i)``, every tensor N(0, 1), so the true relative maps
``P_i^-1 P_j`` are known.

Rows:
* ``pairwise to ref``: N-1 weight matchings to network 0 (what every pairwise analysis does);
  its implied maps ``Q_0i^-1 Q_0j`` are cycle-consistent by construction.
* ``all pairs``: the N(N-1)/2 weight matchings; cycle error = fraction of units breaking
  ``Q_ij Q_jk = Q_ik`` over all triples.
* ``mergemany`` / ``c2m3``: :func:`gauge.align_many` (starts from the reference alignment, so
  its time includes the N-1 matchings).

Times are process CPU seconds (``time.process_time``, one torch thread), which a shared machine
does not inflate the way it inflates wall time.

``objective`` = ``sum_{i<j} <P_i theta_i, P_j theta_j>`` in the common basis (for the all-pairs
row: of the reference alignment, its maps being inconsistent); ``recovery`` (planted) = share
of units ``u`` and pairs with ``Q_ij(u)`` equal to the planted map.

    PYTHONPATH=. python benchmarks/align_many_bench.py --n 8 --width 4
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from gauge import (align_many, apply_permutation, compose, cycle_consistency, infer_spec,
                   invert, pairwise_matchings, random_permutation, weight_matching)
from gauge.many import _floating, _objective
from tickets.models import build_model


def networks(kind: str, n: int, width: int, sigma: float):
    model = build_model("resnet20", num_classes=10, input_shape=(3, 32, 32), width=width)
    spec = infer_spec(model, torch.zeros(2, 3, 32, 32))
    if kind == "init":
        nets = []
        for s in range(n):
            sd = build_model("resnet20", num_classes=10, input_shape=(3, 32, 32), width=width,
                             seed=s).state_dict()
            gen = torch.Generator().manual_seed(100 + s)
            for k, v in sd.items():
                if k.endswith("running_var"):
                    sd[k] = 0.5 + torch.rand(v.shape, generator=gen)
                elif k.endswith("running_mean") or (v.is_floating_point() and v.dim() == 1):
                    sd[k] = v + 0.1 * torch.randn(v.shape, generator=gen)
            nets.append(sd)
        return spec, nets, None
    gen = torch.Generator().manual_seed(0)
    base = {k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
            for k, v in model.state_dict().items()}
    perms = [random_permutation(spec, 1000 + i) for i in range(n)]
    nets = [apply_permutation(spec, p, {k: v + sigma * torch.randn(v.shape, generator=gen)
                                        if v.is_floating_point() else v
                                        for k, v in base.items()}) for p in perms]
    # planted map of network j into network i's basis: P_i P_j^-1
    truth = {(i, j): compose(perms[i], invert(perms[j]))
             for i, j in itertools.permutations(range(n), 2)}
    return spec, nets, truth


def recovery(spec, maps, truth) -> float | None:
    if truth is None:
        return None
    hit = tot = 0
    for (i, j), t in truth.items():
        for g in spec.groups:
            hit += int((maps(i, j)[g] == t[g]).sum())
            tot += len(t[g])
    return hit / tot


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--sigma", type=float, default=2.0)
    ap.add_argument("--c2m3-iter", type=int, default=30)
    ap.add_argument("--kinds", nargs="+", default=["init", "planted"])
    args = ap.parse_args()
    print(f"N = {args.n} ResNet20x{args.width}, torch threads {torch.get_num_threads()}")
    torch.set_num_threads(1)
    print("| networks | method | matchings | CPU s | ratio to pairwise-to-ref | cycle error "
          "| objective | recovery |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in args.kinds:
        spec, nets, truth = networks(kind, args.n, args.width, args.sigma)
        n = len(nets)
        nets = [_floating(spec, x) for x in nets]  # the tensors align_many's objective sums
        t0 = time.process_time()
        ref = [None] + [weight_matching(spec, nets[0], nets[i]).perm for i in range(1, n)]
        t_ref = time.process_time() - t0
        ident = {g: torch.arange(s) for g, s in spec.sizes.items()}
        ref[0] = ident
        # ref[i] maps network i into network 0's basis; j into i's basis is ref[i]^-1 ref[j]
        rows = [("pairwise to ref", n - 1, t_ref, 0.0, _objective(spec, nets, ref),
                 recovery(spec, lambda i, j: compose(invert(ref[i]), ref[j]), truth))]
        t0 = time.process_time()
        pw = pairwise_matchings(spec, nets)
        t_pw = time.process_time() - t0
        cc = cycle_consistency(spec, pw, n)
        rows.append(("all pairs", n * (n - 1) // 2, t_pw, cc.cycle_error, rows[0][4],
                     recovery(spec, lambda i, j: pw[(i, j)], truth)))
        for method in ("mergemany", "c2m3"):
            t0 = time.process_time()
            r = align_many(spec, nets, method=method,
                           max_iter=args.c2m3_iter if method == "c2m3" else 100)
            t_sync = time.process_time() - t0
            c = cycle_consistency(spec, pw, n, r)
            rows.append((f"{method} ({r.iterations} it)", None, t_sync,
                         c.synchronised_cycle_error, r.objective,
                         recovery(spec, r.pairwise, truth)))
        for name, m, t, ce, obj, rec in rows:
            print(f"| {kind} | {name} | {m if m is not None else '-'} | {t:.1f} | "
                  f"{t / t_ref:.2f} | {100 * ce:.1f}% | {obj:.6g} | "
                  f"{'-' if rec is None else f'{100 * rec:.1f}%'} |", flush=True)


if __name__ == "__main__":
    main()
