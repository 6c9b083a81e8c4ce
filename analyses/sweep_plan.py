"""The sweep file of ``gauge sweep`` and the task graph it names (pure: no Dask, no training).

A sweep file (TOML) holds a grid of IMP runs and the analyses over them::

    [runs]                       # every combination is one IMP run directory
    model = "mlp"                # or a list
    model_kwargs = {widths = [16]}   # or a list of tables
    data = "mnist1d"             # or a list
    seeds = [0, 1]
    data_seeds = [3]             # optional (default: each run's seed)
    rewind_iters = [0]
    levels = 2                   # IMP levels 0 (dense) .. 2
    controls = ["random_reinit"]
    [runs.train]                 # any `gauge imp` option; a list is one more grid axis
    iters = 100
    lr = [1e-3, 3e-3]
    [[analyses]]                 # between every pair of seeds, at these levels
    kind = "connect"             # connect | overlap | instability | flatness | report
    levels = [0, 2]
    align = "weight"             # any option of that subcommand

:func:`load_sweep` reads and validates it into a :class:`Sweep`; :func:`plan` turns a sweep and
an output folder into :class:`Task` s, each one ``gauge`` command line (``argv``) whose output
is one level of one run directory or one analysis file, with the tasks it waits for. Run
directories are ``DIR/runs/NAME`` (``NAME`` from the grid values that vary, e.g. ``s0`` or
``lr0.001-s1``); analysis results are ``DIR/analyses/LABEL/RUN[~RUN]/level_LL.json``.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from analyses.common import UsageError

__all__ = ["Sweep", "Task", "Plan", "load_sweep", "parse_sweep", "plan", "first_difference",
           "worker_device", "is_done", "ANALYSIS_KINDS", "PLAN_FILE", "PAIRWISE"]

#: Written into the output folder: the sweep it holds (refuses a different one) and its runs.
PLAN_FILE = "sweep-plan.json"
FORMAT = "gauge-sweep"
FORMAT_VERSION = 1

ANALYSIS_KINDS = ("connect", "overlap", "instability", "flatness", "report")
#: Analyses measured between two seeds of one configuration; the others are per run.
PAIRWISE = ("connect", "overlap")

_RUN_KEYS = ("model", "model_kwargs", "data", "seeds", "data_seeds", "rewind_iters", "levels",
             "controls", "train")
_REQUIRED_RUN_KEYS = ("model", "data", "seeds", "levels")
# `gauge imp` options the grid itself sets; every other imp option is a [runs.train] key.
_IMP_OWNED = {"model", "model_kwargs", "data", "seed", "data_seed", "rewind_iter", "levels",
              "control", "out", "json", "quiet", "device"}
# Options of each analysis that the sweep sets itself (positionals are never keys either).
_ANALYSIS_OWNED = {
    "connect": {"json", "quiet", "device", "plot"},
    "overlap": {"level", "json", "quiet", "device", "plot"},
    "flatness": {"mask", "json", "quiet", "device", "plot"},
    "report": {"out", "json", "quiet", "device", "threads"},
    # the copies train like the run they come from: every imp option is the run's own
    "instability": {"ticket", "level", "mask", "json", "plot"},
}


# --------------------------------------------------------------------------------------------
# subcommand parsers: the keys a sweep accepts are the options the subcommands have


class _ParseError(Exception):
    pass


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message):  # noqa: D401 - argparse API
        raise _ParseError(message)


def _parser(kind: str) -> argparse.ArgumentParser:
    module = importlib.import_module(f"analyses.{kind}")
    parser = _RaisingParser(prog=f"gauge {kind}", add_help=False)
    module.add_arguments(parser)
    return parser


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """``{key: action}`` of the optional arguments, keyed by the long option in snake_case."""
    out = {}
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs:
            out[longs[0][2:].replace("-", "_")] = action
    return out


def _is_multi(action: argparse.Action) -> bool:
    """Whether the option takes several values (a TOML list is then one value, not an axis)."""
    return isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*") or \
        (isinstance(action.nargs, int) and action.nargs > 1)


def _flag_argv(key: str, action: argparse.Action, value, where: str) -> list[str]:
    """``--option value ...`` for one TOML key/value."""
    opt = next(o for o in action.option_strings if o.startswith("--"))
    if action.nargs == 0:
        if not isinstance(value, bool):
            raise UsageError(f"{where}.{key} is a switch: give true or false, got {value!r}")
        return [opt] if value else []
    if _is_multi(action):
        if isinstance(value, dict):  # NAME=VALUE options, e.g. layer_fraction = {fc3 = 0.1}
            value = [f"{k}={v}" for k, v in value.items()]
        values = value if isinstance(value, list) else [value]
        if isinstance(action, argparse._AppendAction):
            return [a for v in values for a in (opt, _text(v))]
        return [opt, *map(_text, values)]
    if isinstance(value, (list, dict)):
        raise UsageError(f"{where}.{key} takes one value, got {value!r}")
    return [opt, _text(value)]


def _text(value) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _check_argv(parser: argparse.ArgumentParser, argv: list[str], where: str) -> None:
    try:
        parser.parse_args(argv)
    except _ParseError as e:
        raise UsageError(f"{where}: {e}") from None


def _unknown(where: str, key: str, valid) -> UsageError:
    return UsageError(f"unknown key {where}.{key} (valid: {', '.join(sorted(valid))})")


# --------------------------------------------------------------------------------------------
# the sweep file


@dataclass(frozen=True)
class Sweep:
    """A validated sweep file: ``runs`` (the grid, every value a list but ``levels``,
    ``controls`` and ``train``), ``analyses`` (one dict per ``[[analyses]]`` table with its
    ``kind``, ``label``, ``levels`` and subcommand options) and ``cluster`` (jobqueue options,
    not part of what the sweep computes)."""

    runs: dict
    analyses: tuple[dict, ...]
    cluster: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """What the sweep computes (compared against the one an output folder holds)."""
        return {"runs": self.runs, "analyses": [dict(a) for a in self.analyses]}


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file; :class:`UsageError` names the file, the line and column
    of a TOML error, or the key at fault and the valid ones."""
    import tomllib
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such sweep file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, expected a sweep file (TOML)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read the sweep file ({e})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from None
    try:
        return parse_sweep(doc)
    except UsageError as e:
        raise UsageError(f"{path}: {e}") from None


def _as_list(value, key: str, kind: type | tuple) -> list:
    values = value if isinstance(value, list) else [value]
    for v in values:
        if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__
                                                                             for k in kind)
            raise UsageError(f"runs.{key}: expected {names} values, got {v!r}")
    if not values:
        raise UsageError(f"runs.{key} is empty: the grid has no runs")
    dup = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if dup is not None:
        raise UsageError(f"runs.{key} lists {dup!r} twice")
    return values


def _parse_runs(table: Mapping) -> dict:
    if not isinstance(table, dict):
        raise UsageError("runs must be a table ([runs])")
    for key in table:
        if key not in _RUN_KEYS:
            raise _unknown("runs", key, _RUN_KEYS)
    for key in _REQUIRED_RUN_KEYS:
        if key not in table:
            raise UsageError(f"runs.{key} is missing (required: {', '.join(_REQUIRED_RUN_KEYS)})")
    from tickets.data import dataset_names
    from tickets.models import model_names
    runs = {"model": _as_list(table["model"], "model", str),
            "model_kwargs": _as_list(table.get("model_kwargs", {}), "model_kwargs", dict),
            "data": _as_list(table["data"], "data", str),
            "seeds": _as_list(table["seeds"], "seeds", int),
            "data_seeds": (_as_list(table["data_seeds"], "data_seeds", int)
                           if "data_seeds" in table else []),
            "rewind_iters": _as_list(table.get("rewind_iters", 0), "rewind_iters", int)}
    for m in runs["model"]:
        if m not in model_names():
            raise UsageError(f"runs.model: unknown model {m!r} (valid: {', '.join(model_names())})")
    for d in runs["data"]:
        if d not in dataset_names():
            raise UsageError(f"runs.data: unknown dataset {d!r} (valid: "
                             f"{', '.join(dataset_names())})")
    if any(k < 0 for k in runs["rewind_iters"]):
        raise UsageError(f"runs.rewind_iters must be >= 0, got {runs['rewind_iters']}")
    levels = table["levels"]
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 0:
        raise UsageError(f"runs.levels must be an integer >= 0 (IMP levels 0..N), got {levels!r}")
    runs["levels"] = levels
    from tickets.imp import CONTROLS
    controls = table.get("controls", [])
    controls = controls if isinstance(controls, list) else [controls]
    for c in controls:
        if c not in CONTROLS:
            raise UsageError(f"runs.controls: unknown control {c!r} (valid: {', '.join(CONTROLS)})")
    runs["controls"] = list(dict.fromkeys(controls))
    train = table.get("train", {})
    if not isinstance(train, dict):
        raise UsageError("runs.train must be a table ([runs.train])")
    options = {k: a for k, a in _options(_parser("imp")).items()
               if k not in _IMP_OWNED and k != "help"}
    norm = {}
    for key, value in train.items():
        k = key.replace("-", "_")
        if k not in options:
            raise _unknown("runs.train", key, options)
        action = options[k]
        is_axis = isinstance(value, list) and (not _is_multi(action) or
                                                all(isinstance(v, list) for v in value))
        if is_axis and not value:
            raise UsageError(f"runs.train.{key} is empty: the grid has no runs")
        norm[k] = {"axis": is_axis, "value": value}
    runs["train"] = norm
    return runs


def _parse_analyses(items, runs: dict) -> tuple[dict, ...]:
    if not isinstance(items, list):
        raise UsageError("analyses must be an array of tables ([[analyses]])")
    out, seen = [], {}
    for i, item in enumerate(items):
        where = f"analyses[{i}]"
        if not isinstance(item, dict):
            raise UsageError(f"{where} must be a table")
        kind = item.get("kind")
        if kind not in ANALYSIS_KINDS:
            raise UsageError(f"{where}.kind must be one of {', '.join(ANALYSIS_KINDS)}, got "
                             f"{kind!r}")
        parser = _parser(kind)
        owned = _ANALYSIS_OWNED[kind]
        if kind == "instability":
            owned = owned | set(_options(_parser("imp")))
        options = {k: a for k, a in _options(parser).items() if k not in owned and k != "help"}
        valid = ["kind"] + ([] if kind == "report" else ["levels"]) + list(options)
        entry = {"kind": kind}
        for key, value in item.items():
            k = key.replace("-", "_")
            if k == "kind":
                continue
            if k == "levels" and kind != "report":
                lv = value if isinstance(value, list) else [value]
                bad = [l for l in lv if not isinstance(l, int) or isinstance(l, bool)
                       or not 0 <= l <= runs["levels"]]
                if bad or not lv:
                    raise UsageError(f"{where}.levels: levels must be integers in 0.."
                                     f"{runs['levels']} (runs.levels = {runs['levels']}), got "
                                     f"{value!r}")
                entry["levels"] = sorted(set(lv))
                continue
            if k not in options:
                raise _unknown(where, key, valid)
            entry[k] = value
        if kind != "report" and "levels" not in entry:
            first = 1 if kind == "overlap" and runs["levels"] > 0 else 0
            entry["levels"] = list(range(first, runs["levels"] + 1))
        seen[kind] = seen.get(kind, 0) + 1
        entry["label"] = kind if seen[kind] == 1 else f"{kind}{seen[kind]}"
        out.append(entry)
    return tuple(out)


def parse_sweep(doc: Mapping) -> Sweep:
    """Validate a parsed sweep document (see :func:`load_sweep`)."""
    for key in doc:
        if key not in ("runs", "analyses", "cluster"):
            raise _unknown("sweep", key, ("runs", "analyses", "cluster"))
    if "runs" not in doc:
        raise UsageError("no [runs] table: the grid has no runs")
    runs = _parse_runs(doc["runs"])
    analyses = _parse_analyses(doc.get("analyses", []), runs)
    cluster = doc.get("cluster", {})
    if not isinstance(cluster, dict) or any(k not in ("slurm", "pbs") or not isinstance(v, dict)
                                            for k, v in cluster.items()):
        bad = next((k for k in cluster if k not in ("slurm", "pbs")), None) \
            if isinstance(cluster, dict) else None
        if bad is not None:
            raise _unknown("cluster", bad, ("slurm", "pbs"))
        raise UsageError("cluster must hold tables [cluster.slurm] and/or [cluster.pbs]")
    sweep = Sweep(runs=runs, analyses=analyses, cluster=cluster)
    pairwise = [a for a in analyses if a["kind"] in PAIRWISE]
    if pairwise and len(runs["seeds"]) < 2:
        a = pairwise[0]
        raise UsageError(f"analyses: {a['kind']} compares seeds pairwise, but runs.seeds has "
                         f"{len(runs['seeds'])}; give at least two")
    return sweep


# --------------------------------------------------------------------------------------------
# the grid and the task graph


@dataclass(frozen=True)
class RunSpec:
    """One grid point: its name, its values (``model``, ``model_kwargs``, ``data``, ``seed``,
    ``data_seed``, ``rewind_iter``, ``train``) and ``group`` (the name without the seed: runs
    of one group differ only in their seed)."""

    name: str
    values: dict
    group: str

    def to_dict(self) -> dict:
        return {"name": self.name, "group": self.group, **self.values}


@dataclass(frozen=True)
class Task:
    """One unit of work: the ``gauge`` command line ``argv`` (the worker adds ``--device``),
    the files whose existence means it is complete (``outputs``), the tasks it waits for
    (``deps``, keys) and what it is about (``inputs``: run(s), level, analysis)."""

    key: str
    kind: str
    argv: tuple[str, ...]
    outputs: tuple[str, ...]
    deps: tuple[str, ...]
    inputs: dict
    log: str

    def to_dict(self) -> dict:
        return {"key": self.key, "kind": self.kind, "argv": list(self.argv),
                "outputs": list(self.outputs), "deps": list(self.deps), "inputs": self.inputs,
                "log": self.log}


@dataclass(frozen=True)
class Plan:
    """The runs and tasks (dependencies first) of a sweep in output folder ``out``."""

    sweep: Sweep
    out: Path
    runs: tuple[RunSpec, ...]
    tasks: tuple[Task, ...]

    def run_dir(self, name: str) -> Path:
        return self.out / "runs" / name

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tasks:
            out[t.kind] = out.get(t.kind, 0) + 1
        return out

    def to_dict(self) -> dict:
        """The record written to ``DIR/sweep-plan.json``."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "sweep": self.sweep.to_dict(),
                "runs": [r.to_dict() for r in self.runs],
                "tasks": [t.to_dict() for t in self.tasks]}


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+]", "_", str(text))


def _grid(runs: dict) -> list[RunSpec]:
    """Every combination of the grid's axes, named by the values that vary (the seed always)."""
    train_axes = {k: v["value"] for k, v in runs["train"].items() if v["axis"]}
    train_fixed = {k: v["value"] for k, v in runs["train"].items() if not v["axis"]}
    axes = [("model", runs["model"]), ("model_kwargs", runs["model_kwargs"]),
            ("data", runs["data"]), *((f"train.{k}", v) for k, v in sorted(train_axes.items())),
            ("rewind_iter", runs["rewind_iters"]), ("data_seed", runs["data_seeds"] or [None]),
            ("seed", runs["seeds"])]
    prefix = {"rewind_iter": "k", "data_seed": "d", "seed": "s"}
    out = []
    for combo in itertools.product(*(range(len(v)) for _, v in axes)):
        values, parts, group = {"train": dict(train_fixed)}, [], []
        for (axis, options), i in zip(axes, combo):
            v = options[i]
            if axis.startswith("train."):
                values["train"][axis[6:]] = v
            else:
                values[axis] = v
            if len(options) > 1 or axis == "seed":
                tag = (f"mk{i}" if axis == "model_kwargs" else
                       f"{axis[6:]}{_text(v)}" if axis.startswith("train.") else
                       f"{prefix.get(axis, '')}{v}")
                parts.append(_safe(tag))
                if axis != "seed":
                    group.append(_safe(tag))
        out.append(RunSpec(name="-".join(parts), values=values, group="-".join(group) or "all"))
    return out


def _imp_argv(run: RunSpec, runs: dict, level: int, out_dir: Path, options: dict) -> list[str]:
    v = run.values
    argv = ["imp", "--model", v["model"], "--data", v["data"], "--seed", str(v["seed"])]
    if v["data_seed"] is not None:
        argv += ["--data-seed", str(v["data_seed"])]
    if v["model_kwargs"]:
        argv += ["--model-kwargs", json.dumps(v["model_kwargs"], sort_keys=True)]
    argv += ["--rewind-iter", str(v["rewind_iter"])]
    for c in runs["controls"]:
        argv += ["--control", c]
    argv += _train_argv(v["train"], options)
    return argv + ["--levels", str(level), "--out", str(out_dir), "--quiet"]


def _train_argv(train: dict, options: dict) -> list[str]:
    """The ``[runs.train]`` values as flags, keeping those the target subcommand has."""
    out = []
    for k, value in train.items():
        if k in options:
            out += _flag_argv(k, options[k], value, "runs.train")
    return out


def _level_outputs(run_dir: Path, level: int, controls) -> tuple[str, ...]:
    base = [run_dir / f"level_{level:02d}" / "metrics.json"]
    if level > 0:
        base += [run_dir / "controls" / c / f"level_{level:02d}" / "metrics.json"
                 for c in controls]
    return tuple(map(str, base))


def _analysis_flags(entry: dict, options: dict, where: str) -> list[str]:
    out = []
    for k, value in entry.items():
        if k not in ("kind", "label", "levels"):
            out += _flag_argv(k, options[k], value, where)
    return out


def plan(sweep: Sweep, out_dir: str | Path) -> Plan:
    """The task graph of ``sweep`` in ``out_dir``: per run, one task per IMP level (level L
    waits for L-1: the run directory resumes); per analysis, one task per (pair of seeds of
    one group, level) or (run, level), waiting for the levels it reads; the report waits for
    every run. Every command line is checked against its subcommand's parser here, so a bad
    value is a :class:`UsageError` before anything runs."""
    out = Path(out_dir).resolve()
    runs = _grid(sweep.runs)
    names = [r.name for r in runs]
    tasks: list[Task] = []
    logs = out / "logs"
    imp_key = {}
    imp_parser = _parser("imp")
    imp_options = _options(imp_parser)
    for run in runs:
        rdir = out / "runs" / run.name
        for level in range(sweep.runs["levels"] + 1):
            key = f"imp-{run.name}-level_{level:02d}"
            argv = _imp_argv(run, sweep.runs, level, rdir, imp_options)
            if level == 0:
                _check_argv(imp_parser, argv[1:], f"run {run.name} (gauge imp)")
            tasks.append(Task(key=key, kind="imp", argv=tuple(argv),
                              outputs=_level_outputs(rdir, level, sweep.runs["controls"]),
                              deps=(imp_key[(run.name, level - 1)],) if level else (),
                              inputs={"run": run.name, "level": level},
                              log=str(logs / f"{key}.log")))
            imp_key[(run.name, level)] = key
    groups: dict[str, list[RunSpec]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    for i, entry in enumerate(sweep.analyses):
        kind, label = entry["kind"], entry["label"]
        where = f"analyses[{i}] ({kind})"
        parser = _parser(kind)
        options = _options(parser)
        flags = _analysis_flags(entry, options, f"analyses[{i}]")
        adir = out / "analyses" / label
        if kind == "report":
            argv = ["report", *(str(out / "runs" / n) for n in names), "--out",
                    str(out / label), *flags, "--quiet"]
            _check_argv(parser, argv[1:], where)
            last = sweep.runs["levels"]
            tasks.append(Task(key=label, kind=kind, argv=tuple(argv),
                              outputs=(str(out / label / "report.html"),),
                              deps=tuple(imp_key[(n, last)] for n in names),
                              inputs={"analysis": label, "runs": names},
                              log=str(logs / f"{label}.log")))
            continue
        if kind in PAIRWISE:
            units = [(a, b) for members in groups.values()
                     for a, b in itertools.combinations(members, 2)]
        else:
            units = [(r,) for r in runs]
        for unit in units:
            tag = "~".join(r.name for r in unit)
            for level in entry["levels"]:
                dirs = [out / "runs" / r.name for r in unit]
                level_name = f"level_{level:02d}"
                target = adir / tag / f"{level_name}.json"
                if kind == "connect":
                    argv = ["connect", *(str(d / level_name / "final.safetensors") for d in dirs)]
                elif kind == "overlap":
                    argv = ["overlap", *map(str, dirs), "--level", str(level)]
                elif kind == "flatness":
                    argv = ["flatness", str(dirs[0] / level_name / "final.safetensors"),
                            "--mask", str(dirs[0] / level_name / "mask.safetensors")]
                else:  # instability: the copies train like the run, under its level mask
                    v = unit[0].values
                    argv = ["instability", "--model", v["model"], "--data", v["data"],
                            "--seed", str(v["seed"])]
                    if v["data_seed"] is not None:
                        argv += ["--data-seed", str(v["data_seed"])]
                    if v["model_kwargs"]:
                        argv += ["--model-kwargs", json.dumps(v["model_kwargs"], sort_keys=True)]
                    argv += _train_argv(v["train"], options)
                    argv += ["--ticket", str(dirs[0]), "--level", str(level)]
                argv += [*flags, "--json", str(target), "--quiet"]
                _check_argv(parser, argv[1:], where)
                key = f"{label}-{tag}-{level_name}"
                inputs = {"analysis": label, "level": level}
                inputs.update({"a": unit[0].name, "b": unit[1].name} if len(unit) == 2
                              else {"run": unit[0].name})
                tasks.append(Task(key=key, kind=kind, argv=tuple(argv), outputs=(str(target),),
                                  deps=tuple(imp_key[(r.name, level)] for r in unit),
                                  inputs=inputs, log=str(logs / f"{key}.log")))
    return Plan(sweep=sweep, out=out, runs=tuple(runs), tasks=tuple(tasks))


# --------------------------------------------------------------------------------------------
# helpers of the executor


def is_done(task: Task | Mapping) -> bool:
    """A task is complete when all its outputs exist (each is written atomically, last)."""
    outputs = task.outputs if isinstance(task, Task) else task["outputs"]
    return all(Path(p).is_file() for p in outputs)


def first_difference(old: Any, new: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    """The first field where two JSON-like values differ, as ``(name, old value, new value)``
    with a dotted name such as ``runs.seeds`` or ``analyses[1].levels``; ``None`` if equal.
    A field present on one side only has ``None`` on the other."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in list(old) + [k for k in new if k not in old]:
            name = f"{prefix}.{k}" if prefix else str(k)
            if k not in old or k not in new:
                return name, old.get(k), new.get(k)
            sub = first_difference(old[k], new[k], name)
            if sub:
                return sub
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new) and \
            all(isinstance(x, dict) for x in old + new):
        for i, (a, b) in enumerate(zip(old, new)):
            sub = first_difference(a, b, f"{prefix}[{i}]")
            if sub:
                return sub
        return None
    return None if old == new else (prefix or "sweep", old, new)


def worker_device(name, n_gpus: int) -> str:
    """Device of a worker: ``cpu`` without GPUs, else ``cuda:i`` round robin over the node's
    GPUs by the worker's number (the trailing integer of its name: LocalCluster names workers
    0, 1, ...; dask-jobqueue ``JOB-i`` for the i-th process of a job). A name without a
    number is hashed, so it still maps to one fixed GPU."""
    if n_gpus <= 0:
        return "cpu"
    m = re.search(r"(\d+)$", str(name))
    index = int(m.group(1)) if m else zlib.crc32(str(name).encode())
    return f"cuda:{index % n_gpus}"
