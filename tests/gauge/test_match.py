"""Weight and activation matching: planted permutations, trained networks, bad input."""

from __future__ import annotations

import functools

import pytest
import torch

from gauge import (MatchResult, MismatchError, SpecError, activation_matching, align,
                   apply_permutation, function_distance, infer_spec, invert, random_permutation,
                   weight_matching)
from tests.gauge_models import ZOO, inputs, make


@functools.lru_cache(maxsize=None)
def _setup(name):
    model, shape = make(name)
    return model, infer_spec(model, torch.zeros(2, *shape)), shape


def _recovered(spec, found, planted) -> float:
    inv = invert(planted)
    hits = sum(int((found[g] == inv[g]).sum()) for g in spec.groups)
    return hits / sum(spec.sizes.values())


@pytest.mark.parametrize("name", sorted(ZOO))
def test_weight_matching_recovers_planted_permutation(name):
    model, spec, _ = _setup(name)
    a = model.state_dict()
    planted = random_permutation(spec, 11)
    b = apply_permutation(spec, planted, a)
    res = weight_matching(spec, a, b, seed=0)
    assert isinstance(res, MatchResult) and res.method == "weight"
    assert _recovered(spec, res.perm, planted) == 1.0
    aligned = apply_permutation(spec, res.perm, b)
    assert all(torch.equal(aligned[k], a[k]) for k in a)
    assert res.objective_after >= res.objective_before
    d = res.to_dict()
    assert set(d["per_group"]) == set(spec.groups) and "perm" not in d
    assert len(res.to_dict(include_perm=True)["perm"]) == len(spec.groups)


def _noisy_resnet(width, seed, noise=0.6):
    model = make("resnet20")[0].__class__((3, 8, 8), 10, width=width)
    spec = infer_spec(model, torch.zeros(1, 3, 8, 8))
    gen = torch.Generator().manual_seed(seed)
    a = {k: torch.randn(v.shape, generator=gen) if v.dtype.is_floating_point else v
         for k, v in model.state_dict().items()}
    b = {k: v + noise * torch.randn(v.shape, generator=gen) if v.dtype.is_floating_point else v
         for k, v in a.items()}
    planted = random_permutation(spec, seed + 1)
    return spec, a, apply_permutation(spec, planted, b), planted


@pytest.mark.parametrize("width", [1, 2])
def test_noisy_resnet_recovery_beats_identity_start(width):
    spec, a, b, planted = _noisy_resnet(width, 3)
    res = weight_matching(spec, a, b, seed=0)
    assert _recovered(spec, res.perm, planted) == 1.0
    plain = weight_matching(spec, a, b, seed=0, progressive=False)
    assert res.objective_after >= plain.objective_after - 1e-6 * abs(plain.objective_after)


def test_init_restarts_and_seed():
    model, spec, _ = _setup("mlp")
    a = model.state_dict()
    b = make("mlp", seed=1)[0].state_dict()
    one = weight_matching(spec, a, b, seed=0)
    again = weight_matching(spec, a, b, seed=0)
    assert all(torch.equal(one.perm[g], again.perm[g]) for g in spec.groups)
    more = weight_matching(spec, a, b, seed=0, restarts=3)
    assert more.objective_after >= one.objective_after - 1e-9 and more.restarts == 3
    warm = weight_matching(spec, a, b, init=one.perm)
    assert warm.objective_after >= one.objective_after - 1e-6
    with pytest.raises(SpecError, match="init"):
        weight_matching(spec, a, b, init={"fc1": torch.zeros(16, dtype=torch.long)})


def test_activation_matching_recovers_planted_permutation():
    for name in ("mlp", "cnn1d", "conv2"):
        model, spec, shape = _setup(name)
        a = model.state_dict()
        planted = random_permutation(spec, 4)
        b = apply_permutation(spec, planted, a)
        res = activation_matching(model, spec, a, b, inputs(shape, n=64), batch_size=16)
        assert res.method == "activation"
        inv = invert(planted)
        for g in spec.groups:
            if name == "conv2" and g.startswith("fc"):
                continue  # a tenth of those units are dead on random inputs: any match will do
            assert torch.equal(res.perm[g], inv[g]), (name, g)
            assert res.per_group[g]["corr_after"] == pytest.approx(1.0, abs=1e-4)


def test_activation_matching_skips_heads_but_stays_exact():
    model, spec, shape = _setup("mha_block")
    a = model.state_dict()
    b = apply_permutation(spec, random_permutation(spec, 2), a)
    x = inputs(shape, n=16)
    aligned, res = align(model, spec, a, b, method="activation", inputs=x)
    skipped = {g for g, s in res.per_group.items() if s["skipped"]}
    heads = set(spec.axes["attn.in_proj_weight"][0])  # the q/k and v dims, nested in heads
    assert skipped == heads | {spec.blocks[g][0] for g in heads}
    assert function_distance(model, b, aligned, x) < 1e-5


def test_align_returns_aligned_params_and_bad_inputs():
    model, spec, shape = _setup("cnn1d")
    a = model.state_dict()
    b = make("cnn1d", seed=1)[0].state_dict()
    aligned, res = align(model, spec, a, b)
    x = inputs(shape)
    assert function_distance(model, b, aligned, x) < 1e-5
    dist = lambda p: sum(float((a[k] - p[k]).pow(2).sum()) for k in a
                         if a[k].dtype.is_floating_point)
    assert dist(aligned) < dist(b)
    with pytest.raises(SpecError, match="unknown alignment method"):
        align(model, spec, a, b, method="magic")
    with pytest.raises(SpecError, match="needs the model and inputs"):
        align(model, spec, a, b, method="activation")
    other = make("mlp")[0].state_dict()
    with pytest.raises(MismatchError, match="different architectures"):
        weight_matching(spec, a, other)
    bad = dict(b)
    bad["conv2.weight"] = torch.zeros(3, 3, 3)
    with pytest.raises(MismatchError, match="'conv2.weight' has shape"):
        weight_matching(spec, a, bad)
    mlp_spec = _setup("mlp")[1]
    with pytest.raises(SpecError, match="not covered"):
        weight_matching(mlp_spec, a, b)


@pytest.mark.slow
def test_independently_trained_mlps_align(mnist1d):
    from tickets.models import build_model
    from tickets.train import default_config, train

    cfg = default_config("mlp", "mnist1d").replace(iters=150, epochs=None, eval_every=150)
    runs = []
    for seed in (0, 1):
        model = build_model("mlp", num_classes=10, input_shape=(40,), seed=seed, widths=(32, 32))
        runs.append(train(model, mnist1d, cfg, seed=seed, data_seed=seed).params)
    a, b = runs
    spec = infer_spec(model, torch.zeros(2, 40))
    aligned, res = align(model, spec, a, b)
    dist = lambda p: sum(float((a[k] - p[k]).pow(2).sum()) for k in a) ** 0.5
    assert dist(aligned) < 0.9 * dist(b)
    x = mnist1d.test.tensors[0][:256]
    assert function_distance(model, b, aligned, x) < 1e-5
