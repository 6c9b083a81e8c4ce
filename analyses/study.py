"""Helpers of the analyses across seeds: open run directories, group them by configuration,
find the levels they share, and align one seed's network to another's.

A *study* is a set of IMP run directories (``gauge imp --out RUN``). Runs whose run.json
differs only in per-run fields (seeds, paths, versions, how far they got) share a
*configuration*; the analyses across seeds compare the runs of one configuration.

Neurons of independently trained networks carry arbitrary labels: before comparing two seeds
the second is permuted into the first's basis (weight matching, Ainsworth et al. 2023).
:func:`align_seeds` does that once per pair on the dense (level 0) final weights, and the same
permutation serves every level: a seed's units keep their identity across IMP levels (same
init, same rewind point), and masks permute like the weights they cover.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

from analyses.common import NotApplicable, UsageError
from tickets import RunInfo, load_level, open_run

__all__ = ["open_runs", "group_labels", "group_runs", "primary_runs", "common_levels",
           "require_levels", "sparsest_pruned_level", "level_metrics", "arch_label",
           "same_architecture", "example_input", "align_params", "align_seeds",
           "is_openlth_tree"]

# run.json keys that may differ between runs of one configuration.
_PER_RUN_KEYS = {"seed", "data_seed", "dataset_seed", "versions", "versions_first", "root",
                 "control_seeds", "levels", "controls", "device"}


# --------------------------------------------------------------------------------------------
# Opening and grouping runs


def open_runs(run_dirs: Sequence[str | Path | RunInfo], *, unique: bool = False
              ) -> list[RunInfo]:
    """``tickets.open_run`` of each entry (a ``RunInfo`` is kept as it is). With ``unique``, a
    directory given twice is a usage error."""
    runs, seen = [], set()
    for entry in run_dirs:
        run = entry if isinstance(entry, RunInfo) else open_run(entry)
        key = Path(run.path).resolve()
        if unique and key in seen:
            raise UsageError(f"{entry}: given twice")
        seen.add(key)
        runs.append(run)
    return runs


def is_openlth_tree(path: str | Path) -> bool:
    """True for a folder OpenLTH wrote (a run with ``replicate_*``, one replicate, or one
    ``level_L/main``), not a toolkit run directory."""
    from tickets.openlth import is_openlth_level
    p = Path(path)
    return p.is_dir() and not (p / "run.json").exists() and (
        any(p.glob("replicate_*")) or p.name.startswith("replicate_") or is_openlth_level(p))


def _config_key(meta: Mapping) -> str:
    def strip(obj):
        if isinstance(obj, Mapping):
            return {k: strip(v) for k, v in sorted(obj.items()) if k not in _PER_RUN_KEYS}
        return obj
    return json.dumps(strip(meta), sort_keys=True, default=str)


def _short_label(meta: Mapping) -> str:
    cfg = meta["train_config"]
    return f"{meta['model']} {cfg['optimizer']} rewind {meta.get('rewind_iter', 0)}"


def group_labels(runs: Sequence[RunInfo]) -> list[str]:
    """One label per run, shared by the runs of one configuration ("mlp adam rewind 0"); two
    configurations with the same short label get numbered labels."""
    labels: dict[str, str] = {}
    out = []
    for run in runs:
        label = _short_label(run.meta)
        key = _config_key(run.meta)
        if key not in labels:
            labels[key] = (label if label not in labels.values()
                           else f"{label} #{len(labels) + 1}")
        out.append(labels[key])
    return out


def group_runs(runs: Sequence[RunInfo]) -> dict[str, list[RunInfo]]:
    """Label -> the runs of that configuration, in the order given."""
    out: dict[str, list[RunInfo]] = {}
    for run, label in zip(runs, group_labels(runs)):
        out.setdefault(label, []).append(run)
    return out


def primary_runs(runs: Sequence[RunInfo]) -> list[RunInfo]:
    """The runs the analyses across seeds use: the largest group of runs with at least one level
    (first given wins ties), without the runs that lack levels the others have when at least
    two runs remain (so one unfinished seed does not truncate the study)."""
    groups = group_runs([r for r in runs if r.levels])
    if not groups:
        return []
    group = max(groups.values(), key=len)
    deepest = max(len(r.levels) for r in group)
    full = [r for r in group if len(r.levels) == deepest]
    return full if len(full) >= 2 or len(group) < 2 else group


def common_levels(runs: Sequence[RunInfo], control: str | None = None) -> list[int]:
    """Levels completed in every run (of the ticket, or of ``control``)."""
    per_run = [set(r.levels if control is None else r.controls.get(control, ())) for r in runs]
    return sorted(set.intersection(*per_run)) if per_run else []


def require_levels(runs: Sequence[RunInfo], levels: Sequence[int]) -> None:
    """UsageError naming the first run that has not completed one of ``levels``."""
    for run in runs:
        missing = [lv for lv in levels if lv not in run.levels]
        if missing:
            raise UsageError(f"{run.path}: level {missing[0]} is not complete (completed: "
                             f"{', '.join(map(str, run.levels)) or 'none'})")


def open_seed_runs(run_dirs: Sequence[str | Path | RunInfo], levels: Sequence[int],
                   what: str) -> list[RunInfo]:
    """At least two runs of one architecture that all completed ``levels``; ``what`` names
    the analysis in the error."""
    runs = open_runs(run_dirs)
    if len(runs) < 2:
        raise NotApplicable(f"{what} needs at least two run directories (seeds)")
    same_architecture([r.meta for r in runs], [str(r.path) for r in runs])
    require_levels(runs, levels)
    return runs


def sparsest_pruned_level(runs: Sequence[RunInfo], levels: Sequence[int] | None = None,
                          what: str = "this analysis") -> int:
    """The deepest pruned level (>= 1) every run has (and, if given, in ``levels``)."""
    pruned = [lv for lv in common_levels(runs) if lv > 0 and (levels is None or lv in levels)]
    if not pruned:
        raise NotApplicable(f"{what} needs a pruned level (>= 1) completed in every run")
    return pruned[-1]


def level_metrics(run: RunInfo, level: int, control: str | None = None) -> dict:
    """A completed level's metrics.json (``density``, ``test_acc``, ...), without loading its
    weights."""
    from tickets.store import load_json
    return load_json(run.level_path(level, control) / "metrics.json")


# --------------------------------------------------------------------------------------------
# Architecture checks and alignment


def arch_label(meta: Mapping) -> str:
    """"mlp(widths=[300, 100]) on mnist1d": the model, its options and the dataset."""
    kwargs = meta.get("model_kwargs") or {}
    kw = ",".join(f"{k}={v}" for k, v in sorted(kwargs.items()))
    return f"{meta['model']}({kw}) on {meta['dataset']}" if kw else \
        f"{meta['model']} on {meta['dataset']}"


def same_architecture(metas: Sequence[dict], names: Sequence[str]) -> None:
    """UsageError unless every meta names the same model, options, classes and input shape."""
    def arch(m):
        return (m.get("model"), json.dumps(m.get("model_kwargs") or {}, sort_keys=True),
                m.get("num_classes"), tuple(m.get("input_shape") or ()))
    first = arch(metas[0])
    for m, n in zip(metas[1:], names[1:]):
        if arch(m) != first:
            raise UsageError(f"{n} is a {m.get('model')} {m.get('model_kwargs') or {}}, "
                             f"{names[0]} a {metas[0].get('model')} "
                             f"{metas[0].get('model_kwargs') or {}}: not the same architecture")


def example_input(meta: dict):
    """Two zero inputs of the run's input shape: enough for ``infer_spec`` to trace the model."""
    import torch
    return torch.zeros(2, *[int(d) for d in meta["input_shape"]])


def align_params(model, spec, params_a, params_b, method: str, data=None, *, seed: int = 0,
                 device="cpu"):
    """B permuted into A's basis: ``(params_b_aligned, perm)`` (``gauge.align``); activation
    matching correlates the units on the first 1000 training inputs of ``data``."""
    from gauge import align
    if method == "activation":
        if data is None:
            raise UsageError("--align activation needs training data")
        inputs = data.train.tensors[0][:1000]
        aligned, match = align(model, spec, params_a, params_b, method="activation",
                               inputs=inputs)
    else:
        aligned, match = align(model, spec, params_a, params_b, method="weight", seed=seed)
    return aligned, match.perm


def align_seeds(model, spec, run_a: RunInfo, run_b: RunInfo, method: str = "weight",
                data=None, *, seed: int = 0, device="cpu"):
    """The permutation of seed B's hidden units onto seed A's, found on their dense (level 0)
    final weights; it maps B onto A at every level of the two runs."""
    dense_a, dense_b = load_level(run_a, 0).final, load_level(run_b, 0).final
    return align_params(model, spec, dense_a, dense_b, method, data, seed=seed,
                        device=device)[1]
