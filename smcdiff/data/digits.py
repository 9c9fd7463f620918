"""The UCI 8x8 handwritten digits (shipped with scikit-learn): a tiny image set for real training.

1,797 grey-scale images of the digits 0-9, 8x8 pixels with integer values 0..16, read from the
copy inside scikit-learn (no download). :func:`load_digits` returns them as diffusion-ready
tensors, ``images : (N, 1, 8, 8)`` scaled to ``[-1, 1]`` by ``x / 8 - 1`` and ``labels : (N,)``
long, with a fixed *stratified* train/test split: each class puts ``round(holdout * n_class)`` of
its images in the test set, chosen by ``numpy.random.default_rng(seed)`` (a local generator; no
global state is read or changed), so the split depends on ``seed`` alone and the class
proportions of both parts match the whole set to within one image per class. Both parts keep the
original order of the images.

    >>> import torch
    >>> from smcdiff.data import load_digits, to_uint8
    >>> x, y = load_digits("train")                     # 80 % of each class
    >>> x.shape, x.dtype, y.shape
    (torch.Size([1438, 1, 8, 8]), torch.float32, torch.Size([1438]))
    >>> float(x.min()), float(x.max())
    (-1.0, 1.0)
    >>> x_test, y_test = load_digits("test")            # the other 359 images
    >>> to_uint8(x_test).dtype                          # 0..255 for saving as PNG
    torch.uint8
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from smcdiff.checks import check_int, check_real

__all__ = ["NUM_CLASSES", "NUM_IMAGES", "load_digits", "to_uint8"]

#: Images in the full set.
NUM_IMAGES = 1797
#: Classes (the digits 0-9).
NUM_CLASSES = 10
_SPLITS = ("train", "test", "all")


@functools.lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    """The pixels ``(1797, 64)`` 0..16 and labels ``(1797,)``, read once (read-only arrays)."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    pixels = np.asarray(bunch.data, dtype=np.float64)
    labels = np.asarray(bunch.target, dtype=np.int64)
    pixels.setflags(write=False)
    labels.setflags(write=False)
    return pixels, labels


def split_indices(labels: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of ``labels : (N,)``: sorted ``(train_idx, test_idx)``.

    Class ``c`` (in increasing order) sends ``round(holdout * n_c)`` of its indices, drawn without
    replacement from ``numpy.random.default_rng(seed)``, to the test part.
    """
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_test = round(holdout * idx.size)
        test.append(rng.permutation(idx)[:n_test])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(labels.size), test_idx)  # sorted
    return train_idx, test_idx


def load_digits(
    split: str = "train", *, holdout: float = 0.2, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8x8 digits as ``(images, labels)``.

    Args:
        split: ``"train"``, ``"test"`` (the stratified held-out part) or ``"all"`` (1,797 images).
        holdout: fraction of each class held out for ``"test"``, in ``[0, 1]``.
        seed: seed of the split (ignored for ``"all"``).
        dtype: floating dtype of the images.

    Returns:
        ``images : (N, 1, 8, 8)`` in ``[-1, 1]`` (pixel ``v`` in 0..16 becomes ``v / 8 - 1``) and
        ``labels : (N,)`` long in 0..9, fresh tensors the caller may modify.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    holdout = check_real(holdout, "holdout", low=0.0, high=1.0)
    seed = check_int(seed, "seed", minimum=0)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype such as torch.float32, got {dtype!r}")
    pixels, labels = _raw()
    if split != "all":
        train_idx, test_idx = split_indices(labels, holdout, seed)
        idx = train_idx if split == "train" else test_idx
        pixels, labels = pixels[idx], labels[idx]
    images = torch.tensor(pixels / 8.0 - 1.0, dtype=dtype).reshape(-1, 1, 8, 8)
    return images, torch.tensor(labels, dtype=torch.long)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in ``[-1, 1]`` to ``uint8`` 0..255 by ``x * 127.5 + 128`` clipped (EDM's rule).

    Any shape; values outside ``[-1, 1]`` are clipped; NaN is refused (``ValueError``), since it
    would silently become 0 (a black pixel).
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"to_uint8 expects a floating tensor of images in [-1, 1], got {getattr(x, 'dtype', type(x).__name__)}")
    if bool(torch.isnan(x).any()):
        raise ValueError(f"to_uint8: the images contain NaN at {int(torch.isnan(x).sum())} of {x.numel()} values")
    return (x.detach().to(torch.float64) * 127.5 + 128.0).clamp(0, 255).to(torch.uint8)
