"""quotient_distance: planted permuted + rescaled copies are at distance 0."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gauge import (MismatchError, apply_permutation, apply_rescaling, infer_spec,
                   quotient_distance, random_permutation, random_scales)
from gauge.quotient import best_scales
from tests.gauge_models import inputs, make


def _double(name, seed=0):
    model, shape = make(name, seed)
    return model, infer_spec(model, inputs(shape)), {k: v.double() if v.is_floating_point()
                                                       else v for k, v in
                                                       model.state_dict().items()}


@settings(max_examples=8, deadline=None)
@given(name=st.sampled_from(["mlp", "cnn1d", "resnet20_none"]), seed=st.integers(0, 10_000),
       log_range=st.floats(0.1, 2.0))
def test_permuted_rescaled_copy_is_at_distance_zero(name, seed, log_range):
    _, spec, p = _double(name)
    q = apply_rescaling(spec, random_scales(spec, seed, log_range),
                        apply_permutation(spec, random_permutation(spec, seed + 1), p))
    r = quotient_distance(spec, p, q)
    scale = r.raw
    assert r.quotient <= 1e-9 * scale
    assert r.quotient <= r.canonical_permutation <= r.canonical + 1e-12
    assert r.permutation <= r.raw + 1e-12
    assert r.converged


def test_quotient_is_a_function_of_the_orbits():
    _, spec, p = _double("mlp")
    _, _, q = _double("mlp", seed=1)
    base = quotient_distance(spec, p, q)
    moved_a = apply_rescaling(spec, random_scales(spec, 3), apply_permutation(
        spec, random_permutation(spec, 4), p))
    moved_b = apply_rescaling(spec, random_scales(spec, 5), q)
    again = quotient_distance(spec, moved_a, moved_b)
    assert again.quotient == pytest.approx(base.quotient, rel=1e-6)
    assert base.quotient <= base.canonical_permutation + 1e-12
    h = base.history  # never increases (up to rounding)
    assert all(b <= a * (1 + 1e-12) for a, b in zip(h, h[1:]))


def test_group_element_reproduces_the_distance():
    from gauge import canonicalize_scale
    from gauge.quotient import l2_distance
    _, spec, p = _double("mlp")
    _, _, q = _double("mlp", seed=2)
    r = quotient_distance(spec, p, q)
    cq = canonicalize_scale(spec, q, tol=1e-10)
    gq = apply_rescaling(spec, r.scales, apply_permutation(spec, r.perm, cq))
    assert l2_distance(canonicalize_scale(spec, p, tol=1e-10), gq) == \
        pytest.approx(r.quotient, rel=1e-9)


def test_best_scales_closed_form():
    # one unit, incoming a = 2 b, outgoing a = b / 2: s = 2 matches both exactly
    s = best_scales([2.0], [1.0], [0.5], [1.0])
    assert float(s[0]) == pytest.approx(2.0, rel=1e-12)
    assert float(best_scales([1.0], [0.0], [1.0], [1.0])[0]) == 1.0  # no incoming entries


def test_norm_groups_are_only_permuted():
    _, spec, p = _double("cnn1d_bn")
    assert not spec.rescalable
    q = apply_permutation(spec, random_permutation(spec, 1), p)
    r = quotient_distance(spec, p, q)
    assert r.permutation == 0.0 and r.quotient == 0.0 and r.iterations == 0


def test_mismatch():
    _, spec, p = _double("mlp")
    q = dict(p)
    q.pop("fc1.bias")
    with pytest.raises(MismatchError, match="fc1.bias"):
        quotient_distance(spec, p, q)
