"""EDM kernels: the deterministic sampler to 1e-12 against REFERENCE §7.2, churn, Euler–Maruyama."""

import math

import pytest
import torch

from smcdiff.kernels import EDMEuler, EDMHeun, EulerMaruyama, euler_maruyama_step, heun_step, karras_sigmas

S = 0.5  # data ~ N(0, S^2): D(x; sigma) = x S^2 / (S^2 + sigma^2)


def gauss_denoiser(x, sigma):
    return x * S**2 / (S**2 + sigma.reshape(-1, *([1] * (x.dim() - 1))) ** 2)


def run_sampler(kernel, latents, num_steps, generator, denoiser=gauss_denoiser):
    sigmas = karras_sigmas(num_steps)
    x = latents.to(torch.float64) * sigmas[0]
    nfe = 0
    for i in range(num_steps):
        out = kernel(denoiser, x, sigmas, i, generator)
        x, nfe = out.x, nfe + int(out.nfe[0])
    return x, nfe


@pytest.mark.parametrize("num_steps, expected", [
    (18, [0.527624637001047, -0.158287391100314]),
    (10, [0.6097980007989404, -0.18293940023968214]),
    (5, [1.2578863076695737, -0.37736589230087214]),
    (2, [40.00028252668211, -12.000084758004638]),
])
def test_deterministic_heun_matches_reference(num_steps, expected):
    latents = torch.tensor([1.0, -0.3], dtype=torch.float64).reshape(2, 1, 1, 1)  # float64, as in §7.2
    x, nfe = run_sampler(EDMHeun(), latents, num_steps, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x.flatten(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    assert nfe == 2 * num_steps - 1


def test_churn_noise_drawn_every_step_even_without_churn():
    # EDM draws the churn noise every step (gamma = 0 too): the generator advances by one
    # standard-normal draw of x's shape per step.
    g = torch.Generator().manual_seed(7)
    run_sampler(EDMHeun(), torch.ones(3, 2), 4, g)
    ref = torch.Generator().manual_seed(7)
    for _ in range(4):
        torch.randn((3, 2), generator=ref, dtype=torch.float64)
    assert torch.equal(g.get_state(), ref.get_state())


def test_churn_step_by_hand():
    # One step with churn: t_hat = t(1 + gamma), x_hat = x + sqrt(t_hat^2 - t^2) S_noise eps, then Heun.
    sigmas = karras_sigmas(4)
    kernel = EDMHeun(S_churn=2.0, S_noise=1.003)
    gamma = min(2.0 / 4, math.sqrt(2) - 1)
    assert kernel.gamma(sigmas, 0) == gamma
    x = torch.tensor([[0.3], [-1.0]], dtype=torch.float64)
    out = kernel(gauss_denoiser, x, sigmas, 1, torch.Generator().manual_seed(3))
    eps = torch.randn((2, 1), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t = sigmas[1]
    t_hat = t + gamma * t
    x_hat = x + math.sqrt(t_hat**2 - t**2) * 1.003 * eps
    ref = heun_step(gauss_denoiser, x_hat, t_hat.expand(2), sigmas[2].expand(2))
    torch.testing.assert_close(out.x, ref.x, rtol=0, atol=1e-15)


def test_churn_window():
    sigmas = karras_sigmas(10)
    k = EDMHeun(S_churn=40, S_min=0.05, S_max=1.0)
    gammas = [k.gamma(sigmas, i) for i in range(10)]
    for i, g in enumerate(gammas):
        inside = 0.05 <= sigmas[i].item() <= 1.0
        assert (g == min(4.0, math.sqrt(2) - 1)) if inside else (g == 0.0)
    assert EDMHeun(S_churn=1).stochastic and not EDMHeun().stochastic


def test_heun_refuses_a_batch_whose_samples_sit_at_different_steps():
    x = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="heun_step_per_slot"):
        heun_step(gauss_denoiser, x, torch.tensor([1.0, 0.5], dtype=torch.float64),
                  torch.tensor([0.5, 0.0], dtype=torch.float64))


def test_euler_maruyama_log_prob_is_the_gaussian_density():
    x = torch.tensor([[0.2, -0.1], [1.0, 0.5]], dtype=torch.float64)
    t_cur = torch.tensor([1.0, 1.0], dtype=torch.float64)
    t_next = torch.tensor([0.7, 0.7], dtype=torch.float64)
    noise = torch.randn(2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = euler_maruyama_step(gauss_denoiser, x, t_cur, t_next, noise)
    x0 = gauss_denoiser(x, t_cur)
    mean = x + 2 * 0.3 / 1.0 * (x0 - x)
    var = 2 * 1.0 * 0.3
    ref = torch.distributions.Normal(mean, math.sqrt(var)).log_prob(out.x).sum(-1)
    torch.testing.assert_close(out.log_prob, ref)
    # the last step returns Tweedie's estimate deterministically
    last = euler_maruyama_step(gauss_denoiser, x, t_cur, torch.zeros(2, dtype=torch.float64), noise)
    torch.testing.assert_close(last.x, gauss_denoiser(x, t_cur))
    assert (last.log_prob == 0).all()


def test_euler_maruyama_samples_the_gaussian():
    # Data N(0, S^2) with the exact denoiser: fine EM steps give variance S^2 (within MC and O(h) error).
    n = 40000
    x, _ = run_sampler(EulerMaruyama(), torch.randn(n, 1, generator=torch.Generator().manual_seed(1)), 400,
                       torch.Generator().manual_seed(2))
    var = x.var().item()
    se = S**2 * math.sqrt(2 / n)
    assert abs(var - S**2) < 5 * se + 0.005  # 0.005: EM discretisation bias at 400 steps


def test_euler_kernel_is_first_order():
    x, nfe = run_sampler(EDMEuler(), torch.tensor([1.0, -0.3]).reshape(2, 1), 18, torch.Generator().manual_seed(0))
    assert nfe == 18
    exact = torch.tensor([1.0, -0.3], dtype=torch.float64) * 80 * 0.5 / math.sqrt(0.25 + 6400)
    heun, _ = run_sampler(EDMHeun(), torch.tensor([1.0, -0.3]).reshape(2, 1), 18, torch.Generator().manual_seed(0))
    assert (x.flatten() - exact).abs().max() > (heun.flatten() - exact).abs().max()


def test_per_group_generators():
    # With one generator per group, group g's noise depends only on its own seed.
    k = EDMHeun(S_churn=5)
    sig = karras_sigmas(6)
    x = torch.zeros(6, 1, dtype=torch.float64) + 3.0
    two = k(gauss_denoiser, x, sig, 0, [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    one = k(gauss_denoiser, x[3:], sig, 0, [torch.Generator().manual_seed(2)])
    torch.testing.assert_close(two.x[3:], one.x, rtol=0, atol=0)


def test_bad_kernel_arguments():
    with pytest.raises(ValueError, match="S_churn"):
        EDMHeun(S_churn=-1)
    with pytest.raises(ValueError, match="S_max"):
        EDMHeun(S_min=2.0, S_max=1.0)
    with pytest.raises(ValueError, match="shape"):
        run_sampler(EDMHeun(), torch.ones(2, 1), 3, torch.Generator(), denoiser=lambda x, s: x[:1])
