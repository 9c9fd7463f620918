"""GaussianMixture against independent references: scipy, quadrature, autograd, Monte Carlo.

Exactness tests run in float64; their tolerances are a few hundred ulps of the quantities compared
(or the requested quadrature accuracy). Statistical tests use fixed seeds and 5 Monte Carlo
standard errors.
"""

import doctest
import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import smcdiff.models.gmm as gmm_module
from smcdiff.models import GaussianMixture

F64 = torch.float64


def random_mixture(C, d, seed):
    """A full-covariance mixture with well-separated-ish means and condition numbers <~ 50."""
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(C, generator=g, dtype=F64) + 0.2
    mu = 2.0 * torch.randn(C, d, generator=g, dtype=F64)
    B = torch.randn(C, d, d, generator=g, dtype=F64) / math.sqrt(d)
    covs = B @ B.mT + 0.2 * torch.eye(d, dtype=F64)
    return GaussianMixture(w, mu, covs)


def scipy_log_prob(gmm, x):
    """Reference mixture log-density from scipy's multivariate normal."""
    comps = [
        math.log(w) + multivariate_normal(m.numpy(), c.numpy()).logpdf(x.numpy())
        for w, m, c in zip(gmm.weights.tolist(), gmm.means, gmm.covs)
    ]
    return logsumexp(np.stack(comps, -1).reshape(x.shape[0], -1), axis=-1)


# 1-D mixture used by the quadrature tests: one narrow component (sd 0.22) to stress them.
W1, MU1, VAR1 = [0.2, 0.5, 0.3], [-2.0, 0.5, 3.0], [0.3, 1.0, 0.05]
GMM1 = GaussianMixture(
    torch.tensor(W1, dtype=F64),
    torch.tensor(MU1, dtype=F64)[:, None],
    torch.tensor(VAR1, dtype=F64),
)


def npdf(x, mean, sd):
    """Scalar normal density (plain Python: fast inside quad)."""
    return math.exp(-0.5 * ((x - mean) / sd) ** 2) / (sd * math.sqrt(2.0 * math.pi))


def p1(x0):
    return sum(w * npdf(x0, m, math.sqrt(v)) for w, m, v in zip(W1, MU1, VAR1))


def quad(f, x_extra=()):
    """Integral of f over [-20, 20] (p1 is < 1e-40 outside), split at the features of f."""
    points = sorted(set(MU1) | set(x_extra))
    val, _ = integrate.quad(f, -20.0, 20.0, points=points, limit=400, epsabs=1e-14, epsrel=1e-11)
    return val


# ----------------------------------------------------------------------------- construction
def test_full_diagonal_isotropic_forms_agree():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 4, generator=g, dtype=F64)
    w = torch.tensor([1.0, 2.0, 3.0], dtype=F64)  # unnormalised on purpose
    var = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    iso = GaussianMixture(w, mu, var)
    diag = GaussianMixture(w, mu, var[:, None].expand(3, 4))
    full = GaussianMixture(w, mu, torch.diag_embed(var[:, None].expand(3, 4)))
    x = 2.0 * torch.randn(20, 4, generator=g, dtype=F64)
    sigma = torch.rand(20, generator=g, dtype=F64) + 0.1
    torch.testing.assert_close(full.weights, w / 6, rtol=1e-15, atol=0)
    for other in (diag, full):
        assert other.dim == 4 and other.num_components == 3 and other.dtype == F64
        torch.testing.assert_close(other.covs, iso.covs, rtol=0, atol=0)
        # Same formulas up to a permutation of eigen-axes: a few ulps.
        torch.testing.assert_close(other.log_prob(x), iso.log_prob(x), rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(
            other.denoise(x, sigma), iso.denoise(x, sigma), rtol=1e-13, atol=1e-13
        )
        torch.testing.assert_close(
            other.log_prob_noised(x, sigma), iso.log_prob_noised(x, sigma), rtol=1e-13, atol=1e-13
        )


@pytest.mark.parametrize(
    "weights, means, covs, match",
    [
        ([-0.1, 1.1], [[0.0], [1.0]], [1.0, 1.0], "non-negative"),
        ([0.0, 0.0], [[0.0], [1.0]], [1.0, 1.0], "not all zero"),
        ([math.nan, 1.0], [[0.0], [1.0]], [1.0, 1.0], "finite"),
        ([1.0, 1.0, 1.0], [[0.0], [1.0]], [1.0, 1.0], r"weights of shape \(C,\)"),
        ([1.0], [0.0, 1.0], [1.0], r"means of shape \(C, d\)"),
        ([1.0, 1.0], [[0.0, 0.0], [1.0, 1.0]], [[1.0, 1.0, 1.0]] * 2, r"\(C, d, d\)=\(2, 2, 2\)"),
        ([1.0], [[0.0, 0.0]], [[[1.0, 0.5], [0.0, 1.0]]], "symmetric"),
        ([1.0], [[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]], "positive definite"),
        ([1.0], [[0.0, 0.0]], [[[1.0, 1.0], [1.0, 1.0]]], "positive definite"),  # singular
        ([1.0], [[0.0, 0.0]], [[1.0, 0.0]], "positive"),
        ([1.0, 1.0], [[0.0], [1.0]], [1.0, -1.0], "positive"),
    ],
)
def test_constructor_rejects_bad_input(weights, means, covs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(torch.tensor(weights), torch.tensor(means), torch.tensor(covs))


# ----------------------------------------------------------------------------- clean density
@pytest.mark.parametrize("d", [2, 3])
def test_log_prob_matches_scipy(d):
    gmm = random_mixture(4, d, seed=d)
    x = 3.0 * torch.randn(50, d, generator=torch.Generator().manual_seed(1), dtype=F64)
    # Values are O(10); both sides are exact formulas, so agreement is to rounding.
    ref = scipy_log_prob(gmm, x)
    np.testing.assert_allclose(gmm.log_prob(x).numpy(), ref, rtol=1e-12, atol=1e-11)
    r = gmm.responsibilities(x)
    assert r.shape == (50, 4)
    torch.testing.assert_close(r.sum(-1), torch.ones(50, dtype=F64), rtol=0, atol=1e-14)
    # Batch dims are free for the clean density.
    assert gmm.log_prob(x.reshape(5, 10, d)).shape == (5, 10)


def test_log_prob_integrates_to_one_in_1d():
    total = quad(lambda t: math.exp(GMM1.log_prob(torch.tensor([[t]], dtype=F64)).item()))
    assert abs(total - 1.0) < 1e-10  # quadrature asked for 1e-11 relative


# ----------------------------------------------------------------------------- denoiser
@pytest.mark.parametrize("d", [2, 5])
def test_denoiser_is_tweedie_with_autograd_score(d):
    gmm = random_mixture(3, d, seed=10 + d)
    g = torch.Generator().manual_seed(2)
    x = 3.0 * torch.randn(64, d, generator=g, dtype=F64)
    sigma = 10.0 ** (4.0 * torch.rand(64, generator=g, dtype=F64) - 2.0)  # 1e-2 .. 1e2
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(gmm.log_prob_noised(xg, sigma).sum(), xg)
    # D = x + sigma^2 grad log p_sigma (Tweedie); closed form vs autograd differ by rounding only.
    torch.testing.assert_close(
        gmm.denoise(x, sigma), x + sigma[:, None] ** 2 * grad, rtol=1e-10, atol=1e-10
    )
    torch.testing.assert_close(gmm.score(x, sigma), grad, rtol=1e-10, atol=1e-10)
    # Extra conditioning kwargs are ignored; the mixture is itself a denoiser.
    assert torch.equal(gmm(x, sigma, class_labels=None), gmm.denoise(x, sigma))


def test_denoise_keeps_event_shape_and_dtype():
    gmm = random_mixture(2, 6, seed=3)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 2, 3, generator=g, dtype=F64)
    sigma = torch.rand(8, generator=g, dtype=F64) + 0.1
    out = gmm.denoise(x, sigma.reshape(8, 1, 1))  # EDM-style broadcastable sigma is accepted
    assert out.shape == (8, 2, 3)
    assert torch.equal(out.reshape(8, 6), gmm.denoise(x.reshape(8, 6), sigma))
    assert gmm.score(x, sigma).shape == (8, 2, 3)
    assert gmm.log_prob_noised(x, sigma).shape == (8,)
    # float32 in -> float32 out, computed in float64 then rounded.
    out32 = gmm.denoise(x.float(), sigma.float())
    assert out32.dtype == torch.float32
    ref = gmm.denoise(x.float().double(), sigma.float())
    torch.testing.assert_close(out32.double(), ref, rtol=1e-6, atol=1e-6)  # float32 rounding


@pytest.mark.parametrize("sigma", [0.05, 0.5, 2.0, 10.0])
def test_1d_denoise_and_noised_density_match_quadrature(sigma):
    xs = [-3.0, -0.5, 0.7, 2.9, 5.0]
    x = torch.tensor(xs, dtype=F64)[:, None]
    d_hat = GMM1.denoise(x, sigma)[:, 0]
    logp = GMM1.log_prob_noised(x, torch.full((5,), sigma, dtype=F64))
    for i, xi in enumerate(xs):
        num = quad(lambda t: t * p1(t) * npdf(xi, t, sigma), [xi])
        den = quad(lambda t: p1(t) * npdf(xi, t, sigma), [xi])
        # Quadrature is asked for 1e-11 relative (observed agreement ~1e-15).
        assert abs(d_hat[i].item() - num / den) < 1e-10
        assert abs(logp[i].item() - math.log(den)) < 1e-10


def test_sigma_zero_huge_and_far_away_inputs():
    gmm = random_mixture(3, 2, seed=5)
    x = 2.0 * torch.randn(6, 2, generator=torch.Generator().manual_seed(6), dtype=F64)
    # sigma = 0: exactly x, scalar or per-sample (mixed with positive sigmas).
    assert torch.equal(gmm.denoise(x, 0.0), x)
    mixed = torch.tensor([0.0, 0.3, 0.0, 1.0, 0.0, 2.0], dtype=F64)
    out = gmm.denoise(x, mixed)
    assert torch.equal(out[mixed == 0], x[mixed == 0]) and torch.isfinite(out).all()
    torch.testing.assert_close(
        gmm.log_prob_noised(x, 0.0), gmm.log_prob(x), rtol=0, atol=0
    )
    # sigma = 1e3: D -> mixture mean; the first-order gap is O(|x| (|mu| + lam_max) / sigma^2),
    # here below ~1e-4 (|x| <~ 5, |mu| <~ 5, lam_max <~ 10).
    big = gmm.denoise(x, torch.full((6,), 1e3, dtype=F64))
    assert (big - gmm.mean).abs().max() < 1e-4
    # Far from every mean, at every noise level: finite, and sigma -> 0 still returns x.
    far = torch.tensor([[1e6, -1e6], [-3e5, 0.0], [0.0, 1e8]], dtype=F64)
    for s in (0.0, 1e-6, 1e-2, 1.0, 1e3):
        sig = torch.full((3,), s, dtype=F64)
        assert torch.isfinite(gmm.denoise(far, sig)).all()
        assert torch.isfinite(gmm.log_prob_noised(far, sig)).all()
        if s > 0:
            assert torch.isfinite(gmm.score(far, sig)).all()
    assert torch.isfinite(gmm.responsibilities(far)).all()


# ----------------------------------------------------------------------------- sampling
def test_sample_moments_and_component_frequencies():
    gmm = random_mixture(3, 2, seed=7)
    n = 200_000
    x, k = gmm.sample(n, torch.Generator().manual_seed(8), return_components=True)
    assert x.shape == (n, 2) and x.dtype == F64 and k.dtype == torch.long
    # Component frequencies: binomial standard error.
    freq = torch.bincount(k, minlength=3).double() / n
    w = gmm.weights
    assert ((freq - w).abs() <= 5 * (w * (1 - w) / n).sqrt()).all()
    # Mixture mean, and covariance as the mean of products centred at the exact mean.
    assert ((x.mean(0) - gmm.mean).abs() <= 5 * (gmm.cov.diagonal() / n).sqrt()).all()
    c = x - gmm.mean
    prods = c[:, :, None] * c[:, None, :]
    assert ((prods.mean(0) - gmm.cov).abs() <= 5 * prods.std(0) / math.sqrt(n)).all()
    # Each component's draws have that component's mean.
    for j in range(3):
        xj = x[k == j]
        se = (gmm.covs[j].diagonal() / xj.shape[0]).sqrt()
        assert ((xj.mean(0) - gmm.means[j]).abs() <= 5 * se).all()


def test_sample_is_reproducible_per_seed_and_never_touches_global_rng():
    gmm = random_mixture(3, 2, seed=9)
    state = torch.get_rng_state()
    a = gmm.sample(100, torch.Generator().manual_seed(0))
    b = gmm.sample(100, torch.Generator().manual_seed(0))
    c = gmm.sample(100, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # One generator per row: row i depends on seed i alone.
    rows = gmm.sample(4, [torch.Generator().manual_seed(s) for s in range(4)])
    for s in range(4):
        assert torch.equal(rows[s], gmm.sample(1, [torch.Generator().manual_seed(s)])[0])
    gmm.denoise(a, 0.5)
    gmm.condition(torch.eye(2, dtype=F64), torch.zeros(2, dtype=F64), 0.1)
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(TypeError):
        gmm.sample(3, None)
    with pytest.raises(ValueError):
        gmm.sample(3, [torch.Generator()] * 2)


def test_zero_weight_component_is_never_sampled():
    gmm = GaussianMixture(torch.tensor([1.0, 0.0]), torch.tensor([[0.0], [50.0]]), torch.ones(2))
    _, k = gmm.sample(10_000, torch.Generator().manual_seed(0), return_components=True)
    assert (k == 0).all()
    assert torch.isfinite(gmm.denoise(torch.tensor([[50.0]]), 0.1)).all()


# ----------------------------------------------------------------------------- ratios
def test_log_ratio_noised_and_semigroup():
    data, model = random_mixture(3, 3, seed=11), random_mixture(2, 3, seed=12)
    g = torch.Generator().manual_seed(13)
    x = 3.0 * torch.randn(40, 3, generator=g, dtype=F64)
    sigma = 10.0 ** (3.0 * torch.rand(40, generator=g, dtype=F64) - 2.0)
    lr = data.log_ratio(model, x, sigma, class_labels=None)
    assert lr.shape == (40,)
    torch.testing.assert_close(
        lr, data.log_prob_noised(x, sigma) - model.log_prob_noised(x, sigma), rtol=0, atol=0
    )
    assert torch.equal(data.log_ratio(data, x, sigma), torch.zeros(40, dtype=F64))
    for s in (0.0, 0.3, 4.0):
        ref = data.log_prob_noised(x, s)
        torch.testing.assert_close(data.noised(s).log_prob(x), ref, rtol=1e-13, atol=1e-13)
        # Adding noise twice: variances add.
        torch.testing.assert_close(
            data.noised(s).log_prob_noised(x, 0.5),
            data.log_prob_noised(x, math.hypot(s, 0.5)),
            rtol=1e-13,
            atol=1e-13,
        )
    with pytest.raises(ValueError):
        data.log_ratio(random_mixture(2, 2, seed=0), x, sigma)


# ----------------------------------------------------------------------------- conditioning
def scipy_log_lik(A, y, R, x):
    """log N(y; A x_i, R) for each row x_i (= log N(A x_i; y, R), vectorised)."""
    return np.atleast_1d(multivariate_normal(y.numpy(), R.numpy()).logpdf(x.numpy() @ A.numpy().T))


@pytest.mark.parametrize(
    "d, m, r_kind",
    [(3, 2, "full"), (2, 2, "diag"), (3, 1, "scalar"), (1, 1, "full"), (4, 4, "full")],
)
def test_condition_posterior_density_identity(d, m, r_kind):
    prior = random_mixture(3, d, seed=20 + d + m)
    g = torch.Generator().manual_seed(21)
    A = torch.randn(m, d, generator=g, dtype=F64)
    y = torch.randn(m, generator=g, dtype=F64)
    B = torch.randn(m, m, generator=g, dtype=F64)
    R_full = {
        "full": B @ B.T + 0.3 * torch.eye(m, dtype=F64),
        "diag": torch.diag(torch.tensor([0.2, 0.7], dtype=F64)),
        "scalar": 0.4 * torch.eye(m, dtype=F64),
    }[r_kind]
    R_arg = {"full": R_full, "diag": R_full.diagonal(), "scalar": 0.4}[r_kind]
    post, log_z = prior.condition(A, y, R_arg)
    assert log_z.shape == () and post.dim == d and post.num_components == 3
    x = 2.0 * torch.randn(30, d, generator=g, dtype=F64)
    # Bayes: log p(x | y) = log p(x) + log N(y; A x, R) - log p(y); all terms O(10), exact formulas.
    rhs = prior.log_prob(x).numpy() + scipy_log_lik(A, y, R_full, x) - log_z.item()
    np.testing.assert_allclose(post.log_prob(x).numpy(), rhs, rtol=1e-10, atol=1e-10)


def test_condition_evidence_matches_quadrature_in_1d():
    a, y, r = 1.7, 0.9, 0.25
    _, log_z = GMM1.condition(
        torch.tensor([[a]], dtype=F64), torch.tensor([y], dtype=F64), torch.tensor([[r]], dtype=F64)
    )
    z = quad(lambda t: p1(t) * npdf(y, a * t, math.sqrt(r)), [y / a])
    assert abs(log_z.item() - math.log(z)) < 1e-9  # quadrature asked for 1e-11 relative


@pytest.mark.parametrize("m", [2, 1])
def test_condition_evidence_matches_monte_carlo_in_2d(m):
    prior = random_mixture(3, 2, seed=30)
    A = torch.tensor([[1.0, 0.5], [-0.3, 0.8]], dtype=F64)[:m]
    y = torch.tensor([0.7, -0.4], dtype=F64)[:m]
    R = torch.tensor([[1.0, 0.3], [0.3, 0.8]], dtype=F64)[:m, :m]
    _, log_z = prior.condition(A, y, R)
    n = 200_000
    x = prior.sample(n, torch.Generator().manual_seed(31))
    lik = torch.from_numpy(np.exp(scipy_log_lik(A, y, R, x)))
    est, se = lik.mean().item(), lik.std().item() / math.sqrt(n)
    assert abs(math.exp(log_z.item()) - est) <= 5 * se


def test_condition_rejects_bad_input():
    prior = random_mixture(2, 3, seed=40)
    A, y = torch.ones(2, 3, dtype=F64), torch.zeros(2, dtype=F64)
    with pytest.raises(ValueError, match=r"A of shape \(m, d\) with d=3"):
        prior.condition(torch.ones(2, 2, dtype=F64), y, 1.0)
    with pytest.raises(ValueError, match=r"y of shape"):
        prior.condition(A, torch.zeros(3, dtype=F64), 1.0)
    with pytest.raises(ValueError, match="positive"):
        prior.condition(A, y, torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="not positive definite"):
        prior.condition(A, y, -10.0 * torch.eye(2, dtype=F64))
    with pytest.raises(ValueError, match="symmetric"):
        prior.condition(A, y, torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=F64))
    with pytest.raises(ValueError, match=r"R of shape"):
        prior.condition(A, y, torch.ones(3, dtype=F64))


# ----------------------------------------------------------------------------- bad input
def test_noised_methods_reject_bad_input():
    gmm = random_mixture(2, 2, seed=50)
    x = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"expected x of shape \(N, \.\.\.\) with d=2 elements"):
        gmm.denoise(torch.zeros(4, 3, dtype=F64), 1.0)
    with pytest.raises(ValueError, match="d=2"):
        gmm.log_prob_noised(torch.zeros(4, 2, 2, dtype=F64), 1.0)
    with pytest.raises(ValueError, match=r"\(\.\.\., d\) with d=2"):
        gmm.log_prob(torch.zeros(4, 3, dtype=F64))
    with pytest.raises(ValueError, match="sigma of shape"):
        gmm.denoise(x, torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match=">= 0"):
        gmm.denoise(x, -1.0)
    with pytest.raises(ValueError, match="> 0"):
        gmm.score(x, torch.tensor([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="finite"):
        gmm.noised(math.inf)


def test_module_docstring_snippet_runs():
    result = doctest.testmod(gmm_module)
    assert result.attempted > 0 and result.failed == 0
