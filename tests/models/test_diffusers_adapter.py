"""diffusers VP models as EDM denoisers: parity with diffusers' own samplers, conditioning, dtypes.

Every network is a tiny random-weight diffusers component built from a config dict and saved /
reloaded with ``save_pretrained`` / ``from_pretrained(local_dir)``: nothing is downloaded.

Parity tolerance: the diffusers loops run in float32, smcdiff's in float64 around a float32
network, so each step differs by float32 rounding (~6e-8 relative) of inputs, timesteps and
outputs; over ≤ 10 steps we allow 1e-5 relative to the largest |x|. Evaluating the network at the
nearest integer timestep instead of the fractional one (the truncation diffusers does to Python
numbers) changes the result by ~1e-3 relative, so the tolerance separates the two.
"""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

# diffusers 0.42's set_timesteps calls np.array on a tensor; NumPy 2 warns about the copy keyword.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

from smcdiff.kernels import EDMEuler
from smcdiff.models.diffusers_adapter import (
    DiscreteVPDenoiser,
    from_diffusers,
    from_k_diffusion,
    scheduler_sigmas,
)

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
REL_TOL = 1e-5


def _tiny_unet(**extra):
    cfg = dict(sample_size=8, in_channels=2, out_channels=2, layers_per_block=1, block_out_channels=(8, 16),
               down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
               norm_num_groups=4, attention_head_dim=8)
    cfg.update(extra)
    with torch.random.fork_rng():  # random weights without touching the global stream
        torch.manual_seed(0)
        return diffusers.UNet2DModel(**cfg).eval()


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("unet")
    _tiny_unet().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def unet(unet_dir):
    return diffusers.UNet2DModel.from_pretrained(unet_dir).eval()


def _z(shape=(3, 2, 8, 8), seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _edm_euler(D, x, sigmas):
    g = torch.Generator().manual_seed(0)
    for i in range(len(sigmas) - 1):
        x = EDMEuler()(D, x, sigmas, i, g).x
    return x


def _report(name, ours, theirs):
    diff = float((ours - theirs.double()).abs().max())
    scale = max(1.0, float(theirs.abs().max()))
    print(f"parity {name}: max |diff| = {diff:.3g} (max |x| = {scale:.3g}, relative {diff / scale:.3g})")
    return diff / scale


@pytest.mark.parametrize("karras", [False, True], ids=["linspace", "karras"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_euler_matches_euler_discrete_scheduler(unet, prediction_type, karras, one_thread):
    sched = diffusers.EulerDiscreteScheduler(prediction_type=prediction_type, use_karras_sigmas=karras, **SD)
    D = from_diffusers(unet, sched)
    n = 10 if not karras else 7
    sigmas = D.sigmas(n)
    sched.set_timesteps(n)
    assert torch.equal(sigmas.float(), sched.sigmas)  # the scheduler's own grid, ending in 0
    # diffusers' loop: start at init_noise_sigma·z, scale_model_input, step.
    z = _z()
    lat = z * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            lat = sched.step(unet(sched.scale_model_input(lat, t), t).sample, t, lat).prev_sample
    x = _edm_euler(D, sigmas[0] * z.double(), sigmas)
    assert x.dtype == torch.float64
    assert _report(f"Euler {prediction_type} {'karras' if karras else 'linspace'}", x, lat) < REL_TOL


def test_fractional_timesteps_are_not_truncated(unet, one_thread):
    # Karras sigmas fall between grid points: t(σ) is fractional, exactly diffusers' _sigma_to_t.
    sched = diffusers.EulerDiscreteScheduler(use_karras_sigmas=True, **SD)
    sched.set_timesteps(7)
    D = from_diffusers(unet, sched)
    t = D.sigma_to_t(sched.sigmas[:-1].double())
    assert (t - t.round()).abs().max() > 0.1
    assert torch.allclose(t, sched.timesteps.double(), atol=1e-3)
    # Nearest-index timesteps (k-diffusion's quantize, or a truncation) are off by far more than the
    # parity tolerance (measured: ~1e-3 relative in one evaluation).
    Dq = from_diffusers(unet, sched, quantize=True)
    x, s = _z().double() * 5, torch.full((3,), float(sched.sigmas[2]), dtype=torch.float64)
    assert float((D(x, s) - Dq(x, s)).abs().max()) > 20 * REL_TOL * float(D(x, s).abs().max())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_eta0_is_euler_in_sigma(unet, prediction_type, one_thread):
    sched = diffusers.DDIMScheduler(prediction_type=prediction_type, clip_sample=False, set_alpha_to_one=True, **SD)
    D = from_diffusers(unet, sched)
    sigmas = D.sigmas(10)
    sched.set_timesteps(10)
    ac = sched.alphas_cumprod.double()[sched.timesteps]
    assert torch.allclose(sigmas[:-1], ((1 - ac) / ac).sqrt()) and sigmas[-1] == 0
    z = _z()  # DDIM runs on x_vp = x/sqrt(1 + σ²), starting from z
    lat = z.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            lat = sched.step(unet(lat, t).sample, t, lat, eta=0.0).prev_sample
    x = _edm_euler(D, z.double() * (1 + sigmas[0] ** 2).sqrt(), sigmas)
    assert _report(f"DDIM eta=0 {prediction_type}", x, lat) < REL_TOL


def test_prediction_types_and_scaling(unet, one_thread):
    ac = diffusers.DDPMScheduler(**SD).alphas_cumprod
    x = _z().double() * 3
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    s = sigma[:, None, None, None]
    t = from_diffusers(unet, diffusers.DDPMScheduler(**SD)).sigma_to_t(sigma)
    with torch.no_grad():  # the network sees x/sqrt(1 + σ²) at the fractional timestep t(σ)
        F = unet((x / (1 + s**2).sqrt()).float(), t.float()).sample.double()
    expected = {"epsilon": x - s * F, "v_prediction": x / (1 + s**2) - s / (1 + s**2).sqrt() * F, "sample": F}
    for pred, want in expected.items():
        assert torch.allclose(DiscreteVPDenoiser(unet, ac, pred)(x, sigma), want, rtol=1e-6, atol=1e-6), pred


def test_sigma_range_and_round_sigma(unet):
    D = from_diffusers(unet, diffusers.EulerDiscreteScheduler(**SD))
    # SD 1.x/2.x range as diffusers builds it in float32 (REFERENCE-STEERING §A1).
    assert D.sigma_min == pytest.approx(0.0291675, abs=2e-7) and D.sigma_max == pytest.approx(14.614647, abs=2e-5)
    s = D.round_sigma(torch.tensor([1e-4, 1.0, 100.0], dtype=torch.float64))
    assert s.tolist() == [D.sigma_min, 1.0, D.sigma_max]
    Dq = from_diffusers(unet, diffusers.EulerDiscreteScheduler(**SD), quantize=True)
    assert bool((Dq.round_sigma(torch.tensor([0.7])) - Dq.sigma_grid).abs().min() < 1e-12)
    # t ↔ σ are inverse maps (log-σ interpolation).
    t = torch.tensor([0.0, 10.25, 500.5, 999.0], dtype=torch.float64)
    assert torch.allclose(D.sigma_to_t(D.t_to_sigma(t)), t, atol=1e-9)


def test_learned_variance_channels_are_dropped(one_thread):
    wide = _tiny_unet(out_channels=4)  # 2C outputs for C = 2 inputs
    ac = diffusers.DDPMScheduler(**SD).alphas_cumprod
    x, sigma = _z().double(), torch.full((3,), 2.0, dtype=torch.float64)
    D = DiscreteVPDenoiser(wide, ac, "epsilon")
    t = D.sigma_to_t(sigma)
    with torch.no_grad():
        eps = wide((x / 5**0.5).float(), t.float()).sample[:, :2].double()
    assert torch.allclose(D(x, sigma), x - 2.0 * eps, atol=1e-6)


def test_class_labels_through_cond_and_sample(one_thread):
    import smcdiff

    net = _tiny_unet(num_class_embeds=3)
    D = from_diffusers(net, diffusers.EulerDiscreteScheduler(**SD))
    labels = torch.tensor([[0, 1, 2, 2]])  # (G, K)
    res = smcdiff.sample(D, D.sigmas(4), EDMEuler(), num_groups=1, num_particles=4, shape=(2, 8, 8),
                         generator=torch.Generator().manual_seed(0), cond={"class_labels": labels},
                         x_init=torch.zeros(1, 4, 2, 8, 8))
    x = res.x[0]
    assert x.dtype == torch.float64 and torch.equal(x[2], x[3]) and not torch.allclose(x[0], x[1])
    with pytest.raises(ValueError, match="class_labels"):
        D(torch.zeros(1, 2, 8, 8, dtype=torch.float64), torch.ones(1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_network_float64_sampler(unet_dir, unet, dtype, one_thread):
    half = diffusers.UNet2DModel.from_pretrained(unet_dir, torch_dtype=dtype).eval()
    sched = diffusers.EulerDiscreteScheduler(**SD)
    D, ref = from_diffusers(half, sched), from_diffusers(unet, sched)
    assert D.dtype == dtype
    sigmas = D.sigmas(6)
    x = _edm_euler(D, sigmas[0] * _z().double(), sigmas)
    want = _edm_euler(ref, sigmas[0] * _z().double(), sigmas)
    assert x.dtype == torch.float64 and bool(torch.isfinite(x).all())
    # bfloat16 keeps 8 bits of mantissa (float16 11): relative error ~1e-2 after a few steps.
    rel = float((x - want).abs().max() / want.abs().max())
    print(f"{dtype} network vs float32: relative max diff {rel:.3g}")
    assert 0 < rel < 0.02


def test_max_batch_chunks_calls(unet, one_thread):
    calls = []
    D = from_diffusers(unet, diffusers.EulerDiscreteScheduler(**SD), max_batch=2)
    D.model.register_forward_pre_hook(lambda m, args, kw: calls.append(args[0].shape[0]), with_kwargs=True)
    x, sigma = _z((5, 2, 8, 8)).double(), torch.linspace(0.1, 10, 5, dtype=torch.float64)
    out = D(x, sigma)
    assert calls == [2, 2, 1]
    D.max_batch = None
    assert torch.allclose(out, D(x, sigma), atol=1e-5)


def test_no_autograd_unless_asked(unet):
    D = from_diffusers(unet, diffusers.EulerDiscreteScheduler(**SD))
    x, sigma = _z((2, 2, 8, 8)).double(), torch.ones(2, dtype=torch.float64)
    assert not D(x, sigma).requires_grad
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(D(x, sigma).sum(), x)
    assert g.shape == x.shape and bool(g.abs().sum() > 0)


def test_conditional_unet_with_added_cond_kwargs(one_thread):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = diffusers.UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=12, norm_num_groups=4, attention_head_dim=2, addition_embed_type="text_time",
            addition_time_embed_dim=4, projection_class_embeddings_input_dim=6 + 6 * 4).eval()
    D = from_diffusers(net, diffusers.EulerDiscreteScheduler(**SD), max_batch=2)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64, generator=g)
    emb, text, ids = (torch.randn(s, generator=g) for s in ((3, 5, 12), (3, 6), (3, 6)))
    sigma = torch.full((3,), 1.5, dtype=torch.float64)
    flat = D(x, sigma, encoder_hidden_states=emb, **{"added_cond_kwargs.text_embeds": text,
                                                     "added_cond_kwargs.time_ids": ids}, unused_by_network=x)
    nested = D(x, sigma, encoder_hidden_states=emb, added_cond_kwargs={"text_embeds": text, "time_ids": ids})
    assert torch.equal(flat, nested)
    with torch.no_grad():
        F = net((x / 1.5**0.5 / (1 + 1.5**2) ** 0.5 * 1.5**0.5).float(), D.sigma_to_t(sigma).float(),
                encoder_hidden_states=emb, added_cond_kwargs={"text_embeds": text, "time_ids": ids}).sample
    assert torch.allclose(flat, x - 1.5 * F.double(), atol=1e-5)


def test_scheduler_sigmas_variants():
    sched = diffusers.EulerDiscreteScheduler(final_sigmas_type="sigma_min", **SD)
    s = scheduler_sigmas(sched, 5)  # diffusers: 5 levels down to σ_min, then σ_min again
    assert len(s) == 6 and s[-1] == 0 and float(s[-2]) == pytest.approx(0.0291675, abs=2e-7)
    assert sched.num_inference_steps is None  # the caller's scheduler is left untouched
    h = scheduler_sigmas(diffusers.HeunDiscreteScheduler(**SD), 5)
    assert len(h) == 6 and bool((h[1:] < h[:-1]).all())  # Heun's repeated levels kept once


def test_bad_input_is_rejected(unet):
    ac = diffusers.DDPMScheduler(**SD).alphas_cumprod
    with pytest.raises(ValueError, match="prediction_type"):
        DiscreteVPDenoiser(unet, ac, "score")
    with pytest.raises(ValueError, match="alphas_cumprod"):
        DiscreteVPDenoiser(unet, ac.flip(0), "epsilon")
    with pytest.raises(ValueError, match="max_batch"):
        DiscreteVPDenoiser(unet, ac, max_batch=0)
    with pytest.raises(TypeError, match="dtype"):
        DiscreteVPDenoiser(unet, ac, dtype=torch.int8)
    with pytest.raises(ValueError, match="fourier"):
        from_diffusers(_tiny_unet(time_embedding_type="fourier"), diffusers.DDPMScheduler(**SD))
    with pytest.raises(TypeError, match="scheduler"):
        from_diffusers(unet, object())
    D = DiscreteVPDenoiser(unet, ac)
    with pytest.raises(ValueError, match="one value per sample"):
        D(torch.zeros(3, 2, 8, 8, dtype=torch.float64), torch.ones(2))
    with pytest.raises(ValueError, match="num_steps"):
        D.sigmas(0)


# k-diffusion: its denoisers already are D(x, σ, **extra_args) in the EDM convention.


class KStyleEps(torch.nn.Module):
    """A stand-in with k-diffusion's calling convention (like ``DiscreteEpsDDPMDenoiser``): computes in
    the input's dtype, exposes ``sigma_min``/``sigma_max`` buffers and ``get_sigmas``."""

    def __init__(self, unet, alphas_cumprod):
        super().__init__()
        self.inner = unet
        self.vp = DiscreteVPDenoiser(unet, alphas_cumprod)  # only for σ → t
        self.register_buffer("sigma_min", torch.tensor(self.vp.sigma_min))
        self.register_buffer("sigma_max", torch.tensor(self.vp.sigma_max))

    def get_sigmas(self, n):
        return self.vp.sigmas(n).float()

    def forward(self, x, sigma, **extra_args):
        c_in = (sigma**2 + 1) ** -0.5
        eps = self.inner(x * c_in[:, None, None, None], self.vp.sigma_to_t(sigma.double()).to(x.dtype), **extra_args).sample
        return x - sigma[:, None, None, None] * eps


def test_k_diffusion_style_denoiser(unet, one_thread):
    kd = KStyleEps(unet, diffusers.DDPMScheduler(**SD).alphas_cumprod)
    with pytest.raises(RuntimeError):  # float64 input into a float32 network: why the wrapper exists
        kd(torch.zeros(1, 2, 8, 8, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    D = from_k_diffusion(kd)
    assert D.dtype == torch.float32 and D.sigma_max == pytest.approx(14.6146, abs=1e-3)
    sigmas = D.sigmas(6)
    x = _edm_euler(D, sigmas[0] * _z().double(), sigmas)
    # k-diffusion's sample_euler in float32: d = (x − D)/σ, x ← x + d·(σ' − σ).
    y, s32 = sigmas[0].float() * _z(), sigmas.float()
    with torch.no_grad():
        for i in range(6):
            d = (y - kd(y, s32[i].expand(3))) / s32[i]
            y = y + d * (s32[i + 1] - s32[i])
    assert x.dtype == torch.float64 and _report("k-diffusion-style Euler", x, y) < REL_TOL
    assert torch.allclose(D(x, torch.ones(3)), from_diffusers(unet, diffusers.DDPMScheduler(**SD))(x, torch.ones(3)),
                          atol=1e-5)


def test_k_diffusion_discrete_eps_denoiser(unet, one_thread):
    kd_external = pytest.importorskip("k_diffusion.external")

    class Eps(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x, t, **kw):
            return self.net(x, t, **kw).sample

    ac = diffusers.DDPMScheduler(**SD).alphas_cumprod
    D = from_k_diffusion(kd_external.DiscreteEpsDDPMDenoiser(Eps(unet), ac, quantize=False))
    x, sigma = _z().double(), torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    assert torch.allclose(D(x, sigma), DiscreteVPDenoiser(unet, ac)(x, sigma), atol=1e-4)
