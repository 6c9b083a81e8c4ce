"""gauge report: composition of analyses, skipped analyses with reasons, caching, bad inputs."""

from __future__ import annotations

import json
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


def _subcommand(name: str, **functions) -> types.ModuleType:
    """A module with the subcommand interface (HELP, add_arguments, run) and ``functions``."""
    module = types.ModuleType(name)
    module.HELP, module.add_arguments, module.run = "a stub", lambda parser: None, lambda a: 0
    for key, fn in functions.items():
        setattr(module, key, fn)
    return module


def test_composes_modules_and_lists_what_it_skipped(runs, tmp_path):
    from analyses.common import NotApplicable
    from analyses.figures import new_figure, save_figure
    from analyses.report import Analysis, build_report
    calls = {}

    class StubResult:
        def __init__(self, n):
            self.n = n

        def to_dict(self):
            return {"n_runs": self.n, "barrier": 0.25, "rows": [{"level": 0, "value": 1.5}]}

    def compute(run_dirs, *, levels, device="cpu", progress=False):
        calls["levels"], calls["dirs"] = levels, run_dirs
        return StubResult(len(run_dirs))

    def plot(result, out_dir):
        fig, ax = new_figure()
        ax[0, 0].plot([0, 1], [0, result.n])
        return save_figure(fig, Path(out_dir) / "stub")

    def not_applicable(run_dirs, **options):
        raise NotApplicable("needs a second dataset\nsecond line")

    def summary(result):
        return [("runs", str(result.n))]

    stub = _subcommand("analyses._stub_analysis", compute=compute, plot=plot, summary=summary)
    inapt = _subcommand("analyses._inapt_analysis", compute=not_applicable, plot=plot,
                        summary=summary)
    analyses = _builtin("sparsity") + [
        Analysis("stub", "Stub", "a stub", stub, min_runs=2),
        Analysis("inapt", "Inapt", "does not apply", inapt),
        Analysis("needs3", "Needs 3", "three seeds", stub, min_runs=3)]
    res = build_report(runs, tmp_path / "out", analyses=analyses)
    assert calls["levels"] == [0, 1, 2]
    assert [Path(p) for p in calls["dirs"]] == runs[:2]  # the primary group only
    assert res.results["analyses"]["stub"]["barrier"] == 0.25
    assert res.results["figures"]["stub"] == ["figures/stub.png", "figures/stub.pdf"]
    reasons = {s["analysis"]: s["reason"] for s in res.results["skipped"]}
    assert reasons["inapt"] == "needs a second dataset"
    assert "needs at least 3 seeds" in reasons["needs3"]
    assert "other configurations" in reasons["across seeds"]
    assert ("stub", "runs", "2") in res.summary
    html = res.html.read_text()
    assert "needs a second dataset" in html
    assert html.count("data:image/png;base64,") == 2  # sparsity + stub
    saved = json.loads(res.json.read_text())
    assert saved["analyses"]["stub"]["rows"] == [{"level": 0, "value": 1.5}]


def test_a_module_without_the_report_interface_is_refused_at_registration():
    from analyses.report import Analysis
    incomplete = _subcommand("analyses._incomplete", compute=lambda run_dirs, **o: None)
    with pytest.raises(TypeError, match="plot, summary"):
        Analysis("incomplete", "Incomplete", "no plot", incomplete)


def test_a_bug_in_an_analysis_propagates(runs, tmp_path):
    from analyses.report import Analysis, build_report

    def bad_compute(run_dirs, **options):
        raise RuntimeError("the stub always fails")

    broken = _subcommand("analyses._broken_analysis", compute=bad_compute,
                         plot=lambda r, d: [], summary=lambda r: [])
    with pytest.raises(RuntimeError, match="the stub always fails"):
        build_report(runs, tmp_path / "out",
                     analyses=[Analysis("broken", "Broken", "fails", broken)])


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
