"""gauge report: composition of analyses, skipped analyses with reasons, caching, bad inputs."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from tests.conftest import assert_user_error, run_cli
from tests.tiny_runs import make_report_run, make_report_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_report_runs(tmp_path_factory.mktemp("runs"))


def _builtin(*names):
    from analyses.report import ANALYSES
    return [a for a in ANALYSES if a.name in names]


def test_sparsity_and_optimizer_numbers_match_the_runs(runs, tmp_path):
    from analyses.report import build_report
    res = build_report(runs, tmp_path / "out", analyses=_builtin("sparsity", "optimizer"))
    sp = res.results["analyses"]["sparsity"]
    assert sp["seeds"] == [0, 1]
    assert set(sp["curves"]) == {"ticket", "random_reinit", "random_prune"}
    accs = [json.loads((r / "level_02" / "metrics.json").read_text())["test_acc"]
            for r in runs[:2]]
    last = sp["curves"]["ticket"][-1]
    assert last["level"] == 2 and last["test_acc"] == accs
    assert last["test_acc_mean"] == pytest.approx(sum(accs) / 2)
    assert last["weights_remaining"] < 0.5
    opt = res.results["analyses"]["optimizer"]
    assert {g["rewind_iter"] for g in opt["groups"].values()} == {0, 5}
    assert {g["optimizer"] for g in opt["groups"].values()} == {"adam", "sgd"}
    for label, gap in opt["gap"].items():
        assert gap["gap"] == pytest.approx(gap["ticket_acc"] - gap["reinit_acc"])
    assert (tmp_path / "out" / "figures" / "sparsity_accuracy.png").is_file()
    assert (tmp_path / "out" / "figures" / "sparsity_accuracy.pdf").is_file()
    assert (tmp_path / "out" / "figures" / "optimizer_rewinding.png").is_file()
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    assert "Sparsity vs accuracy" in html and "Optimizer and rewinding" in html


def test_composes_modules_and_lists_what_it_skipped(runs, tmp_path, monkeypatch):
    from analyses.figures import new_figure, save_figure
    from analyses.report import Analysis, build_report
    calls = {}

    class StubResult:
        def __init__(self, n):
            self.n = n

        def to_dict(self):
            return {"n_runs": self.n, "barrier": 0.25, "rows": [{"level": 0, "value": 1.5}]}

    stub = types.ModuleType("analyses._stub_analysis")

    def compute(run_dirs, *, levels, device="cpu"):  # no **kwargs: options are filtered
        calls["levels"], calls["dirs"] = levels, run_dirs
        return StubResult(len(run_dirs))

    def plot(result, out_dir):
        fig, ax = new_figure()
        ax[0, 0].plot([0, 1], [0, result.n])
        return save_figure(fig, Path(out_dir) / "stub")

    stub.compute, stub.plot = compute, plot
    monkeypatch.setitem(sys.modules, "analyses._stub_analysis", stub)
    broken = types.ModuleType("analyses._broken_analysis")

    def bad_compute(run_dirs):
        raise RuntimeError("the stub always fails\nsecond line")

    broken.compute = bad_compute
    monkeypatch.setitem(sys.modules, "analyses._broken_analysis", broken)
    analyses = _builtin("sparsity") + [
        Analysis("stub", "Stub", "a stub", module="analyses._stub_analysis", min_runs=2),
        Analysis("broken", "Broken", "fails", module="analyses._broken_analysis"),
        Analysis("missing", "Missing", "absent", module="analyses._no_such_analysis"),
        Analysis("needs3", "Needs 3", "three seeds", module="analyses._stub_analysis",
                 min_runs=3)]
    res = build_report(runs, tmp_path / "out", analyses=analyses)
    assert calls["levels"] == [0, 1, 2]
    assert [Path(p) for p in calls["dirs"]] == runs[:2]  # the primary group only
    assert res.results["analyses"]["stub"]["barrier"] == 0.25
    assert res.results["figures"]["stub"] == ["figures/stub.png", "figures/stub.pdf"]
    reasons = {s["analysis"]: s["reason"] for s in res.results["skipped"]}
    assert reasons["broken"] == "failed: RuntimeError: the stub always fails"
    assert "not part of this build" in reasons["missing"]
    assert "needs at least 3 seeds" in reasons["needs3"]
    assert "other configurations" in reasons["across seeds"]
    html = res.html.read_text()
    assert "the stub always fails" in html and "not part of this build" in html
    assert html.count("data:image/png;base64,") == 2  # sparsity + stub
    saved = json.loads(res.json.read_text())
    assert saved["analyses"]["stub"]["rows"] == [{"level": 0, "value": 1.5}]


def test_missing_levels_and_mixed_models_are_reported(runs, tmp_path):
    from analyses.report import build_report
    short = make_report_run(tmp_path / "short", 7, levels=0, controls=())
    other = make_report_run(tmp_path / "other", 0, levels=1, controls=(),
                            model_kwargs={"widths": [12]})
    res = build_report([*runs[:2], short, other], tmp_path / "out",
                       analyses=_builtin("sparsity", "permutation"))
    reasons = " | ".join(s["reason"] for s in res.results["skipped"])
    assert f"{short} has levels [0] only" in reasons
    assert "different model/dataset" in reasons and "widths=[12]" in reasons
    assert res.results["analyses"]["sparsity"]["seeds"] == [0, 1]
    assert res.html.is_file() and res.json.is_file()


def test_second_call_reads_the_cache_and_gives_the_same_numbers(runs, tmp_path):
    from analyses.report import build_report
    a = build_report(runs, tmp_path / "a", analyses=_builtin("sparsity", "permutation"))
    b = build_report(runs, tmp_path / "b", analyses=_builtin("sparsity", "permutation"))
    assert a.results["analyses"] == b.results["analyses"]


@pytest.mark.parametrize("case", ["missing", "file", "not_a_run", "unknown_analysis",
                                  "out_is_file", "twice"])
def test_bad_input_is_one_line_and_writes_nothing(runs, tmp_path, case):
    out = tmp_path / "out"
    args = [str(runs[0]), "--out", str(out)]
    needle = ""
    if case == "missing":
        args[0], needle = str(tmp_path / "nope"), "no such run directory"
    elif case == "file":
        (tmp_path / "f").write_text("x")
        args[0], needle = str(tmp_path / "f"), "is a file"
    elif case == "not_a_run":
        (tmp_path / "empty").mkdir()
        args[0], needle = str(tmp_path / "empty"), "no run.json"
    elif case == "unknown_analysis":
        args += ["--only", "nonsense"]
        needle = "unknown analysis 'nonsense'"
    elif case == "out_is_file":
        out.write_text("x")
        needle = "is a file"
    else:
        args.insert(1, str(runs[0]))
        needle = "given twice"
    proc = run_cli("report", *args)
    assert_user_error(proc, needle)
    assert not (out.is_dir() and any(out.iterdir()))
