"""align_many: N permuted copies come back to one basis; cycle consistency; MergeMany/C2M3."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gauge import (MismatchError, SpecError, align_many, apply_permutation, compose,
                   cycle_consistency, function_distance, infer_spec, invert,
                   pairwise_matchings, random_permutation)
from tests.gauge_models import inputs, make

METHODS = ["reference", "mergemany", "c2m3"]


def _copies(name, seeds):
    model, shape = make(name)
    spec = infer_spec(model, inputs(shape))
    p0 = model.state_dict()
    return model, shape, spec, [apply_permutation(spec, random_permutation(spec, s), p0)
                                for s in seeds]


@settings(max_examples=6, deadline=None)
@given(name=st.sampled_from(["mlp", "cnn1d", "cnn1d_bn"]), method=st.sampled_from(METHODS),
       seeds=st.lists(st.integers(0, 10_000), min_size=2, max_size=4, unique=True))
def test_permuted_copies_align_back(name, method, seeds):
    model, shape, spec, nets = _copies(name, seeds)
    result = align_many(spec, nets, method=method)
    aligned = result.aligned(spec, nets)
    for a in aligned:  # one basis: every copy is the reference, bit for bit
        for k, v in aligned[0].items():
            assert torch.equal(a[k], v), k
    x = inputs(shape, n=8)
    for a, b in zip(aligned, nets):
        assert function_distance(model, a, b, x) < 1e-5
    pw = pairwise_matchings(spec, nets)
    cc = cycle_consistency(spec, pw, len(nets), result)
    assert cc.cycle_error == 0.0 and cc.disagreement == 0.0
    assert cc.synchronised_cycle_error == 0.0
    assert all(torch.equal(p, torch.arange(len(p))) for p in result.perms[0].values())


@pytest.mark.parametrize("method", METHODS)
def test_synchronised_maps_compose_on_random_networks(method):
    model, shape = make("mlp")
    spec = infer_spec(model, inputs(shape))
    nets = [make("mlp", seed=s)[0].state_dict() for s in range(4)]
    result = align_many(spec, nets, method=method, reference=1)
    assert all(torch.equal(p, torch.arange(len(p))) for p in result.perms[1].values())
    q = result.pairwise
    for i, j, k in [(0, 1, 2), (1, 2, 3), (0, 2, 3)]:
        for g in spec.groups:
            assert torch.equal(compose(q(i, j), q(j, k))[g], q(i, k)[g])
    cc = cycle_consistency(spec, pairwise_matchings(spec, nets), 4, result)
    assert cc.synchronised_cycle_error == 0.0
    assert 0.0 < cc.cycle_error <= 1.0  # independent random inits: pairwise maps do not compose
    assert set(cc.per_group) == set(spec.groups)


def test_synchronising_raises_the_objective():
    model, shape = make("cnn1d")
    spec = infer_spec(model, inputs(shape))
    nets = [make("cnn1d", seed=s)[0].state_dict() for s in range(4)]
    ref = align_many(spec, nets, method="reference").objective
    assert align_many(spec, nets, method="mergemany").objective >= ref
    assert align_many(spec, nets, method="c2m3").objective >= ref


def test_cycle_error_of_a_planted_inconsistent_triple():
    model, shape = make("mlp")
    spec = infer_spec(model, inputs(shape))
    p = random_permutation(spec, 1)
    ident = {g: torch.arange(n) for g, n in spec.sizes.items()}
    pw = {(0, 1): ident, (1, 2): ident, (0, 2): p}  # Q01 Q12 = id != Q02
    cc = cycle_consistency(spec, pw, 3)
    for g, row in cc.per_group.items():
        moved = int((p[g] != torch.arange(spec.sizes[g])).sum())
        assert row["cycle_error"] == moved / spec.sizes[g]
    assert cc.disagreement is None
    assert cycle_consistency(spec, {(0, 1): p, (1, 2): invert(p), (0, 2): ident}, 3
                             ).cycle_error == 0.0


def test_bad_input():
    model, shape = make("mlp")
    spec = infer_spec(model, inputs(shape))
    p = model.state_dict()
    with pytest.raises(MismatchError, match="at least two"):
        align_many(spec, [p])
    other = dict(p)
    other["fc1.weight"] = torch.zeros(3, 3)
    with pytest.raises(MismatchError, match="fc1.weight"):
        align_many(spec, [p, p, other])
    with pytest.raises(SpecError, match="method"):
        align_many(spec, [p, p], method="nope")
    with pytest.raises(SpecError, match="reference"):
        align_many(spec, [p, p], reference=5)
