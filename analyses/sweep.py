"""gauge sweep: a grid of IMP runs and the analyses over them, as Dask tasks.

The sweep file (TOML; see docs/sweep.md) names the grid: models, datasets, seeds, data seeds,
rewind iterations, levels, controls and any `gauge imp` training option ([runs.train]; a list
is one more axis), and the analyses over the runs ([[analyses]]: connect and overlap between
every pair of seeds of one configuration, instability and flatness per run, the report), each
at chosen levels and with any option of its subcommand.

Every unit of work is one Dask task that runs one `gauge` command in a worker process: one IMP
level of one run directory (DIR/runs/NAME; level L waits for L-1, and the run directory's own
resume makes a rescheduled task redo only the unfinished level, bit-identically) or one
analysis result (DIR/analyses/LABEL/RUN~RUN/level_LL.json), waiting for the levels it reads.
A task whose output exists is skipped, so the same command run again only does what is
missing; DIR records the sweep (sweep-plan.json) and refuses a different one.

Where it runs: an in-process LocalCluster by default (--workers N processes), an existing
Dask cluster (--scheduler tcp://HOST:8786, started with `dask scheduler` / `dask worker`), or
Slurm/PBS jobs through dask-jobqueue (--cluster slurm|pbs, options from the sweep file's
[cluster.slurm] / [cluster.pbs] table). DIR must be on a file system every worker sees. Each
worker process runs one task at a time with --threads-per-worker torch threads (default 1)
on its own device (cuda:i round robin over a node's GPUs, else cpu; --device overrides).

Output: DIR/sweep.json (every number, the status of every task), DIR/sweep.csv (one row per
run x level and per analysis result x level), DIR/logs/TASK.log (each task's command line and
output). A failed task is reported with its inputs and error, independent tasks go on, and
the exit code is 1. `gauge report DIR` reads a sweep directory's runs.

Example:
  gauge sweep sweep.toml --out sweeps/s1 --workers 2
"""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import sys
import time
import traceback
import uuid
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from analyses.common import UsageError, add_json_argument, emit_json, progress_enabled
from analyses.sweep_plan import (FORMAT, PAIRWISE, PLAN_FILE, Plan, first_difference, is_done,
                                 load_sweep, plan, worker_device)

HELP = "run a grid of IMP runs and the analyses over them as Dask tasks (laptop, cluster, Slurm/PBS)"

__all__ = ["run_sweep", "execute_task", "collect", "sweep_run_dirs", "check_out_dir",
           "make_jobqueue_cluster", "local_worker_config", "SweepOutcome"]

#: Task states: run now, found complete, failed, or not run because a task it needs failed.
STATES = ("computed", "skipped", "failed", "blocked")
_EXTRA = "pip install 'gauge-tickets[dist]'"


def add_arguments(parser) -> None:
    parser.add_argument("sweep", metavar="SWEEP.toml", help="sweep file (see docs/sweep.md)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: runs/, analyses/, logs/, sweep.json, sweep.csv")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="address of a running Dask scheduler (tcp://HOST:8786)")
    where.add_argument("--workers", type=int, metavar="N",
                       help="worker processes of the local cluster (default: cores / threads)")
    where.add_argument("--cluster", choices=["slurm", "pbs"],
                       help="submit workers as Slurm/PBS jobs (dask-jobqueue), with the options "
                            "of the sweep file's [cluster.slurm] / [cluster.pbs] table")
    parser.add_argument("--threads-per-worker", type=int, default=1, metavar="T",
                        help="torch threads of each worker process (default 1)")
    parser.add_argument("--device", default=None,
                        help="device of every task (default: per worker, cuda:i round robin "
                             "over the node's GPUs, else cpu)")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="give up connecting to the scheduler after this long (default 10)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the task graph (counts per kind, what is done) and stop")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_json_argument(parser)


# --------------------------------------------------------------------------------------------
# the output folder


def _canon(obj):
    return json.loads(json.dumps(obj, default=str))


def _short(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def check_out_dir(p: Plan) -> bool:
    """Whether ``p.out`` already holds this sweep; :class:`UsageError` if it holds a different
    one (naming the first differing field) or other files."""
    out = p.out
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file, expected a folder")
    record = out / PLAN_FILE
    if record.is_file():
        from tickets.errors import CheckpointError
        from tickets.store import load_json
        try:
            old = load_json(record)
        except CheckpointError as e:
            raise UsageError(str(e)) from None
        if not isinstance(old, dict) or old.get("format") != FORMAT:
            raise UsageError(f"{record}: not a gauge sweep record")
        diff = first_difference(old.get("sweep"), _canon(p.sweep.to_dict()))
        if diff:
            name, there, here = diff
            raise UsageError(f"--out {out} holds a different sweep: {name} is {_short(there)} "
                             f"there, {_short(here)} here; use another --out")
        return True
    if out.is_dir() and any(out.iterdir()):
        raise UsageError(f"--out {out}: folder is not empty and holds no sweep (no {PLAN_FILE})")
    return False


def _write_record(p: Plan, source: Path) -> None:
    from tickets.store import atomic_write_text, save_json
    save_json(p.out / PLAN_FILE, p.to_dict())
    atomic_write_text(p.out / "sweep.toml", source.read_text(encoding="utf-8"))


def sweep_run_dirs(path: str | Path) -> list[Path] | None:
    """The run directories of the sweep in folder ``path`` (those that exist), or ``None`` if
    ``path`` is not a sweep folder; lets ``gauge report DIR`` read a whole sweep."""
    record = Path(path) / PLAN_FILE
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    dirs = [Path(path) / "runs" / r["name"] for r in data.get("runs", [])]
    return [d for d in dirs if (d / "run.json").is_file()]


# --------------------------------------------------------------------------------------------
# one task, on a worker


def _first_line(text: str) -> str:
    lines = [l.strip() for l in str(text).splitlines() if l.strip()]
    return lines[0] if lines else ""


def _worker_name() -> str:
    try:
        from distributed import get_worker
        return str(get_worker().name)
    except (ImportError, ValueError):
        return "local"


def execute_task(task: Mapping, threads: int = 1, device: str | None = None,
                 *deps: Mapping) -> dict:
    """Run one task (a :class:`~analyses.sweep_plan.Task` as a dict) in this process:
    skipped when its outputs exist, blocked when a task it needs did not finish, else
    ``gauge ARGV --device DEVICE`` with its output appended to the task's log. Returns the
    task's state, error (first line), worker, device, wall and CPU time; never raises for
    a failing command, so independent tasks go on."""
    base = {"key": task["key"]}
    bad = [d for d in deps if d.get("state") not in ("computed", "skipped")]
    if bad:
        return {**base, "state": "blocked",
                "error": f"needs {bad[0]['key']}, which {bad[0]['state']}"}
    if is_done(task):
        return {**base, "state": "skipped"}
    import torch

    from analyses import cli
    torch.set_num_threads(int(threads))
    worker = _worker_name()
    dev = device or worker_device(worker, torch.cuda.device_count())
    argv = [*task["argv"], "--device", dev]
    log = Path(task["log"])
    log.parent.mkdir(parents=True, exist_ok=True)
    t0, cpu0 = time.perf_counter(), time.process_time()
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} worker {worker}, device {dev}, "
                f"{threads} thread(s)\n$ gauge {shlex.join(argv)}\n")
        f.flush()
        start = f.tell()
        with redirect_stdout(f), redirect_stderr(f):
            try:
                rc = cli.main(argv)
            except SystemExit as e:  # the parser's exit on a bad command line
                rc = e.code if isinstance(e.code, int) else 2
            except Exception:  # noqa: BLE001 - a crash of one task must not stop the sweep
                traceback.print_exc()
                rc = 1
        wall = time.perf_counter() - t0
        f.write(f"=== exit {rc} after {wall:.1f}s\n")
    out = {**base, "worker": worker, "device": dev, "wall_time": wall,
           "cpu_time": time.process_time() - cpu0}
    if rc == 0:
        return {**out, "state": "computed"}
    with open(log, encoding="utf-8") as f:
        f.seek(start)
        lines = [l.strip() for l in f.read().splitlines() if l.strip() and
                 not l.startswith("=== exit")]
    return {**out, "state": "failed", "error": lines[-1] if lines else f"exit code {rc}"}


# --------------------------------------------------------------------------------------------
# the whole graph, on a client


@dataclass(frozen=True)
class SweepOutcome:
    """The state of every task of a sweep (``tasks``: key, kind, state, inputs, error, log,
    worker, device, wall and CPU time) and the sweep's wall time."""

    tasks: tuple[dict, ...]
    wall_time: float

    def counts(self) -> dict[str, int]:
        return {s: sum(t["state"] == s for t in self.tasks) for s in STATES}

    @property
    def failed(self) -> list[dict]:
        return [t for t in self.tasks if t["state"] in ("failed", "blocked")]

    def to_dict(self) -> dict:
        return {"counts": self.counts(), "tasks": list(self.tasks), "wall_time": self.wall_time}


def run_sweep(p: Plan, client, *, threads: int = 1, device: str | None = None,
              progress: bool = False, log: Callable[[str], None] | None = None,
              on_result: Callable[[dict], None] | None = None) -> SweepOutcome:
    """Submit every task of ``p`` that is not complete to ``client`` (dependencies as futures)
    and wait for all of them. ``on_result`` receives each task's result as it arrives; ``log``
    each failure as one line. A worker that dies is replaced by Dask and its task rerun
    (the run directories resume); a task that keeps killing workers fails."""
    from distributed import as_completed
    t0 = time.perf_counter()
    token = uuid.uuid4().hex[:8]
    futures, results = {}, {}
    for t in p.tasks:
        if is_done(t):
            results[t.key] = {"key": t.key, "state": "skipped"}
            continue
        deps = [futures[d] for d in t.deps if d in futures]
        futures[t.key] = client.submit(execute_task, t.to_dict(), threads, device, *deps,
                                       key=f"{t.key}-{token}", pure=False)
    by_key = {f.key: k for k, f in futures.items()}
    bar = None
    if progress and futures:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(futures), unit="task", desc="sweep", file=sys.stderr)
    tasks = {t.key: t for t in p.tasks}
    for fut in as_completed(list(futures.values())):
        key = by_key[fut.key]
        if fut.status == "error":
            exc = fut.exception()
            res = {"key": key, "state": "failed",
                   "error": f"{type(exc).__name__}: {_first_line(exc) or 'no message'}"}
        else:
            res = fut.result()
        results[key] = res
        if bar is not None:
            bar.update(1)
        if res["state"] == "failed" and log is not None:
            line = (f"failed: {key} ({_inputs(tasks[key].inputs)}): {res['error']} "
                    f"[log: {tasks[key].log}]")
            if bar is not None:
                bar.write(line, file=sys.stderr)
            else:
                log(line)
        if on_result is not None:
            on_result(res)
        fut.release()
    if bar is not None:
        bar.close()
    rows, state = [], {}
    for t in p.tasks:  # dependencies first: a Dask error passed on to a dependent is "blocked"
        res = dict(results[t.key])
        failed_dep = next((d for d in t.deps if state.get(d) in ("failed", "blocked")), None)
        if res["state"] == "failed" and failed_dep is not None and "worker" not in res:
            res.update(state="blocked", error=f"needs {failed_dep}, which failed")
        state[t.key] = res["state"]
        rows.append({"key": t.key, "kind": t.kind, "inputs": t.inputs, "log": t.log, **res})
    return SweepOutcome(tasks=tuple(rows), wall_time=time.perf_counter() - t0)


def _inputs(inputs: Mapping) -> str:
    return ", ".join(f"{k} {v}" for k, v in inputs.items() if k != "runs")


# --------------------------------------------------------------------------------------------
# results


def _scalars(obj: Mapping, prefix: str = "") -> dict:
    """Scalar leaves of a nested dict, as ``a_b_c`` columns (lists are left out)."""
    out = {}
    for k, v in obj.items():
        if isinstance(v, dict):
            out.update(_scalars(v, f"{prefix}{k}_"))
        elif v is None or isinstance(v, (bool, int, float, str)):
            out[f"{prefix}{k}"] = v
    return out


def _top_eig(eig: Mapping) -> dict:
    if "values" in eig:
        return {"top_eig": max(eig["values"])}
    return {f"top_eig_{view}": max(v["values"]) for view, v in eig.items()
            if isinstance(v, dict) and v.get("values")}


def _analysis_rows(kind: str, result: Mapping) -> list[dict]:
    """The numbers of one analysis result file, as table rows (paths left out)."""
    if kind == "connect":
        return [_scalars({k: result.get(k) or {} for k in ("naive", "aligned")})]
    if kind == "overlap":
        return [{k: v for k, v in row.items() if k != "level"} for row in result["table"]]
    if kind == "instability":
        return [_scalars(r) for r in result["rows"]]
    if kind == "flatness":
        row = _scalars({k: v for k, v in result.items() if k in ("loss", "trace", "sharpness")})
        return [{**row, **_top_eig(result.get("eigenvalues") or {})}]
    return []


def _axes(values: Mapping) -> dict:
    row = {"model": values["model"], "data": values["data"], "seed": values["seed"],
           "data_seed": values["data_seed"], "rewind_iter": values["rewind_iter"]}
    if values["model_kwargs"]:
        row["model_kwargs"] = json.dumps(values["model_kwargs"], sort_keys=True)
    row.update({f"train_{k}": (json.dumps(v) if isinstance(v, (list, dict)) else v)
                for k, v in values["train"].items()})
    return row


def collect(p: Plan, outcome: SweepOutcome | None = None) -> dict:
    """Every number the sweep's files hold: ``runs`` (one row per run x level: the axes,
    density, accuracies and losses, each control's test accuracy), ``pairs`` (one row per
    pair x level of each pairwise analysis), ``per_run`` (instability and flatness rows),
    ``reports`` and, given ``outcome``, the state of every task and the failures."""
    from tickets.store import load_json
    from tickets.errors import CheckpointError
    runs, pairs, per_run, reports = [], [], [], []
    for run in p.runs:
        rdir = p.run_dir(run.name)
        for level in range(p.sweep.runs["levels"] + 1):
            f = rdir / f"level_{level:02d}" / "metrics.json"
            if not f.is_file():
                continue
            m = load_json(f)
            row = {"kind": "imp", "run": run.name, "level": level, **_axes(run.values)}
            row.update({k: m.get(k) for k in ("density", "sparsity", "test_acc", "test_loss",
                                              "train_acc", "train_loss", "wall_time")})
            for c in p.sweep.runs["controls"]:
                cf = rdir / "controls" / c / f"level_{level:02d}" / "metrics.json"
                row[f"{c}_test_acc"] = load_json(cf).get("test_acc") if cf.is_file() else None
            runs.append(row)
    for t in p.tasks:
        if t.kind == "imp" or not is_done(t):
            continue
        if t.kind == "report":
            reports.append(t.outputs[0])
            continue
        try:
            result = load_json(t.outputs[0])
        except CheckpointError:
            continue
        head = {"kind": t.inputs["analysis"], **{k: t.inputs[k] for k in ("run", "a", "b")
                                                  if k in t.inputs}, "level": t.inputs["level"]}
        for row in _analysis_rows(t.kind, result):
            (pairs if t.kind in PAIRWISE else per_run).append({**head, **row})
    out = {"out": str(p.out), "sweep": p.sweep.to_dict(), "runs": runs, "pairs": pairs,
           "per_run": per_run, "reports": reports}
    if outcome is not None:
        out.update(counts=outcome.counts(), wall_time=outcome.wall_time,
                   failed=outcome.failed, tasks=list(outcome.tasks))
    return out


def csv_text(results: Mapping) -> str:
    """``sweep.csv``: the run, pair and per-run rows in one table (union of the columns)."""
    rows = [*results["runs"], *results["pairs"], *results["per_run"]]
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _write_results(p: Plan, results: Mapping) -> None:
    from tickets.store import atomic_write_text, save_json
    save_json(p.out / "sweep.json", results)
    atomic_write_text(p.out / "sweep.csv", csv_text(results))


# --------------------------------------------------------------------------------------------
# clusters


def _dask():
    try:
        import distributed
    except ImportError:
        raise UsageError(f"gauge sweep runs on Dask, which is not installed: {_EXTRA}") from None
    return distributed


def make_jobqueue_cluster(kind: str, options: Mapping):
    """A dask-jobqueue ``SLURMCluster`` / ``PBSCluster`` from the sweep file's
    ``[cluster.slurm]`` / ``[cluster.pbs]`` table (its keys are the cluster's keyword
    arguments, plus ``jobs``: how many jobs to submit). Returns ``(cluster, jobs)``; nothing
    is submitted until the cluster is scaled."""
    import inspect
    try:
        import dask_jobqueue
        from dask_jobqueue.core import Job, JobQueueCluster
    except ImportError:
        raise UsageError(f"--cluster {kind} needs dask-jobqueue: {_EXTRA}") from None
    cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[kind]
    skip = {"self", "scheduler", "name", "config_name", "job_cls", "loop", "asynchronous",
            "n_workers", "kwargs", "base_class_kwargs", "job_kwargs"}
    valid = {"jobs"} | {n for f in (cls.job_cls.__init__, Job.__init__, JobQueueCluster.__init__)
                        for n in inspect.signature(f).parameters if n not in skip}
    options = dict(options)
    for k in options:
        if k not in valid:
            raise UsageError(f"unknown key cluster.{kind}.{k} (valid: {', '.join(sorted(valid))})")
    jobs = options.pop("jobs", 1)
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise UsageError(f"cluster.{kind}.jobs must be an integer >= 1, got {jobs!r}")
    try:
        cluster = cls(**options)
    except (ValueError, TypeError) as e:
        raise UsageError(f"[cluster.{kind}]: {_first_line(e)}") from None
    return cluster, jobs


def _has_dashboard() -> bool:
    import importlib.util
    return importlib.util.find_spec("bokeh") is not None


def local_worker_config():
    """The Dask configuration of the local worker processes: two defaults that suit data
    frames but slow a training loop of small tensors (each step frees and allocates them) are
    turned off, measured at 10% of a worker's CPU time on the scaling benchmark. The worker's
    stack sampler takes the GIL every 10 ms, and a ``MALLOC_TRIM_THRESHOLD_`` of 64 KiB makes
    glibc hand freed memory back to the OS on every free, and fetch it again on the next step.
    A cluster started by hand reads the same keys from its own configuration (docs/sweep.md)."""
    import dask
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return dask.config.set({"distributed.worker.profile.enabled": False,
                            "distributed.nanny.pre-spawn-environ": environ})


@contextmanager
def _client(args, sweep, n_tasks: int):
    """A Dask client for the chosen place: scheduler address, jobqueue jobs or local processes."""
    import logging
    distributed = _dask()
    cluster = None
    if args.scheduler:
        try:
            client = distributed.Client(args.scheduler, timeout=args.timeout)
        except (OSError, TimeoutError, ValueError) as e:
            raise UsageError(f"--scheduler {args.scheduler}: cannot reach the scheduler within "
                             f"{args.timeout:g} s ({_first_line(e) or type(e).__name__})") from None
    else:
        if args.cluster:
            cluster, jobs = make_jobqueue_cluster(args.cluster, sweep.cluster.get(args.cluster, {}))
            cluster.scale(jobs=jobs)
        else:
            n = args.workers or max(1, (os.cpu_count() or 1) // args.threads_per_worker)
            threads = str(args.threads_per_worker)
            with local_worker_config():
                cluster = distributed.LocalCluster(
                    n_workers=max(1, min(n, n_tasks)), threads_per_worker=1, processes=True,
                    dashboard_address=":0" if _has_dashboard() else None,
                    silence_logs=logging.ERROR, env={"OMP_NUM_THREADS": threads,
                                                     "MKL_NUM_THREADS": threads})
        client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _dashboard(client) -> str | None:
    try:
        if client.scheduler_info().get("services", {}).get("dashboard"):
            return client.dashboard_link
    except Exception:  # noqa: BLE001 - the link is a convenience
        return None
    return None


# --------------------------------------------------------------------------------------------
# CLI


def _print_graph(p: Plan, done: set[str]) -> None:
    counts = p.counts()
    print(f"sweep {p.out}: {len(p.runs)} run(s), {len(p.tasks)} task(s) (dry run: nothing "
          "is run or written)")
    print(f"  {'kind':<12}{'tasks':>6}{'done':>6}{'to run':>8}")
    for kind, n in counts.items():
        d = sum(t.key in done for t in p.tasks if t.kind == kind)
        print(f"  {kind:<12}{n:>6}{d:>6}{n - d:>8}")
    for t in p.tasks:
        deps = f"  <- {', '.join(t.deps)}" if t.deps else ""
        print(f"  [{'done' if t.key in done else 'todo'}] {t.key}{deps}")


def run(args) -> int:
    if args.threads_per_worker < 1:
        raise UsageError(f"--threads-per-worker must be >= 1, got {args.threads_per_worker}")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be > 0, got {args.timeout}")
    sweep = load_sweep(args.sweep)
    p = plan(sweep, args.out)
    check_out_dir(p)
    done = {t.key for t in p.tasks if is_done(t)}
    if args.dry_run:
        _print_graph(p, done)
        return 0
    if args.device and not (args.scheduler or args.cluster):
        from analyses.common import resolve_device
        resolve_device(args.device)  # local workers share this machine's devices
    todo = len(p.tasks) - len(done)
    progress = progress_enabled(args)
    say = (lambda m: print(m, file=sys.stderr)) if not args.quiet else (lambda m: None)
    if todo:
        if args.cluster and args.cluster not in sweep.cluster:
            raise UsageError(f"--cluster {args.cluster}: the sweep file has no "
                             f"[cluster.{args.cluster}] table (see docs/sweep.md)")
        with _client(args, sweep, todo) as client:
            _write_record(p, Path(args.sweep))
            link = _dashboard(client)
            if link:
                say(f"dashboard: {link}")
            say(f"sweep {p.out}: {todo} of {len(p.tasks)} task(s) to run")
            outcome = run_sweep(p, client, threads=args.threads_per_worker, device=args.device,
                                progress=progress, log=lambda m: print(m, file=sys.stderr))
    else:
        _write_record(p, Path(args.sweep))
        outcome = SweepOutcome(tasks=tuple({"key": t.key, "kind": t.kind, "inputs": t.inputs,
                                            "log": t.log, "state": "skipped"} for t in p.tasks),
                               wall_time=0.0)
    results = collect(p, outcome)
    _write_results(p, results)
    c = outcome.counts()
    if args.json != "-":
        print(f"sweep {p.out}: {len(p.tasks)} task(s): {c['computed']} computed, "
              f"{c['skipped']} already done, {c['failed']} failed, {c['blocked']} blocked "
              f"({outcome.wall_time:.1f}s) -> sweep.json, sweep.csv")
        for t in outcome.failed:
            print(f"  {t['state']}: {t['key']} ({_inputs(t['inputs'])}): {t.get('error')} "
                  f"[log: {t['log']}]")
    emit_json(args.json, results)
    return 1 if outcome.failed else 0


if __name__ == "__main__":
    from analyses.cli import run_command
    sys.exit(run_command(sys.modules[__name__]))
