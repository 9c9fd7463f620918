"""DG / EDM-G++ and SEDM-G++ on exact mixtures."""

import math

import pytest
import torch

import smcdiff
from smcdiff.kernels import EDMHeun, karras_sigmas
from smcdiff.kernels.guidance import EpsilonScaling, Guided
from smcdiff.methods import dg, sedm
from tests.methods.problems import pair_2d, zero_ratio

F64 = torch.float64


def base_sampler(denoiser, sig, z, seed, kernel=None):
    res = smcdiff.sample(denoiser, sig, kernel or EDMHeun(), num_groups=1, num_particles=z.shape[0],
                         generator=torch.Generator().manual_seed(seed), x_init=z[None])
    return res.x[0]


@pytest.mark.parametrize("log_ratio", [None, zero_ratio], ids=["none", "zero"])
def test_without_a_signal_dg_is_the_edm_sampler_bit_for_bit(log_ratio):
    _, model, _ = pair_2d()
    sig = karras_sigmas(18)
    z = torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    out = dg(model.denoise, sig, log_ratio=log_ratio, num_samples=200, shape=(2,),
             generator=torch.Generator().manual_seed(1), x_init=z)
    assert torch.equal(out.x, base_sampler(model.denoise, sig, z, 1))
    assert out.nfe == 35
    # default window tau >= 0.01: guidance on steps 0-14 of 18, one forward+backward each
    assert out.disc_calls == (15 if log_ratio else 0)


def test_dg_with_exact_ratio_samples_the_data_not_the_model():
    data, model, ell = pair_2d()
    n = 4000
    res = dg(model.denoise, karras_sigmas(48), log_ratio=ell, num_samples=n, shape=(2,),
             generator=torch.Generator().manual_seed(2), w1=1.0, w2=1.0, time_min=0.0)
    pi = data.responsibilities(res.x).mean(0)
    # SE of a mean of responsibilities (values in [0, 1]) is at most 0.5/sqrt(n); + 0.01 for Heun
    # discretisation at 48 steps (the plain sampler on the data denoiser is within 0.005 here).
    assert (pi - data.weights).abs().max() < 5 * 0.5 / math.sqrt(n) + 0.01
    base = dg(model.denoise, karras_sigmas(48), num_samples=n, shape=(2,), generator=torch.Generator().manual_seed(2))
    assert (data.responsibilities(base.x).mean(0) - data.weights).abs().max() > 0.3
    assert res.nfe == 95 and res.disc_calls == 95


def test_dg_default_weights_move_towards_the_data():
    # DG's defaults (w1 = 2, w2 = 0: effective weight 1 in the Heun update, off below τ = 0.01) are
    # only an approximation of the exact correction: the weights move most of the way.
    data, model, ell = pair_2d()
    kw = dict(num_samples=3000, shape=(2,), generator=torch.Generator().manual_seed(3))
    res = dg(model.denoise, karras_sigmas(18), log_ratio=ell, **kw)
    base = dg(model.denoise, karras_sigmas(18), **kw)
    err = (data.responsibilities(res.x).mean(0) - data.weights).abs().max()
    base_err = (data.responsibilities(base.x).mean(0) - data.weights).abs().max()
    assert err < 0.5 * base_err


def test_boosting_doubles_guidance_where_the_ratio_is_negative():
    # ℓ(x) = -5 + a·x1 is negative here: at step 0 (even) the guidance weight doubles.
    a = 0.3

    def ell(x, sigma):
        return -5.0 + a * x[:, 0]

    _, model, _ = pair_2d()
    sig = torch.tensor([2.0, 1.0, 0.0], dtype=F64)
    z = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    boosted = dg(model.denoise, sig, log_ratio=ell, num_samples=3, shape=(2,), generator=torch.Generator().manual_seed(5),
                 x_init=z, w1=1.0, time_min=0.0, boosting=True)
    plain_w2 = dg(model.denoise, sig, log_ratio=ell, num_samples=3, shape=(2,), generator=torch.Generator().manual_seed(5),
                  x_init=z, w1=2.0, time_min=0.0, boosting=False)
    # step 0 doubles w1 = 1 to 2; step 1 (odd) does not double but is the last Euler step, where a
    # constant gradient shifts x by w·σ·a·σ/σ... compare only the effect of step 0 by making step 1 identical:
    plain_1 = dg(model.denoise, sig, log_ratio=ell, num_samples=3, shape=(2,), generator=torch.Generator().manual_seed(5),
                 x_init=z, w1=1.0, time_min=0.0, boosting=False)
    # the doubled first step moves x1 further along +a than w1 = 1 and no further than w1 = 2 throughout
    assert (boosted.x[:, 0] > plain_1.x[:, 0]).all()
    assert (boosted.x[:, 0] < plain_w2.x[:, 0]).all()
    assert (boosted.diagnostics["log_ratio"] < 0).all()


def test_sedm_defaults_and_pure_epsilon_scaling():
    data, model, ell = pair_2d()
    sig = karras_sigmas(18)
    z = torch.randn(100, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    a = sedm(model.denoise, sig, log_ratio=ell, num_samples=100, shape=(2,), generator=torch.Generator().manual_seed(1), x_init=z)
    b = dg(model.denoise, sig, log_ratio=ell, num_samples=100, shape=(2,), generator=torch.Generator().manual_seed(1), x_init=z,
           eps_scaler=1.004, w1=1.67)
    assert torch.equal(a.x, b.x)
    es = sedm(model.denoise, sig, num_samples=100, shape=(2,), generator=torch.Generator().manual_seed(1), x_init=z)
    ref = base_sampler(model.denoise, sig, z, 1, kernel=Guided(EDMHeun(), EpsilonScaling(1.004)))
    assert torch.equal(es.x, ref)
    with pytest.raises(ValueError, match="w2"):
        sedm(model.denoise, sig, num_samples=1, shape=(2,), generator=torch.Generator(), w2=1.0)


def test_dg_bad_input():
    _, model, ell = pair_2d()
    with pytest.raises(ValueError, match="num_samples"):
        dg(model.denoise, karras_sigmas(4), log_ratio=ell, num_samples=0, shape=(2,), generator=torch.Generator())
    with pytest.raises(ValueError, match="decreasing"):
        dg(model.denoise, [1.0, 2.0, 0.0], log_ratio=ell, num_samples=1, shape=(2,), generator=torch.Generator())
    with pytest.raises(ValueError, match="x_init"):
        dg(model.denoise, karras_sigmas(4), num_samples=2, shape=(2,), generator=torch.Generator(), x_init=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="S_churn"):
        dg(model.denoise, karras_sigmas(4), num_samples=2, shape=(2,), generator=torch.Generator(), S_churn=-1)
