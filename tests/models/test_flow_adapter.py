"""Flow-matching models as EDM denoisers: the exact mapping on a Gaussian, stochastic kernels with the
data's marginals, parity with diffusers' FlowMatchEulerDiscreteScheduler, the scheduler's endpoints."""

import math

import pytest
import torch

from smcdiff.kernels import EDMEuler, EDMHeun, EulerMaruyama, karras_sigmas
from smcdiff.models import GaussianMixture
from smcdiff.models.flow_adapter import FlowMatchingDenoiser

MU = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
VAR = torch.tensor([0.25, 1.0, 0.04], dtype=torch.float64)


def gaussian_velocity(x_t, timestep):
    """The exact flow-matching velocity E[ε − x0 | x_t] of x0 ~ N(MU, diag VAR), x_t = (1 − t)x0 + tε,
    with the SD3 timestep convention (timestep = 1000·t)."""
    t = (timestep / 1000)[:, None]
    var_t = (1 - t) ** 2 * VAR + t**2
    r = x_t - (1 - t) * MU
    return t / var_t * r - (MU + (1 - t) * VAR / var_t * r)


def test_exact_velocity_gives_the_exact_denoiser():
    D = FlowMatchingDenoiser(gaussian_velocity, dtype=torch.float64)
    gmm = GaussianMixture(torch.ones(1), MU[None], VAR[None])
    g = torch.Generator().manual_seed(0)
    sigma = torch.tensor([1e-3, 0.1, 1.0, 7.0, 80.0, 1e4], dtype=torch.float64)
    x = MU + torch.randn(6, 3, dtype=torch.float64, generator=g) * (VAR + sigma[:, None] ** 2).sqrt()
    assert torch.allclose(D(x, sigma), gmm.denoise(x, sigma), rtol=1e-10, atol=1e-12)


def _chain_moments(kernel: str, sigmas, S_churn: float = 0.0):
    """Exact mean and variance after running ``kernel`` with the exact Gaussian denoiser
    D(x; σ) = μ + a(σ)(x − μ), a = s²/(s² + σ²), from x = σ_0·z: every step is affine in (x, noise),
    so the law of the discretised chain is Gaussian with moments given by this recursion."""
    m, v = torch.zeros_like(MU), torch.full_like(VAR, float(sigmas[0]) ** 2)
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        if kernel == "em":  # x' = x + 2h/σ (D − x) + sqrt(2σh) ε; the last step returns D
            a = VAR / (VAR + s**2)
            A = a if s_next == 0 else 1 + 2 * (s - s_next) * (a - 1) / s
            m, v = MU + A * (m - MU), A**2 * v + (0 if s_next == 0 else 2 * s * (s - s_next))
        else:  # EDM churn to t̂ = σ(1 + γ), then a Heun step (Euler on the last one)
            t_hat = s * (1 + min(S_churn / n, math.sqrt(2) - 1))
            v = v + t_hat**2 - s**2
            h = s_next - t_hat
            d1 = (1 - VAR / (VAR + t_hat**2)) / t_hat  # d = c·(x − μ)
            B = 1 + h * d1
            A = B if s_next == 0 else 1 + h / 2 * (d1 + (1 - VAR / (VAR + s_next**2)) / s_next * B)
            m, v = MU + A * (m - MU), A**2 * v
    return m, v


@pytest.mark.parametrize("kernel,name,steps", [(EulerMaruyama(), "em", 400), (EDMHeun(S_churn=40), "heun", 100)],
                         ids=["EulerMaruyama", "EDMHeun-churn"])
def test_stochastic_kernels_have_the_data_marginals(kernel, name, steps, one_thread):
    D = FlowMatchingDenoiser(gaussian_velocity, dtype=torch.float64)
    sigmas = karras_sigmas(steps, 0.002, 80.0)
    # The discretised chain's exact law is close to the data N(MU, VAR): O(1/steps) discretisation
    # (measured: variance +1.1–1.4 % for EM with 400 steps, +2.1–2.7 % for churn-Heun with 100;
    # means within 2e-4), the O(|MU|·s/σ_max) prior mismatch being forgotten by stochastic kernels.
    m, v = _chain_moments(name, sigmas, S_churn=40)
    assert torch.allclose(m, MU, atol=1e-3) and torch.allclose(v, VAR, rtol=0.04)
    # Monte Carlo through the flow adapter: within 5 standard errors of that law
    # (se of the mean sqrt(v/N); of the variance v·sqrt(2/(N − 1)) for a Gaussian).
    N = 10000
    g = torch.Generator().manual_seed(1)
    x = sigmas[0] * torch.randn(N, 3, dtype=torch.float64, generator=g)
    for i in range(steps):
        x = kernel(D, x, sigmas, i, g).x
    assert bool(((x.mean(0) - m).abs() < 5 * (v / N).sqrt()).all())
    assert bool(((x.var(0) - v).abs() < 5 * v * (2 / (N - 1)) ** 0.5).all())


def test_resampling_diversifies_copies_only_with_a_stochastic_kernel():
    import smcdiff

    D = FlowMatchingDenoiser(gaussian_velocity, dtype=torch.float64)
    sigmas = karras_sigmas(12, 0.002, 80.0)
    kwargs = dict(potential=lambda x, sigma, x0_hat, **cond: -(x0_hat**2).sum(-1),
                  resampler=smcdiff.Resampler("multinomial", 1.0), num_particles=64, shape=(3,),
                  generator=torch.Generator().manual_seed(0))
    res = smcdiff.sample(D, sigmas, EDMHeun(S_churn=40), **kwargs)
    assert len(torch.unique(res.x[0], dim=0)) == 64  # resampled copies diverged
    with pytest.warns(UserWarning, match="deterministic"):
        det = smcdiff.sample(D, sigmas, EDMEuler(), **kwargs)
    assert len(torch.unique(det.x[0], dim=0)) < 64  # copies stay identical under the ODE


def test_default_grid_and_round_sigma():
    D = FlowMatchingDenoiser(gaussian_velocity, sigma_min=0.01, sigma_max=100.0)
    s = D.sigmas(5)  # uniform in t between t(σ_max) and t(σ_min), then 0
    t = s[:-1] / (1 + s[:-1])
    assert s[0] == pytest.approx(100.0) and s[-2] == pytest.approx(0.01) and s[-1] == 0
    assert torch.allclose(t[1:] - t[:-1], (t[1] - t[0]).expand(4))
    assert D.round_sigma(torch.tensor([1e-4, 1.0, 1e3])).tolist() == [0.01, 1.0, 100.0]
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        FlowMatchingDenoiser(gaussian_velocity, sigma_max=math.inf)


# diffusers: parity with FlowMatchEulerDiscreteScheduler and its endpoints.

PARITY_REL_TOL = 1e-5  # float32 loop vs float64 sampler around a float32 network (see test_diffusers_adapter)


def _flow_loop(sched, net, z, n, **cond):
    """diffusers' flow-matching Euler loop (as in its SD3 pipeline): x_1 = z, x ← x + (t' − t)·v."""
    sched.set_timesteps(n)
    lat = z.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            lat = sched.step(net(lat, timestep=t.expand(z.shape[0]), **cond).sample, t, lat).prev_sample
    return lat


def _edm_euler(D, sigmas, z, **cond):
    x, g = sigmas[0] * z.double(), torch.Generator().manual_seed(0)
    for i in range(len(sigmas) - 1):
        x = EDMEuler()(D, x, sigmas, i, g, cond).x
    return x


def _report(name, ours, theirs):
    diff, scale = float((ours - theirs.double()).abs().max()), max(1.0, float(theirs.abs().max()))
    print(f"parity {name}: max |diff| = {diff:.3g} (max |x| = {scale:.3g}, relative {diff / scale:.3g})")
    return diff / scale


@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_euler_matches_flow_match_euler_scheduler(shift, tmp_path, one_thread):
    diffusers = pytest.importorskip("diffusers")
    from smcdiff.models.diffusers_adapter import from_diffusers

    with torch.random.fork_rng():
        torch.manual_seed(0)
        diffusers.UNet2DModel(sample_size=8, in_channels=2, out_channels=2, layers_per_block=1,
                              block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                              up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
                              attention_head_dim=8).save_pretrained(tmp_path / "unet")
    diffusers.FlowMatchEulerDiscreteScheduler(shift=shift).save_pretrained(tmp_path / "scheduler")
    unet = diffusers.UNet2DModel.from_pretrained(tmp_path / "unet").eval()
    sched = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path / "scheduler")
    D = from_diffusers(unet, sched)  # dispatches on the scheduler class
    assert isinstance(D, FlowMatchingDenoiser) and D.timestep_scale == 1000
    sigmas = D.sigmas(8)
    z = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    lat = _flow_loop(sched, unet, z, 8)
    assert torch.allclose(sigmas[1:] / (1 + sigmas[1:]), sched.sigmas[1:].double(), atol=1e-7)
    assert _report(f"flow-matching Euler shift={shift}", _edm_euler(D, sigmas, z), lat) < PARITY_REL_TOL


@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
def test_sd3_style_transformer_with_prompt_embeddings(one_thread):
    diffusers = pytest.importorskip("diffusers")
    from smcdiff.models.flow_adapter import from_flow_matching

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = diffusers.SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8,
            pos_embed_max_size=16).eval()
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    D = from_flow_matching(net, sched, max_batch=2)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(3, 4, 8, 8, generator=g)
    cond = {"encoder_hidden_states": torch.randn(3, 5, 16, generator=g), "pooled_projections": torch.randn(3, 8, generator=g)}
    lat = _flow_loop(sched, net, z, 6, **cond)
    assert _report("SD3-style transformer, shift=3", _edm_euler(D, D.sigmas(6), z, **cond), lat) < PARITY_REL_TOL


@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
def test_scheduler_endpoints_and_shift_as_sigma_rescaling():
    diffusers = pytest.importorskip("diffusers")
    from smcdiff.models.flow_adapter import flow_scheduler_sigmas, from_flow_matching

    # Static shift 3: the default grid shifts its (already shifted) end again, as diffusers builds it:
    # last nonzero t = 0.008929 (σ = 0.009009), while the trained minimum is t = 0.002994 (σ = 0.003003).
    D = from_flow_matching(gaussian_velocity, diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
    s = D.sigmas(28)
    assert s[0] == D.sigma_max == 1e8 and s[-1] == 0
    assert float(s[-2]) == pytest.approx(0.009009, abs=2e-6) and D.sigma_min == pytest.approx(0.003003, abs=2e-6)
    # Dynamic shift (Flux): σ' = e^μ·σ on the same unshifted grid.
    dyn = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    base = flow_scheduler_sigmas(diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0), 10)
    shifted = flow_scheduler_sigmas(dyn, 10, mu=0.7)
    assert torch.allclose(shifted[1:-1], math.exp(0.7) * base[1:-1], rtol=1e-5)
    with pytest.raises(ValueError, match="mu="):
        from_flow_matching(gaussian_velocity, dyn)
    with pytest.raises(ValueError, match="invert_sigmas"):
        from_flow_matching(gaussian_velocity, diffusers.FlowMatchEulerDiscreteScheduler(invert_sigmas=True))
    with pytest.raises(TypeError, match="FlowMatchEulerDiscreteScheduler"):
        from_flow_matching(gaussian_velocity, object())
