"""Guidance transforms: exact identities on Gaussian mixtures."""

import math

import pytest
import torch

from smcdiff.kernels import EDMHeun, karras_sigmas
from smcdiff.kernels.guidance import DiscriminatorGuidance, EpsilonScaling, Guided, log_ratio_grad
from smcdiff.kernels.schedules import vp_time
from tests.methods.problems import pair_2d

F64 = torch.float64


def test_vp_time_golden_values():
    # REFERENCE §0.3 golden values
    s = torch.tensor([0.002, 0.0447, 0.5, 1.0, 10.0, 80.0], dtype=F64)
    ref = torch.tensor([3.98420e-5, 0.0100036667, 0.1448139195, 0.2589602624, 0.6760449586, 0.9335111432], dtype=F64)
    torch.testing.assert_close(vp_time(s), ref, rtol=1e-5, atol=0)


def test_guided_model_denoiser_is_the_data_denoiser():
    # D_data = x + σ²∇log p_data = D_model + σ²∇ℓ: DG with w = 1 and the exact ratio is exact.
    data, model, ell = pair_2d()
    x = 3 * torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    sigma = torch.logspace(-1.3, 1.5, 50, dtype=F64)
    guided = DiscriminatorGuidance(ell, w1=1.0, w2=1.0, time_min=0.0).bind(model.denoise, karras_sigmas(4), 0)
    torch.testing.assert_close(guided(x, sigma), data.denoise(x, sigma), rtol=0, atol=1e-10)


def test_time_window_switches_guidance_off_per_sample():
    data, model, ell = pair_2d()
    g = DiscriminatorGuidance(ell, w1=1.0, w2=1.0, time_min=0.01, time_max=0.5)
    sigma = torch.tensor([0.01, 0.5, 80.0], dtype=F64)  # τ ≈ 5e-5 (below), 0.145 (inside), 0.93 (above)
    x = torch.ones(3, 2, dtype=F64)
    out = g.bind(model.denoise, karras_sigmas(4), 0)(x, sigma)
    torch.testing.assert_close(out[[0, 2]], model.denoise(x, sigma)[[0, 2]])
    torch.testing.assert_close(out[1], data.denoise(x, sigma)[1])
    _, ell_out = g.guidance(x, sigma)
    assert ell_out[0] == 1e7 and ell_out[2] == 1e7 and abs(ell_out[1]) < 1e3


def test_w1_on_euler_evaluation_w2_on_correction():
    data, model, ell = pair_2d()
    sig = karras_sigmas(6)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    D = DiscriminatorGuidance(ell, w1=2.0, w2=0.5, time_min=0.0).bind(model.denoise, sig, 2)
    for s, w in ((sig[2], 2.0), (sig[3], 0.5)):
        s = s.expand(4)
        grad, _ = log_ratio_grad(ell, x, s)
        torch.testing.assert_close(D(x, s), model.denoise(x, s) + w * s[:, None] ** 2 * grad)


def test_guided_heun_with_exact_ratio_equals_heun_on_the_data():
    data, model, ell = pair_2d()
    sig = karras_sigmas(10)
    x0 = 80 * torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    kg = Guided(EDMHeun(S_churn=5), DiscriminatorGuidance(ell, w1=1.0, w2=1.0, time_min=0.0))
    a, b = x0.clone(), x0.clone()
    ga, gb = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for i in range(10):
        a = kg(model.denoise, a, sig, i, ga).x
        b = EDMHeun(S_churn=5)(data.denoise, b, sig, i, gb).x
    torch.testing.assert_close(a, b, rtol=0, atol=1e-8)


def test_epsilon_scaling_divides_the_epsilon_estimate():
    data, _, _ = pair_2d()
    eps = EpsilonScaling(1.01, kappa=0.002)
    assert eps.scale(0) == 1.01 and math.isclose(eps.scale(5), 1.02)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    s = torch.full((5,), 3.0, dtype=F64)
    D = eps.bind(data.denoise, karras_sigmas(8), 5)
    torch.testing.assert_close((x - D(x, s)) / s[:, None], (x - data.denoise(x, s)) / s[:, None] / 1.02)
    assert EpsilonScaling(1.0).bind(data.denoise, karras_sigmas(8), 0) == data.denoise


def test_guidance_bad_input():
    with pytest.raises(TypeError, match="callable"):
        DiscriminatorGuidance(None)
    with pytest.raises(ValueError, match="time_min"):
        DiscriminatorGuidance(lambda x, s: x[:, 0], time_min=0.5, time_max=0.1)
    with pytest.raises(TypeError, match="transform"):
        Guided(EDMHeun(), object())
    with pytest.raises(ValueError, match="positive"):
        EpsilonScaling(1.0, kappa=-1.0).scale(3)
    with pytest.raises(ValueError, match="one value per sample"):
        log_ratio_grad(lambda x, s: x, torch.ones(2, 2, dtype=F64), torch.ones(2, dtype=F64))
