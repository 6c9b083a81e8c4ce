"""gauge sweep without a cluster: the sweep file, the task graph, devices, bad input."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from analyses.common import UsageError
from analyses.sweep_plan import first_difference, is_done, parse_sweep, plan, worker_device
from tests.conftest import ROOT, assert_user_error, run_cli

RUNS = {"model": "mlp", "model_kwargs": {"widths": [8]}, "data": "mnist1d", "seeds": [0, 1],
        "levels": 2, "train": {"iters": 20, "lr": [1e-3, 3e-3]}}


def _sweep(**changes):
    doc = {"runs": {**RUNS, **changes.pop("runs", {})}, **changes}
    return parse_sweep(doc)


def _flag(argv, option):
    argv = list(argv)
    return argv[argv.index(option) + 1]


def test_grid_names_runs_by_the_values_that_vary_and_chains_levels(tmp_path):
    sweep = _sweep(analyses=[{"kind": "connect", "levels": [0, 2], "align": "weight"},
                             {"kind": "overlap"}, {"kind": "flatness", "levels": 2, "top_k": 1},
                             {"kind": "report", "only": ["sparsity"]}])
    p = plan(sweep, tmp_path / "out")
    assert [r.name for r in p.runs] == ["lr0.001-s0", "lr0.001-s1", "lr0.003-s0", "lr0.003-s1"]
    assert {r.group for r in p.runs} == {"lr0.001", "lr0.003"}
    assert p.counts() == {"imp": 12, "connect": 4, "overlap": 4, "flatness": 4, "report": 1}
    tasks = {t.key: t for t in p.tasks}
    imp = tasks["imp-lr0.003-s1-level_02"]
    assert imp.deps == ("imp-lr0.003-s1-level_01",)
    assert _flag(imp.argv, "--lr") == "0.003" and _flag(imp.argv, "--levels") == "2"
    assert _flag(imp.argv, "--out") == str(tmp_path.resolve() / "out/runs/lr0.003-s1")
    assert imp.outputs == (str(tmp_path.resolve() / "out/runs/lr0.003-s1/level_02/metrics.json"),)
    # pairs only within one configuration; overlap defaults to the pruned levels
    conn = tasks["connect-lr0.001-s0~lr0.001-s1-level_02"]
    assert conn.deps == ("imp-lr0.001-s0-level_02", "imp-lr0.001-s1-level_02")
    assert conn.argv[1].endswith("lr0.001-s0/level_02/final.safetensors")
    assert _flag(conn.argv, "--align") == "weight"
    assert sorted(t.inputs["level"] for t in p.tasks if t.kind == "overlap") == [1, 1, 2, 2]
    assert tasks["report"].deps == tuple(f"imp-{r.name}-level_02" for r in p.runs)
    assert _flag(tasks["report"].argv, "--only") == "sparsity"
    # dependencies always come first, so the executor can submit in order
    seen = set()
    for t in p.tasks:
        assert set(t.deps) <= seen
        seen.add(t.key)


def test_train_values_become_imp_flags():
    p = plan(_sweep(runs={"levels": 1, "controls": ["random_reinit"],
                          "train": {"iters": 20, "optimizer": "sgd", "nesterov": True,
                                    "momentum": 0.9, "milestones": [1, 2],
                                    "layer_fraction": {"fc2": 0.1}}}), "out")
    argv = p.tasks[1].argv
    assert "--nesterov" in argv and _flag(argv, "--control") == "random_reinit"
    assert argv[argv.index("--milestones") + 1:argv.index("--milestones") + 3] == ("1", "2")
    assert _flag(argv, "--layer-fraction") == "fc2=0.1"
    assert len(p.runs) == 2  # lists given to a many-valued option are its value, not an axis
    assert p.tasks[1].outputs[1].endswith("controls/random_reinit/level_01/metrics.json")
    axis = plan(_sweep(runs={"train": {"milestones": [[1], [2]]}}), "out")
    assert [r.name for r in axis.runs] == ["milestones_1_-s0", "milestones_1_-s1",
                                           "milestones_2_-s0", "milestones_2_-s1"]


def test_instability_copies_train_like_their_run(tmp_path):
    p = plan(_sweep(runs={"train": {"iters": 20, "fraction": 0.5}},
                    analyses=[{"kind": "instability", "levels": [1], "rewind_iters": [0, 5]}]),
             tmp_path)
    t = next(t for t in p.tasks if t.kind == "instability")
    assert _flag(t.argv, "--iters") == "20" and "--fraction" not in t.argv
    assert _flag(t.argv, "--ticket").endswith("runs/s0") and _flag(t.argv, "--level") == "1"


@pytest.mark.parametrize("doc, needles", [
    ({"runs": {**RUNS, "train": {"epoch": 3}}}, ["runs.train.epoch", "epochs", "iters"]),
    ({"runs": {**RUNS, "seed": 1}}, ["runs.seed", "seeds"]),
    ({"runs": RUNS, "analyses": [{"kind": "connect", "alignn": "weight"}]},
     ["analyses[0].alignn", "align", "points"]),
    ({"runs": RUNS, "extra": 1}, ["sweep.extra", "runs", "analyses"]),
    ({"runs": {**RUNS, "seeds": []}}, ["runs.seeds is empty"]),
    ({"runs": {**RUNS, "train": {"lr": []}}}, ["runs.train.lr is empty"]),
    ({"runs": {**RUNS, "train": {"epochs": "x"}}}, ["--epochs", "invalid float"]),
    ({"runs": {**RUNS, "train": {"epochs": 1, "iters": 3}}}, ["--iters", "not allowed"]),
    ({"runs": {**RUNS, "model": "mpl"}}, ["unknown model 'mpl'", "mlp"]),
    ({"runs": RUNS, "analyses": [{"kind": "overlap", "levels": [3]}]}, ["analyses[0].levels"]),
    ({"runs": {**RUNS, "seeds": [0]}, "analyses": [{"kind": "overlap"}]}, ["at least two"]),
    ({"runs": RUNS, "analyses": [{"kind": "umap"}]}, ["analyses[0].kind", "connect"]),
    ({"runs": RUNS, "cluster": {"k8s": {}}}, ["cluster.k8s", "slurm"]),
])
def test_bad_sweeps_name_the_key_and_the_valid_ones(tmp_path, doc, needles):
    with pytest.raises(UsageError) as e:
        plan(parse_sweep(doc), tmp_path)
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))


def test_first_difference_names_the_field():
    old = {"runs": {"seeds": [0, 1], "levels": 2}, "analyses": [{"kind": "connect"}]}
    assert first_difference(old, old) is None
    assert first_difference(old, {**old, "runs": {"seeds": [0, 2], "levels": 2}}) == \
        ("runs.seeds", [0, 1], [0, 2])
    assert first_difference(old, {**old, "analyses": [{"kind": "overlap"}]})[0] == \
        "analyses[0].kind"
    assert first_difference(old, {**old, "runs": {"seeds": [0, 1]}}) == ("runs.levels", 2, None)


def test_worker_devices_round_robin_over_gpus():
    assert worker_device(0, 0) == "cpu"
    assert [worker_device(i, 2) for i in range(5)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1",
                                                       "cuda:0"]
    assert worker_device("SLURMCluster-3-1", 4) == "cuda:1"  # process 1 of its job
    assert worker_device("tcp://10.0.0.1:4000", 3) == worker_device("tcp://10.0.0.1:4000", 3)
    assert worker_device("gpu-node", 8).startswith("cuda:")


def test_sweep_run_dirs_reads_a_sweep_folder_only(tmp_path):
    from analyses.sweep import _write_record, sweep_run_dirs
    assert sweep_run_dirs(tmp_path) is None
    src = tmp_path / "s.toml"
    src.write_text("# a sweep\n")
    p = plan(_sweep(), tmp_path / "out")
    _write_record(p, src)
    assert sweep_run_dirs(tmp_path / "out") == []
    (tmp_path / "out/runs/lr0.001-s1").mkdir(parents=True)
    (tmp_path / "out/runs/lr0.001-s1/run.json").write_text("{}")
    assert sweep_run_dirs(tmp_path / "out") == [tmp_path / "out/runs/lr0.001-s1"]
    assert not is_done(p.tasks[0])


def test_jobqueue_slurm_job_script_without_a_scheduler():
    pytest.importorskip("dask_jobqueue")
    from analyses.sweep import make_jobqueue_cluster
    cluster, jobs = make_jobqueue_cluster("slurm", {
        "jobs": 4, "cores": 2, "processes": 2, "memory": "8GB", "walltime": "02:00:00",
        "queue": "gpu", "account": "lth", "job_extra_directives": ["--gres=gpu:2"],
        "job_script_prologue": ["export OMP_NUM_THREADS=1"]})
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert jobs == 4
    for line in ("#SBATCH -p gpu", "#SBATCH -A lth", "#SBATCH -t 02:00:00",
                 "#SBATCH --gres=gpu:2", "export OMP_NUM_THREADS=1", "--nthreads 1"):
        assert line in script, (line, script)
    with pytest.raises(UsageError, match="cluster.slurm.partition .*queue"):
        make_jobqueue_cluster("slurm", {"cores": 1, "memory": "1GB", "partition": "gpu"})


def test_docs_slurm_example_builds_its_cluster():
    """The Slurm example of docs/sweep.md is a valid sweep file and job configuration."""
    pytest.importorskip("dask_jobqueue")
    import re
    import tomllib

    from analyses.sweep import make_jobqueue_cluster
    text = (ROOT / "docs/sweep.md").read_text()
    block = next(b for b in re.findall(r"```toml\n(.*?)```", text, re.S) if "[cluster.slurm]" in b)
    sweep = parse_sweep(tomllib.loads(block))
    cluster, _ = make_jobqueue_cluster("slurm", sweep.cluster["slurm"])
    try:
        assert "#SBATCH" in cluster.job_script()
    finally:
        cluster.close()


# ------------------------------------------------------------------------------- the CLI


TINY = """\
[runs]
model = "mlp"
data = "mnist1d"
seeds = [0, 1]
levels = 1
[runs.train]
iters = 20
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("text, extra, needles", [
    ("[runs]\nlevels = 1\nmodel = mlp\n", [], ["not valid TOML", "line 3, column 9"]),
    (TINY.replace("iters = 20", "iters = 20\nepoch = 3"), [], ["runs.train.epoch", "epochs"]),
    (TINY.replace("[0, 1]", "[]"), [], ["runs.seeds is empty"]),
    (TINY, ["--scheduler", "tcp://127.0.0.1:{port}", "--timeout", "2"],
     ["cannot reach the scheduler within 2 s"]),
], ids=["malformed-toml", "unknown-key", "empty-grid", "unreachable-scheduler"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, text, extra, needles):
    src = tmp_path / "sweep.toml"
    src.write_text(text)
    out = tmp_path / "out"
    extra = [a.replace("{port}", str(_free_port())) for a in extra]
    proc = run_cli("sweep", src, "--out", out, *extra, timeout=120)
    assert_user_error(proc, *needles)
    assert not out.exists()


def test_out_dir_of_another_sweep_is_refused_naming_the_field(tmp_path):
    from analyses.sweep import _write_record
    from analyses.sweep_plan import load_sweep
    first, second = tmp_path / "a.toml", tmp_path / "b.toml"
    first.write_text(TINY)
    second.write_text(TINY.replace("[0, 1]", "[0, 2]"))
    _write_record(plan(load_sweep(first), tmp_path / "out"), first)
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    proc = run_cli("sweep", second, "--out", tmp_path / "out", "--dry-run")
    assert_user_error(proc, "holds a different sweep", "runs.seeds is [0, 1] there, [0, 2] here")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before
    ok = run_cli("sweep", first, "--out", tmp_path / "out", "--dry-run")
    assert ok.returncode == 0, ok.stderr
    assert "imp" in ok.stdout and "[todo] imp-s1-level_01  <- imp-s1-level_00" in ok.stdout


def test_scheduler_and_workers_are_exclusive_and_missing_dask_names_the_extra(tmp_path):
    src = tmp_path / "sweep.toml"
    src.write_text(TINY)
    proc = run_cli("sweep", src, "--out", tmp_path / "o", "--workers", "2", "--scheduler",
                   "tcp://127.0.0.1:1")
    assert_user_error(proc, "not allowed with")
    code = ("import sys; sys.modules['distributed'] = None; from analyses.cli import main; "
            f"sys.exit(main(['sweep', {str(src)!r}, '--out', {str(tmp_path / 'o')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert_user_error(proc, "pip install 'gauge-tickets[dist]'")
    assert not (tmp_path / "o").exists()
