"""Bring your own, through the real CLI: the user's models, checkpoints in the formats people
have (written with the real writers), data files and factories, mask files, OpenLTH trees;
and every bad input as one line and exit code 2, nothing written."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch
from torch.nn.utils import prune

from tests.byo_models import ResMLP
from tests.conftest import ROOT, assert_user_error, assert_user_errors, run_cli
from tests.openlth_layout import LeNet, write_level

USER = ["--model", "tests.byo_models:ResMLP", "--model-kwargs", '{"width": 8}']
FILE_USER = ["--model", f"{ROOT / 'tests' / 'byo_models.py'}:ResMLP", "--model-kwargs",
             '{"width": 8}']


def _resmlp(seed: int) -> ResMLP:
    torch.manual_seed(seed)
    return ResMLP(width=8)


def _data(path, shape=(40,), n=64, classes=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    np.savez(path, x=torch.randn(n, *shape, generator=gen).numpy(),
             y=torch.randint(0, classes, (n,), generator=gen).numpy())
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoints of the user's ResMLP as people save them, and a data file."""
    d = tmp_path_factory.mktemp("byo")
    a, b = _resmlp(0), _resmlp(1)
    sd_b = b.state_dict()
    torch.save(a.state_dict(), d / "a.pt")
    torch.save({f"module.{k}": v for k, v in sd_b.items()}, d / "b_dataparallel.pt")
    torch.save({f"_orig_mod.{k}": v for k, v in sd_b.items()}, d / "b_compiled.pth")
    opt = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    b(torch.randn(4, 40)).sum().backward()
    opt.step()
    torch.save({"epoch": 3, "global_step": 30, "pytorch-lightning_version": "2.4.0",
                "state_dict": {f"model.{k}": v for k, v in b.state_dict().items()},
                "optimizer_states": [opt.state_dict()]}, d / "b_lightning.ckpt")
    torch.save({"epoch": 3, "model_state_dict": b.state_dict(),
                "optimizer_state_dict": opt.state_dict()}, d / "b_training.pt")
    for seed, name in ((0, "pruned_a.pt"), (1, "pruned_b.pt")):
        net = _resmlp(seed)
        for layer in (net.inp, net.blocks[0][0], net.out):
            prune.l1_unstructured(layer, "weight", amount=0.5)
        torch.save(net.state_dict(), d / name)
    _data(d / "data.npz")
    return d


def _json(proc):
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_user_model_align_connect_flatness(files, tmp_path):
    """A model from the user's module, checkpoints with wrapper prefixes and a Lightning dict:
    align writes B in A's basis with how to rebuild the model, so connect needs no --model."""
    out = tmp_path / "b_aligned.safetensors"
    s = _json(run_cli("align", files / "a.pt", files / "b_lightning.ckpt", *USER,
                      "--input-shape", "40", "--out", out, "--json", "-"))
    assert s["function_distance"] < 1e-5 and s["l2_after"] < s["l2_before"]
    assert "prefix 'model.' removed" in s["read"][1] and "'state_dict'" in s["read"][1]
    r = _json(run_cli("connect", files / "a.pt", out, "--data", files / "data.npz",
                      "--points", "3", "--json", "-"))
    assert r["model"].endswith("tests.byo_models:ResMLP") or "ResMLP" in r["model"]
    proc = run_cli("connect", files / "a.pt", files / "b_dataparallel.pt", *FILE_USER,
                   "--data", files / "data.npz", "--points", "3", "--quiet",
                   "--plot", tmp_path / "c.svg")
    assert proc.returncode == 0, proc.stderr
    assert "naive" in proc.stdout and "loss barrier" in proc.stdout  # --quiet keeps results
    assert (tmp_path / "c.svg").is_file() and not (tmp_path / "c.png").exists()
    f = _json(run_cli("flatness", files / "b_compiled.pth", *FILE_USER, "--data",
                      files / "data.npz", "--subset", "32", "--top-k", "1", "--json", "-"))
    assert f["n_data"] == 32 and len(f["eigenvalues"]["values"]) == 1
    # a factory parameter num_classes takes the data's (3 here) unless --model-kwargs sets it
    f = _json(run_cli("flatness", files / "b_training.pt", "--model", "tests.byo_models:ResMLP",
                      "--model-kwargs", '{"width": 8, "num_classes": 10}', "--data",
                      "tests.byo_models:tiny_data", "--top-k", "1", "--json", "-"))
    assert f["n_data"] == 16


def test_zoo_model_saved_as_pt(tmp_path):
    """The zoo mlp as a plain state_dict: --model mlp with --input-shape (or the data)."""
    from tickets.models import build_model
    for seed in (0, 1):
        net = build_model("mlp", num_classes=10, input_shape=(40,), seed=seed, widths=[8])
        torch.save(net.state_dict(), tmp_path / f"m{seed}.pt")
    zoo = ["--model", "mlp", "--model-kwargs", '{"widths": [8]}']
    out = tmp_path / "m1_aligned.pt"
    s = _json(run_cli("align", tmp_path / "m0.pt", tmp_path / "m1.pt", *zoo, "--input-shape",
                      "40", "--out", out, "--json", "-"))
    assert s["function_distance"] < 1e-5
    plain = torch.load(out, weights_only=True)
    assert set(plain) == set(torch.load(tmp_path / "m0.pt", weights_only=True))
    data = _data(tmp_path / "d.npz")
    r = _json(run_cli("connect", tmp_path / "m0.pt", out, *zoo, "--data", data, "--points",
                      "3", "--align", "weight", "--json", "-"))
    assert r["aligned"]["loss_barrier"] == pytest.approx(r["naive"]["loss_barrier"], abs=1e-4)


def test_pruned_masks_overlap_and_flatness(files):
    """torch.nn.utils.prune state: weights = orig * mask, the mask used by flatness and overlap."""
    f = _json(run_cli("flatness", files / "pruned_a.pt", *USER, "--data", files / "data.npz",
                      "--subset", "32", "--top-k", "1", "--json", "-"))
    assert f["mask"] == "pruning state of the checkpoint"
    o = _json(run_cli("overlap", "--masks", files / "pruned_a.pt", files / "pruned_b.pt",
                      "--weights", files / "pruned_a.pt", files / "pruned_b.pt", *USER,
                      "--input-shape", "40", "--align", "weight", "--json", "-"))
    t = o["table"][0]
    assert t["density"] < 1 and 0 <= t["jaccard_raw"] <= 1 and t["jaccard_aligned"] is not None
    raw = _json(run_cli("overlap", "--masks", files / "pruned_a.pt", files / "pruned_b.pt",
                        "--json", "-"))
    assert raw["table"][0]["jaccard_raw"] == pytest.approx(t["jaccard_raw"])


def _openlth_tree(root, seeds=(1, 2)):
    for rep in seeds:
        torch.manual_seed(rep)
        net = LeNet([8, 4])
        write_level(root, rep, 0, net, model_name="mnist_lenet_8_4")
        gen = torch.Generator().manual_seed(rep)
        mask = {k: (torch.rand(v.shape, generator=gen) > 0.5).int()
                for k, v in net.state_dict().items() if k.endswith("weight")}
        write_level(root, rep, 1, net, mask=mask)
        for level, acc in ((0, 0.9), (1, 0.8 + 0.01 * rep)):
            (root / f"replicate_{rep}" / f"level_{level}" / "main" / "logger").write_text(
                f"test_accuracy,0,0.1\ntest_loss,0,2.3\ntest_accuracy,100,{acc}\n")
    return root


def test_report_reads_an_openlth_tree(tmp_path):
    """The report on an OpenLTH run: its replicates are the seeds; the accuracies come from
    OpenLTH's logger; analyses that need the training data skip with a reason."""
    root = _openlth_tree(tmp_path / "lottery")
    out = tmp_path / "report"
    proc = run_cli("report", root, "--out", out, "--quick", "--only", "sparsity", "flatness",
                   "--quiet", "--json", "-")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert (out / "report.html").is_file() and "sparsity" in res["analyses"]
    curve = res["analyses"]["sparsity"]["curves"]["ticket"]
    assert [r["level"] for r in curve] == [0, 1]
    assert curve[1]["test_acc"] == pytest.approx([0.81, 0.82])
    assert any(s["analysis"] == "flatness" for s in res["skipped"])
    assert (root / "replicate_1" / "level_1" / "main" / "mask.pth").is_file()
    (root / "replicate_2" / "level_1" / "main" / "logger").unlink()
    proc = run_cli("report", root, "--out", tmp_path / "no_logger", "--quick", "--only",
                   "sparsity", "--quiet", "--json", "-")
    assert proc.returncode == 0, proc.stderr
    skipped = {s["analysis"]: s["reason"] for s in json.loads(proc.stdout)["skipped"]}
    assert "records no test accuracy at level 1" in skipped["sparsity"]


def test_openlth_tree_overlap_and_transfer_into_user_run(tmp_path):
    """An OpenLTH run tree as OpenLTH writes it: overlap of its replicates, and a replicate's
    ticket moved into a toolkit run of the same architecture trained on a data file."""
    root = _openlth_tree(tmp_path / "lottery")
    o = _json(run_cli("overlap", root, "--level", "1", "--align", "weight", "--json", "-"))
    assert len(o["runs"]) == 2 and o["table"][0]["jaccard_aligned"] is not None
    data = _data(tmp_path / "x784.npz", shape=(1, 28, 28), n=48)
    run_b = tmp_path / "run_b"
    proc = run_cli("imp", "--model", "mlp", "--model-kwargs", '{"widths": [8, 4]}', "--data",
                   data, "--levels", "1", "--iters", "4", "--batch-size", "16", "--out", run_b)
    assert proc.returncode == 0, proc.stderr
    t = _json(run_cli("transfer", "--ticket", root / "replicate_1", "--level", "1", "--to",
                      run_b, "--json", "-"))
    assert [r["mask"] for r in t["rows"]] == ["permuted", "naive", "random", "own"]
    mask = tmp_path / "ticket_mask.pt"
    torch.save({f"{k}_mask": v for k, v in torch.load(
        root / "replicate_2" / "level_1" / "main" / "mask.pth", weights_only=True).items()},
        mask)
    assert_user_error(run_cli("transfer", "--ticket", mask, "--level", "1", "--to", run_b),
                      "--weights")


def test_imp_finds_tickets_in_the_users_model(tmp_path):
    """gauge imp on a model from the user's module: run.json records the source, and the run
    directory rebuilds the model from it."""
    from tickets import build_run_model, load_level
    data = _data(tmp_path / "d.npz", n=48)
    run = tmp_path / "run"
    proc = run_cli("imp", *USER, "--data", data, "--levels", "1", "--iters", "4",
                   "--batch-size", "16", "--out", run)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((run / "run.json").read_text())
    assert meta["model"] == "tests.byo_models:ResMLP" and meta["model_kwargs"] == {"width": 8}
    assert meta["dataset"] == str(data.resolve())
    model = build_run_model(run)
    model.load_state_dict(load_level(run, 1).final)
    assert isinstance(model, ResMLP)


def test_bad_input_is_one_line(files, tmp_path):
    a, data = files / "a.pt", files / "data.npz"
    out = tmp_path / "never.safetensors"
    user40 = [*USER, "--input-shape", "40"]
    cases = [
        (["align", a, a, "--model", "nosuch_module_xyz:Net", "--out", out],
         ["a.pt", "nosuch_module_xyz", "does not import"]),
        (["align", a, a, "--model", "tests.byo_models:not_a_model", "--out", out],
         ["not a torch.nn.Module"]),
        (["align", a, a, "--model", "tests.byo_models:ResMLP", "--model-kwargs",
          '{"depth_typo": 3}', "--out", out], ["rejects", "depth_typo"]),
        (["flatness", a, *USER, "--data", _data(tmp_path / "img.npz", shape=(1, 8, 8)),
          "--json", out], ["img.npz", "do not fit", "ResMLP"]),
        (["align", a, a, "--model", "timm:resnet18", "--out", out], ["needs timm"]),
        (["align", a, a, "--model", "torchvision:resnet18", "--out", out],
         ["needs torchvision"]),
        (["align", a, a, *user40, "--out", a], ["is also an input"]),
        (["align", a, a, *user40, "--out", tmp_path / "b.npy"], ["unknown checkpoint format"]),
        (["connect", a, a, *USER, "--data", data, "--plot", tmp_path / "c.gif"],
         ["unknown figure format"]),
        (["overlap", "--masks", files / "pruned_a.pt", _mask_for_other(tmp_path)],
         ["masks", "different architectures"]),
        (["overlap", "--masks", _mask_for_other(tmp_path), files / "pruned_b.pt", "--weights",
          a, a, *user40], ["other_mask.pt", "not a parameter"]),
        (["align", _no_fit(tmp_path), a, *user40, "--out", out],
         ["wrapper.pt", "no state_dict in it fits"]),
        (["align", _hf_without_weights(tmp_path), a, "--out", out], ["hf_empty"]),
    ]
    assert_user_errors(cases)
    assert not out.exists() and not (tmp_path / "b.npy").exists()


def _mask_for_other(tmp_path):
    path = tmp_path / "other_mask.pt"
    torch.save({"conv9.weight_mask": torch.ones(3, 3)}, path)
    return path


def _no_fit(tmp_path):
    path = tmp_path / "wrapper.pt"
    torch.save({"epoch": 1, "model": {"fc.weight": torch.zeros(2, 2)},
                "ema": {"other.weight": torch.zeros(3)}}, path)
    return path


def _hf_without_weights(tmp_path):
    from tests.hf_models import save, tiny_bert
    path = save(tiny_bert(), tmp_path / "hf_empty")
    for f in path.iterdir():
        if f.name != "config.json":
            f.unlink()
    return path


def test_outputs_follow_the_umask(files, tmp_path):
    old = os.umask(0o027)
    try:
        proc = run_cli("align", files / "a.pt", files / "b_compiled.pth", *USER,
                       "--input-shape", "40", "--out", tmp_path / "x.safetensors",
                       "--json", tmp_path / "x.json")
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stderr
    for name in ("x.safetensors", "x.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640


def _tokens(path, n=16, length=6, vocab=50, **extra):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (n, length), generator=gen)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[::2, -2:] = 0  # padded rows: their labels are skipped
    np.savez(path, input_ids=ids.numpy(), attention_mask=mask.numpy(),
             **{k: v.numpy() for k, v in extra.items()})
    return path


def test_language_models_on_token_files(tmp_path):
    """A causal LM's next-token loss comes from the input ids when the file has no labels
    (through the Hessian, which needs the eager attention); a sequence classifier reads one
    label per row."""
    from tests.hf_models import save, tiny_bert, tiny_gpt2
    gpt = save(tiny_gpt2(0), tmp_path / "gpt")
    proc = run_cli("flatness", gpt, "--data", _tokens(tmp_path / "tokens.npz"), "--subset", 8,
                   "--top-k", 1, "--json", tmp_path / "f.json")
    assert proc.returncode == 0, proc.stderr
    flat = json.loads((tmp_path / "f.json").read_text())
    assert flat["n_data"] == 8 and flat["loss"] > 1.0  # about log(50) for a random model

    a, b = save(tiny_bert(0), tmp_path / "bert_a"), save(tiny_bert(1), tmp_path / "bert_b")
    labelled = _tokens(tmp_path / "cls.npz", vocab=40, labels=torch.arange(16) % 3)
    proc = run_cli("connect", a, b, "--data", labelled, "--points", 3, "--json",
                   tmp_path / "c.json")
    assert proc.returncode == 0, proc.stderr
    assert np.isfinite(json.loads((tmp_path / "c.json").read_text())["naive"]["loss"]).all()


def test_token_data_that_does_not_fit_the_model(tmp_path):
    from analyses.common import UsageError, check_data_fits
    from tests.hf_models import tiny_bert, tiny_gpt2
    from tickets.data import load_data_file
    too_many = load_data_file(_tokens(tmp_path / "cls5.npz", vocab=40,
                                      labels=torch.arange(16) % 5))
    with pytest.raises(UsageError, match="cls5.npz has 5 classes, the model bert gives 3"):
        check_data_fits(tiny_bert(), too_many, data_name="cls5.npz", model_name="bert")
    long_vocab = load_data_file(_tokens(tmp_path / "v.npz", vocab=5000))
    with pytest.raises(UsageError, match="v.npz: inputs of shape \\(6,\\) do not fit the model gpt"):
        check_data_fits(tiny_gpt2(), long_vocab, data_name="v.npz", model_name="gpt")


@pytest.mark.parametrize("source", ["torchvision:squeezenet1_1", "timm:resnet10t"])
def test_library_architectures_align_and_connect(source, tmp_path):
    """torchvision and timm architectures by name, weights from the user's checkpoints (runs
    where the library imports: the CI torch has no matching torchvision build)."""
    lib, name = source.split(":")
    pytest.importorskip(lib, exc_type=ImportError)
    from tickets.sources import resolve_model
    for seed in (0, 1):
        net = resolve_model(source, kwargs={}, num_classes=10, seed=seed)
        torch.save(net.state_dict(), tmp_path / f"{seed}.pt")
    _data(tmp_path / "img.npz", shape=(3, 32, 32), n=32)
    proc = run_cli("align", tmp_path / "0.pt", tmp_path / "1.pt", "--model", source,
                   "--input-shape", "3,32,32", "--out", tmp_path / "1_aligned.safetensors")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("connect", tmp_path / "0.pt", tmp_path / "1_aligned.safetensors", "--data",
                   tmp_path / "img.npz", "--points", 3, "--json", tmp_path / "c.json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads((tmp_path / "c.json").read_text())
    assert res["model"] == source and np.isfinite(res["naive"]["loss"]).all()
