"""Reward steering on images (FK steering, Singhal et al.) with rewards on the decoded x̂0: end to end on
a tiny latent diffusion model with CFG (honest NFE, reward calls and VAE decodes), and the target
p(x0)·exp(λ r(image(x0))) checked against quadrature on a Gaussian mixture, for the "diff" and "max"
potentials (the latter needs the final correction)."""

import math

import pytest
import torch
from scipy.integrate import quad

from smcdiff.kernels import EulerMaruyama, Guided, karras_sigmas
from smcdiff.kernels.cfg import ClassifierFreeGuidance
from smcdiff.methods.reward_steering import evaluation_steps, fk_steering
from smcdiff.models import GaussianMixture
from smcdiff.models.latent import Decoded
from smcdiff.weights.image_rewards import ColorReward

diffusers = pytest.importorskip("diffusers")

from smcdiff.models.latent import from_latent_diffusion
from tests.models import tiny_pipeline as tp

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


@pytest.mark.parametrize("potential", ["diff", "max"])
def test_fk_steering_on_a_latent_model_with_cfg(potential, one_thread):
    model = from_latent_diffusion(tp.tiny_unet(), tp.tiny_scheduler(), tp.tiny_vae(), max_batch=16)
    calls = []
    model.denoiser.model.register_forward_pre_hook(lambda m, args, kw: calls.append(args[0].shape[0]), with_kwargs=True)
    G, K, steps, lam = 2, 3, 8, 4.0
    red = model.decoded(ColorReward((1.0, 0.0, 0.0)))
    emb = torch.randn(2, tp.TOKENS, tp.EMBED, generator=torch.Generator().manual_seed(1))
    cond = {"encoder_hidden_states": emb[0].expand(G, K, -1, -1), "uncond.encoder_hidden_states": emb[1].expand(G, K, -1, -1)}
    sigmas = karras_sigmas(steps, model.denoiser.sigma_min, model.denoiser.sigma_max)
    res = fk_steering(model.denoiser, sigmas, reward=lambda x0, **c: lam * red(x0, **c), num_samples=G,
                      shape=model.shape, generator=[torch.Generator().manual_seed(s) for s in range(G)],
                      num_particles=K, potential=potential, interval=3, window=(1, 6),
                      kernel=Guided(EulerMaruyama(), ClassifierFreeGuidance(7.5)), cond=cond)
    S = evaluation_steps(steps, 3, (1, 6))
    assert sorted(S) == [1, 4, 7]
    assert res.nfe == K * steps * 2 == sum(calls) / G            # CFG: 2 per guided evaluation
    final_rescore = potential != "diff"                           # max: r(x0) re-read for the final correction
    assert res.disc_calls == K * (len(S) + final_rescore)
    assert model.decoder.decodes == G * K * (len(S) + final_rescore)
    assert res.x.shape == (G, *tp.LATENT) and torch.isfinite(res.log_weights).all()


# Pixel "images" 3×1×1, x0 ∈ [−1, 1]: components at x0[0] = ±1 (std 0.1), weights 1/2. Reward: the
# colour reward toward red on the image x0/2 + 1/2; channels 1 and 2 contribute the same factor to both
# components, so the tilted mass of the right component is a 1-D quadrature over channel 0.
MIX = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]),
                      torch.tensor([0.01, 0.01]))
LAM = 2.0


def _tilted_right_mass() -> float:
    def mass(mu):
        def f(x):
            c = max(0.0, min(1.0, x / 2 + 0.5))
            return math.exp(-0.5 * ((x - mu) / 0.1) ** 2 - LAM * (c - 1) ** 2)
        return quad(f, mu - 1.5, mu + 1.5, points=[1.0] if mu > 0 else [-1.0], limit=200)[0]

    return mass(1.0) / (mass(1.0) + mass(-1.0))


@pytest.mark.parametrize("potential", ["diff", "max"])
def test_reward_steering_targets_the_image_reward_tilt(potential, one_thread):
    """Pooled final weights over G independent groups estimate E_target[1{x0 > 0}] for
    p(x0)·exp(λ r(x0/2 + 1/2)); truth by quadrature ≈ 0.88 (0.5 untilted). Standard error of the
    ratio estimator by the delta method over groups; tolerance 4.5 standard errors."""
    G, K = 300, 4
    truth = _tilted_right_mass()
    red = Decoded(ColorReward((1.0, 0.0, 0.0)), None)
    res = fk_steering(MIX.denoise, karras_sigmas(16, 0.01, 20.0), reward=lambda x0, **c: LAM * red(x0), num_samples=G,
                      shape=(3, 1, 1), generator=torch.Generator().manual_seed(0), num_particles=K,
                      potential=potential, interval=3)
    w = torch.exp(res.log_weights - res.log_weights.max())
    f = (res.particles[:, :, 0, 0, 0] > 0).double()
    A, B = (w * f).sum(1), w.sum(1)
    est = float(A.sum() / B.sum())
    se = float((A - est * B).std() / B.mean() / math.sqrt(G))
    print(f"reward tilt ({potential}): estimate {est:.4f}, truth {truth:.4f}, se {se:.4f}")
    assert 0.85 < truth < 0.9
    assert abs(est - truth) < 4.5 * se
    assert abs(est - 0.5) > 8 * se
