"""gauge similarity, gauge drift and gauge erasure through the real CLI, on tiny artefacts."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import assert_user_error, run_cli
from tests.tiny_runs import files_under, make_checkpoint, make_run, tiny_data


@pytest.fixture(scope="module")
def art(mnist1d, tmp_path_factory):
    base = tmp_path_factory.mktemp("sim")
    data = tiny_data(mnist1d)
    ckpts = [make_checkpoint(base / f"c{s}.safetensors", data, seed=s, widths=[16, 16])
             for s in range(3)]
    other = make_checkpoint(base / "other.safetensors", data, seed=0, train=False, widths=[8])
    run = make_run(base / "run", data, seed=0, widths=(16, 16))
    return {"ckpts": ckpts, "other": other, "run": run}


def test_similarity_two_and_three(art, tmp_path):
    out, fig = tmp_path / "s.json", tmp_path / "s.png"
    proc = run_cli("similarity", *art["ckpts"][:2], "--data", "mnist1d", "--num-examples",
                   "300", "--json", out, "--plot", fig, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert r["layers"] == ["fc1", "fc2"] and r["pairs"] == [[0, 1]]
    cka = r["results"][0]["cka"]
    assert len(cka) == 2 and all(0 <= v <= 1 for row in cka for v in row)
    assert all(-1 <= v <= 1 for v in r["mean_corr"])
    assert re.search(r"^fc1 +CKA", proc.stdout, re.M) and fig.exists()
    proc = run_cli("similarity", *art["ckpts"], "--debiased", "--num-examples", "300",
                   "--json", "-", "--plot", tmp_path / "s3.svg")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert len(r["pairs"]) == 3 and r["results"][0]["debiased"]
    assert set(r["shared"]) | set(r["seed_specific"]) == {"fc1", "fc2"}
    assert (tmp_path / "s3.svg").exists()


@pytest.mark.parametrize("case", ["one", "arch", "plot", "dir"])
def test_similarity_bad_input(art, tmp_path, case):
    out = tmp_path / "out"
    args, needle = {
        "one": ([art["ckpts"][0]], "at least two"),
        "arch": ([art["ckpts"][0], art["other"]], "different architectures"),
        "plot": ([*art["ckpts"][:2], "--plot", out / "s.gif"], ".png"),
        "dir": ([art["ckpts"][0], art["run"]], "is a directory"),
    }[case]
    proc = run_cli("similarity", *args, "--json", out / "s.json")
    assert_user_error(proc, needle)
    assert not out.exists() or not files_under(out)


def test_drift(art, tmp_path):
    out, fig = tmp_path / "d.json", tmp_path / "d.png"
    proc = run_cli("drift", art["run"], "--json", out, "--plot", fig)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert [row["level"] for row in r["rows"]] == [0, 1, 2]
    assert r["layers"] == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert all(row["total"] > 0 for row in r["rows"]) and r["rows"][0]["density"] == 1.0
    assert "ticket level 0" in proc.stdout and fig.exists()


def test_drift_bad_input(tmp_path):
    assert_user_error(run_cli("drift", tmp_path), "run.json")


def test_erasure(art, tmp_path):
    from matplotlib.image import imsave
    import numpy as np
    png = tmp_path / "stripes.png"
    imsave(png, np.tile([[0.0, 1.0]], (8, 4)), cmap="gray")
    out, fig = tmp_path / "e.json", tmp_path / "e.png"
    proc = run_cli("erasure", "--optimizers", "sgd,muon", "--iters", "12", "--width", "16",
                   "--image", png, "--mask", art["run"], "--level", "1", "--json", out,
                   "--plot", fig)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert [row["name"] for row in r["rows"]] == ["sgd", "muon", "sgd ticket", "muon ticket"]
    assert r["layer"] == "fc2.weight" and r["rows"][0]["iters"] == [0, 2, 12]
    assert all(row["drift"][0] == 0 and row["drift"][-1] > 0 for row in r["rows"])
    assert r["rows"][2]["density"] < 1 and fig.exists()
    proc = run_cli("erasure", "--optimizers", "adam", "--iters", "6", "--width", "8",
                   "--points", "0,6", "--json", "-")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["image"] == "a smiley"


@pytest.mark.parametrize("case", ["unknown", "image", "points", "layer"])
def test_erasure_bad_input(tmp_path, case):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    args, needle = {
        "unknown": (["--optimizers", "sgd,lion"], "'lion'"),
        "image": (["--image", bad], "bad.png"),
        "points": (["--points", "0,99999"], "--points"),
        "layer": (["--layer", "fc9.weight"], "fc9.weight"),
    }[case]
    out = tmp_path / "out"
    proc = run_cli("erasure", *args, "--iters", "5", "--width", "8", "--json", out / "e.json")
    assert_user_error(proc, needle)
    assert not out.exists()
