"""Training loops: the EDM loss against its closed form for a Gaussian, DG's importance-sampled VP
time against its CDF, tiny training runs that learn, determinism by seed.

Statistical checks use fixed seeds and 5 Monte Carlo standard errors (or the KS bound at 0.1 %)."""

import math

import numpy as np
import pytest
import torch

import smcdiff
from smcdiff.kernels.schedules import vp_alpha
from smcdiff.models.pairs import mixture_pair_1d
from smcdiff.models.small_nets import DigitsClassifier, MLPDenoiser, TimeDiscriminator
from smcdiff.models.training import (
    discriminator_loss,
    edm_loss,
    importance_vp_time,
    sample_vp_time,
    train_classifier,
    train_denoiser,
    train_discriminator,
)

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
B0, B1 = 0.1, 20.0


def gen(seed):
    return torch.Generator().manual_seed(seed)


def expected_gaussian_edm_loss(s, d, P_mean=-1.2, P_std=1.2, sd=0.5):
    """E_σ[λ(σ)·d·s²σ²/(s²+σ²)], ln σ ~ N(P_mean, P_std²), by 80-point Gauss–Hermite quadrature."""
    z, w = np.polynomial.hermite_e.hermegauss(80)
    sigma = np.exp(P_mean + P_std * z)
    lam = (sigma**2 + sd**2) / (sigma * sd) ** 2
    return float(np.sum(w * lam * d * s**2 * sigma**2 / (s**2 + sigma**2)) / math.sqrt(2 * math.pi))


@pytest.mark.parametrize("s", [0.5, 1.5])
def test_edm_loss_of_the_exact_gaussian_denoiser_matches_the_closed_form(s):
    d, n = 2, 40_000
    x0 = s * torch.randn(n, d, generator=gen(0), dtype=F64)

    def denoiser(x, sigma):  # E[x0 | x0 + σn] for x0 ~ N(0, s²I)
        return (s**2 / (s**2 + sigma**2))[:, None] * x

    per = edm_loss(denoiser, x0, gen(1), reduction="none")
    assert per.shape == (n,) and per.dtype == F64
    exact = expected_gaussian_edm_loss(s, d)
    if s == 0.5:
        assert exact == pytest.approx(d, rel=1e-12)  # σ_data = s: the EDM weighting makes every σ cost d
    se = float(per.std()) / math.sqrt(n)
    assert abs(float(per.mean()) - exact) < 5 * se
    assert float(edm_loss(denoiser, x0, gen(1))) == pytest.approx(float(per.mean()), rel=1e-12)


def _A(t):
    i = 0.5 * t**2 * (B1 - B0) + t * B0
    return math.log(-math.expm1(-i)) + i


def test_importance_vp_time_is_the_inverse_of_its_cdf():
    t_min = 1e-5
    u = torch.linspace(0, 1, 1001, dtype=F64)
    t = importance_vp_time(u, t_min)
    assert float(t[0]) == pytest.approx(t_min, rel=1e-9) and float(t[-1]) == pytest.approx(1.0, abs=1e-12)
    assert bool((t[1:] > t[:-1]).all()) and float(t.min()) >= t_min and float(t.max()) <= 1.0
    # CDF F(t) = (A(t) − A(t_min)) / (A(1) − A(t_min)); the map is its inverse.
    Z = _A(1.0) - _A(t_min)
    F = torch.tensor([(_A(float(ti)) - _A(t_min)) / Z for ti in t], dtype=F64)
    torch.testing.assert_close(F, u, rtol=0, atol=1e-9)


def test_sampled_vp_times_follow_the_importance_density():
    t_min, n = 1e-5, 20_000
    t = sample_vp_time(n, gen(3), t_min)
    assert t.shape == (n,) and t.dtype == F64 and float(t.min()) >= t_min and float(t.max()) <= 1
    # Kolmogorov–Smirnov against F(t) ∝ ∫ β(t)/(1 − α(t)²) dt (99.9 % bound 1.95/√n).
    Z = _A(1.0) - _A(t_min)
    F = np.array([(_A(float(ti)) - _A(t_min)) / Z for ti in t.sort().values])
    emp = np.arange(1, n + 1) / n
    ks = max(np.max(emp - F), np.max(F - (emp - 1 / n)))
    assert ks < 1.95 / math.sqrt(n)


def test_discriminator_loss_diffuses_to_vp_time_and_is_ln2_at_zero_logit():
    seen = {}

    class Stub:
        def logit(self, x_vp, tau):
            seen["x"], seen["t"] = x_vp, tau
            return torch.zeros(x_vp.shape[0], dtype=torch.float32)

    real, fake = torch.zeros(3000, 2, dtype=F64), torch.zeros(1000, 2, dtype=F64)
    loss = discriminator_loss(Stub(), real, fake, gen(0))
    assert float(loss) == pytest.approx(math.log(2), rel=1e-6)
    # x = 0, so x_t / std(t) = z ~ N(0, I).
    std = torch.sqrt(1 - vp_alpha(seen["t"]) ** 2)
    z = (seen["x"] / std[:, None]).reshape(-1)
    se = 1 / math.sqrt(z.numel())
    assert abs(float(z.mean())) < 5 * se and abs(float(z.var()) - 1) < 5 * math.sqrt(2) * se


def _eval_loss(net, x):
    with torch.no_grad():
        return float(edm_loss(net, x, gen(7)))


def test_training_a_tiny_denoiser_approaches_the_optimal_loss():
    data, _, _ = mixture_pair_1d()
    train, held_out = data.sample(4000, gen(0)), data.sample(4000, gen(5))
    net = MLPDenoiser(1, hidden=32, depth=2, generator=gen(1))
    optimal = _eval_loss(data.denoise, held_out)  # the exact posterior mean: the smallest loss
    init = _eval_loss(net, held_out)
    net, losses = train_denoiser(net, train, steps=300, batch_size=128, lr=3e-3, generator=gen(2))
    assert losses.shape == (300,) and bool(torch.isfinite(losses).all())
    trained = _eval_loss(net, held_out)
    assert optimal < trained and trained - optimal < 0.1 * (init - optimal)


def test_training_a_discriminator_learns_the_log_ratio():
    g = gen(0)
    real = torch.randn(2000, 1, generator=g, dtype=F64)
    fake = torch.randn(2000, 1, generator=g, dtype=F64) + 1
    disc = TimeDiscriminator((1,), hidden=32, generator=gen(1))
    disc, losses = train_discriminator(disc, real, fake, steps=300, batch_size=64, lr=3e-3, generator=gen(2))
    assert float(losses[-50:].mean()) < float(losses[:10].mean())
    # Exact ℓ for N(0, v) vs N(1, v), v = 1 + σ²: (1 − 2x)/(2v), at σ = 0.05.
    x = torch.linspace(-2, 3, 51, dtype=F64)[:, None]
    sigma = 0.05
    exact = (1 - 2 * x[:, 0]) / (2 * (1 + sigma**2))
    with torch.no_grad():
        ell = disc(x, torch.full((51,), sigma, dtype=F64))
    assert float(torch.corrcoef(torch.stack([ell, exact]))[0, 1]) > 0.9
    assert float(ell[0]) > 0 > float(ell[-1])
    # It plugs into DG as the log ratio.
    net = MLPDenoiser(1, hidden=8, depth=1, generator=gen(3))
    res = smcdiff.methods.dg(net, smcdiff.karras_sigmas(4), log_ratio=disc, num_samples=3, shape=(1,), generator=gen(4))
    assert res.x.shape == (3, 1) and bool(torch.isfinite(res.x).all()) and res.disc_calls > 0


def test_training_is_determined_by_the_seed_and_leaves_the_global_rng_alone():
    data = torch.randn(256, 2, generator=gen(0), dtype=F64)
    state = torch.get_rng_state()

    def run(seed, ema=None):
        net = MLPDenoiser(2, hidden=16, depth=2, generator=gen(1))
        return train_denoiser(net, data, steps=15, batch_size=32, generator=gen(seed), ema=ema)

    (a, la), (b, lb), (c, _) = run(2), run(2), run(3)
    assert torch.equal(la, lb)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.inp.weight, c.inp.weight)
    # EMA: a separate copy; with ema = 0 it is the last iterate.
    (e, _), (e0, _) = run(2, ema=0.999), run(2, ema=0.0)
    assert all(torch.equal(p, q) for p, q in zip(e0.state_dict().values(), a.state_dict().values()))
    assert not torch.equal(e.inp.weight, a.inp.weight)
    real, fake = data[:128], data[128:] + 1
    d1, _ = train_discriminator(TimeDiscriminator((2,), hidden=8, generator=gen(1)), real, fake, steps=10,
                                batch_size=16, generator=gen(2))
    d2, _ = train_discriminator(TimeDiscriminator((2,), hidden=8, generator=gen(1)), real, fake, steps=10,
                                batch_size=16, generator=gen(2))
    assert all(torch.equal(p, q) for p, q in zip(d1.state_dict().values(), d2.state_dict().values()))
    assert torch.equal(torch.get_rng_state(), state)


def test_bad_arguments_are_refused():
    net = MLPDenoiser(2, hidden=8, depth=1, generator=gen(0))
    data = torch.zeros(8, 2, dtype=F64)
    with pytest.raises(TypeError, match="torch.Generator"):
        train_denoiser(net, data, steps=1, batch_size=4, generator=[gen(0)])
    with pytest.raises(ValueError, match="batch_size"):
        train_denoiser(net, data, steps=1, batch_size=0, generator=gen(0))
    with pytest.raises(ValueError, match="event shape"):
        train_discriminator(TimeDiscriminator((2,), hidden=8), data, torch.zeros(8, 3), steps=1, batch_size=4,
                            generator=gen(0))
    with pytest.raises(ValueError, match="t_min"):
        importance_vp_time(torch.zeros(1), t_min=0.0)


def _stripes(n, g):
    """Images whose class is the orientation of a bar (0: horizontal, 1: vertical), plus noise."""
    labels = torch.randint(0, 2, (n,), generator=g)
    x = torch.full((n, 1, 8, 8), -1.0)
    pos = torch.randint(1, 7, (n,), generator=g)
    for i in range(n):
        if labels[i] == 0:
            x[i, 0, pos[i], :] = 1.0
        else:
            x[i, 0, :, pos[i]] = 1.0
    return x + 0.3 * torch.randn(x.shape, generator=g), labels


def test_train_classifier_learns_a_separable_task_and_is_seeded():
    x, y = _stripes(400, gen(0))
    x_test, y_test = _stripes(200, gen(1))

    def fit(seed):
        clf = DigitsClassifier(num_classes=2, width=8, feature_dim=8, generator=gen(seed))
        return train_classifier(clf, x, y, steps=150, batch_size=64, lr=3e-3, generator=gen(seed + 1))

    clf, losses = fit(2)
    assert losses.shape == (150,) and losses.dtype == F64
    assert losses[-20:].mean() < 0.5 * losses[:20].mean()
    with torch.no_grad():
        acc = (clf(x_test).argmax(1) == y_test).double().mean()
    # Held-out accuracy far above the 50 % of guessing (the task is trivially separable).
    assert acc > 0.95
    clf2, losses2 = fit(2)
    assert torch.equal(losses, losses2)
    with pytest.raises(ValueError, match="labels must be long"):
        train_classifier(clf, x, y.float(), steps=1, batch_size=4, generator=gen(0))
