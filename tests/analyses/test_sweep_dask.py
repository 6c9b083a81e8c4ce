"""gauge sweep on a real LocalCluster of worker processes: a tiny sweep, and one that loses a
worker mid-task."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import pytest

from tests.conftest import run_cli

distributed = pytest.importorskip("distributed")

#: 2 seeds x levels 0..1 of a 16-unit MLP on MNIST-1D (60 Adam steps a level), with mask
#: overlap and aligned barriers between the seeds at level 1: 6 tasks.
TINY = """\
[runs]
model = "mlp"
model_kwargs = {widths = [16]}
data = "mnist1d"
seeds = [0, 1]
levels = 1

[runs.train]
optimizer = "adam"
lr = 3e-3
batch_size = 100
iters = 60
fraction = 0.5

[[analyses]]
kind = "overlap"
align = "weight"

[[analyses]]
kind = "connect"
levels = [1]
align = "weight"
points = 5
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny sweep, undisturbed, by the CLI on its own LocalCluster of 2 processes."""
    base = tmp_path_factory.mktemp("sweep")
    (base / "sweep.toml").write_text(TINY)
    proc = run_cli("sweep", base / "sweep.toml", "--out", base / "ref", "--workers", "2",
                   timeout=900)
    return base, proc


def _stamps(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _numbers(results):
    """The rows of a sweep without wall times (what must not depend on scheduling)."""
    return [{k: v for k, v in row.items() if k != "wall_time"}
            for row in results["runs"] + results["pairs"]]


def test_tiny_sweep_on_two_worker_processes(reference):
    base, proc = reference
    assert proc.returncode == 0, proc.stderr
    out = base / "ref"
    results = json.loads((out / "sweep.json").read_text())
    assert results["counts"] == {"computed": 6, "skipped": 0, "failed": 0, "blocked": 0}
    assert [(r["run"], r["level"]) for r in results["runs"]] == [("s0", 0), ("s0", 1),
                                                                 ("s1", 0), ("s1", 1)]
    assert results["runs"][1]["density"] < 1.0 and results["runs"][1]["train_iters"] == 60
    pairs = {r["kind"]: r for r in results["pairs"]}
    assert set(pairs) == {"overlap", "connect"}
    assert (pairs["overlap"]["a"], pairs["overlap"]["b"], pairs["overlap"]["level"]) == \
        ("s0", "s1", 1)
    assert 0 < pairs["overlap"]["jaccard_raw"] < 1
    assert pairs["connect"]["aligned_loss_barrier"] is not None
    csv_lines = (out / "sweep.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 4 + 2 and csv_lines[0].startswith("kind,run,level,")
    logs = sorted(p.name for p in (out / "logs").iterdir())
    assert len(logs) == 6 and "connect-s0~s1-level_01.log" in logs
    assert "$ gauge imp --model mlp" in (out / "logs/imp-s1-level_01.log").read_text()
    assert "6 computed" in proc.stdout

    # the same command again: everything is found complete, nothing is trained or rewritten
    before = _stamps(out / "runs") | _stamps(out / "analyses")
    again = run_cli("sweep", base / "sweep.toml", "--out", out, "--workers", "2")
    assert again.returncode == 0, again.stderr
    assert "0 computed, 6 already done" in again.stdout
    assert _stamps(out / "runs") | _stamps(out / "analyses") == before
    assert _numbers(json.loads((out / "sweep.json").read_text())) == _numbers(results)


def _kill_a_running_imp_task(logs, pids, killed, stop):
    """Wait until an IMP task has started on a worker (its log has a header and no exit
    line), then SIGKILL that worker process."""
    while not stop.is_set():
        for log in sorted(logs.glob("imp-*.log")) if logs.is_dir() else []:
            text = log.read_text()
            if text.count("\n=== exit") < text.count("worker "):
                name = re.findall(r"worker (\S+),", text)[-1]
                os.kill(pids[name], signal.SIGKILL)
                killed.append((log.name, name))
                return
        time.sleep(0.01)


def test_sweep_survives_a_killed_worker_with_identical_results(reference, tmp_path):
    from distributed import Client, LocalCluster

    from analyses.sweep import collect, run_sweep
    from analyses.sweep_plan import load_sweep, plan
    from tickets.store import load_checkpoint
    base, proc = reference
    assert proc.returncode == 0, proc.stderr
    sweep = load_sweep(base / "sweep.toml")
    p, ref = plan(sweep, tmp_path / "out"), plan(sweep, base / "ref")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        pids = {name: pid for name, pid in client.run(
            lambda dask_worker: (str(dask_worker.name), os.getpid())).values()}
        killed, stop = [], threading.Event()
        killer = threading.Thread(target=_kill_a_running_imp_task,
                                  args=(p.out / "logs", pids, killed, stop), daemon=True)
        killer.start()
        try:
            outcome = run_sweep(p, client)
        finally:
            stop.set()
            killer.join()
        assert killed, "no worker was killed"
        assert outcome.failed == [], outcome.failed
        # the killed attempt left a header without an exit line; the rerun finished
        text = (p.out / "logs" / killed[0][0]).read_text()
        assert text.count("worker ") == 2 and text.count("\n=== exit 0") == 1, text
        assert run_sweep(p, client).counts()["skipped"] == len(p.tasks)
    assert _numbers(collect(p)) == _numbers(collect(ref))
    for run in ("s0", "s1"):
        for level in ("level_00", "level_01"):
            a, _ = load_checkpoint(p.out / "runs" / run / level / "final.safetensors")
            b, _ = load_checkpoint(ref.out / "runs" / run / level / "final.safetensors")
            assert all(a[k].equal(b[k]) for k in a)
