"""Steering kernels (smcdiff.kernels.twisted) on one-dimensional Gaussians, where every quantity is
exact: the denoiser is affine, the twist gradient and the tilted target are known."""

import math

import pytest
import torch

from smcdiff.kernels import EulerMaruyama, karras_sigmas
from smcdiff.kernels.twisted import (
    ProductEulerMaruyama,
    RewardEulerMaruyama,
    TwistedEulerMaruyama,
)
from smcdiff.models import GaussianMixture
from smcdiff.models.tilted import linear_tilt, quadratic_tilt

F64 = torch.float64
PRIOR = GaussianMixture(torch.ones(1), torch.zeros(1, 1), torch.ones(1))  # N(0, 1): D = x / (1 + σ²)


def zero_twist(x0_hat, sigma):
    return 0.0 * x0_hat.sum(-1)


def test_zero_twist_is_euler_maruyama():
    sigmas = karras_sigmas(6)
    x = 80.0 * torch.randn(5, 1, dtype=F64, generator=torch.Generator().manual_seed(0))
    twisted, plain, carry = x, x, None
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for i in range(6):
        out = TwistedEulerMaruyama(zero_twist)(PRIOR.denoise, twisted, sigmas, i, g1, carry=carry)
        ref = EulerMaruyama()(PRIOR.denoise, plain, sigmas, i, g2)
        assert torch.allclose(out.x, ref.x, rtol=1e-12, atol=1e-12)
        assert torch.equal(out.log_weight, torch.zeros(5, dtype=F64))
        twisted, plain, carry = out.x, ref.x, out.carry
    # Carried x0_hat and gradient: one forward per step after the first, none on the last.
    assert out.nfe.tolist() == [0] * 5


def test_proposal_correction_is_the_gaussian_log_ratio():
    """Linear twist φ = c·x̂0 on N(0, 1): ∇ₓφ = c/(1 + σ²); base mean x + (v/σ²)(D − x), v = 2σ(σ − σ')."""
    c, sigmas, i = 2.5, karras_sigmas(10), 3
    x = torch.randn(7, 1, dtype=F64, generator=torch.Generator().manual_seed(0))
    out = TwistedEulerMaruyama(lambda x0, s: c * x0[:, 0])(PRIOR.denoise, x, sigmas, i, torch.Generator().manual_seed(1))
    s, s_next = float(sigmas[i]), float(sigmas[i + 1])
    v = 2 * s * (s - s_next)
    mean = x + v / s**2 * (x / (1 + s**2) - x)
    grad = c / (1 + s**2)
    sd = math.sqrt(v)
    p = torch.distributions.Normal(mean, sd).log_prob(out.x)[:, 0]
    q = torch.distributions.Normal(mean + v * grad, sd).log_prob(out.x)[:, 0]
    assert torch.allclose(out.log_weight, p - q, rtol=1e-10, atol=1e-10)
    assert torch.allclose(out.log_prob, q, rtol=1e-10, atol=1e-10)
    assert torch.allclose(out.x0_hat, out.x / (1 + s_next**2))  # D at the new point
    assert torch.allclose(out.carry["twisted.grad"], torch.full_like(x, c / (1 + s_next**2)))


def _run(kernel, tilt, sigmas, n, seed, twist=None):
    """Plain sequential importance sampling (no resampling): returns final x and log-weights."""
    g = torch.Generator().manual_seed(seed)
    x = sigmas[0] * torch.randn(n, 1, dtype=F64, generator=g)
    log_w, v_old, carry = torch.zeros(n, dtype=F64), torch.zeros(n, dtype=F64), None
    for i in range(len(sigmas) - 1):
        out = kernel(tilt.prior.denoise, x, sigmas, i, g, carry=carry)
        x, carry = out.x, out.carry
        if out.log_weight is not None:
            log_w += out.log_weight
        if twist is not None:  # the twist as a difference-form potential
            v_new = twist(out.x0_hat, sigmas[i + 1].expand(n))
            log_w, v_old = log_w + v_new - v_old, v_new
    return x, log_w


def test_twisted_weights_are_unbiased_for_the_discretised_chain():
    """Sequential importance sampling with TDS's kernel and weights estimates the same Z_h = E[exp r(x0)]
    and tilted mean as plain EM samples reweighted by exp r(x0), for the same (discretised) chain.
    Two independent estimates; |difference| < 5 combined standard errors (delta method for the
    self-normalised means). The twist is the exact one inflated by 2 (a realistic, inexact twist)."""
    tilt = quadratic_tilt(PRIOR, [[1.0]], [1.5], 0.3)
    sigmas, n = karras_sigmas(32), 100_000

    def twist(x0_hat, sigma):  # x = (1 + σ²) x̂0 on N(0, 1); the soft value, halved away from σ = 0
        value = tilt.log_value(x0_hat * (1 + sigma**2)[:, None], sigma)
        return torch.where(sigma > 0, 0.5 * value, value)

    x_t, lw_t = _run(TwistedEulerMaruyama(twist), tilt, sigmas, n, 1, twist)
    x_p, _ = _run(EulerMaruyama(), tilt, sigmas, n, 2)
    lw_p = tilt.reward(x_p)

    def est(x, lw):
        w = lw.exp()
        z, z_se = w.mean(), w.std() / math.sqrt(n)
        m = (w * x[:, 0]).sum() / w.sum()
        m_se = ((w**2 * (x[:, 0] - m) ** 2).mean() / n).sqrt() / w.mean()
        return float(z), float(z_se), float(m), float(m_se)

    zt, zt_se, mt, mt_se = est(x_t, lw_t)
    zp, zp_se, mp, mp_se = est(x_p, lw_p)
    assert abs(zt - zp) < 5 * math.hypot(zt_se, zp_se)
    assert abs(mt - mp) < 5 * math.hypot(mt_se, mp_se)
    assert zt_se < zp_se  # the twist pays: a smaller error than reweighting prior draws


def test_product_kernel_weight_formula_and_reduction():
    pu = PRIOR
    pc = GaussianMixture(torch.ones(1), torch.ones(1, 1), torch.tensor([0.25]))
    sigmas, w = karras_sigmas(8), 2.0
    x = 3.0 * torch.randn(6, 1, dtype=F64, generator=torch.Generator().manual_seed(0))
    out = ProductEulerMaruyama(pc.denoise, 1 - w, w)(pu.denoise, x, sigmas, 2, torch.Generator().manual_seed(1))
    s, s_next = sigmas[2], sigmas[3]
    expected = w * (w - 1) * (pc.denoise(x, s) - pu.denoise(x, s))[:, 0] ** 2 * (s**2 - s_next**2) / (2 * s**4)
    assert torch.allclose(out.log_weight, expected, rtol=1e-10)
    assert out.nfe.tolist() == [2] * 6
    # a = 1, b = 0 is the plain EM kernel with weight 0.
    one = ProductEulerMaruyama(pc.denoise, 1.0, 0.0)(pu.denoise, x, sigmas, 2, torch.Generator().manual_seed(1))
    ref = EulerMaruyama()(pu.denoise, x, sigmas, 2, torch.Generator().manual_seed(1))
    assert torch.allclose(one.x, ref.x, rtol=1e-12) and torch.equal(one.log_weight, torch.zeros(6, dtype=F64))


def test_product_kernel_targets_the_cfg_product():
    """REFERENCE-STEERING §D.5: CFG w = 2 with p_c = N(1, 0.5²), p_u = N(0, 1): the product p_c² p_u⁻¹
    is N(1.142857, 0.142857); plain CFG-SDE gives ≈ N(1.25, 0.11). 256 steps, 100 000 particles
    without resampling (ESS ≈ 24 000: weighted-mean s.e. ≈ 0.0025); allowance 0.01 for the EM
    discretisation (§F: 1.133–1.150 from 250 to 4 000 steps)."""
    pc = GaussianMixture(torch.ones(1), torch.ones(1, 1), torch.tensor([0.25]))
    sigmas, n = karras_sigmas(256), 100_000
    tilt = linear_tilt(PRIOR, [0.0])  # only its prior is used
    x, lw = _run(ProductEulerMaruyama(pc.denoise, -1.0, 2.0), tilt, sigmas, n, 1)
    p = torch.softmax(lw, 0)
    m = float(p @ x[:, 0])
    assert abs(m - 8 / 7) < 0.01 + 5 * 0.0025
    assert abs(float(p @ (x[:, 0] - m) ** 2) - 1 / 7) < 0.01
    assert abs(float(x.mean()) - 1.25) < 0.01  # unweighted: the plain CFG sampler is off


def test_reward_kernel_zero_beta_is_euler_maruyama_and_linear_tilt_is_recovered():
    tilt = linear_tilt(PRIOR, [1.0])  # target N(1, 1), log Z = 0.5
    sigmas = karras_sigmas(16)
    x = torch.randn(5, 1, dtype=F64, generator=torch.Generator().manual_seed(0))
    out = RewardEulerMaruyama(tilt.reward, lambda s: 0 * s)(PRIOR.denoise, x, sigmas, 4, torch.Generator().manual_seed(1))
    ref = EulerMaruyama()(PRIOR.denoise, x, sigmas, 4, torch.Generator().manual_seed(1))
    assert torch.allclose(out.x, ref.x, rtol=1e-12) and torch.equal(out.log_weight, torch.zeros(5, dtype=F64))
    # Weighted mean of N(0,1)·e^x with 128 steps: 1 within EM discretisation (0.05) + 5 s.e.
    x, lw = _run(RewardEulerMaruyama(tilt.reward, lambda s: 1 / (1 + s**2)), tilt, karras_sigmas(128), 20_000, 3)
    p = torch.softmax(lw, 0)
    m = float(p @ x[:, 0])
    se = float(((p**2) * (x[:, 0] - m) ** 2).sum().sqrt())
    assert abs(m - 1.0) < 0.05 + 5 * se


def test_bad_input():
    with pytest.raises(TypeError, match="twist"):
        TwistedEulerMaruyama(None)
    with pytest.raises(TypeError, match="expert"):
        ProductEulerMaruyama(3, 1.0, 1.0)
    bad = TwistedEulerMaruyama(lambda x0, s: x0.sum())
    with pytest.raises(ValueError, match="one (log-)?value per sample"):
        bad(PRIOR.denoise, torch.zeros(3, 1, dtype=F64), karras_sigmas(4), 0, torch.Generator())
