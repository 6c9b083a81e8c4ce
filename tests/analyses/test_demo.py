"""gauge demo --quick end to end, and gauge report reproducing its numbers (cached, uncached)."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from tests.conftest import assert_user_error, run_cli

# Keys whose values are wall-clock measurements or locations, not results.
_VOLATILE = {"seconds", "elapsed", "device", "versions", "runs", "run", "path", "names"}


def _numbers(obj, prefix=""):
    """{dotted key: number} for every number in ``obj`` outside volatile keys."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if str(k).lower() in _VOLATILE or str(k).lower().endswith("time"):
                continue
            out.update(_numbers(v, f"{prefix}{k}."))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(_numbers(v, f"{prefix}{i}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix.rstrip(".")] = obj
    return out


def _same_numbers(a, b):
    na, nb = _numbers(a), _numbers(b)
    assert na.keys() == nb.keys(), sorted(set(na) ^ set(nb))[:10]
    bad = [k for k in na if not (na[k] == nb[k] or (isinstance(na[k], float) and
                                                   math.isclose(na[k], nb[k], rel_tol=1e-9,
                                                                abs_tol=1e-12)))]
    assert not bad, [(k, na[k], nb[k]) for k in bad[:10]]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = run_cli("demo", "--quick", "--out", out, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


@pytest.mark.slow
def test_demo_quick_writes_the_report(demo):
    out, proc = demo
    results = json.loads((out / "results.json").read_text())
    assert (out / "report.html").is_file() and (out / "demo.json").is_file()
    assert len(results["runs"]) == 5
    assert results["analyses"]["sparsity"]["seeds"] == [0, 1, 2]
    assert set(results["analyses"]["sparsity"]["curves"]) == {"ticket", "random_reinit",
                                                              "random_prune"}
    assert len(results["analyses"]["optimizer"]["groups"]) == 3
    for name, figs in results["figures"].items():
        for rel in figs:
            assert (out / rel).is_file(), (name, rel)
        assert any(f.endswith(".png") for f in figs) and any(f.endswith(".pdf") for f in figs)
    # the closing summary table
    assert "analysis" in proc.stdout and "sparsity" in proc.stdout
    assert "report.html" in proc.stdout


@pytest.mark.slow
def test_report_reproduces_the_demo_numbers_cached_and_uncached(demo, tmp_path):
    out, _ = demo
    demo_results = json.loads((out / "results.json").read_text())
    runs = sorted((out / "runs").iterdir())
    # the quick demo's analyses ran with the --quick options: the same options, the same numbers
    assert demo_results["quick"] is True
    proc = run_cli("report", *runs, "--out", tmp_path / "cached", "--device", "cpu", "--quick")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cached = json.loads((tmp_path / "cached" / "results.json").read_text())
    assert set(cached["analyses"]) == set(demo_results["analyses"])
    _same_numbers(demo_results["analyses"], cached["analyses"])
    # uncached: fresh copies of the runs without the analysis caches
    fresh = tmp_path / "fresh"
    for r in runs:
        shutil.copytree(r, fresh / r.name, ignore=shutil.ignore_patterns("analyses"))
    proc = run_cli("report", *sorted(fresh.iterdir()), "--out", tmp_path / "uncached",
                   "--device", "cpu", "--quick")
    assert proc.returncode == 0, proc.stderr[-3000:]
    uncached = json.loads((tmp_path / "uncached" / "results.json").read_text())
    assert set(uncached["analyses"]) == set(demo_results["analyses"])
    _same_numbers(demo_results["analyses"], uncached["analyses"])


@pytest.mark.slow
def test_demo_report_renders_in_chromium(demo, tmp_path):
    from tests.analyses.test_report_html import check_report_renders
    out, _ = demo
    results = json.loads((out / "results.json").read_text())
    n_png = sum(f.endswith(".png") for figs in results["figures"].values() for f in figs)
    assert check_report_renders(out / "report.html", tmp_path) == n_png


def test_demo_out_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    assert_user_error(run_cli("demo", "--quick", "--out", tmp_path / "f"), "is a file")
    assert (tmp_path / "f").read_text() == "x"


def test_demo_unknown_analysis(tmp_path):
    proc = run_cli("demo", "--quick", "--out", tmp_path / "o", "--skip", "nonsense")
    assert_user_error(proc, "unknown analysis 'nonsense'")
    assert not (tmp_path / "o").exists()
