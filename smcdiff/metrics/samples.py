"""Sample-quality metrics: sliced Wasserstein, MMD, KL divergences, improved precision/recall.

Each metric compares a sample ``a : (n, d)`` with a sample ``b : (m, d)`` (or with known
densities) and runs in float64 whatever the inputs' dtype. Which one to use:

* :func:`sliced_wasserstein` -- the mean over random unit directions ``theta`` of the exact 1-D
  ``W_p`` between the projected samples; cheap, any dimension, directions from a caller-owned
  ``torch.Generator`` (reuse one seed to compare methods on the same directions).
* :func:`mmd` -- the unbiased estimate of the squared maximum mean discrepancy with a Gaussian
  kernel (median-heuristic bandwidth by default) and a jackknife standard error; it can be
  negative when the two distributions are close. Fix ``bandwidth`` to compare several methods.
* :func:`kl_to_density` -- ``KL(q || p)`` by Monte Carlo from samples of ``q`` when both log
  densities are known (e.g. an exact :class:`~smcdiff.models.GaussianMixture` target and a
  sampler with a tractable density), with its standard error.
* :func:`kl_from_samples_knn` -- ``KL(P || Q)`` from samples alone by the k-nearest-neighbour
  estimator of Wang, Kulkarni and Verdu (2009); consistent but biased at small ``n``, low ``d``.
* :func:`precision_recall` -- Kynkaanniemi et al. (2019): precision is the fraction of generated
  samples inside the union of the real samples' k-NN balls (fidelity), recall the fraction of
  real samples inside the generated samples' balls (coverage); usually on network features.

Estimates that carry an error bar are :class:`Estimate` ``(value, se)`` named tuples.

    >>> import torch
    >>> from smcdiff.data import known_mixture
    >>> from smcdiff.metrics.samples import kl_to_density, mmd, precision_recall, sliced_wasserstein
    >>> target = known_mixture()
    >>> x = target.sample(500, torch.Generator().manual_seed(0))
    >>> y = target.sample(500, torch.Generator().manual_seed(1)) + 0.1    # a slightly shifted "model"
    >>> sw = sliced_wasserstein(x, y, torch.Generator().manual_seed(2))  # a float, ~0.1
    >>> res = mmd(x, y)                                                   # MMDEstimate(value, se, bandwidth)
    >>> pr = precision_recall(x, y, k=3)                                  # PrecisionRecall(precision, recall)
    >>> kl = kl_to_density(x, target.log_prob, target.log_prob)           # KL(target || target)
    >>> kl.value, kl.se
    (0.0, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from smcdiff import _rng
from smcdiff.checks import check_int, check_real

__all__ = [
    "Estimate",
    "MMDEstimate",
    "PrecisionRecall",
    "gaussian_kernel_mmd2",
    "kl_from_samples_knn",
    "kl_to_density",
    "mmd",
    "precision_recall",
    "sliced_wasserstein",
    "unit_directions",
]

Tensor = torch.Tensor
F64 = torch.float64
#: Rows of a pairwise-distance block computed at once (memory ``chunk * m`` float64).
CHUNK = 1024


class Estimate(NamedTuple):
    """A Monte Carlo estimate and its standard error."""

    value: float
    se: float


class MMDEstimate(NamedTuple):
    """Unbiased ``MMD^2``, its jackknife standard error and the kernel bandwidth used."""

    value: float
    se: float
    bandwidth: float


class PrecisionRecall(NamedTuple):
    """Improved precision (fidelity) and recall (coverage), each in ``[0, 1]``."""

    precision: float
    recall: float


def _pair(a, b) -> tuple[Tensor, Tensor]:
    a, b = torch.as_tensor(a).detach().to(F64), torch.as_tensor(b).detach().to(F64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected samples (n, d) and (m, d), got {tuple(a.shape)} and {tuple(b.shape)}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("samples must be finite")
    return a, b


def _min_size(name: str, n: int, least: int) -> None:
    if n < least:
        raise ValueError(f"{name} needs at least {least} samples per set, got {n}")


# --------------------------------------------------------------------------- sliced Wasserstein
def unit_directions(num_projections: int, dim: int, generator) -> Tensor:
    """``(num_projections, dim)`` float64 directions uniform on the unit sphere (normalised normals)."""
    num_projections = check_int(num_projections, "num_projections", minimum=1)
    dim = check_int(dim, "dim", minimum=1)
    _rng.check_generator(generator, None)
    if not isinstance(generator, torch.Generator):
        raise TypeError("unit_directions takes one torch.Generator")
    dirs = _rng.randn((num_projections, dim), generator, F64)
    return dirs / dirs.norm(dim=1, keepdim=True)


def _wasserstein_1d_pow(pa: Tensor, pb: Tensor, p: float) -> Tensor:
    """``W_p^p`` between the empirical laws of the columns of ``pa : (n, P)`` and ``pb : (m, P)``.

    Exact: both quantile functions are step functions, constant between the merged breakpoints
    ``i / n`` and ``j / m`` (kept as integers ``i m`` and ``j n`` over ``n m``).
    """
    pa, pb = pa.sort(dim=0).values, pb.sort(dim=0).values
    n, m = pa.shape[0], pb.shape[0]
    if n == m:
        return ((pa - pb).abs() ** p).mean(0)
    ends = torch.cat([torch.arange(1, n + 1) * m, torch.arange(1, m + 1) * n]).unique()  # sorted
    widths = torch.diff(ends, prepend=ends.new_zeros(1)).to(F64) / (n * m)
    ia, ib = (ends - 1) // m, (ends - 1) // n  # the order statistic in force on (prev, end]
    return ((pa[ia] - pb[ib]).abs() ** p * widths[:, None]).sum(0)


def sliced_wasserstein(a, b, generator, num_projections: int = 128, p: float = 1) -> float:
    """Sliced ``p``-Wasserstein distance ``(mean_theta W_p^p(theta^T a, theta^T b))^(1/p)``.

    Args:
        a, b: samples ``(n, d)`` and ``(m, d)``; sizes may differ (the 1-D distances are then exact
            between the two empirical quantile functions).
        generator: one ``torch.Generator`` for the directions (:func:`unit_directions`).
        num_projections: number of random directions ``theta``.
        p: order ``>= 1``.

    Returns:
        The distance as a float; 0 for identical samples.
    """
    a, b = _pair(a, b)
    _min_size("sliced_wasserstein", min(a.shape[0], b.shape[0]), 1)
    p = check_real(p, "p", low=1.0)
    dirs = unit_directions(num_projections, a.shape[1], generator)
    wp = _wasserstein_1d_pow(a @ dirs.T, b @ dirs.T, p)
    return float(wp.mean() ** (1.0 / p))


# --------------------------------------------------------------------------- MMD
def _median_distance(x: Tensor, max_points: int = 2048) -> float:
    """Median pairwise distance over ``x : (N, d)`` (at most ``max_points`` evenly spaced rows)."""
    if x.shape[0] > max_points:
        x = x[torch.linspace(0, x.shape[0] - 1, max_points).round().long()]
    i, j = torch.triu_indices(x.shape[0], x.shape[0], offset=1)
    d = torch.cdist(x, x)[i, j]
    return float(d.median())


def _kernel_row_sums(x: Tensor, y: Tensor, h: float) -> Tensor:
    """``sum_j exp(-||x_i - y_j||^2 / (2 h^2))`` for each row ``i`` of ``x``, in chunks."""
    out = []
    for s in range(0, x.shape[0], CHUNK):
        d2 = torch.cdist(x[s:s + CHUNK], y).square()
        out.append(torch.exp(-d2 / (2.0 * h * h)).sum(1))
    return torch.cat(out)


def mmd(a, b, bandwidth: float | None = None) -> MMDEstimate:
    """Unbiased ``MMD^2`` between samples ``a : (n, d)`` and ``b : (m, d)``, Gaussian kernel.

    ``k(x, y) = exp(-||x - y||^2 / (2 h^2))``;
    ``MMD^2_u = sum_{i!=j} k(a_i, a_j) / (n (n-1)) + sum_{i!=j} k(b_i, b_j) / (m (m-1))
    - 2 sum_{i,j} k(a_i, b_j) / (n m)`` (Gretton et al. 2012, eq. 3), whose mean is the true
    ``MMD^2`` (so it can come out negative). ``bandwidth=None`` takes ``h`` = the median distance
    between pooled points (over at most 2,048 evenly spaced ones). The standard error is the
    two-sample jackknife (leave one ``a_i`` out, then one ``b_j``), from kernel row sums; it is
    conservative (Efron-Stein) and of the right order also when ``a`` and ``b`` share a law.
    Cost ``O((n + m)^2 d)``, memory ``O(1024 (n + m))``.

    Returns:
        :class:`MMDEstimate` ``(value, se, bandwidth)``.
    """
    a, b = _pair(a, b)
    n, m = a.shape[0], b.shape[0]
    _min_size("mmd", min(n, m), 3)
    h = _median_distance(torch.cat([a, b])) if bandwidth is None else check_real(bandwidth, "bandwidth", low=0.0, low_open=True)
    if not (math.isfinite(h) and h > 0):
        raise ValueError(f"bandwidth must be finite and positive, got {h!r} (identical points?)")
    # Row sums without the diagonal (k(x, x) = 1); Kab row sums over a, and column sums over b.
    raa, rbb = _kernel_row_sums(a, a, h) - 1.0, _kernel_row_sums(b, b, h) - 1.0
    rab, rba = _kernel_row_sums(a, b, h), _kernel_row_sums(b, a, h)
    saa, sbb, sab = raa.sum(), rbb.sum(), rab.sum()
    value = saa / (n * (n - 1)) + sbb / (m * (m - 1)) - 2.0 * sab / (n * m)
    # Leave-one-out values: drop a_i (its row and column of Kaa, its row of Kab), then b_j.
    loo_a = (saa - 2 * raa) / ((n - 1) * (n - 2)) + sbb / (m * (m - 1)) - 2 * (sab - rab) / ((n - 1) * m)
    loo_b = saa / (n * (n - 1)) + (sbb - 2 * rbb) / ((m - 1) * (m - 2)) - 2 * (sab - rba) / (n * (m - 1))
    var = (n - 1) / n * (loo_a - loo_a.mean()).square().sum() + (m - 1) / m * (loo_b - loo_b.mean()).square().sum()
    return MMDEstimate(float(value), float(var.sqrt()), h)


def gaussian_kernel_mmd2(mean1, var1: float, mean2, var2: float, bandwidth: float) -> float:
    """Exact ``MMD^2`` between ``N(mean1, var1 I)`` and ``N(mean2, var2 I)`` (kernel of :func:`mmd`).

    ``E k(X, Y)`` for independent ``X ~ N(mu_x, s_x I)``, ``Y ~ N(mu_y, s_y I)`` in ``d``
    dimensions: ``X - Y ~ N(delta, v I)`` with ``v = s_x + s_y``, and
    ``E exp(-||Z||^2 / (2 h^2)) = (h^2 / (h^2 + v))^(d/2) exp(-||delta||^2 / (2 (h^2 + v)))``;
    then ``MMD^2 = E k(X, X') + E k(Y, Y') - 2 E k(X, Y)``. ``mean1, mean2 : (d,)``.
    """
    mean1, mean2 = torch.as_tensor(mean1, dtype=F64), torch.as_tensor(mean2, dtype=F64)
    d, h2 = mean1.numel(), float(bandwidth) ** 2

    def ek(delta2: float, v: float) -> float:
        return (h2 / (h2 + v)) ** (d / 2) * math.exp(-delta2 / (2 * (h2 + v)))

    delta2 = float((mean1 - mean2).square().sum())
    return ek(0.0, 2 * var1) + ek(0.0, 2 * var2) - 2 * ek(delta2, var1 + var2)


# --------------------------------------------------------------------------- KL divergences
LogDensity = Callable[[Tensor], Tensor] | Tensor


def kl_to_density(samples, log_prob_q: LogDensity, log_prob_p: LogDensity) -> Estimate:
    """``KL(q || p) = E_q[log q(x) - log p(x)]`` by Monte Carlo over ``samples : (n, d)`` from ``q``.

    ``log_prob_q``, ``log_prob_p``: callables ``(n, d) -> (n,)`` (e.g. ``GaussianMixture.log_prob``)
    or the ``(n,)`` log-densities already evaluated at ``samples``. Both must be normalised.

    Returns:
        :class:`Estimate` ``(mean, std / sqrt(n))`` of ``log q - log p`` (``se`` 0 when ``n = 1``).
    """
    samples = torch.as_tensor(samples).detach()
    n = samples.shape[0]
    _min_size("kl_to_density", n, 1)

    def evaluate(f: LogDensity) -> Tensor:
        out = f(samples) if callable(f) else f
        out = torch.as_tensor(out).detach().to(F64)
        if out.shape != (n,):
            raise ValueError(f"expected log-densities of shape ({n},), got {tuple(out.shape)}")
        return out

    diff = evaluate(log_prob_q) - evaluate(log_prob_p)
    if not torch.isfinite(diff).all():
        raise ValueError("log q - log p is not finite at some sample (p has no mass where q has?)")
    se = float(diff.std() / math.sqrt(n)) if n > 1 else 0.0
    return Estimate(float(diff.mean()), se)


def _kth_nn_distance(x: Tensor, ref: Tensor, k: int, exclude_self: bool) -> Tensor:
    """Distance from each row of ``x`` to its ``k``-th nearest row of ``ref`` (``x`` is ``ref``
    when ``exclude_self``: the zero self-distance is skipped), in chunks."""
    kk = k + 1 if exclude_self else k
    out = []
    for s in range(0, x.shape[0], CHUNK):
        d = torch.cdist(x[s:s + CHUNK], ref)
        if exclude_self:  # the point itself, exactly (duplicates elsewhere stay at distance 0)
            rows = torch.arange(d.shape[0])
            d[rows, rows + s] = -1.0
        out.append(d.topk(kk, dim=1, largest=False).values[:, kk - 1])
    return torch.cat(out)


def kl_from_samples_knn(a, b, k: int = 1) -> float:
    """``KL(P || Q)`` from ``a : (n, d) ~ P`` and ``b : (m, d) ~ Q`` by k-nearest neighbours.

    Wang, Kulkarni and Verdu (2009):
    ``(d / n) sum_i log(nu_k(i) / rho_k(i)) + log(m / (n - 1))``, with ``rho_k(i)`` the distance
    from ``a_i`` to its ``k``-th nearest neighbour among the other ``a``'s and ``nu_k(i)`` to its
    ``k``-th nearest ``b``. Consistent as ``n, m -> inf``; biased for small samples, more so in
    high dimension. Raises on a zero distance (duplicate points).
    """
    a, b = _pair(a, b)
    n, m = a.shape[0], b.shape[0]
    k = check_int(k, "k", minimum=1, maximum=min(n - 1, m))  # k <= min(n - 1, m)
    rho = _kth_nn_distance(a, a, k, exclude_self=True)
    nu = _kth_nn_distance(a, b, k, exclude_self=False)
    if (rho <= 0).any() or (nu <= 0).any():
        raise ValueError("zero nearest-neighbour distance: the samples contain duplicate points")
    d = a.shape[1]
    return float(d * (nu.log() - rho.log()).mean() + math.log(m / (n - 1)))


# --------------------------------------------------------------------------- precision / recall
def _coverage(ref: Tensor, radii: Tensor, query: Tensor) -> float:
    """Fraction of ``query`` rows within ``radii[j]`` of some ``ref[j]`` (closed balls)."""
    inside = []
    for s in range(0, query.shape[0], CHUNK):
        inside.append((torch.cdist(query[s:s + CHUNK], ref) <= radii).any(1))
    return float(torch.cat(inside).to(F64).mean())


def precision_recall(real, fake, k: int = 3) -> PrecisionRecall:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of ``fake`` against ``real``.

    Each set's manifold is the union of closed balls around its points, of radius the distance to
    the point's ``k``-th nearest neighbour within the set. Precision is the fraction of ``fake``
    inside the real manifold, recall the fraction of ``real`` inside the fake manifold.

    Args:
        real: features ``(n, d)`` of real data.
        fake: features ``(m, d)`` of generated samples.
        k: neighbourhood size (the paper uses 3), below both set sizes.

    Returns:
        :class:`PrecisionRecall` ``(precision, recall)``. Exact float64 distances by
        ``torch.cdist`` in blocks of 1,024 rows: cost ``O(n m d)``, memory ``O(1024 max(n, m))``.
    """
    real, fake = _pair(real, fake)
    n, m = real.shape[0], fake.shape[0]
    k = check_int(k, "k", minimum=1, maximum=min(n, m) - 1)  # k <= min(n, m) - 1
    r_real = _kth_nn_distance(real, real, k, exclude_self=True)
    r_fake = _kth_nn_distance(fake, fake, k, exclude_self=True)
    return PrecisionRecall(_coverage(real, r_real, fake), _coverage(fake, r_fake, real))
