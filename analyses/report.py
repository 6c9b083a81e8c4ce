"""gauge report: one HTML report (figures + results.json) from existing IMP run directories.

Give any number of IMP run directories (gauge imp --out RUN; any seeds, model, dataset).
The report groups the runs by configuration (model, dataset, optimizer, rewinding; seeds
differ within a group), then composes its analyses:

  sparsity       test accuracy vs weights remaining: ticket / random reinit / random prune
  optimizer      tickets vs random reinit per optimizer and rewind point (Frankle et al. 2019)
  connect        naive vs aligned loss/error barriers between seeds per level
  instability    error barrier vs rewind iteration (Frankle et al. 2020)
  overlap        mask overlap across seeds: raw, aligned, chance (overlap_layers: per layer)
  transfer       a ticket permuted into another seed's basis (sparse re-basin)
  flatness       Hessian top eigenvalue, trace, sharpness per level: raw and gauge-fixed
  landscape      Hessian spectral density, 1-D/2-D loss slices: dense vs sparsest ticket
  permutation    the permutation found for one layer, as a matrix image

Each analysis caches its results next to the runs (RUN/analyses/), so a second call is fast.
An analysis that does not apply to the runs (too few seeds, no pruned level, a single
configuration where it compares several) is listed in the report with the reason; the rest is
still written. Output: OUT/report.html (self-contained: figures embedded, no network),
OUT/results.json (every number), OUT/figures/*.png and *.pdf.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping, Sequence

from analyses import connect, flatness, instability, overlap, sections, transfer
from analyses.common import (NotApplicable, UsageError, add_device_argument, add_json_argument,
                             add_quiet_argument, emit_json, ensure_output_path, progress_enabled,
                             resolve_device)
from analyses.study import arch_label, common_levels, group_labels, open_runs, primary_runs
from tickets.errors import DataError

HELP = "build the HTML report (figures + results.json) from existing IMP run directories"

__all__ = ["Analysis", "ANALYSES", "QUICK_OPTIONS", "ReportResult", "build_report",
           "check_analysis_names", "print_summary"]

#: What a report analysis provides (a subcommand module also has HELP, add_arguments, run).
REPORT_API = ("compute", "plot", "summary")
SUBCOMMAND_API = ("HELP", "add_arguments", "run")


@dataclass(frozen=True)
class Analysis:
    """One section of the report and what it needs from the runs.

    ``source`` is a subcommand module of :mod:`analyses` or a :class:`analyses.sections.Section`.
    Its ``compute(run_dirs, *, levels, device, progress, **options)`` returns a result
    dataclass with ``to_dict()`` (and, for the page, optionally ``table()``); ``plot(result,
    out_dir)`` returns the figure paths; ``summary(result)`` the (quantity, value) rows of the
    terminal table. A ``compute`` that cannot apply to the runs raises
    :class:`~analyses.common.NotApplicable` with the reason. ``scope``: ``"primary"`` (the
    seeds of the largest configuration) or ``"all"`` (every run with a level).
    """

    name: str
    title: str
    what: str
    source: Any
    min_runs: int = 1
    needs_pruned: bool = False
    scope: str = "primary"

    def __post_init__(self):
        required = REPORT_API + (SUBCOMMAND_API if isinstance(self.source, ModuleType) else ())
        missing = [f for f in required if not hasattr(self.source, f)]
        if missing:
            raise TypeError(f"report analysis {self.name!r}: {self.source!r} has no "
                            f"{', '.join(missing)}")
        if self.scope not in ("primary", "all"):
            raise ValueError(f"report analysis {self.name!r}: scope must be 'primary' or "
                             f"'all', got {self.scope!r}")

    def compute(self, run_dirs, **options):
        return self.source.compute(run_dirs, **options)

    def plot(self, result, out_dir: Path) -> list[Path]:
        return list(self.source.plot(result, out_dir))

    def summary(self, result) -> list[tuple[str, str]]:
        return list(self.source.summary(result))


ANALYSES: tuple[Analysis, ...] = (
    Analysis("sparsity", "Sparsity vs accuracy",
             "Test accuracy of the IMP ticket and its controls against the fraction of weights "
             "remaining (log scale; Frankle & Carbin 2019). Band: ± 1 std over seeds.",
             sections.SPARSITY),
    Analysis("optimizer", "Optimizer and rewinding",
             "Tickets vs random reinitialisation per optimizer and rewind point. Frankle & "
             "Carbin (2019) find winning tickets rewound to init under Adam; Frankle et al. "
             "(2019) find that under SGD with momentum they need late rewinding. The margin "
             "below (ticket minus reinit, at the sparsest level and averaged over levels) says "
             "what these runs show.", sections.OPTIMIZER, scope="all"),
    Analysis("connect", "Linear mode connectivity between seeds",
             "Loss and error barriers on the straight path between two seeds' solutions, naive "
             "and after aligning one to the other (Entezari et al. 2022; Ainsworth et al. 2023).",
             connect, min_runs=2),
    Analysis("instability", "Instability vs rewind iteration",
             "Error barrier between two copies trained from iteration k with different data "
             "orders (Frankle et al. 2020).", instability),
    Analysis("overlap", "Mask overlap across seeds",
             "Jaccard overlap of the tickets' masks: raw, after permutation alignment, and the "
             "chance level of independent random masks.", overlap, min_runs=2,
             needs_pruned=True),
    Analysis("overlap_layers", "Mask overlap per layer",
             "Per-layer Jaccard overlap of the seeds' masks at the sparsest level: raw, after "
             "alignment and chance; mean ± std over seed pairs.", sections.LAYER_OVERLAP,
             min_runs=2, needs_pruned=True),
    Analysis("transfer", "Ticket transfer across seeds",
             "A ticket's mask permuted into another seed's basis and trained from that seed's "
             "rewind weights, vs the unpermuted mask, the seed's own ticket and a random mask "
             "(Adnan et al. 2025).", transfer, min_runs=2, needs_pruned=True),
    Analysis("flatness", "Flatness per level, raw and gauge-fixed",
             "Top Hessian eigenvalue, trace and sharpness per IMP level, raw and at the "
             "scale-canonical point (Dinh et al. 2017; Andriushchenko et al. 2023).", flatness),
    Analysis("landscape", "Spectrum and loss landscape",
             "Hessian spectral density (stochastic Lanczos quadrature; Ghorbani et al. 2019) "
             "and 1-D / 2-D loss slices along filter-normalised random directions (Li et al. "
             "2018), for the first seed's dense network and its sparsest ticket; the 1-D slice "
             "also at the scale-canonical (gauge-fixed) point.", sections.LANDSCAPE),
    Analysis("permutation", "The permutation found",
             "Weight matching between the first two seeds' dense networks, for the smallest "
             "hidden layer: unit similarity before and after alignment and the permutation.",
             sections.PERMUTATION, min_runs=2),
)

#: ``--quick``: cheaper settings of the expensive analyses (for CI and first looks). The
#: demo's ``--quick`` uses them, so ``gauge report --quick`` reproduces its numbers.
QUICK_OPTIONS: dict[str, dict[str, Any]] = {
    "landscape": {"quick": True},
    "flatness": {"subset": 256, "trace_samples": 6, "sharpness_steps": 3},
    "instability": {"rewind_iters": (0, 40), "points": 5},
    "connect": {"points": 5},
}


@dataclass(frozen=True)
class ReportResult:
    """What ``build_report`` wrote: the results dict (= results.json), paths, timings, and the
    (analysis, quantity, value) rows of the terminal summary."""

    results: dict
    html: Path
    json: Path
    figures: dict
    seconds: dict = field(default_factory=dict)
    summary: tuple = ()

    def to_dict(self) -> dict:
        return self.results


def _note(analysis: str, runs, reason: str) -> dict:
    return {"analysis": analysis, "runs": [str(r.path) for r in runs], "reason": reason}


def _level_notes(runs, labels: Mapping, primary) -> list[dict]:
    """Runs the analyses across seeds leave out, and why."""
    notes = [_note("all", [r], f"{r.path} has no completed level (IMP still running or killed "
                   "before level 0 finished)") for r in runs if not r.levels]
    if not primary:
        return notes
    group = labels[primary[0].path]
    chosen = {r.path for r in primary}
    for r in runs:
        if r.levels and labels[r.path] == group and r.path not in chosen:
            notes.append(_note("across seeds", [r], f"{r.path} has levels {list(r.levels)} "
                               f"only, the other seeds {list(primary[0].levels)}: left out of "
                               "the analyses across seeds (resume it with the same gauge imp "
                               "command to include it)"))
    common = set(common_levels(primary))
    for r in primary:
        extra = sorted(set(r.levels) - common)
        if extra:
            notes.append(_note("levels", [r], f"levels {extra} of {r.path} are not in every run "
                               f"of group '{group}' (common: {sorted(common)}); analyses "
                               "across seeds use the common levels"))
    arch = arch_label(primary[0].meta)
    others = [r for r in runs if r.levels and arch_label(r.meta) != arch]
    if others:
        archs = sorted({arch_label(r.meta) for r in others})
        notes.append(_note("across seeds", others, f"{len(others)} run(s) of a different "
                           f"model/dataset ({'; '.join(archs)}) than the primary group "
                           f"({arch}): left out of the analyses across seeds, which need one "
                           "architecture"))
    rest = [r for r in runs if r.levels and arch_label(r.meta) == arch and labels[r.path] != group]
    if rest:
        notes.append(_note("across seeds", rest, f"{len(rest)} run(s) of other configurations "
                           f"({'; '.join(sorted({labels[r.path] for r in rest}))}): shown in the "
                           "sparsity/optimizer comparison only; the analyses across seeds use "
                           f"group '{group}'"))
    return notes


def check_analysis_names(names: Sequence[str], analyses: Sequence[Analysis] = ANALYSES) -> None:
    """``--only``/``--skip`` values must name analyses of the report."""
    known = [a.name for a in analyses]
    for n in names:
        if n not in known:
            raise UsageError(f"unknown analysis {n!r}; choose from {', '.join(known)}")


def _check_applies(a: Analysis, scope, primary, group: str | None, common) -> None:
    """NotApplicable when the runs cannot give this analysis what it needs."""
    if not primary:
        raise NotApplicable("no run has a completed level")
    if len(scope) < a.min_runs:
        raise NotApplicable(f"needs at least {a.min_runs} seeds of one configuration; group "
                            f"'{group}' has {len(primary)}")
    if a.needs_pruned and not [lv for lv in common if lv > 0]:
        raise NotApplicable("needs a pruned level (>= 1) completed in every run; common "
                            f"levels: {common}")


def _options(quick: bool, options: Mapping | None) -> dict[str, dict]:
    """Per-analysis options: :data:`QUICK_OPTIONS` with ``quick``, then ``options``."""
    out: dict[str, dict] = {}
    for source in ((QUICK_OPTIONS if quick else {}), options or {}):
        for name, opts in source.items():
            out.setdefault(name, {}).update(opts)
    return out


def _run_entry(run, label: str) -> dict:
    return {"path": str(run.path), "seed": run.meta["seed"], "group": label,
            "arch": arch_label(run.meta), "levels": list(run.levels),
            "controls": {k: list(v) for k, v in run.controls.items()}}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


@dataclass
class _Outcome:
    """What the report collects from its analyses, section by section."""

    results: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    summary: list = field(default_factory=list)

    def add(self, a: Analysis, result, paths: Sequence[Path], out_dir: Path) -> None:
        self.results[a.name] = result.to_dict()
        self.tables[a.name] = result.table() if hasattr(result, "table") else None
        self.figures[a.name] = [str(p.relative_to(out_dir)) if p.is_relative_to(out_dir)
                                else str(p) for p in map(Path, paths)]
        self.summary += [(a.name, q, v) for q, v in a.summary(result)]


def build_report(run_dirs: Sequence[str | Path], out_dir: str | Path, *, device="cpu",
                 only: Sequence[str] | None = None, skip: Sequence[str] = (),
                 quick: bool = False, options: Mapping[str, Mapping[str, Any]] | None = None,
                 analyses: Sequence[Analysis] = ANALYSES,
                 progress: bool = False, log: Callable[[str], None] | None = None) -> ReportResult:
    """Compose the analyses over ``run_dirs`` and write the report to ``out_dir``.

    Writes ``out_dir/report.html``, ``out_dir/results.json`` and ``out_dir/figures/``. An
    analysis that does not apply to the runs is recorded under ``results["skipped"]`` with the
    reason; the others are still written. Each analysis' ``compute`` gets ``device``,
    ``levels`` (the levels common to the runs), ``progress`` and ``options[name]`` (with
    ``quick``: :data:`QUICK_OPTIONS` first). The options used are recorded in
    ``results["options"]``: the same options on the same runs give the same numbers.
    """
    from analyses.figures import style
    if not run_dirs:
        raise UsageError("give at least one IMP run directory")
    runs = open_runs(run_dirs, unique=True)
    out_dir = ensure_output_path(out_dir, "--out", directory=True)
    check_analysis_names(list(only or []) + list(skip), analyses)
    log = log or (lambda msg: None)
    labels = dict(zip((r.path for r in runs), group_labels(runs)))
    primary = primary_runs(runs)
    group = labels[primary[0].path] if primary else None
    common = common_levels(primary)
    per_analysis = _options(quick, options)
    base = {"device": device, "levels": common, "progress": progress}
    outcome = _Outcome()
    skipped = _level_notes(runs, labels, primary)
    for a in analyses:
        if (only and a.name not in only) or a.name in skip:
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        # the optimizer story compares configurations; everything else one configuration
        scope = [r for r in runs if r.levels] if a.scope == "all" else primary
        try:
            _check_applies(a, scope, primary, group, common)
            log(f"{a.name}: computing")
            with style():  # every module's artists in the house style, not only its axes
                result = a.compute([r.path for r in scope],
                                   **{**base, **per_analysis.get(a.name, {})})
                outcome.add(a, result, a.plot(result, out_dir / "figures"), out_dir)
        except NotApplicable as e:
            skipped.append({"analysis": a.name, "runs": [], "reason": _first_line(e)})
        except DataError as e:
            if all(r.meta.get("dataset") is not None for r in scope):
                raise
            skipped.append({"analysis": a.name, "runs": [],
                            "reason": f"needs the training data: {_first_line(e)}"})
        outcome.seconds[a.name] = time.perf_counter() - t0
        log(f"{a.name}: {outcome.seconds[a.name]:.1f}s ({time.process_time() - c0:.1f}s CPU)")
    report = {"runs": [_run_entry(r, labels[r.path]) for r in runs], "primary_group": group,
              "common_levels": common, "quick": bool(quick), "options": per_analysis,
              "analyses": outcome.results, "figures": outcome.figures, "skipped": skipped}
    return _write(report, out_dir, outcome, analyses)


def _write(report: dict, out_dir: Path, outcome: _Outcome, analyses) -> ReportResult:
    from analyses.html import render_html
    from tickets.store import atomic_write_text, save_json
    json_path, html_path = out_dir / "results.json", out_dir / "report.html"
    save_json(json_path, report)
    atomic_write_text(html_path, render_html(report, out_dir, analyses=analyses,
                                             tables=outcome.tables))
    summary = outcome.summary + [(s["analysis"], "skipped", s["reason"][:90])
                                 for s in report["skipped"]]
    return ReportResult(results=report, html=html_path, json=json_path,
                        figures=outcome.figures, seconds=outcome.seconds,
                        summary=tuple(summary))


def print_summary(rows: Sequence[tuple[str, str, str]], file=None) -> None:
    """The closing terminal table: one (analysis, quantity, value) row per line."""
    if not rows:
        return
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    file = file or sys.stdout
    print(f"{'analysis':<{w0}}  {'quantity':<{w1}}  value", file=file)
    print(f"{'-' * w0}  {'-' * w1}  -----", file=file)
    for a, q, v in rows:
        print(f"{a:<{w0}}  {q:<{w1}}  {v}", file=file)


# --------------------------------------------------------------------------------------------
# CLI


def add_report_arguments(parser, quick_help: str | None = None) -> None:
    """Options shared by ``gauge report`` and ``gauge demo``."""
    names = [a.name for a in ANALYSES]
    parser.add_argument("--only", nargs="+", metavar="NAME", default=None,
                        help=f"run only these analyses ({', '.join(names)})")
    parser.add_argument("--skip", nargs="+", metavar="NAME", default=[],
                        help="leave these analyses out")
    parser.add_argument("--quick", action="store_true",
                        help=quick_help or "cheaper settings of the expensive analyses (fewer "
                             "Hessian-vector products, rewind points and path points), as "
                             "gauge demo --quick uses")
    add_device_argument(parser)
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="CPU threads for torch (default 1: small networks train fastest "
                             "on one thread, and results are bit-identical between calls with "
                             "the same N; raise it for big models)")
    add_quiet_argument(parser, "no progress bars, no summary")
    add_json_argument(parser)


def add_arguments(parser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="IMP run directories, or sweep folders (gauge sweep --out)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: report.html, results.json, figures/")
    add_report_arguments(parser)


def log_for(args) -> Callable[[str], None] | None:
    """Progress lines on stderr unless ``--quiet`` or ``--json -``."""
    verbose = not args.quiet and args.json != "-"
    return (lambda m: print(m, file=sys.stderr)) if verbose else None


def expand_sweeps(paths: Sequence[str | Path]) -> list[str | Path]:
    """Each sweep folder replaced by the run directories it holds; other paths kept."""
    from analyses.sweep import sweep_run_dirs
    out: list[str | Path] = []
    for p in paths:
        runs = sweep_run_dirs(p)
        out.extend([p] if runs is None else runs)
    return out


def expand_openlth(paths: Sequence[str | Path], into: Path) -> list[str | Path]:
    """Each OpenLTH run tree replaced by its replicates, written as toolkit run directories
    under ``into`` (:func:`tickets.openlth.write_openlth_run`; the tree is only read); other
    paths kept."""
    from analyses.study import is_openlth_tree
    from tickets.openlth import open_openlth, write_openlth_run
    out: list[str | Path] = []
    for p in paths:
        if not is_openlth_tree(p):
            out.append(p)
            continue
        tree = open_openlth(p)
        for rep in tree.replicates():
            name = f"{Path(p).resolve().name}-replicate_{rep}"
            out.append(write_openlth_run(tree, rep, into / name))
    return out


def run(args) -> int:
    runs = expand_openlth(expand_sweeps(args.runs), Path(args.out) / "openlth")
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    log = log_for(args)
    result = build_report(runs, args.out, device=device, only=args.only, skip=args.skip,
                          quick=args.quick, progress=progress_enabled(args), log=log)
    if log is not None:
        print_summary(result.summary)
        print(f"report: {result.html} ({time.perf_counter() - t0:.1f}s)")
    emit_json(args.json, result.results)
    return 0


if __name__ == "__main__":
    from analyses.cli import run_command
    sys.exit(run_command(sys.modules[__name__]))
