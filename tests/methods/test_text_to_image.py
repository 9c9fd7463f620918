"""Text-to-image particle filtering (Liu et al. §5b): every variant end to end on a tiny random-weight
latent diffusion model (UNet2DConditionModel + AutoencoderKL, CFG), with honest costs; K = 1 is the
base sampler; and on a Gaussian mixture the filter's weights target the paper's caption tilt
p(x0)·p_c/Q_c exactly (a closed-form check)."""

import math

import pytest
import torch
from scipy.integrate import quad

import smcdiff
from smcdiff.kernels import karras_sigmas
from smcdiff.methods.text_to_image import (
    SD21_RESTART,
    OccurrenceByEvent,
    object_select,
    pf_detector,
    pf_discriminator,
    pf_hybrid,
    sd21_sigmas,
    t2i_kernel,
)
from smcdiff.models import GaussianMixture

diffusers = pytest.importorskip("diffusers")

from smcdiff.models.latent import from_latent_diffusion
from smcdiff.models.latent_discriminator import LatentDiscriminator, LatentLogRatio
from tests.models import tiny_pipeline as tp

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

CAT, DOG = 17, 18


def color_detector(images):
    """A stand-in detector: p(cat) = mean red, p(dog) = mean green, 0.5 for every other class."""
    p = torch.full((images.shape[0], 91), 0.5, dtype=torch.float64, device=images.device)
    p[:, CAT] = images[:, 0].mean((1, 2)).double().clamp(0.01, 0.99)
    p[:, DOG] = images[:, 1].mean((1, 2)).double().clamp(0.01, 0.99)
    return p


@pytest.fixture(scope="module")
def latent():
    model = from_latent_diffusion(tp.tiny_unet(), tp.tiny_scheduler(), tp.tiny_vae(), max_batch=32)
    calls = []
    model.denoiser.model.register_forward_pre_hook(lambda m, args, kw: calls.append(args[0].shape[0]), with_kwargs=True)
    disc = LatentDiscriminator(tp.tiny_unet())
    torch.nn.init.normal_(disc.head.weight, std=1.0, generator=torch.Generator().manual_seed(0))
    return model, calls, LatentLogRatio(disc, model.denoiser, context="empty")


def _cond(G, K, seed=7):
    emb = torch.randn(2, tp.TOKENS, tp.EMBED, generator=torch.Generator().manual_seed(seed))
    return {"encoder_hidden_states": emb[0].expand(G, K, -1, -1), "uncond.encoder_hidden_states": emb[1].expand(G, K, -1, -1)}


def _gens(G):
    return [torch.Generator().manual_seed(100 + g) for g in range(G)]


STEPS = 12
RESTART_NFE = STEPS + sum(iv.repeats * 2 * (iv.num_steps - 1) for iv in SD21_RESTART)  # Euler main + Heun restarts
EVENTS = sum(iv.repeats for iv in SD21_RESTART)


@pytest.mark.parametrize("fn", [pf_hybrid, pf_detector, pf_discriminator, object_select])
def test_every_variant_end_to_end_with_honest_costs(latent, fn, one_thread):
    model, calls, log_ratio = latent
    G, K = 2, 3
    sigmas = karras_sigmas(STEPS, model.denoiser.sigma_min, model.denoiser.sigma_max)
    calls.clear()
    decodes = model.decoder.decodes
    res = fn(model.denoiser, sigmas, detector=color_detector, objects=[CAT, DOG], decoder=model.decoder,
             log_ratio=log_ratio, num_samples=G, shape=model.shape, generator=_gens(G), cond=_cond(G, K),
             num_particles=K, guidance=7.5)
    assert res.x.shape == (G, *tp.LATENT) and res.particles.shape == (G, K, *tp.LATENT)
    # NFE: K particles × (Euler main steps + Heun restart steps) × 2 (CFG), counted at the network.
    assert res.nfe == K * RESTART_NFE * 2 == sum(calls) / G
    weighted = fn is not object_select
    scored = EVENTS + 1 if weighted else 1                       # events + the final score
    uses_detector = fn is not pf_discriminator
    uses_ratio = fn in (pf_hybrid, pf_discriminator)
    assert res.diagnostics["detector_calls"] == (K * scored if uses_detector else 0)
    assert res.diagnostics["decodes"] == (K * scored if uses_detector else 0)
    assert model.decoder.decodes - decodes == G * K * scored * uses_detector
    assert res.disc_calls == (K * scored if uses_ratio else 0)
    if weighted:
        assert len(res.diagnostics["events"]) == EVENTS and int(res.resampled.sum()) <= G * EVENTS
    # Final selection: the particle with the largest final score.
    score = res.diagnostics["score"]
    assert torch.equal(res.selected, score.argmax(1))
    assert torch.equal(res.x, res.particles[torch.arange(G), res.selected])


def test_the_detr_detector_runs_in_the_filter(latent, tmp_path, one_thread):
    pytest.importorskip("transformers")
    from smcdiff.models.detectors import load_detector

    model, _, _ = latent
    det = load_detector(tp.save_detr(tmp_path / "detr"), resize=24)
    sigmas = karras_sigmas(STEPS, model.denoiser.sigma_min, model.denoiser.sigma_max)
    res = pf_detector(model.denoiser, sigmas, detector=det, objects=[CAT], decoder=model.decoder, num_samples=1,
                      shape=model.shape, generator=_gens(1), cond=_cond(1, 2), num_particles=2, guidance=7.5)
    assert det.calls == 2 * (EVENTS + 1) and torch.isfinite(res.log_weights).all()


def test_one_particle_is_the_base_sampler(latent, one_thread):
    """K = 1: no resampling ever happens and the draws for resampling come from derived streams, so
    the filter's output is the plain guided Restart run, bit for bit (and so is Object-Select's)."""
    model, _, log_ratio = latent
    sigmas = karras_sigmas(STEPS, model.denoiser.sigma_min, model.denoiser.sigma_max)
    G = 2
    x_init = torch.randn(G, 1, *tp.LATENT, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    common = dict(num_samples=G, shape=model.shape, x_init=x_init, cond=_cond(G, 1), num_particles=1, guidance=7.5)
    pf = pf_hybrid(model.denoiser, sigmas, detector=color_detector, objects=[DOG], decoder=model.decoder,
                   log_ratio=log_ratio, generator=_gens(G), **common)
    sel = object_select(model.denoiser, sigmas, detector=color_detector, objects=[DOG], decoder=model.decoder,
                        generator=_gens(G), **common)
    kernel, _ = t2i_kernel(sigmas, guidance=7.5, with_events=False)
    base = smcdiff.sample(model.denoiser, sigmas, kernel, None, None, G, 1, model.shape, _gens(G), x_init, cond=_cond(G, 1))
    assert torch.equal(pf.x, base.x[:, 0]) and torch.equal(sel.x, base.x[:, 0])


# The caption tilt on a Gaussian mixture: "images" are 3×1×1 pixels x0 ∈ [−1, 1], two components at
# x0[0] = ±1 (std 0.1, weights 1/2); the detector sees p(cat) = sigmoid(2·x0[0]) (on the image x0/2 + 1/2).
MIX = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]),
                      torch.tensor([0.01, 0.01]))
OCC, PRIOR = 0.5, 0.2


def sigmoid_detector(images):
    p = torch.full((images.shape[0], 91), 0.5, dtype=torch.float64)
    p[:, CAT] = torch.sigmoid(2 * (2 * images[:, 0, 0, 0].double() - 1))
    return p


def _tilted_right_mass() -> float:
    """∫ N(x; ±1, 0.1²) R(x) dx with R = p/((1 − p)q̃ + p), p = sigmoid(2·clamp(x, −1, 1))."""
    m = 1 - OCC
    q = m * (1 - PRIOR) / (PRIOR + m * (1 - PRIOR))

    def mass(mu):
        def f(x):
            p = 1 / (1 + math.exp(-2 * max(-1.0, min(1.0, x))))
            return math.exp(-0.5 * ((x - mu) / 0.1) ** 2) / (0.1 * math.sqrt(2 * math.pi)) * p / ((1 - p) * q + p)
        return quad(f, mu - 1.5, mu + 1.5, points=[-1.0, 1.0] if mu > 0 else [-1.0], limit=200)[0]

    right, left = mass(1.0), mass(-1.0)
    return right / (right + left)


def test_the_filter_targets_the_caption_tilt_on_a_mixture(one_thread):
    """Pooled over groups, the final importance weights give E_target[1{x0 > 0}] for the target
    p(x0)·p_c/Q_c (the difference-form weights telescope to the final caption term). Truth by
    quadrature: 0.834 (vs 0.5 untilted). Standard error by the delta method over the G independent
    groups (ratio estimator Σ_g A_g / Σ_g B_g); tolerance 4.5 standard errors."""
    G, K = 300, 4
    truth = _tilted_right_mass()
    res = pf_detector(MIX.denoise, sd21_sigmas(12), detector=sigmoid_detector, objects=[CAT],
                      occurrence=torch.tensor([OCC]), prior=PRIOR, num_samples=G, shape=(3, 1, 1),
                      generator=torch.Generator().manual_seed(0), num_particles=K)
    lw = res.log_weights
    w = torch.exp(lw - lw.max())
    f = (res.particles[:, :, 0, 0, 0] > 0).double()
    A, B = (w * f).sum(1), w.sum(1)
    est = float(A.sum() / B.sum())
    se = float((A - est * B).std() / B.mean() / math.sqrt(G))
    assert 0.8 < truth < 0.87          # p/Q ≈ 0.92 near +1, ≈ 0.17 near −1
    print(f"caption tilt: estimate {est:.4f}, truth {truth:.4f}, se {se:.4f}")
    assert abs(est - truth) < 4.5 * se, (est, truth, se)
    assert abs(est - 0.5) > 8 * se                      # the tilt is visible: not the untilted mass
    # The particles alone (unweighted, after resampling) already lean to the tilt's side.
    assert float(f.mean()) > 0.6


def test_occurrence_per_event_and_errors():
    occ = OccurrenceByEvent(torch.tensor([2.0, 0.5]), torch.tensor([[0.1, 0.2], [0.3, 0.4]]))
    sigma = torch.tensor([2.1, 0.45, 0.0], dtype=torch.float64)
    assert torch.allclose(occ(sigma), torch.tensor([[0.1, 0.2], [0.3, 0.4], [0.3, 0.4]], dtype=torch.float64))
    with pytest.raises(ValueError, match="events, objects"):
        OccurrenceByEvent(torch.tensor([1.0]), torch.zeros(2, 2))
    s = karras_sigmas(STEPS, 0.03, 14.6)
    with pytest.raises(ValueError, match="log_ratio"):
        pf_hybrid(MIX.denoise, s, detector=sigmoid_detector, objects=[CAT], num_samples=1, shape=(3, 1, 1),
                  generator=torch.Generator())
    with pytest.raises(ValueError, match="detector"):
        pf_detector(MIX.denoise, s, num_samples=1, shape=(3, 1, 1), generator=torch.Generator())
    with pytest.raises(ValueError, match="select"):
        pf_detector(MIX.denoise, s, detector=sigmoid_detector, objects=[CAT], num_samples=1, shape=(3, 1, 1),
                    generator=torch.Generator(), select="best")
    with pytest.raises(ValueError, match="resample_at"):
        t2i_kernel(s, "restart", resample_at=(3,))


def test_paper_configuration():
    """SD 2.1 (REFERENCE §5b): σ from σ(1) ≈ 14.46 to σ(10⁻³) ≈ 0.0292 of the continuous scaled-linear
    schedule, 29 Euler main steps + 6 restart repeats of 3 Heun steps = 65 NFE per particle and 6
    resampling events; the EDM variant resamples at the start of steps 10, 13, 16, 19."""
    s = sd21_sigmas()
    assert len(s) == 30 and float(s[0]) == pytest.approx(14.462, abs=1e-3) and float(s[-2]) == pytest.approx(0.02920, abs=1e-4)
    kernel, events = t2i_kernel(s)
    assert len(events) == 6 and kernel.num_steps(s) == 29 + 6 * 3
    from smcdiff.methods.text_to_image import SD21_EDM

    edm = karras_sigmas(SD21_EDM["num_steps"], 0.0292, 14.6)
    _, events = t2i_kernel(edm, "edm", resample_at=SD21_EDM["resample_at"], S_churn=SD21_EDM["S_churn"],
                           S_min=SD21_EDM["S_min"], S_max=SD21_EDM["S_max"])
    assert sorted(events.values()) == [10, 13, 16, 19]
