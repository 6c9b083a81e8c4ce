"""Model sources: zoo names, the user's factories, optional libraries, Hugging Face folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tickets.errors import CheckpointError, ModelError
from tickets.models import build_model
from tickets.sources import (ModelSource, model_meta, parse_model_kwargs, parse_model_source,
                             resolve_model)
from tickets.store import model_from_meta

HERE = Path(__file__).resolve().parents[1]  # tests/, where the shared model files live


def same_params(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_zoo_name_is_build_model():
    m = resolve_model("mlp", kwargs={"widths": [8]}, num_classes=10, input_shape=(40,), seed=3)
    assert same_params(m, build_model("mlp", num_classes=10, input_shape=(40,), seed=3,
                                      widths=(8,)))
    with pytest.raises(ModelError, match="needs num_classes and input_shape"):
        resolve_model("mlp")


@pytest.mark.parametrize("spec", ["tests.byo_models:ResMLP", "tests.byo_models:resmlp",
                                  str(HERE / "byo_models.py") + ":ResMLP"])
def test_factories_seeded_without_touching_the_global_rng(spec):
    state = torch.get_rng_state()
    a = resolve_model(spec, kwargs={"width": 8}, seed=1)
    b = resolve_model(spec, kwargs={"width": 8}, seed=1)
    c = resolve_model(spec, kwargs={"width": 8}, seed=2)
    assert torch.equal(torch.get_rng_state(), state)
    assert type(a).__name__ == "ResMLP" and a.inp.out_features == 8
    assert same_params(a, b) and not same_params(a, c)


def test_factory_gets_shapes_it_asks_for():
    m = resolve_model("tests.byo_models:shaped", num_classes=3, input_shape=(1, 4, 5))
    assert m.inp.in_features == 20 and m.out.out_features == 3


def test_relative_file_spec_made_absolute(monkeypatch):
    monkeypatch.chdir(HERE.parent)
    src = parse_model_source("tests/byo_models.py:BNCNN")
    assert src == ModelSource("file", str(HERE / "byo_models.py"), "BNCNN")
    assert parse_model_source(src.spec) == src
    assert src.to_dict()["spec"] == src.spec


@pytest.mark.parametrize("spec,kwargs,needle", [
    ("no_such_pkg_xyz:Net", {}, "module 'no_such_pkg_xyz' does not import (ModuleNotFoundError"),
    ("tests.byo_models:Nope", {}, "has no attribute 'Nope'"),
    ("tests.byo_models:not_a_model", {}, "returned a int, not a torch.nn.Module"),
    ("tests.byo_models:ResMLP", {"wdth": 3}, "ResMLP rejects the kwargs ['wdth']"),
    ("tests.byo_models:broken", {}, "raised ValueError: width must be even"),
    ("tests/nope.py:Net", {}, "no such file"),
    ("mlpp", {}, "unknown model 'mlpp'"),
])
def test_factory_errors_are_one_line(spec, kwargs, needle):
    with pytest.raises(ModelError) as err:
        resolve_model(spec, kwargs=kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_file_that_does_not_import(tmp_path):
    (tmp_path / "bad.py").write_text("import torch\ndef f(:\n")
    (tmp_path / "boom.py").write_text("raise RuntimeError('no GPU here')\n")
    with pytest.raises(ModelError, match=r"bad.py does not import \(SyntaxError.*line 2"):
        resolve_model(f"{tmp_path}/bad.py:f")
    with pytest.raises(ModelError, match=r"does not import \(RuntimeError: no GPU here\)"):
        resolve_model(f"{tmp_path}/boom.py:f")


def test_file_imports_its_neighbours(tmp_path):
    (tmp_path / "layers.py").write_text("import torch\nWIDTH = 6\n")
    (tmp_path / "net.py").write_text(
        "import torch\nfrom layers import WIDTH\n"
        "def make():\n    return torch.nn.Linear(WIDTH, 2)\n")
    assert resolve_model(f"{tmp_path}/net.py:make").in_features == 6


@pytest.mark.parametrize("lib", ["torchvision", "timm"])
def test_missing_extra_is_named(lib):
    try:
        __import__(lib)
        pytest.skip(f"{lib} imports here")
    except Exception:
        pass
    with pytest.raises(ModelError, match=rf"pip install 'gauge-tickets\[{lib}\]'"):
        resolve_model(f"{lib}:resnet18", num_classes=10)


def test_library_never_downloads():
    with pytest.raises(ModelError, match="nothing is downloaded"):
        resolve_model("timm:resnet18", kwargs={"pretrained": True})


def test_model_kwargs_json():
    assert parse_model_kwargs('{"width": 8}') == {"width": 8} and parse_model_kwargs(None) == {}
    for bad, needle in [("{width: 8}", "not valid JSON"), ("[1]", "expected a JSON object")]:
        with pytest.raises(ModelError, match=needle):
            parse_model_kwargs(bad)


def test_meta_rebuilds_any_source(tmp_path):
    meta = model_meta(str(HERE / "byo_models.py") + ":BNCNN", kwargs={"channels": 4},
                      num_classes=10, input_shape=(1, 8, 8))
    meta = json.loads(json.dumps(meta))
    a = resolve_model(meta["model"], kwargs=meta["model_kwargs"], seed=5)
    assert same_params(model_from_meta(meta, seed=5), a) and a.conv1.out_channels == 4
    # an explicit source overrides the recorded one, without its kwargs
    assert isinstance(model_from_meta(meta, model="tests.byo_models:ResMLP"),
                      torch.nn.Module)
    with pytest.raises(CheckpointError, match="ck.pt: no model recorded"):
        model_from_meta({}, "ck.pt")
    with pytest.raises(CheckpointError, match="lacks num_classes/input_shape"):
        model_from_meta({"model": "mlp"}, "ck.pt")


# --------------------------------------------------------------------------- Hugging Face

@pytest.fixture(scope="module")
def gpt2_dirs(tmp_path_factory):
    pytest.importorskip("transformers")
    from tests.hf_models import save, tiny_gpt2
    root = tmp_path_factory.mktemp("hf")
    model = tiny_gpt2()
    save(model, root / "single")
    save(model, root / "sharded", max_shard_size="4KB")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text((root / "single" / "config.json").read_text())
    torch.save({k: v for k, v in model.state_dict().items() if k != "lm_head.weight"},
               bin_dir / "pytorch_model.bin")
    return model, root


@pytest.mark.parametrize("kind", ["single", "sharded", "bin"])
def test_hf_folder_offline(gpt2_dirs, kind):
    from tests.hf_models import TOKENS
    model, root = gpt2_dirs
    if kind == "sharded":
        assert len(list((root / kind).glob("model-*.safetensors"))) > 1
    loaded = resolve_model(f"hf:{root / kind}")
    assert type(loaded).__name__ == "GPT2LMHeadModel" and not loaded.training
    with torch.no_grad():
        assert torch.allclose(loaded(TOKENS).logits, model(TOKENS).logits, atol=1e-6)


def test_hf_bert_classifier(tmp_path):
    pytest.importorskip("transformers")
    from tests.hf_models import TOKENS, save, tiny_bert
    model = tiny_bert()
    save(model, tmp_path / "bert")
    loaded = resolve_model(f"hf:{tmp_path / 'bert'}")
    with torch.no_grad():
        assert torch.allclose(loaded(TOKENS).logits, model(TOKENS).logits, atol=1e-6)


def test_hf_errors(gpt2_dirs, tmp_path):
    _, root = gpt2_dirs
    config = json.loads((root / "single" / "config.json").read_text())
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="noweights: Hugging Face directory without weights"):
        resolve_model(f"hf:{tmp_path / 'noweights'}")
    (tmp_path / "remote").mkdir()
    (tmp_path / "remote" / "config.json").write_text(json.dumps(
        config | {"auto_map": {"AutoModel": "modeling_x.XModel"}}))
    with pytest.raises(ModelError, match="remote code is never run"):
        resolve_model(f"hf:{tmp_path / 'remote'}")
    (tmp_path / "custom").mkdir()
    (tmp_path / "custom" / "config.json").write_text(json.dumps(
        config | {"architectures": ["MyOwnLM"]}))
    with pytest.raises(ModelError, match="'MyOwnLM' is not part of transformers"):
        resolve_model(f"hf:{tmp_path / 'custom'}")
    with pytest.raises(ModelError, match="write hf:"):
        parse_model_source(str(root / "single"))
    with pytest.raises(ModelError, match="takes no kwargs"):
        resolve_model(f"hf:{root / 'single'}", kwargs={"n_layer": 2})


def test_hf_meta_rebuilds(gpt2_dirs):
    _, root = gpt2_dirs
    meta = model_meta(f"hf:{root / 'single'}")
    assert meta["model"] == f"hf:{(root / 'single').resolve()}"
    assert type(model_from_meta(meta)).__name__ == "GPT2LMHeadModel"
