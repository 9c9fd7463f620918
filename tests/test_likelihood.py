"""smcdiff.likelihood against closed forms: Gaussian-mixture log-densities, linear denoisers
whose ODE and SDE models are Gaussian, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate

from smcdiff.likelihood import DensityPotential, elbo, log_prob, to_bits_per_dim, uniform_dequantize
from smcdiff.models import GaussianMixture

S_MIN, S_MAX = 0.002, 80.0


def _mixture(C: int, d: int, full: bool, seed: int) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    mu = 1.5 * torch.randn(C, d, generator=g, dtype=torch.float64)
    if full:
        A = torch.randn(C, d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
        cov = 0.3 * A @ A.mT + 0.05 * torch.eye(d, dtype=torch.float64)
    else:
        cov = 0.1 + 0.4 * torch.rand(C, generator=g, dtype=torch.float64)
    return GaussianMixture(torch.rand(C, generator=g, dtype=torch.float64) + 0.2, mu, cov)


# The 2-D mixture of REFERENCE-STEERING §F (full covariances).
_L = torch.tensor([[[0.5, 0.0], [0.2, 0.3]], [[0.3, 0.0], [-0.1, 0.4]], [[0.25, 0.0], [0.0, 0.6]]], dtype=torch.float64)
REF2D = GaussianMixture(torch.tensor([0.5, 0.3, 0.2]), torch.tensor([[-1.0, 0.5], [1.5, -0.5], [0.0, 2.0]]), _L @ _L.mT)


# ----------------------------------------------------------------------------- log_prob, exact
@pytest.mark.parametrize("d,full,rtol", [(1, False, 1e-7), (2, True, 1e-7), (16, False, 1e-6), (16, True, 1e-6)])
def test_log_prob_exact_divergence_matches_mixture(d, full, rtol):
    gmm = REF2D if (d, full) == (2, True) else _mixture(3, d, full, seed=d)
    x = gmm.sample(4, torch.Generator().manual_seed(1))
    res = log_prob(gmm, x, sigma_min=S_MIN, sigma_max=S_MAX, rtol=rtol, atol=rtol, prior=gmm.noised(S_MAX).log_prob)
    exact = gmm.noised(S_MIN).log_prob(x)
    assert res.log_prob.shape == (4,) and res.log_prob.dtype == torch.float64 and res.stderr is None
    # dopri5 keeps each step's local error below atol + rtol·|state|; ℓ grows to about |log p| + d·ln(σmax/σmin)
    # and the global error stays within tens of local tolerances: 50·rtol·(d + |log p|) (seen: <= 4·rtol·(...)).
    tol = 50 * rtol * (d + exact.abs())
    assert ((res.log_prob - exact).abs() <= tol).all(), (res.log_prob - exact, tol)
    assert res.nfe > 0


def test_log_prob_error_shrinks_with_rtol():
    x = REF2D.sample(4, torch.Generator().manual_seed(2))
    exact = REF2D.noised(S_MIN).log_prob(x)
    errs = [(log_prob(REF2D, x, sigma_min=S_MIN, sigma_max=S_MAX, rtol=r, atol=r, prior=REF2D.noised(S_MAX).log_prob)
             .log_prob - exact).abs().max() for r in (1e-4, 1e-6)]
    assert errs[1] < errs[0] / 20


def test_log_prob_log_sigma_time_batches_and_default_prior():
    x = REF2D.sample(5, torch.Generator().manual_seed(3))
    exact = REF2D.noised(S_MIN).log_prob(x)
    prior = REF2D.noised(S_MAX).log_prob
    a = log_prob(REF2D, x, sigma_min=S_MIN, sigma_max=S_MAX, rtol=1e-6, atol=1e-6, prior=prior, time="log_sigma")
    b = log_prob(REF2D, x, sigma_min=S_MIN, sigma_max=S_MAX, rtol=1e-6, atol=1e-6, prior=prior, batch_size=2)
    assert (a.log_prob - exact).abs().max() < 50e-6 * (2 + exact.abs().max())
    assert (b.log_prob - exact).abs().max() < 50e-6 * (2 + exact.abs().max())
    # Default prior N(0, σmax² I): its error is log N(z; 0, σmax²) − log p_σmax(z) at the ODE's end point,
    # here bounded by (|μ|² + ‖Σ‖ d + ‖z‖²·‖Σ‖/σmax²)/σmax² ≈ 1e-3 per unit of scale; allow 0.05 nats.
    c = log_prob(REF2D, x, sigma_min=S_MIN, sigma_max=S_MAX, rtol=1e-6, atol=1e-6)
    assert (c.log_prob - exact).abs().max() < 0.05
    assert torch.allclose(c.log_prob, c.prior_log_prob + c.delta_log_prob)


# ------------------------------------------------------------------------ log_prob, Hutchinson
@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_log_prob_hutchinson_within_standard_errors(probe):
    gmm = _mixture(3, 4, True, seed=5)
    x = gmm.sample(6, torch.Generator().manual_seed(6))
    res = log_prob(gmm, x, sigma_min=S_MIN, sigma_max=S_MAX, divergence="hutchinson", probe=probe, num_probes=16,
                   generator=torch.Generator().manual_seed(7), prior=gmm.noised(S_MAX).log_prob, rtol=1e-6, atol=1e-6)
    exact = gmm.noised(S_MIN).log_prob(x)
    # 16 probes: (estimate − exact)/stderr ~ Student t with 15 dof; |t| > 5 has probability 2e-4 per point.
    # The solver error (~1e-4 at rtol 1e-6, see the exact test) is added to the tolerance.
    assert (res.stderr > 0).all()
    assert ((res.log_prob - exact).abs() <= 5 * res.stderr + 1e-3).all(), ((res.log_prob - exact) / res.stderr)


def test_rademacher_probe_is_exact_for_isotropic_gaussian():
    # For N(μ, s²I) the Jacobian of D is a multiple of I, so vᵀJv = tr J for every ±1 probe: no Monte Carlo error.
    gauss = GaussianMixture(torch.tensor([1.0]), torch.tensor([[0.3, -0.7, 1.0]]), torch.tensor([0.6]))
    x = gauss.sample(4, torch.Generator().manual_seed(8))
    res = log_prob(gauss, x, sigma_min=S_MIN, sigma_max=S_MAX, divergence="hutchinson", num_probes=3,
                   generator=[torch.Generator().manual_seed(s) for s in range(4)], prior=gauss.noised(S_MAX).log_prob,
                   rtol=1e-7, atol=1e-7)
    exact = gauss.noised(S_MIN).log_prob(x)
    assert res.stderr.max() < 1e-8
    assert (res.log_prob - exact).abs().max() < 50e-7 * (3 + exact.abs().max())


# ------------------------------------------------------------------- a linear, inexact denoiser
def _w(sigma):
    """A σ-dependent variance: D(x; σ) = w/(w + σ²)·x is the posterior mean of no single density."""
    return 0.5 * (1 + sigma**2) / (1 + 0.25 * sigma**2)


def _linear(x, sigma, **cond):
    s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, *([1] * (x.dim() - 1)))
    return _w(s) / (_w(s) + s**2) * x


def test_log_prob_linear_denoiser_matches_closed_form():
    # dx/dσ = (1 − k)x/σ, k = w/(w + σ²): x(σmax) = A·x with ln A = ∫ σ/(w + σ²) dσ, so
    # log p^ODE(x) = log N(A x; 0, σmax² I) + d ln A.
    ln_a = integrate.quad(lambda s: s / (_w(s) + s * s), S_MIN, S_MAX, epsabs=1e-13, epsrel=1e-12)[0]
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    z = math.exp(ln_a) * x
    expected = -0.5 * (2 * math.log(2 * math.pi * S_MAX**2) + (z * z).sum(1) / S_MAX**2) + 2 * ln_a
    res = log_prob(_linear, x, sigma_min=S_MIN, sigma_max=S_MAX, rtol=1e-8, atol=1e-8)
    assert (res.log_prob - expected).abs().max() < 50e-8 * (2 + expected.abs().max())


def _sde_variance() -> float:
    """Marginal variance at σmin of the reverse SDE with score −x/(w + σ²) started from N(0, σmax²):
    dP/dσ = 2σ(2P/(w + σ²) − 1), integrated downwards."""
    sol = integrate.solve_ivp(lambda s, P: 2 * s * (2 * P / (_w(s) + s * s) - 1), (S_MAX, S_MIN), [S_MAX**2],
                              rtol=1e-12, atol=1e-14, method="LSODA")
    return float(sol.y[0, -1])


def _elbo_quadrature(y: torch.Tensor) -> torch.Tensor:
    """The expected ELBO of the linear denoiser, by quadrature: ŷ = b z with b = 1 − (τ/σ²)(1 − k),
    E‖y − ŷ‖² = (1 − b)²‖y‖² + b² d τ; prior term E log N(y + √τmax ε; 0, σmax²)."""
    d = y.shape[1]
    out = []
    for yy in (y * y).sum(1).tolist():
        def f(u, yy=yy):
            s = math.exp(u)
            tau = s * s - S_MIN**2
            b = 1 - (tau / (s * s)) * (1 - _w(s) / (_w(s) + s * s))
            return s * s * (d * tau - (1 - b) ** 2 * yy - b * b * d * tau) / tau**2
        val = integrate.quad(f, math.log(S_MIN), math.log(S_MAX), limit=400, epsabs=1e-11, epsrel=1e-11)[0]
        prior = -0.5 * (d * math.log(2 * math.pi * S_MAX**2) + (yy + d * (S_MAX**2 - S_MIN**2)) / S_MAX**2)
        out.append(prior + val)
    return torch.tensor(out, dtype=torch.float64)


def test_elbo_unbiased_and_a_bound_for_an_inexact_denoiser():
    y = torch.randn(5, 2, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    expected = _elbo_quadrature(y)
    res = elbo(_linear, y, sigma_min=S_MIN, sigma_max=S_MAX, num_draws=512, replicates=16,
               generator=torch.Generator().manual_seed(11), sigma_data=0.7)
    # 16 replicate means: (estimate − expectation)/stderr ~ t with 15 dof; 5 s.e. fail with prob. 2e-4 per point.
    assert ((res.elbo - expected).abs() <= 5 * res.stderr).all(), ((res.elbo - expected) / res.stderr)
    # The bound is on the reverse-SDE model's density N(0, P) — strictly below it for this denoiser.
    P = _sde_variance()
    log_p_sde = -0.5 * (2 * math.log(2 * math.pi * P) + (y * y).sum(1) / P)
    assert (expected < log_p_sde - 1e-3).all(), (expected - log_p_sde)


# ----------------------------------------------------------------------------------- ELBO, exact
@pytest.mark.parametrize("gmm", [
    GaussianMixture(torch.tensor([1.0]), torch.tensor([[0.5, -1.0]]), torch.tensor([0.4])),
    _mixture(1, 16, True, seed=12),
    REF2D,
], ids=["gaussian-2d-iso", "gaussian-16d-full", "mixture-2d-full"])
def test_elbo_is_tight_for_exact_denoisers(gmm):
    x = gmm.sample(6, torch.Generator().manual_seed(13))
    res = elbo(gmm, x, sigma_min=S_MIN, sigma_max=S_MAX, num_draws=512, replicates=16,
               generator=torch.Generator().manual_seed(14), prior=gmm.noised(S_MAX).log_prob)
    exact = gmm.noised(S_MIN).log_prob(x)
    assert res.nfe == 1024 and (res.stderr > 0).all()
    # With the exact denoiser and prior the model's path law is the data's: ELBO = log p in expectation
    # (so in particular ELBO <= log p + MC error). Tolerance: 5 s.e. of a t with 15 dof (see above).
    assert ((res.elbo - exact) <= 5 * res.stderr).all()
    assert ((res.elbo - exact).abs() <= 5 * res.stderr).all(), ((res.elbo - exact) / res.stderr)


def test_elbo_below_ode_log_prob_with_default_prior_and_edm_sigmas():
    x = REF2D.sample(4, torch.Generator().manual_seed(15))
    lp = log_prob(REF2D, x, sigma_min=S_MIN, sigma_max=S_MAX, rtol=1e-7, atol=1e-7).log_prob
    for dist in ("loguniform", "edm"):
        res = elbo(REF2D, x, sigma_min=S_MIN, sigma_max=S_MAX, num_draws=512, replicates=32, sigma_dist=dist,
                   generator=torch.Generator().manual_seed(16))
        # 32 replicates: t with 31 dof; the EDM law's heavier importance weights make the s.e. itself noisier.
        assert ((res.elbo - lp) <= 5 * res.stderr + 1e-3).all(), ((res.elbo - lp) / res.stderr)


def test_elbo_draws_depend_on_the_sample_generator_only():
    x = REF2D.sample(3, torch.Generator().manual_seed(17))
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    full = elbo(REF2D, x, sigma_min=S_MIN, sigma_max=S_MAX, num_draws=16, generator=gens())
    part = elbo(REF2D, x[1:], sigma_min=S_MIN, sigma_max=S_MAX, num_draws=16, generator=gens()[1:])
    assert torch.allclose(full.elbo[1:], part.elbo, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------- images, potential
def test_bits_per_dim_of_a_uniform_density_is_eight_bits():
    # Uniform density on the dequantised cube [-1 − Δ/2, 1 + Δ/2]^d (width 2·256/255): exactly 8 bits per value.
    d = 5
    log_p = torch.full((2,), d * math.log(255 / 512), dtype=torch.float64)
    assert torch.allclose(to_bits_per_dim(log_p, d, levels=256), torch.full((2,), 8.0, dtype=torch.float64))
    x = torch.linspace(-1, 1, 17, dtype=torch.float64).reshape(1, 17).repeat(50, 1)
    noisy = uniform_dequantize(x, 17, torch.Generator().manual_seed(0))
    assert (noisy - x).abs().max() <= 1 / 16 + 1e-12 and (noisy != x).all()


def test_log_prob_bits_per_dim_with_dequantisation():
    gauss = GaussianMixture(torch.tensor([1.0]), torch.zeros(1, 4), torch.tensor([0.25]))
    x = torch.zeros(3, 4, dtype=torch.float64)
    res = log_prob(gauss, x, sigma_min=S_MIN, sigma_max=S_MAX, levels=256, dequantize=True,
                   generator=torch.Generator().manual_seed(1), prior=gauss.noised(S_MAX).log_prob, rtol=1e-7, atol=1e-7)
    noisy = uniform_dequantize(x, 256, torch.Generator().manual_seed(1))  # the same draws
    exact = gauss.noised(S_MIN).log_prob(noisy)
    expected = -(exact + 4 * math.log(2 / 255)) / (4 * math.log(2))
    assert torch.allclose(res.bits_per_dim, expected, atol=1e-5)


def test_density_potential_is_log_prob_of_x0_hat():
    V = DensityPotential(REF2D, sigma_min=S_MIN, sigma_max=S_MAX, rtol=1e-7, atol=1e-7, scale=2.0,
                         prior=REF2D.noised(S_MAX).log_prob)
    x0_hat = REF2D.sample(3, torch.Generator().manual_seed(2))
    x = x0_hat + 1.0
    v = V(x, torch.full((3,), 1.0, dtype=torch.float64), x0_hat)
    assert v.shape == (3,) and v.dtype == torch.float64
    assert torch.allclose(v, 2 * REF2D.noised(S_MIN).log_prob(x0_hat), atol=1e-4)
    W = DensityPotential(REF2D, sigma_min=S_MIN, sigma_max=S_MAX, estimator="elbo", on="x", num_draws=8,
                         generator=torch.Generator().manual_seed(3))
    assert W(x, torch.ones(3, dtype=torch.float64), x0_hat).shape == (3,) and W.name == "elbo"


# ------------------------------------------------------------------------------------ networks
def test_log_prob_and_elbo_on_the_digits_network():
    from smcdiff.models.pretrained import load_digits_models

    net = load_digits_models().denoiser
    x = torch.zeros(2, 1, 8, 8)
    res = log_prob(net, x, sigma_min=S_MIN, sigma_max=S_MAX, divergence="hutchinson",
                   generator=torch.Generator().manual_seed(0), levels=17, rtol=1e-3, atol=1e-3)
    assert torch.isfinite(res.log_prob).all() and res.bits_per_dim.shape == (2,) and res.nfe > 0
    lb = elbo(net, x, sigma_min=S_MIN, sigma_max=S_MAX, num_draws=8, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(lb.elbo).all()


def test_log_prob_on_an_edm_network_with_labels():
    from smcdiff.models.precond import EDMPrecond

    net = EDMPrecond(img_resolution=8, img_channels=1, label_dim=3, model_type="SongUNet", model_channels=8,
                     channel_mult=[1], num_blocks=1, attn_resolutions=[]).eval()
    x = torch.zeros(2, 1, 8, 8)
    cond = {"class_labels": torch.eye(3)[:2]}
    res = log_prob(net, x, sigma_min=S_MIN, sigma_max=S_MAX, divergence="hutchinson", cond=cond,
                   generator=torch.Generator().manual_seed(0), rtol=1e-3, atol=1e-3)
    assert torch.isfinite(res.log_prob).all()


# ---------------------------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors():
    x = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"shape \(N, \*shape\)"):
        log_prob(REF2D, torch.zeros(3), sigma_min=S_MIN, sigma_max=S_MAX)
    with pytest.raises(TypeError, match="floating"):
        log_prob(REF2D, torch.zeros(3, 2, dtype=torch.long), sigma_min=S_MIN, sigma_max=S_MAX)
    with pytest.raises(ValueError, match="non-finite"):
        elbo(REF2D, torch.full((3, 2), math.nan), sigma_min=S_MIN, sigma_max=S_MAX, generator=torch.Generator())
    for lo, hi in ((1.0, 1.0), (2.0, 1.0), (0.0, 1.0), (-1.0, 1.0), (0.1, math.inf), (math.nan, 1.0)):
        with pytest.raises(ValueError, match="sigma_min < sigma_max"):
            log_prob(REF2D, x, sigma_min=lo, sigma_max=hi)
        with pytest.raises(ValueError, match="sigma_min < sigma_max"):
            elbo(REF2D, x, sigma_min=lo, sigma_max=hi, generator=torch.Generator())

    def broken(x, sigma, **cond):
        return torch.where(sigma[:, None] > 1.0, torch.nan, x)

    with pytest.raises(ValueError, match=r"denoiser broken returned non-finite values at sigma in \[1.0"):
        log_prob(broken, x, sigma_min=S_MIN, sigma_max=S_MAX)
    with pytest.raises(ValueError, match=r"denoiser broken returned non-finite values at sigma in \[1.0"):
        elbo(broken, x, sigma_min=S_MIN, sigma_max=S_MAX, generator=torch.Generator())
    with pytest.raises(ValueError, match="expected x's shape"):
        log_prob(lambda x, s, **c: x[:, :1], x, sigma_min=S_MIN, sigma_max=S_MAX)

    class Scheduled:  # a denoiser with its own σ range
        sigma_min, sigma_max = 0.01, 10.0

        def __call__(self, x, sigma, **cond):
            return x

    with pytest.raises(ValueError, match="above the denoiser's own sigma_max"):
        log_prob(Scheduled(), x, sigma_min=0.02, sigma_max=S_MAX)
    with pytest.raises(ValueError, match="below the denoiser's own sigma_min"):
        elbo(Scheduled(), x, sigma_min=S_MIN, sigma_max=5.0, generator=torch.Generator())
    with pytest.raises(ValueError, match="divergence must be one of"):
        log_prob(REF2D, x, sigma_min=S_MIN, sigma_max=S_MAX, divergence="jacobian")
    with pytest.raises(ValueError, match="need generator"):
        log_prob(REF2D, x, sigma_min=S_MIN, sigma_max=S_MAX, divergence="hutchinson")
    with pytest.raises(ValueError, match="levels"):
        log_prob(REF2D, x, sigma_min=S_MIN, sigma_max=S_MAX, dequantize=True, generator=torch.Generator())
    with pytest.raises(ValueError, match="leading axis of size N=3"):
        log_prob(REF2D, x, sigma_min=S_MIN, sigma_max=S_MAX, cond={"class_labels": torch.eye(2)})
    with pytest.raises(ValueError, match="multiple of replicates"):
        elbo(REF2D, x, sigma_min=S_MIN, sigma_max=S_MAX, num_draws=10, generator=torch.Generator())
    with pytest.raises(ValueError, match="sigma_dist must be one of"):
        elbo(REF2D, x, sigma_min=S_MIN, sigma_max=S_MAX, sigma_dist="uniform", generator=torch.Generator())
    with pytest.raises(TypeError, match="generator"):
        elbo(REF2D, x, sigma_min=S_MIN, sigma_max=S_MAX, generator=0)
    with pytest.raises(ValueError, match="estimator must be one of"):
        DensityPotential(REF2D, sigma_min=S_MIN, sigma_max=S_MAX, estimator="ode")
