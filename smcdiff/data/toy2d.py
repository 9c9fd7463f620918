"""Two-dimensional toy distributions: two moons, a checkerboard and a mixture with a known density.

Each sampler returns ``(n, 2)`` float64 points, centred and scaled by constants fixed in closed
form (not estimated from the sample) so that every coordinate has roughly unit variance. All
randomness comes from the ``generator`` argument: one ``torch.Generator``, or ``n`` of them (row
``i`` then depends on ``generator[i]`` alone), as everywhere in smcdiff.

* :func:`two_moons`: two interleaved half circles with Gaussian noise;
* :func:`checkerboard`: uniform on the "black" squares (row + column even) of a board;
* :func:`known_mixture`: a :class:`~smcdiff.models.GaussianMixture` of Gaussians on a ring, whose
  density, score and denoiser are exact, for metrics that need ``log p``.

    >>> import torch
    >>> from smcdiff.data import checkerboard, known_mixture, two_moons
    >>> x = two_moons(1000, torch.Generator().manual_seed(0))              # (1000, 2) float64
    >>> y = checkerboard(1000, torch.Generator().manual_seed(0), squares=4)
    >>> gmm = known_mixture()                                               # 8 components
    >>> z = gmm.sample(1000, torch.Generator().manual_seed(0))
    >>> gmm.log_prob(z).shape
    torch.Size([1000])
"""

from __future__ import annotations

import math

import torch

from smcdiff import _rng
from smcdiff.checks import check_int, check_real
from smcdiff.models.gmm import GaussianMixture

__all__ = ["checkerboard", "checkerboard_scale", "known_mixture", "two_moons"]

F64 = torch.float64

# Noise-free moons, t ~ U[0, pi]: upper (cos t, sin t), lower (1 - cos t, 1/2 - sin t), each with
# probability 1/2. Mean (1/2, 1/4); variances 3/4 and 9/16 - 1/pi per coordinate.
_MOONS_MEAN = (0.5, 0.25)
_MOONS_VAR = (0.75, 0.5625 - 1.0 / math.pi)


def _check_n(n) -> int:
    return check_int(n, "n (a non-negative int)", minimum=0)


def _check_gen(generator, n: int) -> None:
    _rng.check_generator(generator, None if isinstance(generator, torch.Generator) else n)


def two_moons(n: int, generator, noise: float = 0.1) -> torch.Tensor:
    """``n`` points ``(n, 2)`` from two interleaved half circles plus ``N(0, noise^2 I)`` noise.

    The moons are the usual ones (unit radius, the lower one shifted by ``(1, -1/2)``), each picked
    with probability 1/2, then centred on their exact mean and divided by one common scale (the
    exact root mean coordinate variance, noise included), so the shape is kept and
    ``(var_x + var_y) / 2 = 1``. Each row draws a uniform moon pick, a uniform angle, then two
    normals.
    """
    n = _check_n(n)
    noise = check_real(noise, "noise", low=0.0)
    _check_gen(generator, n)
    u = _rng.rand((n, 2), generator, F64)
    z = _rng.randn((n, 2), generator, F64)
    lower = u[:, 0] < 0.5
    t = math.pi * u[:, 1]
    x = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    x = torch.where(lower[:, None], torch.tensor([1.0, 0.5], dtype=F64) - x, x)
    scale = math.sqrt((_MOONS_VAR[0] + _MOONS_VAR[1]) / 2 + noise**2)
    return (x + noise * z - torch.tensor(_MOONS_MEAN, dtype=F64)) / scale


def _black_cells(squares: int) -> torch.Tensor:
    """``(B, 2)`` float64 (column, row) indices of the black cells (sum even)."""
    i, j = torch.meshgrid(torch.arange(squares), torch.arange(squares), indexing="ij")
    cells = torch.stack([i.reshape(-1), j.reshape(-1)], dim=1)
    return cells[cells.sum(1) % 2 == 0].to(F64)


def checkerboard_scale(squares: int = 4) -> float:
    """The standard deviation of each coordinate of the unscaled board (see :func:`checkerboard`).

    ``checkerboard(...) * checkerboard_scale(s) + s / 2`` lies on the board ``[0, s]^2``, in
    cells ``(floor(x), floor(y))`` with an even sum. For even ``s`` it is ``s / sqrt(12)``.
    """
    squares = check_int(squares, "squares (a positive int)", minimum=1)
    centres = _black_cells(squares) + 0.5 - squares / 2
    # Uniform within a unit cell adds 1/12; the centres have mean zero (180-degree symmetry).
    return math.sqrt(float((centres[:, 0] ** 2).mean()) + 1.0 / 12.0)


def checkerboard(n: int, generator, squares: int = 4) -> torch.Tensor:
    """``n`` points ``(n, 2)`` uniform on the black cells of a ``squares x squares`` board.

    Cell ``(i, j)`` (column ``i``, row ``j``, unit side, board ``[0, squares]^2``) is black when
    ``i + j`` is even; there are ``ceil(squares^2 / 2)`` of them. The board is centred (the black
    cells are symmetric under a half turn, so their mean is the centre) and divided by
    :func:`checkerboard_scale`, which makes each coordinate's variance exactly 1. Each row draws a
    uniform cell pick, then its two uniform offsets.
    """
    n = _check_n(n)
    scale = checkerboard_scale(squares)
    _check_gen(generator, n)
    cells = _black_cells(squares)
    u = _rng.rand((n, 3), generator, F64)
    k = (u[:, 0] * cells.shape[0]).long().clamp_max(cells.shape[0] - 1)
    x = cells[k] + u[:, 1:]
    return (x - squares / 2) / scale


def known_mixture(num_components: int = 8, component_var: float = 0.02) -> GaussianMixture:
    """Equal-weight isotropic Gaussians on a ring, with mixture covariance exactly ``I``.

    Means ``r (cos(2 pi k / C), sin(2 pi k / C))``, ``k = 0..C-1``, variances ``component_var``,
    radius ``r = sqrt(2 (1 - component_var))``: with ``C >= 3`` equally spaced means the ring
    contributes ``r^2 / 2`` to each coordinate's variance, so the mixture has mean 0 and
    covariance ``I``. The defaults give 8 well-separated modes (radius 1.4, std ~0.14).
    """
    C = check_int(num_components, "num_components", minimum=3)
    component_var = check_real(component_var, "component_var", low=0.0, high=1.0, low_open=True, high_open=True)
    angles = 2.0 * math.pi * torch.arange(C, dtype=F64) / C
    radius = math.sqrt(2.0 * (1.0 - component_var))
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return GaussianMixture(torch.ones(C, dtype=F64), means, torch.full((C,), float(component_var), dtype=F64))
