"""The 8x8 digits: sizes, the stratified split, scaling and determinism."""

import numpy as np
import pytest
import torch

from smcdiff.data import NUM_CLASSES, NUM_IMAGES, load_digits, to_uint8
from smcdiff.data.digits import split_indices

pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(images: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in images.reshape(images.shape[0], -1)}


def test_all_split_is_the_whole_set_scaled():
    x, y = load_digits("all", dtype=torch.float64)
    assert x.shape == (NUM_IMAGES, 1, 8, 8) and x.dtype == torch.float64
    assert y.shape == (NUM_IMAGES,) and y.dtype == torch.long
    assert set(y.tolist()) == set(range(NUM_CLASSES))
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    # Pixel values are the integers 0..16 mapped by v / 8 - 1.
    v = (x + 1.0) * 8.0
    assert torch.equal(v, v.round())


@pytest.mark.parametrize("holdout", [0.2, 0.33])
def test_train_test_disjoint_cover_all_and_stratified(holdout):
    _, y_all = load_digits("all")
    train_idx, test_idx = split_indices(y_all.numpy(), holdout, seed=3)
    assert np.intersect1d(train_idx, test_idx).size == 0
    assert np.array_equal(np.union1d(train_idx, test_idx), np.arange(NUM_IMAGES))
    x_tr, y_tr = load_digits("train", holdout=holdout, seed=3)
    x_te, y_te = load_digits("test", holdout=holdout, seed=3)
    assert torch.equal(y_tr, y_all[train_idx]) and torch.equal(y_te, y_all[test_idx])
    assert x_tr.shape[0] + x_te.shape[0] == NUM_IMAGES
    counts_all = torch.bincount(y_all, minlength=NUM_CLASSES).double()
    assert (torch.bincount(y_te, minlength=NUM_CLASSES) - holdout * counts_all).abs().max() <= 1
    assert (torch.bincount(y_tr, minlength=NUM_CLASSES) - (1 - holdout) * counts_all).abs().max() <= 1
    # The images themselves: train and test rows are the "all" rows at their indices.
    x_all, _ = load_digits("all")
    assert torch.equal(x_tr, x_all[train_idx]) and torch.equal(x_te, x_all[test_idx])
    assert x_tr.min() >= -1 and x_tr.max() <= 1


def test_split_deterministic_seeded_and_leaves_global_rng_alone():
    np_state, torch_state = np.random.get_state(), torch.get_rng_state()
    a = load_digits("test", seed=0)
    b = load_digits("test", seed=0)
    c = load_digits("test", seed=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])  # another seed, another split
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert np_state[0] == after[0] and np.array_equal(np_state[1], after[1])


def test_returns_fresh_tensors():
    x, _ = load_digits("all")
    x.fill_(0.0)
    assert float(load_digits("all")[0].min()) == -1.0


def test_to_uint8_endpoints():
    x = torch.tensor([-1.0, -0.5, 0.0, 1.0, 3.0, -3.0])
    assert to_uint8(x).tolist() == [0, 64, 128, 255, 255, 0]
    x, _ = load_digits("test")
    u = to_uint8(x)
    assert u.dtype == torch.uint8 and u.shape == x.shape


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        load_digits("valid")
    with pytest.raises(ValueError, match="holdout"):
        load_digits(holdout=1.5)
    with pytest.raises(TypeError, match="floating"):
        load_digits(dtype=torch.int64)
