"""gauge.connect: interpolation, barriers, BN reset / REPAIR, planted permutations."""

from __future__ import annotations

import copy

import pytest
import torch

from gauge.connect import barriers, interpolate, linear_path
from gauge.errors import ConnectError, GaugeError, MismatchError


def _small_data(mnist1d, n_train=600, n_test=300):
    x, y = mnist1d.train.tensors
    xt, yt = mnist1d.test.tensors
    return {"train": (x[:n_train], y[:n_train]), "test": (xt[:n_test], yt[:n_test])}


@pytest.fixture(scope="module")
def trained_mlp(mnist1d):
    from tickets.models import build_model
    from tickets.train import TrainConfig, train
    model = build_model("mlp", num_classes=10, input_shape=(40,), seed=0, widths=(32, 16))
    cfg = TrainConfig(optimizer="adam", lr=3e-3, batch_size=100, iters=300)
    res = train(model, mnist1d, cfg, seed=0, data_seed=0)
    return model, res.params


@pytest.fixture(scope="module")
def bn_net():
    from tickets.models import build_model
    m = build_model("cnn1d", num_classes=10, input_shape=(40,), seed=0, channels=4,
                    batchnorm=True)
    return m


def test_interpolate_endpoints_exact_and_inputs_untouched(bn_net):
    from tickets.models import build_model
    pa = bn_net.state_dict()
    pb = build_model("cnn1d", num_classes=10, input_shape=(40,), seed=1, channels=4,
                     batchnorm=True).state_dict()
    pb = {k: (v + 1 if v.is_floating_point() else v + 7) for k, v in pb.items()}
    before = {k: v.clone() for k, v in pa.items()}
    for k, v in interpolate(pa, pb, 0.0).items():
        assert torch.equal(v, pa[k])
    for k, v in interpolate(pa, pb, 1.0).items():
        assert torch.equal(v, pb[k])
    mid = interpolate(pa, pb, 0.25)
    torch.testing.assert_close(mid["conv1.weight"], 0.75 * pa["conv1.weight"] + 0.25 * pb["conv1.weight"])
    # integer buffers come from the nearer endpoint, never a fractional value
    assert mid["bn1.num_batches_tracked"].dtype == torch.long
    assert torch.equal(mid["bn1.num_batches_tracked"], pa["bn1.num_batches_tracked"])
    assert torch.equal(interpolate(pa, pb, 0.75)["bn1.num_batches_tracked"],
                       pb["bn1.num_batches_tracked"])
    for k in pa:
        assert torch.equal(pa[k], before[k])


def test_interpolate_mismatch():
    a = {"w": torch.zeros(3, 2)}
    with pytest.raises(MismatchError, match="only in"):
        interpolate(a, {"v": torch.zeros(3, 2)}, 0.5)
    with pytest.raises(MismatchError, match="shape"):
        interpolate(a, {"w": torch.zeros(2, 3)}, 0.5)
    with pytest.raises(ConnectError):
        interpolate(a, a, float("nan"))


def test_barrier_definitions():
    alphas = [0.0, 0.5, 1.0]
    b = barriers(alphas, loss=[1.0, 3.0, 2.0], error=[0.1, 0.4, 0.3])
    assert b["loss_barrier"] == pytest.approx(3.0 - 1.5)        # Entezari et al. 2022
    assert b["error_barrier"] == pytest.approx(0.4 - 0.2)       # Frankle et al. 2020
    assert b["midpoint_loss"] == pytest.approx(1.5)
    assert b["midpoint_error"] == pytest.approx(0.2)
    # a path better than its endpoints has zero barrier (alpha = 0 is on the grid)
    assert barriers(alphas, [1.0, 0.5, 1.0], [0.2, 0.1, 0.2])["loss_barrier"] == 0.0


@pytest.mark.parametrize("bn", ["none", "reset", "repair"])
def test_barrier_with_itself_is_zero(trained_mlp, mnist1d, bn):
    model, params = trained_mlp
    r = linear_path(model, params, params, _small_data(mnist1d), n_points=5, bn=bn)
    assert r.loss_barrier == pytest.approx(0.0, abs=1e-6)
    assert r.error_barrier == pytest.approx(0.0, abs=1e-9)
    assert r.midpoint_loss == pytest.approx(0.0, abs=1e-6)
    assert len(r.alphas) == 5 and r.alphas[0] == 0.0 and r.alphas[-1] == 1.0


def test_planted_permutation_naive_positive_aligned_zero(trained_mlp, mnist1d):
    from gauge.infer import infer_spec
    from gauge.symmetry import apply_permutation, invert, random_permutation
    model, params = trained_mlp
    spec = infer_spec(model, torch.zeros(2, 40))
    perm = random_permutation(spec, seed=3)
    permuted = apply_permutation(spec, perm, params)
    data = _small_data(mnist1d)
    naive = linear_path(model, params, permuted, data, n_points=5, bn="none")
    assert naive.loss_barrier > 0.05
    # the endpoints compute the same function: equal loss at both ends
    assert naive.loss[0] == pytest.approx(naive.loss[-1], rel=1e-5)
    aligned = linear_path(model, params, apply_permutation(spec, invert(perm), permuted), data,
                          n_points=5, bn="none")
    assert aligned.loss_barrier == pytest.approx(0.0, abs=1e-6)
    assert aligned.error_barrier == 0.0


def test_weight_matching_recovers_planted_permutation(trained_mlp, mnist1d):
    from gauge.match import weight_matching
    from gauge.infer import infer_spec
    from gauge.symmetry import apply_permutation, random_permutation
    model, params = trained_mlp
    spec = infer_spec(model, torch.zeros(2, 40))
    permuted = apply_permutation(spec, random_permutation(spec, seed=5), params)
    match = weight_matching(spec, params, permuted, seed=0)
    back = apply_permutation(spec, match.perm, permuted)
    r = linear_path(model, params, back, _small_data(mnist1d), n_points=3, bn="none")
    assert r.loss_barrier == pytest.approx(0.0, abs=1e-6)


def test_bn_reset_recomputes_statistics(bn_net, mnist1d):
    """At alpha = 0, 'reset' equals the model with its BN stats re-estimated by hand."""
    data = _small_data(mnist1d, n_train=400, n_test=200)
    params = bn_net.state_dict()  # init: running stats 0/1, far from the data's
    r = linear_path(bn_net, params, params, data, alphas=[0.0, 1.0], bn="reset", batch_size=100)
    ref = copy.deepcopy(bn_net)
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.reset_running_stats()
            m.momentum = None
    ref.train()
    with torch.no_grad():
        for i in range(0, 400, 100):
            ref(data["train"][0][i:i + 100])
    ref.eval()
    with torch.no_grad():
        out = ref(data["test"][0])
    loss = float(torch.nn.functional.cross_entropy(out, data["test"][1]))
    assert r.loss[0] == pytest.approx(loss, rel=1e-5)
    none = linear_path(bn_net, params, params, data, alphas=[0.0, 1.0], bn="none")
    assert none.loss[0] != pytest.approx(loss, rel=1e-3)
    assert r.n_stats == 2 and r.n_eval == 2
    # the caller's model and params are untouched
    assert torch.equal(bn_net.state_dict()["bn1.running_mean"], params["bn1.running_mean"])
    assert bn_net.bn1.momentum == 0.1


def test_repair_endpoint_preserves_function(trained_mlp, mnist1d):
    """REPAIR at an endpoint rescales each channel to its own statistics: ~ the same net."""
    model, params = trained_mlp
    data = _small_data(mnist1d)
    plain = linear_path(model, params, params, data, n_points=2, bn="none")
    rep = linear_path(model, params, params, data, alphas=[0.0, 1.0], bn="repair")
    assert rep.loss[0] == pytest.approx(plain.loss[0], rel=0.05)
    assert rep.n_stats == 2 + 2  # two endpoint passes, then one per alpha


def test_grid_and_train_metrics(trained_mlp, mnist1d):
    model, params = trained_mlp
    r = linear_path(model, params, params, _small_data(mnist1d), n_points=4, bn="none",
                    train_metrics=True)
    assert 0.5 in r.alphas and len(r.alphas) == 5   # the midpoint is always measured
    assert r.train_loss is not None and r.train_loss_barrier == pytest.approx(0, abs=1e-6)
    d = r.to_dict()
    assert d["alphas"][0] == 0.0 and isinstance(d["loss"], list)


def test_bad_inputs(trained_mlp, bn_net, mnist1d):
    model, params = trained_mlp
    data = _small_data(mnist1d)
    with pytest.raises(ConnectError, match="n_points"):
        linear_path(model, params, params, data, n_points=1)
    with pytest.raises(ConnectError, match="2 distinct"):
        linear_path(model, params, params, data, alphas=[0.0])
    with pytest.raises(ConnectError, match="bn must be"):
        linear_path(model, params, params, data, bn="zap")
    with pytest.raises(ConnectError, match="no training data"):
        linear_path(bn_net, bn_net.state_dict(), bn_net.state_dict(), {"test": data["test"]},
                    bn="reset")
    # a model without BN needs no training data for reset
    linear_path(model, params, params, {"test": data["test"]}, n_points=2, bn="reset")
    other = {k: v for k, v in bn_net.state_dict().items()}
    with pytest.raises(MismatchError):
        linear_path(model, params, other, data)
    assert issubclass(ConnectError, GaugeError)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), alpha=st.floats(0.0, 1.0))
def test_interpolation_commutes_with_permutation(trained_mlp, seed, alpha):
    """Gauge covariance: permuting both endpoints permutes every point of the path, so
    the path between P(A) and P(B) computes the same functions as the one between A and B."""
    from gauge.infer import infer_spec
    from gauge.symmetry import apply_permutation, random_permutation
    model, params = trained_mlp
    spec = infer_spec(model, torch.zeros(2, 40))
    other = {k: v.flip(0) if v.dim() == 1 else v * 0.5 for k, v in params.items()}
    perm = random_permutation(spec, seed=seed)
    lhs = interpolate(apply_permutation(spec, perm, params), apply_permutation(spec, perm, other),
                      alpha)
    rhs = apply_permutation(spec, perm, interpolate(params, other, alpha))
    for k in lhs:
        torch.testing.assert_close(lhs[k], rhs[k])
