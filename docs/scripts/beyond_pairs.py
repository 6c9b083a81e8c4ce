"""Beyond pairs on MNIST-1D: N seeds in one basis, quotient distances, consensus tickets,
merging and curved paths (the tables of docs/results.md, section "Beyond pairs").

    nice python docs/scripts/beyond_pairs.py --runs runs/beyond --figures docs/img/beyond

Makes 6 IMP runs per model (mlp 40-300-100-10 and cnn1d, 32 channels) with `gauge imp
--levels 3 --fraction 0.5 --epochs 10` (densities 100 / 50 / 25 / 12.5 %; each model's default
optimiser, lr and batch size), reusing completed runs, then
prints the markdown tables and writes the figures and RUNS/beyond_pairs.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MODELS = ("mlp", "cnn1d")
SEEDS = range(6)
LEVELS = (1, 2, 3)
#: Training epochs per IMP level (the defaults are 60 for mlp and 40 for cnn1d; 10 keeps the
#: 48 trainings of this page to minutes on a shared 2-core machine).
EPOCHS = 10


def make_runs(base: Path) -> dict[str, list[Path]]:
    out = {}
    for model in MODELS:
        out[model] = []
        for s in SEEDS:
            d = base / f"{model}-s{s}"
            if not (d / "level_03" / "metrics.json").is_file():
                subprocess.run([sys.executable, "-m", "analyses.cli", "imp", "--model", model,
                                "--data", "mnist1d", "--seed", str(s), "--levels", "3",
                                "--fraction", "0.5", "--epochs", str(EPOCHS), "--out", str(d),
                                "--quiet"], check=True)
            out[model].append(d)
    return out


def mean_std(v) -> str:
    v = np.asarray(v, dtype=float)
    return f"{v.mean():.3f} ± {v.std():.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs/beyond")
    ap.add_argument("--figures", default="docs/img/beyond")
    ap.add_argument("--curve-steps", type=int, default=600)
    ap.add_argument("--replot", action="store_true",
                    help="only redraw the figures and tables from RUNS/beyond_pairs.json")
    args = ap.parse_args()
    if args.replot:
        results = json.loads((Path(args.runs) / "beyond_pairs.json").read_text())
        for model_name, R in results.items():
            if "pair_disagreement" not in R:  # JSON of an older version of this script
                R["alignment"], R["pair_disagreement"] = disagreement(
                    [Path(args.runs) / f"{model_name}-s{s}" for s in SEEDS])
        figures(results, Path(args.figures))
        print_tables(results)
        return
    import torch

    from analyses.connect import example_input
    from gauge import (align_many, consensus, curve_path, cycle_consistency, evaluate_merge,
                       infer_spec, linear_path, pairwise_matchings, quotient_distance,
                       weight_matching, apply_permutation)
    from tickets import build_run_model, load_level, load_run_data, open_run
    torch.set_num_threads(1)
    base, figs = Path(args.runs), Path(args.figures)
    runs = make_runs(base)
    results: dict = {}
    for model_name, dirs in runs.items():
        R = results[model_name] = {}
        infos = [open_run(d) for d in dirs]
        model = build_run_model(infos[0])
        spec = infer_spec(model, example_input(infos[0].meta))
        data = load_run_data(infos[0])
        dense = [load_level(r, 0).final for r in infos]
        n = len(dense)
        acc = [1 - load_level(r, 0).metrics.get("test_acc", float("nan")) for r in infos]
        R["dense_error"] = acc

        # 1. cycle consistency
        t0 = time.perf_counter()
        pw = pairwise_matchings(spec, dense)
        t_pw = time.perf_counter() - t0
        R["cycle"] = {"pairwise_time": t_pw}
        syncs = {}
        for method in ("reference", "mergemany", "c2m3"):
            s = align_many(spec, dense, method=method)
            cc = cycle_consistency(spec, pw, n, s)
            al = s.aligned(spec, dense)
            dist = [float(sum((al[i][k].double() - al[j][k].double()).pow(2).sum()
                              for k in al[i] if al[i][k].is_floating_point())) ** 0.5
                    for i, j in itertools.combinations(range(n), 2)]
            syncs[method] = s
            R["cycle"][method] = {"time": s.time, "iterations": s.iterations,
                                  "objective": s.objective, "mean_pair_distance": float(
                                      np.mean(dist)), **cc.to_dict()}
        R["alignment"], R["pair_disagreement"] = disagreement(dirs)

        # 2. distances
        rows = [quotient_distance(spec, dense[0], dense[j]).to_dict() for j in range(1, n)]
        R["distances"] = {k: [r[k] for r in rows] for k in
                          ("raw", "permutation", "canonical", "canonical_permutation",
                           "quotient")}
        R["norm"] = float(sum(v.double().pow(2).sum() for v in dense[0].values()
                              if v.is_floating_point())) ** 0.5

        # 3. consensus
        sync = syncs["mergemany"]
        R["consensus"] = {}
        cons_levels = {}
        for lv in LEVELS:
            masks = [load_level(r, lv).mask for r in infos]
            raw, common = consensus(masks), consensus(sync.aligned(spec, masks))
            cons_levels[str(lv)] = {"density": raw.overall.densities[0], "raw": raw.to_dict(),
                                    "aligned": common.to_dict()}
            R["consensus"][str(lv)] = cons_levels[str(lv)]

        # 4. merging
        R["merge"] = {}
        for lv in (0, 2):
            params = [load_level(r, lv).final for r in infos]
            masks = [load_level(r, lv).mask for r in infos] if lv else None
            aligned = sync.aligned(spec, params)
            k = n // 2 + 1
            mask_raw = consensus(masks).mask(k) if masks else None
            mask_al = consensus(sync.aligned(spec, masks)).mask(k) if masks else None
            row = {}
            for bn in ("reset", "repair"):
                naive, _ = evaluate_merge(model, params, data, bn=bn, mask=mask_raw)
                good, _ = evaluate_merge(model, aligned, data, bn=bn, mask=mask_al)
                row[bn] = {"naive": naive.to_dict(), "aligned": good.to_dict()}
            R["merge"][str(lv)] = row

        # 5. curves
        R["curves"] = []
        for i, j in ((0, 1), (2, 3)):
            pb_al = apply_permutation(spec, weight_matching(spec, dense[i], dense[j]).perm,
                                      dense[j])
            res = {"model": model_name, "dataset": "mnist1d", "kind": "bezier", "bends": 1,
                   "bn": "reset"}
            for tag, b in (("naive", dense[j]), ("aligned", pb_al)):
                res[f"linear_{tag}"] = linear_path(model, dense[i], b, data,
                                                   n_points=25).to_dict()
                res[f"curve_{tag}"] = curve_path(model, dense[i], b, data, steps=args.curve_steps,
                                                 lr=1e-3, n_points=25, seed=i).to_dict()
            R["curves"].append(res)

    (base / "beyond_pairs.json").write_text(json.dumps(results, indent=1, default=str))
    figures(results, figs)
    print_tables(results)


def disagreement(dirs) -> tuple[dict, list]:
    """MergeMany on the dense seeds and the share of units where each pairwise matching
    differs from it (the matrix of the cycle figure)."""
    from analyses.connect import example_input
    from gauge import align_many, infer_spec, pairwise_matchings
    from tickets import build_run_model, load_level, open_run
    infos = [open_run(d) for d in dirs]
    spec = infer_spec(build_run_model(infos[0]), example_input(infos[0].meta))
    dense = [load_level(r, 0).final for r in infos]
    pw, sync = pairwise_matchings(spec, dense), align_many(spec, dense, method="mergemany")
    n, units = len(dense), sum(spec.sizes.values())
    out = [[0.0] * n for _ in range(n)]
    for i, j in itertools.permutations(range(n), 2):
        s = sync.pairwise(i, j)
        out[i][j] = sum(int((pw[(i, j)][g] != s[g]).sum()) for g in spec.groups) / units
    return sync.to_dict(), out


def figures(results: dict, figs: Path) -> None:
    from analyses.align_many import plot as plot_cycle
    from analyses.consensus import plot as plot_consensus
    from analyses.curve import plot as plot_curve
    from analyses.figures import COLORS, PALETTE, new_figure, save_figure
    for model_name, R in results.items():
        plot_cycle({"cycle": R["cycle"]["mergemany"], "pair_disagreement":
                    R["pair_disagreement"], "alignment": R["alignment"]},
                   figs / f"cycle_{model_name}")
        plot_consensus({"levels": {"3": R["consensus"]["3"]}}, figs / f"consensus_{model_name}")
        plot_curve(R["curves"][0], figs / f"curve_{model_name}")
    fig, axes = new_figure(len(MODELS), 1, width=3.6, height=2.8)
    for ax, model_name in zip(axes[0], MODELS):
        labels, vals, cols = [], [], []
        for lv, what in ((0, "dense"), (2, "ticket 25%")):
            m = results[model_name]["merge"][str(lv)]
            labels += [f"{what}\nendpoints", f"{what}\nnaive", f"{what}\naligned",
                       f"{what}\naligned+REPAIR"]
            vals += [m["reset"]["aligned"]["endpoint_mean_error"],
                     m["reset"]["naive"]["merged_error"], m["reset"]["aligned"]["merged_error"],
                     m["repair"]["aligned"]["merged_error"]]
            cols += [COLORS["dense"], COLORS["naive"], COLORS["aligned"], PALETTE[2]]
        ax.bar(range(len(vals)), [100 * v for v in vals], color=cols)
        ax.set_xticks(range(len(vals)), labels, rotation=60, ha="right", fontsize=6)
        ax.set_ylabel("test error (%)")
        ax.set_title(f"{model_name}: merge of 6 seeds")
    save_figure(fig, figs / "merge")


def print_tables(results: dict) -> None:
    print("\n### Cycle consistency (dense, 6 seeds, 15 pairwise matchings)\n")
    print("| model | pairwise cycle error | pairwise vs MergeMany | pairwise vs C2M3 | "
          "synchronised cycle error | mean pair distance: reference / MergeMany / C2M3 | "
          "time: 15 pairwise / MergeMany / C2M3 |")
    print("|---|---|---|---|---|---|---|")
    for m, R in results.items():
        c = R["cycle"]
        print(f"| {m} | {100 * c['mergemany']['cycle_error']:.1f}% | "
              f"{100 * c['mergemany']['disagreement']:.1f}% | "
              f"{100 * c['c2m3']['disagreement']:.1f}% | "
              f"{100 * c['mergemany']['synchronised_cycle_error']:.1f}% | "
              f"{c['reference']['mean_pair_distance']:.2f} / "
              f"{c['mergemany']['mean_pair_distance']:.2f} / "
              f"{c['c2m3']['mean_pair_distance']:.2f} | {c['pairwise_time']:.1f} / "
              f"{c['mergemany']['time']:.1f} / {c['c2m3']['time']:.1f} s |")
    print("\n### Distances between seed 0 and seeds 1-5 (dense)\n")
    print("| model | ‖A‖ | raw | permutation | canonical | canonical + perm. | quotient |")
    print("|---|---|---|---|---|---|---|")
    for m, R in results.items():
        d = R["distances"]
        print(f"| {m} | {R['norm']:.2f} | " + " | ".join(
            mean_std(d[k]) for k in ("raw", "permutation", "canonical", "canonical_permutation",
                                     "quotient")) + " |")
    print("\n### Consensus tickets (6 seeds): weights kept by all 6, observed / chance\n")
    print("| model | level (density) | kept by all 6: chance | raw basis | common basis | "
          "TV distance to chance raw / common | majority mask (>= 4) density raw / common |")
    print("|---|---|---|---|---|---|---|")
    for m, R in results.items():
        for lv, d in R["consensus"].items():
            ra, al = d["raw"]["overall"], d["aligned"]["overall"]
            print(f"| {m} | {lv} ({100 * d['density']:.1f}%) | {ra['expected'][-1]:.0f} | "
                  f"{ra['observed'][-1]} ({ra['unanimous_ratio']:.2f}x) | {al['observed'][-1]} "
                  f"({al['unanimous_ratio']:.2f}x) | {ra['total_variation']:.3f} / "
                  f"{al['total_variation']:.3f} | {100 * d['raw']['density_at_least']['4']:.2f}% / "
                  f"{100 * d['aligned']['density_at_least']['4']:.2f}% |")
    print("\n### Merging 6 seeds (test error %)\n")
    print("| model | networks | endpoints (mean) | naive | naive + REPAIR | MergeMany | "
          "MergeMany + REPAIR |")
    print("|---|---|---|---|---|---|---|")
    for m, R in results.items():
        for lv, row in R["merge"].items():
            what = "dense" if int(lv) == 0 else "tickets (25%), majority consensus mask"
            e = lambda x: f"{100 * x:.1f}"  # noqa: E731
            print(f"| {m} | {what} | {e(row['reset']['aligned']['endpoint_mean_error'])} | "
                  f"{e(row['reset']['naive']['merged_error'])} | "
                  f"{e(row['repair']['naive']['merged_error'])} | "
                  f"{e(row['reset']['aligned']['merged_error'])} | "
                  f"{e(row['repair']['aligned']['merged_error'])} |")
    print("\n### Linear vs Bezier (1 bend) barriers, dense seeds (0,1) and (2,3)\n")
    print("| model | pair | loss barrier: linear naive / curve naive / linear aligned / curve "
          "aligned | error barrier (points): same order |")
    print("|---|---|---|---|")
    for m, R in results.items():
        for pair, res in zip(("0-1", "2-3"), R["curves"]):
            keys = ("linear_naive", "curve_naive", "linear_aligned", "curve_aligned")
            print(f"| {m} | {pair} | " + " / ".join(f"{res[k]['loss_barrier']:.3f}"
                                                   for k in keys) + " | " +
                  " / ".join(f"{100 * res[k]['error_barrier']:.1f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
