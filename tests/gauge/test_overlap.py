"""gauge.overlap: Jaccard/overlap, chance level vs Monte Carlo, permuted tickets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gauge.errors import MismatchError
from gauge.overlap import (aligned_mask_overlap, chance_jaccard, hypergeom_moments,
                           mask_overlap, overlap_matrix)


def _random_mask(shape, keep, gen):
    n = math.prod(shape)
    flat = torch.zeros(n, dtype=torch.bool)
    flat[torch.randperm(n, generator=gen)[:keep]] = True
    return flat.view(shape)


def test_counts_and_definitions():
    a = {"w": torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.bool)}
    b = {"w": torch.tensor([0, 1, 1, 1, 1, 0], dtype=torch.bool)}
    r = mask_overlap(a, b)
    lay = r.per_layer["w"]
    assert (lay.intersection, lay.union, lay.kept_a, lay.kept_b) == (2, 5, 3, 4)
    assert lay.jaccard == pytest.approx(2 / 5)
    assert lay.overlap == pytest.approx(2 / 3)
    assert lay.chance_intersection == pytest.approx(3 * 4 / 6)
    assert r.overall.jaccard == pytest.approx(2 / 5)
    d = r.to_dict()
    assert d["per_layer"]["w"]["density_a"] == pytest.approx(0.5)


def test_self_overlap_is_one_and_full_layer_has_no_z():
    gen = torch.Generator().manual_seed(0)
    m = {"a": _random_mask((20, 10), 40, gen), "out": torch.ones(10, 5, dtype=torch.bool)}
    r = mask_overlap(m, m)
    assert r.jaccard == 1.0 and r.per_layer["a"].overlap == 1.0
    assert r.per_layer["out"].z is None            # a full layer has zero variance
    assert r.per_layer["out"].chance_jaccard == 1.0
    assert r.z is not None and r.z > 5
    assert r.to_dict()["per_layer"]["out"]["z"] is None


@pytest.mark.parametrize("n,ka,kb", [(200, 40, 40), (500, 25, 300), (60, 50, 55), (1000, 5, 7)])
def test_chance_level_matches_monte_carlo(n, ka, kb):
    gen = torch.Generator().manual_seed(n + ka + kb)
    trials = 4000
    jac, inter = np.empty(trials), np.empty(trials)
    for t in range(trials):
        a = _random_mask((n,), ka, gen)
        b = _random_mask((n,), kb, gen)
        i = int((a & b).sum())
        inter[t], jac[t] = i, i / (ka + kb - i)
    mean, var = hypergeom_moments(n, ka, kb)
    assert inter.mean() == pytest.approx(mean, abs=4 * math.sqrt(var / trials))
    assert inter.var() == pytest.approx(var, rel=0.1)
    exact = chance_jaccard(n, ka, kb)
    assert jac.mean() == pytest.approx(exact, abs=4 * jac.std() / math.sqrt(trials) + 1e-9)
    # the large-n formula d_a d_b / (d_a + d_b - d_a d_b) is close to the exact expectation
    assert chance_jaccard(n, ka, kb, exact=False) == pytest.approx(exact, rel=0.1, abs=2e-3)
    # z-scores of random pairs are standardised: mean ~0, std ~1
    z = (inter - mean) / math.sqrt(var)
    assert abs(z.mean()) < 0.1 and z.std() == pytest.approx(1.0, rel=0.1)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 60), st.data())
def test_overlap_bounds_and_symmetry(n, data):
    ka = data.draw(st.integers(1, n))
    kb = data.draw(st.integers(1, n))
    seed = data.draw(st.integers(0, 2 ** 16))
    gen = torch.Generator().manual_seed(seed)
    a, b = {"w": _random_mask((n,), ka, gen)}, {"w": _random_mask((n,), kb, gen)}
    r, s = mask_overlap(a, b), mask_overlap(b, a)
    assert 0.0 <= r.jaccard <= r.overall.overlap <= 1.0
    assert r.jaccard == s.jaccard and r.overall.overlap == s.overall.overlap
    assert 0.0 <= r.chance_jaccard <= 1.0
    assert r.chance_jaccard == pytest.approx(s.chance_jaccard)


def test_mismatched_masks():
    a = {"fc1.weight": torch.ones(3, 4, dtype=torch.bool)}
    with pytest.raises(MismatchError, match="different models"):
        mask_overlap(a, {"conv1.weight": torch.ones(3, 4, dtype=torch.bool)})
    with pytest.raises(MismatchError, match="shape"):
        mask_overlap(a, {"fc1.weight": torch.ones(4, 3, dtype=torch.bool)})
    with pytest.raises(MismatchError):
        mask_overlap({}, {})


@pytest.fixture(scope="module")
def ticket():
    """A magnitude-pruned MLP mask (20% of each layer kept) and the MLP's spec."""
    from gauge.infer import infer_spec
    from tickets.models import build_model
    from tickets.prune import magnitude_layerwise, prunable, full_mask
    model = build_model("mlp", num_classes=10, input_shape=(40,), seed=0, widths=(64, 32))
    params = model.state_dict()
    mask = full_mask(params, prunable(model))
    mask = magnitude_layerwise(params, mask, 0.8)
    return infer_spec(model, torch.zeros(2, 40)), mask


def test_ticket_vs_permuted_copy_raw_chance_aligned_one(ticket):
    from gauge.symmetry import apply_permutation, invert, random_permutation
    spec, mask = ticket
    perm = random_permutation(spec, seed=1)
    permuted = apply_permutation(spec, perm, mask)
    raw = mask_overlap(mask, permuted)
    assert raw.jaccard == pytest.approx(raw.chance_jaccard, abs=0.03)
    assert abs(raw.z) < 4
    aligned = aligned_mask_overlap(spec, invert(perm), mask, permuted)
    assert aligned.aligned and aligned.jaccard == 1.0
    assert all(l.jaccard == 1.0 for l in aligned.per_layer.values())


def test_overlap_matrix_common_basis_and_pairwise(ticket):
    from gauge.symmetry import apply_permutation, invert, random_permutation
    spec, mask = ticket
    perms = [random_permutation(spec, seed=s) for s in (1, 2)]
    masks = [mask] + [apply_permutation(spec, p, mask) for p in perms]
    raw_only = overlap_matrix(masks)
    assert raw_only.aligned is None and raw_only.raw[0][0] == 1.0
    common = overlap_matrix(masks, perms=[None] + [invert(p) for p in perms], spec=spec)
    assert all(v == 1.0 for row in common.aligned for v in row)
    assert max(common.off_diagonal("raw")) < 0.3
    # pairwise: (0, j) maps j into 0's basis; the rest by inversion / composition
    pairwise = {(0, 1): invert(perms[0]), (0, 2): invert(perms[1])}
    from gauge.symmetry import compose
    pairwise[(1, 2)] = compose(perms[0], invert(perms[1]))
    pw = overlap_matrix({"a": masks[0], "b": masks[1], "c": masks[2]}, perms=pairwise, spec=spec)
    assert pw.names == ("a", "b", "c")
    assert all(v == 1.0 for row in pw.aligned for v in row)
    assert pw.to_dict()["aligned"][2][1] == 1.0
    with pytest.raises(MismatchError):
        overlap_matrix([mask])
    with pytest.raises(MismatchError, match="spec"):
        overlap_matrix(masks, perms=[None, None, None])
