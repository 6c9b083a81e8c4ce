"""gauge.batches: every data-taking function gives the same numbers on every data form; model
outputs that are tuples, dicts or Hugging Face ModelOutputs; a causal LM's loss from its labels;
data that does not fit the model fails with one clean line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset, TensorDataset

import gauge as g
from gauge.batches import as_data
from gauge.errors import DataError, GaugeError
from gauge.objective import mean_loss
from tickets.train import TrainConfig, evaluate, train

N, D, C, B = 48, 6, 3, 16  # examples, input size, classes, stream batch size


class MLP(nn.Module):
    def __init__(self, hidden=8):
        super().__init__()
        self.fc1 = nn.Linear(D, hidden)
        self.fc2 = nn.Linear(hidden, C)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class TupleMLP(MLP):
    """Returns ``(logits, hidden)``, as many research models do."""

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.fc2(h), h


class DictRows(Dataset):
    """A user dataset returning dict examples."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": int(self.y[i])}


class TupleRows(DictRows):
    def __getitem__(self, i):
        return self.x[i], self.y[i]


@pytest.fixture(scope="module")
def xy():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _net(seed, cls=MLP):
    torch.manual_seed(seed)
    return cls()


def forms(x, y) -> dict:
    """The same examples in every accepted form (streams in batches of ``B``)."""
    junk = TensorDataset(torch.randn(5, D), torch.zeros(5, dtype=torch.long))
    return {
        "pair": (x, y),
        "tensor_dataset": TensorDataset(x, y),
        "subset": Subset(ConcatDataset([junk, TensorDataset(x, y)]), range(5, 5 + N)),
        "concat": ConcatDataset([TensorDataset(x[:20], y[:20]), TensorDataset(x[20:], y[20:])]),
        "tuple_dataset": TupleRows(x, y),
        "dict_dataset": DictRows(x, y),
        "columns": {"x": x, "y": y},
        "loader": DataLoader(TensorDataset(x, y), batch_size=B),
        "dict_loader": DataLoader(DictRows(x, y), batch_size=B),
        "batch_list": [(x[i:i + B], y[i:i + B]) for i in range(0, N, B)],
        "dict_batch_list": [{"x": x[i:i + B], "y": y[i:i + B]} for i in range(0, N, B)],
    }


FORMS = list(forms(torch.zeros(N, D), torch.zeros(N, dtype=torch.long)))
STREAMS = {"loader", "dict_loader", "batch_list", "dict_batch_list"}


def _close(a, b, rel=1e-5):
    np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float),
                               rtol=rel, atol=1e-7)


@pytest.mark.parametrize("form", FORMS)
def test_flatness_measures_agree_on_every_form(form, xy):
    x, y = xy
    model = _net(0)
    p = _params(model)
    data = forms(x, y)[form]
    ref = forms(x, y)["pair"]
    # map-style data is one batch (batch_size=None); streams keep their batches of B
    _close(g.loss_at(model, p, data), g.loss_at(model, p, ref))
    _close(g.hessian_eigenvalues(model, p, data, k=2).values,
           g.hessian_eigenvalues(model, p, ref, k=2).values, rel=1e-4)
    _close(g.hessian_trace(model, p, data, n_samples=6).estimate,
           g.hessian_trace(model, p, ref, n_samples=6).estimate, rel=1e-4)
    _close(g.spectral_density(model, p, data, n_runs=1, lanczos_steps=4, n_grid=5).nodes,
           g.spectral_density(model, p, ref, n_runs=1, lanczos_steps=4, n_grid=5).nodes,
           rel=1e-4)
    _close(g.sharpness(model, p, data, rho=0.05, steps=2, batches=3).value,
           g.sharpness(model, p, ref, rho=0.05, steps=2, batches=3).value, rel=1e-4)
    _close(g.epsilon_sharpness(model, p, data, steps=2).value,
           g.epsilon_sharpness(model, p, ref, steps=2).value, rel=1e-4)
    _close(g.landscape_1d(model, p, data, alphas=[-0.5, 0.5]).losses,
           g.landscape_1d(model, p, ref, alphas=[-0.5, 0.5]).losses)
    _close(g.landscape_2d(model, p, data, alphas=[0.0, 0.5]).losses,
           g.landscape_2d(model, p, ref, alphas=[0.0, 0.5]).losses)
    fixed = g.hessian_eigenvalues(model, p, data, k=1, gauge_fixed=True)
    _close(fixed.gauge_fixed.values,
           g.hessian_eigenvalues(model, p, ref, k=1, gauge_fixed=True).gauge_fixed.values,
           rel=1e-4)


@pytest.mark.parametrize("form", FORMS)
def test_paths_matching_and_evaluation_agree_on_every_form(form, xy):
    x, y = xy
    model, other = _net(0), _net(1)
    pa, pb = _params(model), _params(other)
    data, ref = forms(x, y)[form], forms(x, y)["pair"]
    # batches of B everywhere: REPAIR normalises each batch by its own statistics
    kw = {"n_points": 3, "bn": "repair", "batch_size": B, "train_metrics": True}
    path = g.linear_path(model, pa, pb, data, **kw)
    want = g.linear_path(model, pa, pb, ref, **kw)
    assert path.split == "data"
    _close(path.loss, want.loss)
    _close(path.error, want.error)
    _close(path.train_loss, want.train_loss)
    split = g.linear_path(model, pa, pb, {"train": data, "test": data}, **kw)
    assert split.split == "test"
    _close(split.loss, want.loss)

    spec = g.PermutationSpec.from_axes({"fc1.weight": ("P", None), "fc1.bias": ("P",),
                                        "fc2.weight": (None, "P"), "fc2.bias": (None,)},
                                       params=pa)
    got = g.activation_matching(model, spec, pa, pb, data, batch_size=B)
    ref_match = g.activation_matching(model, spec, pa, pb, x, batch_size=B)
    assert torch.equal(got.perm["P"], ref_match.perm["P"])
    _close(got.objective_after, ref_match.objective_after)

    _close(evaluate(model, data, batch_size=B), evaluate(model, ref, batch_size=B))
    with torch.no_grad():
        _close(mean_loss(model, pa, as_data(data).batches(B), error=True),
               mean_loss(model, pa, as_data(ref).batches(B), error=True))


@pytest.mark.parametrize("form", FORMS)
def test_training_on_every_form(form, xy):
    x, y = xy
    cfg = TrainConfig(optimizer="sgd", lr=0.1, batch_size=B, iters=6, eval_every=3)
    data = forms(x, y)[form]
    res = train(_net(0), {"train": data, "test": data}, cfg, seed=0, data_seed=3)
    assert res.iters == 6 and len(res.curve) == 2 and np.isfinite(res.test_loss)
    if form in STREAMS:  # a stream keeps its own order: equal to the same batches in a list
        want = train(_net(0), forms(x, y)["batch_list"], cfg, seed=0, data_seed=3)
    else:  # map-style data is shuffled by data_seed: bit-identical to the tensors
        want = train(_net(0), {"train": (x, y), "test": (x, y)}, cfg, seed=0, data_seed=3)
    for k in want.params:
        torch.testing.assert_close(res.params[k], want.params[k], rtol=1e-6, atol=1e-7)
    _close(res.test_loss, want.test_loss)


def test_stream_training_resumes_exactly(xy):
    x, y = xy
    cfg = TrainConfig(optimizer="sgd", lr=0.1, batch_size=B, iters=7)
    stream = forms(x, y)["batch_list"]
    full = train(_net(0), stream, cfg, seed=0, data_seed=0, checkpoints_at=(4,))
    model = _net(0)
    model.load_state_dict(full.checkpoints[4])
    resumed = train(model, stream, cfg, seed=0, data_seed=0, start_iter=4)
    assert all(torch.equal(full.params[k], resumed.params[k]) for k in full.params)


def test_tuple_and_dict_outputs_give_the_logits(xy):
    x, y = xy

    class DictMLP(MLP):
        def forward(self, x):
            return {"logits": super().forward(x), "aux": x.sum()}

    plain, pa, pb = _net(0), _params(_net(0)), _params(_net(1))
    want_path = g.linear_path(plain, pa, pb, (x, y), n_points=3, bn="none")
    want_eig = g.hessian_eigenvalues(plain, pa, (x, y), k=2).values
    for cls in (TupleMLP, DictMLP):
        model = cls()
        path = g.linear_path(model, pa, pb, (x, y), n_points=3, bn="none")
        assert path.loss == want_path.loss and path.error == want_path.error
        _close(g.hessian_eigenvalues(model, pa, (x, y), k=2).values, want_eig, rel=1e-4)
    # logits_fn overrides the rule: here the hidden features (8 classes) of the tuple model
    hidden = g.loss_at(TupleMLP(), pa, (x, y), logits_fn=lambda out: out[1])
    with torch.no_grad():
        h = torch.relu(torch.func.functional_call(plain.fc1, {"weight": pa["fc1.weight"],
                                                             "bias": pa["fc1.bias"]}, (x,)))
    _close(hidden, nn.functional.cross_entropy(h, y))


def test_loss_and_error_functions(xy):
    x, y = xy
    model, pa, pb = _net(0), _params(_net(0)), _params(_net(1))
    onehot = nn.functional.one_hot(y, C).float()
    mse = nn.functional.mse_loss
    never = lambda logits, target: torch.tensor(0.0)  # noqa: E731
    path = g.linear_path(model, pa, pb, (x, onehot), n_points=3, bn="none", loss_fn=mse,
                         error_fn=never)
    with torch.no_grad():
        want = mse(model(x), onehot)
    _close(path.loss[0], want)
    assert path.error == (0.0, 0.0, 0.0)
    cfg = TrainConfig(optimizer="sgd", lr=0.1, batch_size=B, iters=3)
    res = train(model, (x, onehot), cfg, seed=0, data_seed=0, loss_fn=mse, error_fn=never)
    assert res.test_acc == 1.0 and np.isfinite(res.test_loss)


# ----------------------------------------------------------------------------- a causal LM

@pytest.fixture(scope="module")
def gpt2():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    cfg = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16)
    cfg._attn_implementation = "eager"  # fused attention kernels have no double backward
    torch.manual_seed(0)
    a = transformers.GPT2LMHeadModel(cfg).eval()
    torch.manual_seed(1)
    b = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 32, (6, 10), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, :4] = -100  # a padded prefix, ignored as Hugging Face does
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return a, _params(a), _params(b), batch


def test_causal_lm_loss_is_the_models_own(gpt2):
    model, pa, pb, batch = gpt2
    with torch.no_grad():
        own = float(model(**batch).loss)
    _close(g.loss_at(model, pa, batch), own)
    rows = [{k: v[i:i + 3] for k, v in batch.items()} for i in (0, 3)]
    _close(g.loss_at(model, pa, rows), own, rel=0.05)  # per-batch token means, weighted by rows
    path = g.linear_path(model, pa, pb, batch, n_points=3)
    _close(path.loss[0], own)
    assert path.loss[0] != path.loss[-1] and 0 <= min(path.error) <= max(path.error) <= 1
    eig = g.hessian_eigenvalues(model, pa, batch, k=1, max_steps=20, tol=1e-3)
    assert eig.n_params == sum(p.numel() for p in model.parameters()) and eig.values[0] > 0
    # the tied output layer shares the embedding: the gradient reaches both uses
    assert "lm_head.weight" in pa and "lm_head.weight" not in dict(model.named_parameters())


# ----------------------------------------------------------------------------- bad data

def test_data_that_does_not_fit_the_model_is_one_clean_error(xy):
    x, y = xy
    model, p = _net(0), _params(_net(0))
    wrong = (x[:, :5], y)
    for call in (lambda: g.hessian_eigenvalues(model, p, wrong),
                 lambda: g.loss_at(model, p, wrong),
                 lambda: g.linear_path(model, p, p, wrong, n_points=2),
                 lambda: train(model, wrong, TrainConfig(iters=1), seed=0, data_seed=0),
                 lambda: evaluate(model, TensorDataset(*wrong))):
        with pytest.raises(DataError, match="does not fit the model") as e:
            call()
        assert "\n" not in str(e.value) and "mat1 and mat2" in str(e.value)
    with pytest.raises(DataError, match="targets do not fit"):
        g.loss_at(model, p, (x, y + 5))
    with pytest.raises(DataError, match="no targets"):
        g.loss_at(model, p, x)
    with pytest.raises(DataError, match="Long"):
        g.loss_at(model, p, (x.long(), y))


def test_forms_refused_with_a_reason(xy):
    x, y = xy
    model, p = _net(0), _params(_net(0))
    with pytest.raises(DataError, match="one-shot iterator"):
        g.loss_at(model, p, ((x[i:i + B], y[i:i + B]) for i in range(0, N, B)))
    with pytest.raises(DataError, match="differ in length"):
        g.loss_at(model, p, (x, y[:10]))
    with pytest.raises(DataError, match="empty"):
        g.loss_at(model, p, [])
    with pytest.raises(DataError, match="3-tuple"):
        g.loss_at(model, p, [(x, y, y)])
    with pytest.raises(DataError, match="not data"):
        g.loss_at(model, p, 3)
    assert issubclass(DataError, GaugeError)
