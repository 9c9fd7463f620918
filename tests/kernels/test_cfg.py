"""Classifier-free guidance as a denoiser transform: the closed-form CFG ODE on Gaussians, one
batched call of 2N per guided evaluation (honest NFE), the unconditional inputs, a diffusers
UNet2DConditionModel with prompt embeddings through ``cond``."""

import pytest
import torch
from scipy.integrate import quad

from smcdiff.kernels import CallCounter, EDMEuler, EDMHeun, Guided, karras_sigmas
from smcdiff.kernels.cfg import ClassifierFreeGuidance
from smcdiff.models import GaussianMixture

# REFERENCE-STEERING §D.5: p_c = N(1, 0.5²), p_u = N(0, 1), w = 2.
W, MC, VC, MU_, VU = 2.0, 1.0, 0.25, 0.0, 1.0
P_C = GaussianMixture(torch.ones(1), torch.tensor([[MC]]), torch.tensor([VC]))
P_U = GaussianMixture(torch.ones(1), torch.tensor([[MU_]]), torch.tensor([VU]))


def labelled(x, sigma, y):
    """A conditional denoiser: the exact p_c denoiser where y = 1, p_u's where y = 0."""
    return torch.where(y.reshape(-1, 1) > 0.5, P_C.denoise(x, sigma), P_U.denoise(x, sigma))


def test_guided_denoiser_is_the_cfg_combination():
    g = torch.Generator().manual_seed(0)
    x, sigma = torch.randn(6, 1, dtype=torch.float64, generator=g) * 3, torch.linspace(0.1, 5, 6, dtype=torch.float64)
    D = ClassifierFreeGuidance(W, uncond={"y": torch.zeros(1)}).bind(labelled, karras_sigmas(4), 0)
    d_c, d_u = P_C.denoise(x, sigma), P_U.denoise(x, sigma)
    out = D(x, sigma, y=torch.ones(6))
    assert torch.allclose(out, d_u + W * (d_c - d_u), atol=1e-14)
    # The same combination in ε space: ε = (x − D)/σ is affine in D at fixed (x, σ).
    eps = lambda d: (x - d) / sigma[:, None]
    assert torch.allclose(eps(out), eps(d_u) + W * (eps(d_c) - eps(d_u)), atol=1e-12)


def test_cfg_ode_on_gaussians_matches_the_closed_form(one_thread):
    # The PF-ODE with the CFG score is linear: from N(0, σ_max²) it ends at
    # N(∫₀^σmax σ b Φ dσ, Φ(σ_max)² σ_max²) with a, b, Φ of REFERENCE-STEERING §D.5.
    smax = 80.0
    b = lambda s: W * MC / (VC + s * s) + (1 - W) * MU_ / (VU + s * s)
    phi = lambda s: (VC / (VC + s * s)) ** (W / 2) * (VU / (VU + s * s)) ** ((1 - W) / 2)
    mean, var = quad(lambda s: s * b(s) * phi(s), 0, smax, limit=200)[0], phi(smax) ** 2 * smax**2
    assert mean == pytest.approx(1.3739, abs=1e-4) and var == pytest.approx(0.0625, abs=1e-5)
    # The deterministic sampler is an affine map z ↦ αz + β: two particles give β and α exactly.
    sigmas = karras_sigmas(128, 0.002, smax)
    kernel = Guided(EDMHeun(), ClassifierFreeGuidance(W, uncond=torch.zeros(1), key="y"))
    x, g = sigmas[0] * torch.tensor([[0.0], [1.0]], dtype=torch.float64), torch.Generator().manual_seed(0)
    for i in range(128):
        x = kernel(labelled, x, sigmas, i, g, {"y": torch.ones(2)}).x
    beta, alpha = float(x[0]), float(x[1] - x[0])
    # Heun's O(h²) error at 128 steps: measured 1.5e-4 (mean), 2.2e-4 (variance); 32 → 64 → 128 steps
    # shrink it ~4-5× each time.
    assert beta == pytest.approx(mean, abs=1e-3) and alpha**2 == pytest.approx(var, abs=1e-3)
    # ... which is neither the tilted product p_c^w p_u^(1−w) = N(1.142857, 0.142857) nor p_c.
    assert abs(beta - 1.142857) > 0.2 and abs(alpha**2 - 0.142857) > 0.05


def test_one_batched_call_counts_two_evaluations():
    calls = []

    def D(x, sigma, y):
        calls.append(x.shape[0])
        return labelled(x, sigma, y)

    counted = CallCounter(D)
    kernel = Guided(EDMHeun(), ClassifierFreeGuidance(W, uncond=torch.zeros(1), key="y"))
    N, g = 5, torch.Generator().manual_seed(0)
    x = 80 * torch.randn(N, 1, dtype=torch.float64, generator=g)
    out = kernel(counted, x, karras_sigmas(6), 0, g, {"y": torch.ones(N)})
    assert calls == [2 * N, 2 * N]  # Euler + Heun correction, each one call of [uncond, cond]
    assert counted.count == 2 * int(out.nfe.sum())  # 2 network evaluations per guided evaluation


def test_guidance_weights_one_and_zero_use_one_half():
    calls = []

    def D(x, sigma, y):
        calls.append(x.shape[0])
        return labelled(x, sigma, y)

    x, sigma = torch.ones(3, 1, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    for w, want in ((1.0, P_C), (0.0, P_U)):
        out = ClassifierFreeGuidance(w, uncond=torch.zeros(1), key="y").bind(D, None, 0)(x, sigma, y=torch.ones(3))
        assert torch.allclose(out, want.denoise(x, sigma))
    assert calls == [3, 3]


def test_unconditional_inputs_broadcast_and_override():
    seen = {}

    def D(x, sigma, emb, label):
        seen["emb"], seen["label"] = emb, label
        return x * 0 + emb.sum((1, 2))[:, None]

    N, emb = 3, torch.ones(3, 2, 4)
    x, sigma = torch.zeros(N, 1, dtype=torch.float64), torch.ones(N, dtype=torch.float64)
    for uncond in (torch.zeros(2, 4), torch.zeros(1, 2, 4), torch.zeros(3, 2, 4)):
        ClassifierFreeGuidance(2.0, uncond, key="emb").bind(D, None, 0)(x, sigma, emb=emb, label=torch.arange(N))
        assert torch.equal(seen["emb"], torch.cat([torch.zeros(3, 2, 4), emb]))
        assert torch.equal(seen["label"], torch.arange(N).repeat(2))  # no uncond value: duplicated
    # Per-particle unconditional inputs in cond take precedence and never reach the network.
    cfg = ClassifierFreeGuidance(2.0, torch.zeros(2, 4), key="emb")
    out = cfg.bind(D, None, 0)(x, sigma, emb=emb, label=torch.arange(N), **{"uncond.emb": 2 * emb})
    assert torch.equal(seen["emb"][:N], 2 * emb)
    assert torch.allclose(out, torch.full((N, 1), 16 + 2.0 * (8 - 16), dtype=torch.float64))  # D_u = 16, D_c = 8
    # A sigma scalar is broadcast; the dict form replaces several inputs.
    ClassifierFreeGuidance(2.0, {"emb": torch.zeros(2, 4), "label": torch.tensor([7])}).bind(D, None, 0)(
        x, torch.tensor(1.0, dtype=torch.float64), emb=emb, label=torch.arange(N))
    assert seen["label"].tolist() == [7, 7, 7, 0, 1, 2]


def test_bad_input_is_rejected():
    x, sigma = torch.zeros(2, 1, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="unconditional input"):
        ClassifierFreeGuidance(3.0).bind(labelled, None, 0)(x, sigma, y=torch.ones(2))
    with pytest.raises(ValueError, match="no conditional counterpart"):
        ClassifierFreeGuidance(3.0, {"z": torch.zeros(1)}).bind(labelled, None, 0)(x, sigma, y=torch.ones(2))
    with pytest.raises(ValueError, match="shape"):
        ClassifierFreeGuidance(3.0, torch.zeros(3), key="y").bind(labelled, None, 0)(x, sigma, y=torch.ones(2))
    with pytest.raises(ValueError, match="finite"):
        ClassifierFreeGuidance(float("nan"))
    with pytest.raises(TypeError, match="uncond"):
        ClassifierFreeGuidance(2.0, uncond=[0.0])


@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
def test_conditional_unet_prompt_embeddings_cfg_and_sample(one_thread):
    diffusers = pytest.importorskip("diffusers")
    import smcdiff
    from smcdiff.models.diffusers_adapter import from_diffusers

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = diffusers.UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=12, norm_num_groups=4, attention_head_dim=2).eval()
    sched = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    batches = []
    net.register_forward_pre_hook(lambda m, args, kw: batches.append(args[0].shape[0]), with_kwargs=True)
    D = from_diffusers(net, sched, max_batch=4)
    g = torch.Generator().manual_seed(1)
    prompt, empty = torch.randn(1, 5, 12, generator=g), torch.randn(1, 5, 12, generator=g)  # "embeddings"
    cfg = ClassifierFreeGuidance(7.5, uncond=empty)
    # The guided evaluation is D_u + w (D_c − D_u) of two plain adapter calls.
    x, sigma = 3 * torch.randn(3, 4, 8, 8, dtype=torch.float64, generator=g), torch.full((3,), 2.0, dtype=torch.float64)
    d_c = D(x, sigma, encoder_hidden_states=prompt.expand(3, 5, 12))
    d_u = D(x, sigma, encoder_hidden_states=empty.expand(3, 5, 12))
    batches.clear()
    out = cfg.bind(D, None, 0)(x, sigma, encoder_hidden_states=prompt.expand(3, 5, 12))
    assert batches == [4, 2]  # one batched call of 2N = 6, chunked by max_batch = 4
    assert torch.allclose(out, d_u + 7.5 * (d_c - d_u), atol=1e-4)
    # End to end: per-particle prompt embeddings (G, K, L, E) through smcdiff.sample.
    G, K, steps = 2, 2, 4
    counted = CallCounter(D)
    res = smcdiff.sample(counted, D.sigmas(steps), Guided(EDMEuler(), cfg), num_groups=G, num_particles=K,
                         shape=(4, 8, 8), generator=torch.Generator().manual_seed(0),
                         cond={"encoder_hidden_states": torch.randn(G, K, 5, 12, generator=g)})
    assert res.x.shape == (G, K, 4, 8, 8) and res.x.dtype == torch.float64 and bool(torch.isfinite(res.x).all())
    assert counted.count == 2 * G * K * steps  # 2 network evaluations per sample per Euler step
