"""gauge align-many: bring N checkpoints into one common neuron basis, cycle-consistently.

Matching every pair of N networks independently gives maps Q_ij that need not compose
(Q_ij Q_jk != Q_ik). This command finds one permutation per network into a common basis (the
first checkpoint's, or --reference's): --method mergemany (default; Ainsworth et al. 2023:
match each network to the mean of the others until nothing changes), c2m3 (Crisostomi et al.
2024: Frank-Wolfe over all networks and groups jointly) or reference (every network matched
to the reference). It writes every checkpoint in that basis (DIR/aligned_II.safetensors, same
functions as the inputs), the permutations (DIR/perms.json) and the cycle-consistency table
(DIR/cycle.json): per group, the fraction of units where the pairwise maps break
Q_ij Q_jk = Q_ik, and where they disagree with the synchronised maps P_i^-1 P_j.

Example:
  gauge align-many s0.safetensors s1.safetensors s2.safetensors --out aligned/ --plot cycle.png
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from analyses.common import (UsageError, add_device_argument, add_json_argument,
                             check_outputs, finish, load_checkpoint_for_cli, resolve_device)

HELP = "align N checkpoints into one basis (MergeMany / C2M3) and measure cycle consistency"


def add_arguments(parser) -> None:
    parser.add_argument("checkpoints", nargs="+", metavar="CKPT",
                        help="checkpoints of one architecture (>= 2)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder for the aligned checkpoints, perms.json and cycle.json")
    parser.add_argument("--method", choices=["mergemany", "c2m3", "reference"],
                        default="mergemany", help="synchronisation method (default mergemany)")
    parser.add_argument("--reference", type=int, default=0,
                        help="index of the checkpoint whose basis is the common one (default 0)")
    parser.add_argument("--max-iter", type=int, default=100,
                        help="most MergeMany passes / Frank-Wolfe steps (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weight matching")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="per-group cycle errors and the pairwise disagreement matrix")
    add_json_argument(parser)
    add_device_argument(parser)
    parser.add_argument("--quiet", action="store_true")


def load_checkpoints(paths: Sequence[str]):
    """``(model, params_list, metas)`` of N checkpoints of one architecture; a
    :class:`~gauge.errors.MismatchError` names the first offending file and key."""
    from gauge.many import check_many
    if len(paths) < 2:
        raise UsageError(f"give at least two checkpoints, got {len(paths)}")
    for p in paths:
        if Path(p).is_dir():
            raise UsageError(f"{p} is a directory; give checkpoint files such as "
                             f"{Path(p) / 'level_00' / 'final.safetensors'}")
    loaded = [load_checkpoint_for_cli(p) for p in paths]
    params = [x[1] for x in loaded]
    check_many(params, names=[str(p) for p in paths])
    return loaded[0][0], params, [x[2] for x in loaded]


def compute(paths: Sequence[str], *, method: str = "mergemany", reference: int = 0,
            max_iter: int = 100, seed: int = 0, device="cpu") -> dict:
    """Synchronised alignment of the checkpoints and the cycle consistency of their pairwise
    weight matchings; ``result["aligned"]`` holds the params in the common basis (not JSON)."""
    import itertools

    from analyses.study import example_input
    from gauge import align_many, cycle_consistency, infer_spec, pairwise_matchings
    model, params, metas = load_checkpoints(paths)
    if not 0 <= reference < len(params):
        raise UsageError(f"--reference {reference} is not one of the {len(params)} checkpoints")
    spec = infer_spec(model, example_input(metas[0]))
    sync = align_many(spec, params, method=method, reference=reference, max_iter=max_iter,
                      seed=seed, device=device)
    pairwise = pairwise_matchings(spec, params, seed=seed, device=device)
    cycle = cycle_consistency(spec, pairwise, len(params), sync)
    n = len(params)
    units = sum(spec.sizes.values())
    disagree = [[0.0] * n for _ in range(n)]
    for i, j in itertools.permutations(range(n), 2):
        q, s = pairwise[(i, j)], sync.pairwise(i, j)
        disagree[i][j] = sum(int((q[g] != s[g]).sum()) for g in spec.groups) / max(units, 1)
    return {"checkpoints": [str(p) for p in paths], "model": metas[0].get("model"),
            "alignment": sync.to_dict(), "cycle": cycle.to_dict(),
            "pair_disagreement": disagree, "perms": sync.perms,
            "aligned": sync.aligned(spec, params), "metas": metas}


def summary(result: dict) -> list[tuple[str, str]]:
    a, c = result["alignment"], result["cycle"]
    return [("networks", str(a["n"])), ("method", a["method"]),
            ("iterations", f"{a['iterations']} ({'converged' if a['converged'] else 'cap'})"),
            ("objective sum_{i<j} <P_i theta_i, P_j theta_j>", f"{a['objective']:.6g}"),
            ("pairwise cycle error", f"{100 * c['cycle_error']:.2f}% of units"),
            ("pairwise vs synchronised", f"{100 * c['disagreement']:.2f}% of units differ"),
            ("synchronised cycle error", f"{100 * c['synchronised_cycle_error']:.2f}%"),
            ("time", f"{a['time']:.2f} s")]


def plot(result: dict, plot_path) -> list[Path]:
    """Per-group bars (pairwise cycle error, disagreement, synchronised) and the N x N matrix
    of units where the pairwise map differs from the synchronised one."""
    import numpy as np

    from analyses.figures import COLORS, new_figure, save_figure
    c = result["cycle"]
    groups = list(c["per_group"])
    fig, axes = new_figure(2, 1, width=max(3.4, 0.5 * len(groups) + 1.5), height=2.8)
    ax = axes[0][0]
    x = np.arange(len(groups))
    for off, key, label, color in ((-0.27, "cycle_error", "pairwise: cycle error", COLORS["raw"]),
                                   (0.0, "disagreement", "pairwise vs synchronised",
                                    COLORS["chance"]),
                                   (0.27, "synchronised_cycle_error", "synchronised: cycle error",
                                    COLORS["aligned"])):
        vals = [100 * c["per_group"][g][key] for g in groups]
        ax.bar(x + off, vals, width=0.27, label=label, color=color)
        for xi, v in zip(x, vals):
            if v == 0:  # a zero bar is invisible: say so
                ax.text(xi + off, 0.5, "0", ha="center", va="bottom", fontsize=7, color=color)
    ax.set_xticks(x, groups, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("units (%)")
    ax.set_xlabel("permutation group")
    ax.set_title(f"cycle consistency, N = {c['n']}\n({c['triples']} triples)", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[0][1]
    m = 100 * np.array(result["pair_disagreement"])
    im = ax.imshow(m, cmap="viridis", vmin=0, vmax=max(1.0, float(m.max())))
    n = len(m)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("network j")
    ax.set_ylabel("network i")
    ax.grid(False)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{m[i, j]:.0f}", ha="center", va="center", fontsize=6,
                    color="white" if m[i, j] < 0.6 * m.max() else "black")
    ax.set_title(f"units where pairwise Q_ij differs from\n{result['alignment']['method']} "
                 r"$P_i^{-1} P_j$ (%)", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8, label="units (%)")
    stem = Path(plot_path)
    return save_figure(fig, stem.with_suffix("") if stem.suffix else stem)


def run(args) -> int:
    from tickets.store import save_checkpoint, save_json
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file, expected a folder")
    if args.max_iter < 1:
        raise UsageError(f"--max-iter must be >= 1, got {args.max_iter}")
    plot_path = check_outputs(args)
    device = resolve_device(args.device)
    result = compute(args.checkpoints, method=args.method, reference=args.reference,
                     max_iter=args.max_iter, seed=args.seed, device=device)
    files = []
    for i, (params, meta, src) in enumerate(zip(result["aligned"], result["metas"],
                                                args.checkpoints)):
        path = out / f"aligned_{i:02d}.safetensors"
        meta = dict(meta)
        meta["alignment"] = {"method": args.method, "source": str(src), "common_basis_of":
                             str(args.checkpoints[args.reference])}
        save_checkpoint(path, params, meta)
        files.append(str(path))
    save_json(out / "perms.json", [{g: p.tolist() for g, p in perm.items()}
                                   for perm in result["perms"]])
    save_json(out / "cycle.json", result["cycle"])
    report = {k: v for k, v in result.items() if k not in ("aligned", "metas", "perms")}
    report["files"] = files + [str(out / "perms.json"), str(out / "cycle.json")]
    if plot_path is not None:
        report["figures"] = [str(p) for p in plot(result, plot_path)]
    return finish(args, report, lambda r: summary(r) + [("written", f"{len(files)} aligned "
                                                        f"checkpoints, perms.json, cycle.json "
                                                        f"in {out}")])


if __name__ == "__main__":
    from analyses.cli import run_command
    sys.exit(run_command(sys.modules[__name__]))
