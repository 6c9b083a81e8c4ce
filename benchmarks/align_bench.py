"""Weight matching: gauge.weight_matching vs the PyPI ``rebasin`` package and the reference loop.

Same model pairs for every method, in one process, interleaved; each timing is the median of
``--repeats`` runs. For each pair we report wall time, the objective ``sum <W_A, P W_B>`` after
alignment, the L2 distance to A after alignment and, for planted permutations, the fraction of
units whose planted match was recovered.

Pairs: ``init`` = two independent Kaiming inits of the zoo model (seeds 0 and 1);
``planted`` = every tensor N(0, 1) for A, B = P(A + 0.6 * noise) for a random permutation P.

Methods:
* ``ours``: :func:`gauge.weight_matching` (cached per-axis costs, progressive start).
* ``ref``: a straightforward reimplementation of the reference loop of Ainsworth et al. (2022)
  written here: from the identity, sweep the groups in random order, rebuild each group's cost
  from fully re-permuted tensors, stop when a sweep does not improve.
* ``rebasin``: ``rebasin.PermutationCoordinateDescent`` (PyPI), when importable; its time
  includes building its graph (it traces the model with torchview), reported separately.

Run from the repository root (the peer lives only in the benchmark venv):

    PYTHONPATH=. /work/bench-venv/bin/python benchmarks/align_bench.py

Real architectures (torchvision / transformers in the venv; specs inferred, heads nested),
planted pairs, one run each:

    PYTHONPATH=. /work/tv-venv/bin/python benchmarks/align_bench.py --no-ref --repeats 1 \
        --min-time 0 --models resnet50 vit_b_16 convnext_base gpt2_small

``peak_MB`` is the resident memory a method adds while it runs (sampled every 5 ms), beside
the size of the two models.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from gauge import apply_permutation, infer_spec, invert, random_permutation, weight_matching
from gauge.match import matching_objective
from gauge.symmetry import expand_index
from tickets.models import build_model

MODELS = {
    "mlp1024": ("mlp", (1, 28, 28), {"widths": (1024, 1024, 1024)}),
    "vgg11": ("vgg11", (3, 32, 32), {}),
    "resnet20x1": ("resnet20", (3, 32, 32), {"width": 1}),
    "resnet20x4": ("resnet20", (3, 32, 32), {"width": 4}),
    "resnet20x16": ("resnet20", (3, 32, 32), {"width": 16}),
}
#: Real architectures (torchvision / transformers, random init): planted pairs only.
BIG = ("resnet50", "vit_b_16", "convnext_base", "gpt2_small")


def big_model(name, tiny=False):
    """``(model, spec, example input)`` of a real architecture, its spec inferred (heads and
    the dims inside them nested); ``tiny``: a small config of the same code."""
    if name == "gpt2_small":
        import transformers
        cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100) if tiny \
            else transformers.GPT2Config()
        model = transformers.GPT2LMHeadModel(cfg).eval()
        x = torch.randint(0, cfg.vocab_size, (1, 16))
        return model, infer_spec(model, x), x
    import torchvision
    if name == "vit_b_16":
        model = (torchvision.models.VisionTransformer(32, 8, 2, 4, 64, 128) if tiny
                 else torchvision.models.vit_b_16()).eval()
        side = 32 if tiny else 224
        x = torch.zeros(1, 3, side, side)
        return model, infer_spec(model, x), x
    model = torchvision.models.get_model(name).eval()
    x = torch.zeros(1, 3, 64, 64)
    return model, infer_spec(model, x), x


def reference_loop(spec, pa, pb, *, max_iter=100, seed=0):
    """The plain coordinate descent: identity start, full re-permutation for every cost."""
    rng = np.random.default_rng(seed)
    perm = {g: torch.arange(n) for g, n in spec.sizes.items()}
    groups = spec.groups
    for _ in range(max_iter):
        progress = False
        for i in rng.permutation(len(groups)):
            g = groups[i]
            n = spec.sizes[g]
            cost = torch.zeros(n, n, dtype=torch.float64)
            for k, ax in spec.perm_to_axes[g]:
                if not pa[k].dtype.is_floating_point:
                    continue
                wb = pb[k]
                for j, h in enumerate(spec.axes[k]):
                    if h is not None and j != ax:
                        wb = wb.index_select(j, expand_index(perm[h], spec.layout(k, j)))
                r, b = spec.layout(k, ax)
                wa = pa[k].movedim(ax, 0).reshape(r, n, b, -1).transpose(0, 1).reshape(n, -1)
                wb = wb.movedim(ax, 0).reshape(r, n, b, -1).transpose(0, 1).reshape(n, -1)
                cost += (wa @ wb.T).double()
            _, cols = linear_sum_assignment(cost.numpy(), maximize=True)
            new = torch.from_numpy(cols)
            rows = torch.arange(n)
            if float(cost[rows, new].sum()) > float(cost[rows, perm[g]].sum()) + 1e-12:
                progress = True
            perm[g] = new
        if not progress:
            break
    return perm


def make_pair(name, kind, seed):
    if name in BIG:
        model, spec, _ = big_model(name)
    else:
        zoo, shape, kw = MODELS[name]
        model = build_model(zoo, num_classes=10, input_shape=shape, seed=0, **kw)
        spec = infer_spec(model, torch.zeros(1, *shape))
    if kind == "init":
        pa = model.state_dict()
        pb = build_model(zoo, num_classes=10, input_shape=shape, seed=1 + seed, **kw).state_dict()
        return model, spec, dict(pa), dict(pb), None
    return (model, spec, *planted_pair(model, spec, seed))


def planted_pair(model, spec, seed):
    """``(A, B, P)``: every tensor of A N(0, 1), B = P(A + 0.6 N(0, 1))."""
    gen = torch.Generator().manual_seed(seed)
    pa = {k: torch.randn(v.shape, generator=gen) if v.dtype.is_floating_point else v
          for k, v in model.state_dict().items()}
    noisy = {k: v + 0.6 * torch.randn(v.shape, generator=gen) if v.dtype.is_floating_point
             else v for k, v in pa.items()}
    planted = random_permutation(spec, 1000 + seed)
    return pa, apply_permutation(spec, planted, noisy), planted


def l2(pa, pb):
    return sum(float((pa[k].double() - pb[k].double()).pow(2).sum())
               for k in pa if pa[k].dtype.is_floating_point) ** 0.5


def recovery(spec, perm, planted):
    if planted is None:
        return float("nan")
    inv = invert(planted)
    return sum(int((perm[g] == inv[g]).sum()) for g in spec.groups) / sum(spec.sizes.values())


class PeakRSS:
    """Peak resident memory above the level at entry (MB), sampled every 5 ms (Linux). Freed
    heap is handed back to the OS first (``malloc_trim``), else a method reusing memory an
    earlier one freed would look free of cost."""

    def __enter__(self):
        import ctypes
        import gc
        import threading
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.mb = (self.peak - self.base) / 1e6


def pair_mb(pa, pb) -> float:
    return sum(v.numel() * v.element_size() for p in (pa, pb) for v in p.values()) / 1e6


def run_rebasin(model, x, pa, pb, seed):
    import rebasin
    ma, mb = copy.deepcopy(model), copy.deepcopy(model)
    ma.load_state_dict(pa)
    mb.load_state_dict(pb)
    ma.eval()
    mb.eval()
    torch.manual_seed(seed)  # rebasin draws its group order from the global RNG
    t0 = time.perf_counter()
    pcd = rebasin.PermutationCoordinateDescent(ma, mb, x)
    t1 = time.perf_counter()
    pcd.calculate_permutations(100)
    pcd.apply_permutations()
    t2 = time.perf_counter()
    return {k: v.detach().clone() for k, v in mb.state_dict().items()}, t2 - t0, t2 - t1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS),
                        choices=[*MODELS, *BIG],
                        help=f"default: the zoo models; real architectures (planted pairs "
                             f"only): {', '.join(BIG)}")
    parser.add_argument("--kinds", nargs="+", default=["init", "planted"],
                        choices=["init", "planted"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=1.0,
                        help="repeat ours and ref until each took this long (seconds) in all: "
                             "sub-10 ms runs need many repeats for a stable median")
    parser.add_argument("--seeds", type=int, default=1, help="planted pairs per model")
    parser.add_argument("--no-rebasin", action="store_true")
    parser.add_argument("--no-ref", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    have_rebasin = not args.no_rebasin
    if have_rebasin:
        try:
            import rebasin  # noqa: F401
        except Exception as e:  # not installed in this environment
            print(f"# rebasin not importable ({e}); comparing with the reference loop only")
            have_rebasin = False
    header = ("model", "pair", "seed", "method", "time_s", "ratio", "objective", "l2_after",
              "recovery", "peak_MB (pair_MB)")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in args.models:
        x = big_model(name)[2] if name in BIG else torch.zeros(1, *MODELS[name][1])
        for kind in args.kinds:
            if name in BIG and kind == "init":
                continue
            for seed in range(args.seeds if kind == "planted" else 1):
                model, spec, pa, pb, planted = make_pair(name, kind, seed)
                times = {"ours": [], "ref": [], "rebasin": [], "rebasin_search": []}
                peak = {}
                results = {}
                rep, rebasin_ok = 0, have_rebasin
                while rep < args.repeats or (
                        sum(times["ours"]) < args.min_time
                        or (not args.no_ref and sum(times["ref"]) < args.min_time)):
                    t0 = time.perf_counter()
                    with PeakRSS() as mem:
                        res = weight_matching(spec, pa, pb, seed=seed)
                    times["ours"].append(time.perf_counter() - t0)
                    peak["ours"] = max(peak.get("ours", 0.0), mem.mb)
                    results["ours"] = res.perm
                    if not args.no_ref and (len(times["ref"]) < args.repeats
                                            or sum(times["ref"]) < args.min_time):
                        t0 = time.perf_counter()
                        results["ref"] = reference_loop(spec, pa, pb, seed=seed)
                        times["ref"].append(time.perf_counter() - t0)
                    if rebasin_ok and rep < args.repeats:
                        try:
                            with PeakRSS() as mem:
                                out, total, search = run_rebasin(model, x, pa, pb, seed)
                            peak["rebasin"] = max(peak.get("rebasin", 0.0), mem.mb)
                            results["rebasin"] = out
                            times["rebasin"].append(total)
                            times["rebasin_search"].append(search)
                        except Exception as e:  # report, keep benchmarking the others
                            print(f"# rebasin failed on {name}: {type(e).__name__}: {e}")
                            times["rebasin"] = []
                            rebasin_ok = False
                    rep += 1
                base = statistics.median(times["ours"])
                for method in ("ours", "ref", "rebasin"):
                    if not times[method]:
                        continue
                    t = statistics.median(times[method])
                    if method == "rebasin":
                        aligned = results["rebasin"]
                        rec = float("nan")
                        extra = f" (search {statistics.median(times['rebasin_search']):.2f})"
                    else:
                        aligned = apply_permutation(spec, results[method], pb)
                        rec = recovery(spec, results[method], planted)
                        extra = ""
                    obj = matching_objective(pa, aligned)
                    row = (name, kind, str(seed), method, f"{t:.4f}{extra}",
                           f"{t / base:.1f}x", f"{obj:.6g}", f"{l2(pa, aligned):.6g}",
                           "" if rec != rec else f"{100 * rec:.1f}%",
                           f"{peak[method]:.0f} ({pair_mb(pa, pb):.0f})" if method in peak
                           else "")
                    print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
