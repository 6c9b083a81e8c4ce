"""Consensus tickets: keep counts in one basis against Poisson-binomial chance."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gauge import MismatchError, consensus, poisson_binomial


def _mask(seed, shapes=((6, 5), (4, 6)), density=0.4):
    gen = torch.Generator().manual_seed(seed)
    return {f"l{i}.weight": torch.rand(s, generator=gen) < density for i, s in enumerate(shapes)}


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 6), density=st.floats(0.05, 0.95))
def test_consensus_of_identical_masks_is_the_mask(seed, n, density):
    m = _mask(seed, density=density)
    c = consensus([m] * n)
    for k in range(1, n + 1):
        for name, v in c.mask(k).items():
            assert torch.equal(v, m[name])
    kept = sum(int(v.sum()) for v in m.values())
    size = sum(v.numel() for v in m.values())
    assert c.overall.observed[n] == kept and c.overall.observed[0] == size - kept
    assert sum(c.overall.observed[1:n]) == 0
    assert c.density(n) == pytest.approx(kept / size)


def test_chance_is_binomial_for_equal_densities():
    pmf = poisson_binomial([0.3] * 4)
    for k in range(5):
        assert pmf[k] == pytest.approx(math.comb(4, k) * 0.3 ** k * 0.7 ** (4 - k), abs=1e-15)
    assert poisson_binomial([0.2, 0.5]) == pytest.approx([0.4, 0.5, 0.1])


def test_histograms_and_expectations_add_up():
    masks = [_mask(s) for s in range(5)]
    c = consensus(masks)
    assert sum(c.overall.observed) == c.overall.size
    assert sum(c.overall.expected) == pytest.approx(c.overall.size)
    for name, layer in c.per_layer.items():
        assert sum(layer.observed) == layer.size == masks[0][name].numel()
        d = [float(m[name].float().mean()) for m in masks]
        assert layer.densities == pytest.approx(d)
        # the expected number of survivors per mask is preserved
        assert sum(k * e for k, e in enumerate(layer.expected)) == pytest.approx(
            sum(d) * layer.size)
    assert c.density(1) >= c.density(3) >= c.density(5)
    d = c.to_dict()
    assert d["n"] == 5 and set(d["per_layer"]) == set(masks[0])


def test_bad_masks():
    a = _mask(0)
    with pytest.raises(MismatchError, match="at least two"):
        consensus([a])
    b = dict(a)
    b["l1.weight"] = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(MismatchError, match="l1.weight"):
        consensus([a, b])
    with pytest.raises(MismatchError, match="threshold"):
        consensus([a, a]).mask(3)
