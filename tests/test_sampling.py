"""smcdiff.sample on exact Gaussian mixtures: plain sampling, SMC posteriors, evidence, bad input."""

import math

import pytest
import torch

import smcdiff
from smcdiff.kernels import EDMHeun, EulerMaruyama, karras_sigmas
from smcdiff.models import GaussianMixture
from smcdiff.resampling import Resampler
from smcdiff.weights import GaussianLikelihood


def mixture():
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.5], [0.0, 2.5]], dtype=torch.float64)
    return GaussianMixture(torch.tensor([0.5, 0.3, 0.2]), means, torch.tensor([0.2, 0.3, 0.15]))


def test_heun_with_exact_denoiser_reproduces_the_mixture():
    gmm = mixture()
    n = 20000
    res = smcdiff.sample(gmm.denoise, karras_sigmas(64), EDMHeun(), num_groups=1, num_particles=n, shape=(2,),
                         generator=torch.Generator().manual_seed(0))
    x = res.x[0]
    assert res.nfe == 127
    # component frequencies via responsibilities: SE of a mean of values in [0, 1] <= 0.5/sqrt(n)
    pi_hat = gmm.responsibilities(x).mean(0)
    assert (pi_hat - gmm.weights).abs().max() < 5 * 0.5 / math.sqrt(n)
    mean = (gmm.weights[:, None] * gmm.means).sum(0)
    cov = sum(w * (c + torch.outer(m - mean, m - mean)) for w, m, c in zip(gmm.weights, gmm.means, gmm.covs))
    se_mean = torch.sqrt(torch.diagonal(cov) / n)
    assert ((x.mean(0) - mean).abs() < 5 * se_mean).all()
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.06, rtol=0)  # ~5 SE of a variance near 2.3 at n = 20k


def test_plain_sampling_equals_a_manual_kernel_loop():
    gmm = mixture()
    sig = karras_sigmas(8)
    k = EDMHeun(S_churn=3)
    res = smcdiff.sample(gmm.denoise, sig, k, num_groups=2, num_particles=5, shape=(2,),
                         generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    x = sig[0] * torch.randn((2, 5, 2), generator=g, dtype=torch.float64)
    x = x.reshape(10, 2)
    for i in range(8):
        x = k(gmm.denoise, x, sig, i, g).x
    torch.testing.assert_close(res.x.reshape(10, 2), x, rtol=0, atol=0)
    assert (res.log_weights == 0).all() and (res.log_evidence == 0).all()


def test_x_init_sets_the_start():
    sig = karras_sigmas(3)
    z = torch.randn(1, 4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seen = []

    def den(x, sigma):
        seen.append(x.clone())
        return torch.zeros_like(x)

    smcdiff.sample(den, sig, EDMHeun(), num_groups=1, num_particles=4, generator=torch.Generator(), x_init=z)
    torch.testing.assert_close(seen[0], (sig[0] * z).reshape(4, 2))


def test_potential_forms():
    sig = karras_sigmas(5)
    gmm = mixture()
    const = lambda x, sigma, x0_hat: torch.full((x.shape[0],), 0.25, dtype=torch.float64)  # noqa: E731
    common = dict(num_groups=1, num_particles=3, shape=(2,), generator=torch.Generator().manual_seed(0))
    diff = smcdiff.sample(gmm.denoise, sig, EDMHeun(), potential=const, **common)
    inc = smcdiff.sample(gmm.denoise, sig, EDMHeun(), potential=const, potential_form="incremental", **common)
    torch.testing.assert_close(diff.log_weights, torch.full((1, 3), 0.25, dtype=torch.float64))
    torch.testing.assert_close(inc.log_weights, torch.full((1, 3), 5 * 0.25, dtype=torch.float64))


def test_difference_weights_telescope_to_the_final_potential():
    gmm = mixture()
    pot = lambda x, sigma, x0_hat: -0.5 * (x0_hat**2).sum(-1) + sigma  # noqa: E731
    res = smcdiff.sample(gmm.denoise, karras_sigmas(6), EDMHeun(S_churn=2), potential=pot, num_groups=3,
                         num_particles=4, shape=(2,), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(res.log_weights, -0.5 * (res.x0_hat**2).sum(-1))
    torch.testing.assert_close(res.potential, res.log_weights)


@pytest.mark.parametrize("kernel", [EDMHeun(S_churn=30), EulerMaruyama()], ids=["heun-churn", "euler-maruyama"])
def test_smc_gaussian_likelihood_recovers_the_exact_posterior(kernel):
    gmm = mixture()
    A = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    y = torch.tensor([0.9], dtype=torch.float64)
    R = torch.tensor([[0.3]], dtype=torch.float64)
    post, logz = gmm.condition(A, y, R)
    steps = 32 if isinstance(kernel, EDMHeun) else 200
    G, K = 48, 256
    res = smcdiff.sample(gmm.denoise, karras_sigmas(steps), kernel, potential=GaussianLikelihood(A, y, R),
                         resampler=Resampler("systematic", 0.5), num_groups=G, num_particles=K, shape=(2,),
                         generator=torch.Generator().manual_seed(11))
    w = res.weights
    # per-group weighted estimates, then mean over independent groups +- 5 standard errors
    pi_g = (w[..., None] * post.responsibilities(res.x)).sum(1)
    mean_g = (w[..., None] * res.x).sum(1)
    exact_mean = (post.weights[:, None] * post.means).sum(0)
    for est, exact in ((pi_g, post.weights), (mean_g, exact_mean)):
        se = est.std(0) / math.sqrt(G)
        # + 0.01: discretisation of the sampler and the O(1/K) bias of self-normalised weights
        assert ((est.mean(0) - exact).abs() < 5 * se + 0.01).all(), (est.mean(0), exact, se)
    ratio = torch.exp(res.log_evidence - logz)
    assert abs(ratio.mean().item() - 1) < 5 * ratio.std().item() / math.sqrt(G) + 0.01
    assert res.resampled.any()


def test_cond_reaches_the_denoiser_and_potential():
    got = {}

    def den(x, sigma, label):
        got["den"] = label.clone()
        return torch.zeros_like(x)

    def pot(x, sigma, x0_hat, label):
        got["pot"] = label.clone()
        return torch.zeros(x.shape[0], dtype=torch.float64)

    labels = torch.arange(6).reshape(2, 3, 1)
    smcdiff.sample(den, karras_sigmas(2), EDMHeun(), potential=pot, num_groups=2, num_particles=3, shape=(1,),
                   generator=torch.Generator(), cond={"label": labels})
    assert torch.equal(got["den"], labels.reshape(6, 1)) and torch.equal(got["pot"], labels.reshape(6, 1))


def test_deterministic_kernel_with_resampling_warns():
    gmm = mixture()
    with pytest.warns(UserWarning, match="deterministic kernel"):
        smcdiff.sample(gmm.denoise, karras_sigmas(3), EDMHeun(), potential=lambda x, s, x0: x[:, 0],
                       resampler=Resampler(), num_particles=4, shape=(2,), generator=torch.Generator())


def test_bad_input():
    gmm = mixture()
    ok = dict(num_groups=1, num_particles=2, shape=(2,), generator=torch.Generator())
    with pytest.raises(ValueError, match="decreasing"):
        smcdiff.sample(gmm.denoise, [0.1, 1.0, 0.0], EDMHeun(), **ok)
    with pytest.raises(ValueError, match="num_particles"):
        smcdiff.sample(gmm.denoise, karras_sigmas(3), EDMHeun(), **{**ok, "num_particles": 0})
    with pytest.raises(TypeError, match="generator"):
        smcdiff.sample(gmm.denoise, karras_sigmas(3), EDMHeun(), **{**ok, "generator": None})
    with pytest.raises(ValueError, match="x_init"):
        smcdiff.sample(gmm.denoise, karras_sigmas(3), EDMHeun(), **ok, x_init=torch.zeros(1, 3, 2))
    with pytest.raises(ValueError, match="shape"):
        smcdiff.sample(gmm.denoise, karras_sigmas(3), EDMHeun(), **{**ok, "shape": None})
    with pytest.raises(ValueError, match="one log-value per sample"):
        smcdiff.sample(gmm.denoise, karras_sigmas(3), EDMHeun(), potential=lambda x, s, x0: x, **ok)
    with pytest.raises(ValueError, match="potential_form"):
        smcdiff.sample(gmm.denoise, karras_sigmas(3), EDMHeun(), potential_form="sum", **ok)
    with pytest.raises(ValueError, match="expected x of shape"):
        smcdiff.sample(gmm.denoise, karras_sigmas(3), EDMHeun(), **{**ok, "shape": (3,)})


def test_history_is_recorded_only_when_asked():
    from smcdiff.weights import Sum

    gmm = mixture()

    def a(x, sigma, x0_hat):
        return -0.5 * (x0_hat**2).sum(-1)

    def b(x, sigma, x0_hat):
        return x0_hat[:, 0]

    common = dict(num_groups=2, num_particles=5, shape=(2,), resampler=Resampler("systematic", 0.7),
                  potential=Sum(a, b))
    plain = smcdiff.sample(gmm.denoise, karras_sigmas(6), EDMHeun(S_churn=3), generator=torch.Generator().manual_seed(0), **common)
    assert plain.history == {}
    res = smcdiff.sample(gmm.denoise, karras_sigmas(6), EDMHeun(S_churn=3), generator=torch.Generator().manual_seed(0),
                         record_history=True, **common)
    h = res.history
    assert set(h) == {"log_weights", "potential", "term.a", "term.b"}
    assert all(v.shape == (6, 2, 5) for v in h.values())
    torch.testing.assert_close(h["term.a"] + h["term.b"], h["potential"])
    torch.testing.assert_close(h["log_weights"][-1], res.log_weights)  # no resampling after the last step
    torch.testing.assert_close(res.named_potentials["a"] + res.named_potentials["b"], res.potential)
    assert torch.equal(res.x, plain.x)  # recording changes nothing
