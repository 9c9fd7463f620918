"""Sample metrics against closed forms: sliced W1, MMD^2, KL, improved precision/recall.

Tolerances come from the Monte Carlo error: a few standard errors, estimated by the metric itself
(MMD, KL) or known in closed form (W1 of shifted samples). Everything runs in float64.
"""

import math

import pytest
import scipy.stats
import torch

from smcdiff.metrics.samples import (
    Estimate,
    gaussian_kernel_mmd2,
    kl_from_samples_knn,
    kl_to_density,
    mmd,
    precision_recall,
    sliced_wasserstein,
    unit_directions,
)
from smcdiff.models import GaussianMixture

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def normal(n: int, d: int, seed: int, mean=0.0, std=1.0) -> torch.Tensor:
    return torch.as_tensor(mean, dtype=F64) + std * torch.randn(n, d, generator=gen(seed), dtype=F64)


# --------------------------------------------------------------------------- sliced Wasserstein
def test_sw_of_a_sample_with_itself_is_zero_and_permutation_invariant():
    x = normal(300, 3, 0)
    assert sliced_wasserstein(x, x, gen(1)) == 0.0
    assert sliced_wasserstein(x, x[torch.randperm(300, generator=gen(2))], gen(1)) == pytest.approx(0, abs=1e-12)


def test_sw_1d_shift_is_w1():
    """In 1-D the only directions are +-1: SW1 is the empirical W1, close to |mu|."""
    n, mu = 4000, 0.7
    a, b = normal(n, 1, 3), normal(n, 1, 4, mean=mu)
    sw = sliced_wasserstein(a, b, gen(5), num_projections=4)
    assert sw == pytest.approx(scipy.stats.wasserstein_distance(a[:, 0], b[:, 0]), rel=1e-12)
    # W1 between the two empirical laws is |mu| + O(n^-1/2) (the empirical W1 of two N(0,1) samples
    # of size n has mean ~ 1.1 / sqrt(n)); a 5 / sqrt(n) margin covers both errors.
    assert abs(sw - mu) < 5 / math.sqrt(n)


def test_sw_shifted_gaussians_matches_mean_abs_projection():
    """Isotropic Gaussians shifted by mu: W1 along theta is |<theta, mu>|, averaged over the same
    directions the metric draws (same seed)."""
    n, d = 4000, 4
    mu = torch.tensor([1.0, -0.5, 0.25, 0.0], dtype=F64)
    a, b = normal(n, d, 6), normal(n, d, 7, mean=mu)
    sw = sliced_wasserstein(a, b, gen(8), num_projections=64)
    exact = float((unit_directions(64, d, gen(8)) @ mu).abs().mean())
    assert abs(sw - exact) < 5 / math.sqrt(n)


def test_sw_unequal_sizes_exact_1d():
    a, b = normal(37, 1, 9), normal(53, 1, 10, mean=0.3)
    sw = sliced_wasserstein(a, b, gen(0), num_projections=2)
    assert sw == pytest.approx(scipy.stats.wasserstein_distance(a[:, 0], b[:, 0]), rel=1e-12)
    # p = 2 against a fine grid of the two quantile functions.
    u = (torch.arange(200_000, dtype=F64) + 0.5) / 200_000
    qa, qb = a[:, 0].sort().values[(u * 37).long()], b[:, 0].sort().values[(u * 53).long()]
    w2 = float((qa - qb).square().mean().sqrt())
    assert sliced_wasserstein(a, b, gen(0), num_projections=2, p=2) == pytest.approx(w2, rel=1e-4)


def test_sw_deterministic_and_no_global_rng():
    a, b = normal(100, 2, 0), normal(100, 2, 1)
    state = torch.get_rng_state()
    assert sliced_wasserstein(a, b, gen(3)) == sliced_wasserstein(a, b, gen(3))
    assert torch.equal(torch.get_rng_state(), state)


def test_sw_bad_inputs():
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        sliced_wasserstein(torch.zeros(5, 2), torch.zeros(5, 3), gen(0))
    with pytest.raises(ValueError, match="p must be"):
        sliced_wasserstein(torch.zeros(5, 2), torch.zeros(5, 2), gen(0), p=0.5)
    with pytest.raises(TypeError, match="global RNG"):
        sliced_wasserstein(torch.zeros(5, 2), torch.zeros(5, 2), None)


# --------------------------------------------------------------------------- MMD
def test_mmd_same_distribution_is_zero_within_se():
    r = mmd(normal(600, 2, 11), normal(600, 2, 12), bandwidth=1.0)
    assert r.se > 0 and abs(r.value) < 4 * r.se


def test_mmd_shifted_is_clearly_positive():
    r = mmd(normal(600, 2, 13), normal(600, 2, 14, mean=[1.0, 0.0]))
    assert r.value > 5 * r.se


@pytest.mark.parametrize("d", [1, 3])
def test_mmd_matches_gaussian_closed_form(d):
    n, m, h = 700, 500, 1.3
    mu2 = torch.full((d,), 0.4, dtype=F64)
    a, b = normal(n, d, 15), normal(m, d, 16, mean=mu2, std=0.8)
    r = mmd(a, b, bandwidth=h)
    exact = gaussian_kernel_mmd2(torch.zeros(d), 1.0, mu2, 0.64, h)
    assert exact > 0 and r.bandwidth == h
    assert abs(r.value - exact) < 4 * r.se


def test_mmd_closed_form_against_quadrature():
    """The closed form itself, in 1-D, against numerical integration of E k(X, Y)."""
    h, (m1, v1), (m2, v2) = 0.9, (0.0, 1.0), (0.5, 0.3)
    z = torch.linspace(-12, 12, 4001, dtype=F64)

    def ek(mx, vx, my, vy):  # Z = X - Y ~ N(mx - my, vx + vy)
        pdf = torch.exp(-((z - (mx - my)) ** 2) / (2 * (vx + vy))) / math.sqrt(2 * math.pi * (vx + vy))
        return float(torch.trapezoid(pdf * torch.exp(-z**2 / (2 * h * h)), z))

    quad = ek(m1, v1, m1, v1) + ek(m2, v2, m2, v2) - 2 * ek(m1, v1, m2, v2)
    assert gaussian_kernel_mmd2([m1], v1, [m2], v2, h) == pytest.approx(quad, rel=1e-9)


def test_mmd_median_heuristic_and_explicit_agree():
    a, b = normal(200, 2, 17), normal(200, 2, 18, mean=0.5)
    r = mmd(a, b)
    pooled = torch.cat([a, b])
    i, j = torch.triu_indices(400, 400, offset=1)
    assert r.bandwidth == pytest.approx(float(torch.cdist(pooled, pooled)[i, j].median()), rel=1e-12)
    assert mmd(a, b, bandwidth=r.bandwidth) == r


def test_mmd_brute_force_value():
    """The U-statistic and its jackknife against a direct computation on a tiny sample."""
    a, b, h = normal(7, 2, 19), normal(5, 2, 20, mean=0.3), 0.8

    def u_stat(x, y):
        kxx = torch.exp(-torch.cdist(x, x) ** 2 / (2 * h * h))
        kyy = torch.exp(-torch.cdist(y, y) ** 2 / (2 * h * h))
        kxy = torch.exp(-torch.cdist(x, y) ** 2 / (2 * h * h))
        n, m = len(x), len(y)
        return float((kxx.sum() - n) / (n * (n - 1)) + (kyy.sum() - m) / (m * (m - 1)) - 2 * kxy.mean())

    loo_a = torch.tensor([u_stat(torch.cat([a[:i], a[i + 1:]]), b) for i in range(7)], dtype=F64)
    loo_b = torch.tensor([u_stat(a, torch.cat([b[:j], b[j + 1:]])) for j in range(5)], dtype=F64)
    var = 6 / 7 * (loo_a - loo_a.mean()).square().sum() + 4 / 5 * (loo_b - loo_b.mean()).square().sum()
    r = mmd(a, b, bandwidth=h)
    assert r.value == pytest.approx(u_stat(a, b), rel=1e-10, abs=1e-14)
    assert r.se == pytest.approx(float(var.sqrt()), rel=1e-8)


def test_mmd_bad_inputs():
    with pytest.raises(ValueError, match="at least 3"):
        mmd(torch.zeros(2, 2), torch.ones(5, 2))
    with pytest.raises(ValueError, match="bandwidth"):
        mmd(torch.zeros(5, 2), torch.zeros(5, 2))  # median distance 0


# --------------------------------------------------------------------------- KL
def _gaussian_kl(m1, c1, m2, c2) -> float:
    d = m1.numel()
    c2inv = torch.linalg.inv(c2)
    dm = m2 - m1
    return 0.5 * float(torch.trace(c2inv @ c1) + dm @ c2inv @ dm - d + torch.logdet(c2) - torch.logdet(c1))


def test_kl_to_density_two_gaussians_within_5_se():
    m1, c1 = torch.tensor([0.0, 1.0], dtype=F64), torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=F64)
    m2, c2 = torch.tensor([0.5, 0.0], dtype=F64), torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=F64)
    q, p = GaussianMixture([1.0], m1[None], c1[None]), GaussianMixture([1.0], m2[None], c2[None])
    x = q.sample(4000, gen(21))
    est = kl_to_density(x, q.log_prob, p.log_prob)
    assert isinstance(est, Estimate) and est.se > 0
    assert abs(est.value - _gaussian_kl(m1, c1, m2, c2)) < 5 * est.se
    # Precomputed log-densities give the same estimate.
    assert kl_to_density(x, q.log_prob(x), p.log_prob(x)) == est


def test_kl_to_density_errors():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="shape"):
        kl_to_density(x, torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="not finite"):
        kl_to_density(x, torch.zeros(4), torch.full((4,), -math.inf))


def test_kl_knn_two_gaussians():
    """Wang-Kulkarni-Verdu in 2-D; its spread at n = m = 2000 is ~0.08 (40 seeds), bias smaller."""
    a = normal(2000, 2, 22)
    b = normal(2000, 2, 23, mean=[1.0, 0.0], std=1.5)
    exact = _gaussian_kl(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64),
                         torch.tensor([1.0, 0.0], dtype=F64), 2.25 * torch.eye(2, dtype=F64))
    assert kl_from_samples_knn(a, b, k=1) == pytest.approx(exact, abs=0.3)
    assert abs(kl_from_samples_knn(a, normal(2000, 2, 24), k=5)) < 0.15
    with pytest.raises(ValueError, match="duplicate"):
        kl_from_samples_knn(a, a)


# --------------------------------------------------------------------------- precision / recall
def test_precision_recall_identical_distributions():
    pr = precision_recall(normal(500, 2, 25), normal(500, 2, 26), k=3)
    assert pr.precision >= 0.9 and pr.recall >= 0.9


def test_precision_recall_disjoint_supports():
    pr = precision_recall(normal(300, 2, 27), normal(300, 2, 28, mean=[50.0, 0.0]), k=3)
    assert pr == (0.0, 0.0)


def test_precision_recall_half_overlap():
    """Half the fake samples come from the real law, half sit far away: precision is half the
    precision of a same-law sample (p_same, measured on the same real set)."""
    real = normal(1000, 2, 29)
    near, far = normal(500, 2, 30), normal(500, 2, 31, mean=[50.0, 50.0])
    pr = precision_recall(real, torch.cat([near, far]), k=3)
    p_same = precision_recall(real, near, k=3).precision
    assert pr.precision == pytest.approx(p_same / 2, abs=1e-12)  # far ones are all outside
    assert abs(pr.precision - 0.5) < 0.5 * (1 - p_same) + 3 * math.sqrt(0.25 / 1000)
    assert pr.recall >= 0.9  # the near half covers the real law (with wider balls)


def test_precision_recall_counts_exact_copies_and_chunks(monkeypatch):
    """Copies of real points are inside (closed balls); chunking does not change the answer."""
    from smcdiff.metrics import samples

    real, fake = normal(300, 3, 32), normal(200, 3, 33, mean=0.5)
    full = precision_recall(real, fake, k=3)
    monkeypatch.setattr(samples, "CHUNK", 7)
    assert precision_recall(real, fake, k=3) == full
    assert precision_recall(real, real[:50], k=3).precision == 1.0
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(real, fake, k=200)
