"""Offline dataset loaders, tested on tiny files written here in the real formats."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from tickets.data import (DataSplits, dataset_names, load_dataset, read_cifar_batch, read_idx)
from tickets.errors import DataError


def write_idx(path, array: np.ndarray, compress=False):
    codes = {np.uint8: 0x08}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + struct.pack(
        ">" + "I" * array.ndim, *array.shape)
    data = header + array.tobytes()
    if compress:
        data = gzip.compress(data)
    path.write_bytes(data)


def make_mnist(root, n_train=12, n_test=6, compress=False, sub=""):
    rng = np.random.default_rng(0)
    base = root / sub
    base.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if compress else ""
    write_idx(base / f"train-images-idx3-ubyte{ext}",
              rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), compress)
    write_idx(base / f"train-labels-idx1-ubyte{ext}",
              rng.integers(0, 10, n_train, dtype=np.uint8), compress)
    write_idx(base / f"t10k-images-idx3-ubyte{ext}",
              rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), compress)
    write_idx(base / f"t10k-labels-idx1-ubyte{ext}",
              rng.integers(0, 10, n_test, dtype=np.uint8), compress)


def make_cifar(root, n=4):
    rng = np.random.default_rng(0)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, n).tolist(),
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"filenames": [f"{i}.png".encode() for i in range(n)]}
        with open(base / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)


def test_names():
    assert set(dataset_names()) == {"mnist1d", "digits", "mnist", "fashion_mnist", "cifar10"}


def test_mnist1d_shapes_and_standardised(mnist1d):
    assert isinstance(mnist1d, DataSplits)
    x, y = mnist1d.train.tensors
    assert x.shape == (4000, 40) and y.shape == (4000,) and len(mnist1d.test) == 1000
    assert mnist1d.input_shape == (40,) and mnist1d.num_classes == 10
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-2
    assert x.dtype == torch.float32 and y.dtype == torch.int64


def test_mnist1d_cached_atomically(mnist1d, tmp_path, monkeypatch):
    from tickets.data import cache_dir
    files = list(cache_dir().glob("mnist1d-*.npz"))
    assert len(files) == 1 and not list(cache_dir().glob("*.tmp"))
    again = load_dataset("mnist1d")
    assert torch.equal(again.train.tensors[0], mnist1d.train.tensors[0])
    # a corrupt cache file is regenerated, not trusted
    files[0].write_bytes(b"garbage")
    assert torch.equal(load_dataset("mnist1d").test.tensors[0], mnist1d.test.tensors[0])


def test_digits_stratified_split_by_seed():
    pytest.importorskip("sklearn")
    a, b, c = (load_dataset("digits", seed=s) for s in (0, 0, 1))
    assert a.input_shape == (1, 8, 8) and len(a.train) + len(a.test) == 1797
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])
    assert not torch.equal(a.test.tensors[1], c.test.tensors[1])
    counts = torch.bincount(a.test.tensors[1], minlength=10)
    assert int(counts.min()) >= 35  # every class in the test split, about 20% each


@pytest.mark.parametrize("compress,sub", [(False, ""), (True, "MNIST/raw")])
def test_mnist_idx(tmp_path, compress, sub):
    make_mnist(tmp_path, compress=compress, sub=sub)
    d = load_dataset("mnist", root=tmp_path)
    assert d.input_shape == (1, 28, 28) and len(d.train) == 12 and len(d.test) == 6
    raw = read_idx(next((tmp_path / sub).glob("train-images*")))
    expected = (raw[0].astype(np.float32) / 255 - 0.1307) / 0.3081
    assert np.allclose(d.train.tensors[0][0, 0].numpy(), expected, atol=1e-6)


def test_fashion_mnist_idx(tmp_path):
    make_mnist(tmp_path)
    assert load_dataset("fashion_mnist", root=tmp_path).name == "fashion_mnist"


def test_idx_truncated(tmp_path):
    make_mnist(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(DataError, match="payload"):
        load_dataset("mnist", root=tmp_path)


def test_missing_root_says_which_files(tmp_path):
    with pytest.raises(DataError, match="--root"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", root=tmp_path)
    with pytest.raises(DataError, match="data_batch_1"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(DataError, match="not a directory"):
        load_dataset("cifar10", root=tmp_path / "nope")


def test_cifar10(tmp_path):
    make_cifar(tmp_path)
    d = load_dataset("cifar10", root=tmp_path)
    assert d.input_shape == (3, 32, 32) and len(d.train) == 20 and len(d.test) == 4
    images, labels = read_cifar_batch(tmp_path / "cifar-10-batches-py" / "test_batch")
    assert images.shape == (4, 3, 32, 32) and labels.dtype == np.int64


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED",))


def test_cifar_refuses_code_pickle(tmp_path):
    make_cifar(tmp_path)
    evil = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    with open(evil, "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": []}, f, protocol=2)
    with pytest.raises(DataError, match="refusing to load global"):
        load_dataset("cifar10", root=tmp_path)
    assert not (tmp_path / "PWNED").exists()


def test_unknown_dataset_lists_valid():
    with pytest.raises(DataError, match="mnist1d"):
        load_dataset("imagenet")


# --------------------------------------------------------------------------- the user's data

def test_data_files_in_each_format(tmp_path):
    from safetensors.torch import save_file
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 2, 5, generator=gen), torch.randint(0, 4, (30,), generator=gen)
    np.savez(tmp_path / "xy.npz", x=x.numpy(), y=y.numpy())
    torch.save({"x_train": x[:20], "y_train": y[:20], "x_test": x[20:], "y_test": y[20:]},
               tmp_path / "splits.pt")
    save_file({"x_train": x[:20], "y_train": y[:20].int(), "x_test": x[20:],
               "y_test": y[20:].int()}, tmp_path / "splits.safetensors")
    one = load_dataset(str(tmp_path / "xy.npz"))
    assert one.test_is_train and one.test is one.train and "test = train" in one.describe()
    assert one.input_shape == (2, 5) and one.num_classes == int(y.max()) + 1
    assert torch.equal(one.train.tensors[0], x) and one.name == "xy.npz"
    for name in ("splits.pt", "splits.safetensors"):
        d = load_dataset(str(tmp_path / name))
        assert not d.test_is_train and len(d.train) == 20 and len(d.test) == 10
        assert d.train.tensors[1].dtype == torch.int64 and torch.equal(d.test.tensors[0], x[20:])


def test_data_file_errors_name_file_and_key(tmp_path):
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((3, 2)))
    np.savez(tmp_path / "wrong.npz", inputs=np.zeros((3, 2)))
    np.savez(tmp_path / "ragged.npz", x=np.zeros((3, 2)), y=np.zeros(4, dtype=np.int64))
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    torch.save({"x_train": torch.zeros(3, 2), "y_train": torch.zeros(3), "x_test": torch.zeros(1)},
               tmp_path / "notest.pt")
    for name, needle in [("nolabels.npz", "has 'x' but no 'y'"),
                         ("wrong.npz",
                          r"no 'x', 'x_train' or 'input_ids' array \(its keys: inputs\)"),
                         ("ragged.npz", "'x' has 3 rows but 'y' has 4"),
                         ("obj.npz", "not a readable .npz"),
                         ("notest.pt", "has 'x_test' but no 'y_test'"),
                         ("missing.npz", "no such file")]:
        with pytest.raises(DataError, match=needle) as err:
            load_dataset(str(tmp_path / name))
        assert name in str(err.value)


def test_data_factories():
    d = load_dataset("tests.byo_models:tiny_data", seed=3)
    assert len(d.train) == 16 and len(d.test) == 8 and not d.test_is_train
    assert d.input_shape == (40,) and d.num_classes <= 3
    assert torch.equal(load_dataset("tests.byo_models:tiny_data", seed=3).train.tensors[0],
                       d.train.tensors[0])
    with pytest.raises(DataError, match="returned a int; expected a DataSplits"):
        load_dataset("tests.byo_models:not_a_model")
    with pytest.raises(DataError, match="module 'no_such_mod_q' does not import"):
        load_dataset("no_such_mod_q:data")


def test_data_factory_from_file_with_one_dataset(tmp_path):
    (tmp_path / "mydata.py").write_text(
        "import torch\n"
        "class Pairs(torch.utils.data.Dataset):\n"
        "    def __len__(self):\n        return 6\n"
        "    def __getitem__(self, i):\n        return torch.full((3,), float(i)), i % 2\n"
        "def make():\n    return Pairs()\n")
    d = load_dataset(f"{tmp_path}/mydata.py:make")
    assert d.test_is_train and d.input_shape == (3,) and d.num_classes == 2


def test_token_data_files(tmp_path):
    """Token data: dict examples, next-token labels from the ids (padding skipped) when the
    file has none, one class per row when it does; bad token files name file and key."""
    ids = torch.randint(1, 50, (6, 5))
    mask = torch.ones(6, 5, dtype=torch.long)
    mask[0, -2:] = 0
    np.savez(tmp_path / "lm.npz", input_ids=ids.numpy(), attention_mask=mask.numpy())
    data = load_dataset(str(tmp_path / "lm.npz"))
    first = data.train[0]
    assert set(first) == {"input_ids", "attention_mask", "labels"} and data.num_classes == 0
    assert first["labels"].tolist() == [*ids[0, :3].tolist(), -100, -100]
    torch.save({"input_ids_train": ids, "labels_train": torch.arange(6) % 3,
                "input_ids_test": ids[:2], "labels_test": torch.tensor([0, 1])},
               tmp_path / "cls.pt")
    data = load_dataset(str(tmp_path / "cls.pt"))
    assert data.num_classes == 3 and len(data.test) == 2 and not data.test_is_train
    np.savez(tmp_path / "float.npz", input_ids=np.zeros((3, 4), dtype=np.float32))
    np.savez(tmp_path / "ragged.npz", input_ids=np.zeros((3, 4), dtype=np.int64),
             attention_mask=np.ones((2, 4), dtype=np.int64))
    for name, needle in [("float.npz", "'input_ids' must be integer token ids"),
                         ("ragged.npz", "'attention_mask' has 2 rows but 'input_ids' has 3")]:
        with pytest.raises(DataError, match=needle) as err:
            load_dataset(str(tmp_path / name))
        assert name in str(err.value)
