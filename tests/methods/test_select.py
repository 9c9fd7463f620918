"""Best-of-N and discriminator select ("D-Select"): they pick the argmax, cost K base runs, and with
K = 1 are the base sampler."""

import math

import pytest
import torch

from smcdiff.kernels import EDMHeun, karras_sigmas
from smcdiff.kernels.restart import IMAGENET64_RESTART
from smcdiff.methods import best_of_n, discriminator_select, restart_sampler

from .problems import pair_1d

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_particles_are_independent_base_samples():
    _, model, log_ratio = pair_1d()
    sig = karras_sigmas(12)
    res = discriminator_select(model.denoise, sig, log_ratio=log_ratio, num_samples=3, shape=(1,), generator=gen(2),
                               num_particles=4, S_churn=3.0)
    g = gen(2)
    x = (sig[0] * torch.randn((3, 4, 1), generator=g, dtype=F64)).reshape(12, 1)
    k = EDMHeun(S_churn=3.0)
    for i in range(12):
        x = k(model.denoise, x, sig, i, g).x
    assert torch.equal(res.particles, x.reshape(3, 4, 1))


def test_discriminator_select_picks_the_largest_final_log_ratio():
    _, model, log_ratio = pair_1d()
    G, K, N = 50, 6, 18
    res = discriminator_select(model.denoise, karras_sigmas(N), log_ratio=log_ratio, num_samples=G, shape=(1,),
                               generator=gen(0), num_particles=K)
    ell = log_ratio(res.particles.reshape(-1, 1), torch.full((G * K,), 1e-4, dtype=F64)).reshape(G, K)
    assert torch.equal(res.log_weights, ell)
    best = ell.argmax(1)
    assert torch.equal(res.diagnostics["selected"], best)
    assert torch.equal(res.x, res.particles[torch.arange(G), best])
    assert res.nfe == K * (2 * N - 1) and res.disc_calls == K


def test_best_of_n_with_a_score_picks_the_max_score_particle():
    _, model, log_ratio = pair_1d()
    G, K, N = 40, 5, 10
    seen = {}

    def score(x, **cond):
        seen.update(cond)
        return -(x[:, 0] - 1.5).abs()  # nearest to 1.5

    y = torch.arange(G * K, dtype=F64).reshape(G, K)
    res = best_of_n(lambda x, s, **c: model.denoise(x, s), karras_sigmas(N), log_ratio=log_ratio, score=score,
                    num_samples=G, shape=(1,), generator=gen(1), num_particles=K, cond={"y": y})
    dist = (res.particles[..., 0] - 1.5).abs()
    assert torch.equal(res.x[:, 0], res.particles[torch.arange(G), dist.argmin(1), 0])
    assert torch.equal(seen["y"], y.reshape(-1))  # the score sees each particle's cond
    assert res.nfe == K * (2 * N - 1) and res.disc_calls == K


def test_k1_is_the_base_sampler_and_restart_costs_k_times_99():
    _, model, log_ratio = pair_1d()
    sig = karras_sigmas(18)
    one = discriminator_select(model.denoise, sig, log_ratio=log_ratio, num_samples=4, shape=(1,), generator=gen(3),
                               num_particles=1, sampler="restart")
    base = restart_sampler(model.denoise, sig, restart=IMAGENET64_RESTART, num_samples=4, shape=(1,), generator=gen(3))
    assert torch.equal(one.x, base.x)
    res = discriminator_select(model.denoise, sig, log_ratio=log_ratio, num_samples=4, shape=(1,), generator=gen(3),
                               num_particles=3, sampler="restart")
    assert res.nfe == 3 * 99 and res.disc_calls == 3


def test_d_select_moves_toward_the_data():
    data, model, log_ratio = pair_1d()
    G = 2000
    sig = karras_sigmas(18)
    base = best_of_n(model.denoise, sig, score=lambda x: torch.zeros(x.shape[0], dtype=F64), num_samples=G,
                     shape=(1,), generator=gen(4), num_particles=1)
    sel = discriminator_select(model.denoise, sig, log_ratio=log_ratio, num_samples=G, shape=(1,), generator=gen(4),
                               num_particles=4)
    fb, fs = (data.responsibilities(r.x)[:, 0] for r in (base, sel))
    se = (float(fb.std()) + float(fs.std())) / math.sqrt(G)
    assert float(fs.mean()) > float(fb.mean()) + 5 * se


def test_bad_input():
    _, model, log_ratio = pair_1d()
    kw = dict(num_samples=2, shape=(1,), generator=gen(0))
    sig = karras_sigmas(8)
    with pytest.raises(ValueError, match="score=.* or log_ratio"):
        best_of_n(model.denoise, sig, **kw)
    with pytest.raises(ValueError, match="needs log_ratio"):
        discriminator_select(model.denoise, sig, log_ratio=None, **kw)
    with pytest.raises(TypeError, match="use best_of_n"):
        discriminator_select(model.denoise, sig, log_ratio=log_ratio, score=lambda x: x[:, 0], **kw)
    with pytest.raises(ValueError, match="one value per sample"):
        best_of_n(model.denoise, sig, score=lambda x: x, **kw)
    with pytest.raises(TypeError, match="score must be callable"):
        best_of_n(model.denoise, sig, score=1, **kw)
    with pytest.raises(ValueError, match="num_particles"):
        best_of_n(model.denoise, sig, log_ratio=log_ratio, num_particles=0, **kw)
    with pytest.raises(ValueError, match="unknown sampler"):
        best_of_n(model.denoise, sig, log_ratio=log_ratio, sampler="ddim", **kw)
    with pytest.raises(ValueError, match="final_sigma"):
        best_of_n(model.denoise, sig, log_ratio=log_ratio, final_sigma=-1.0, **kw)
