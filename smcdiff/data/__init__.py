"""Data sets that ship with the code (no downloads): 8x8 digits and 2-D toy distributions.

* :mod:`smcdiff.data.digits`: the 1,797 UCI handwritten digits from scikit-learn as
  ``(N, 1, 8, 8)`` images in ``[-1, 1]`` with a fixed stratified train/test split;
* :mod:`smcdiff.data.toy2d`: two moons, a checkerboard and a ring of Gaussians with a known
  density, each drawn from a caller-owned ``torch.Generator``.

::

    import torch
    from smcdiff.data import load_digits, two_moons

    images, labels = load_digits("train")                       # (1438, 1, 8, 8), (1438,)
    x = two_moons(2000, torch.Generator().manual_seed(0))       # (2000, 2) float64
"""

from smcdiff.data.digits import NUM_CLASSES, NUM_IMAGES, load_digits, to_uint8
from smcdiff.data.toy2d import (
    checkerboard,
    checkerboard_scale,
    known_mixture,
    two_moons,
)

__all__ = [
    "NUM_CLASSES",
    "NUM_IMAGES",
    "checkerboard",
    "checkerboard_scale",
    "known_mixture",
    "load_digits",
    "to_uint8",
    "two_moons",
]
