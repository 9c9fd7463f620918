import math

import pytest
import torch

import smcdiff
from smcdiff.models import GaussianMixture
from smcdiff.weights import RewardPotential

GMM = GaussianMixture(torch.tensor([0.4, 0.6]), torch.tensor([[-1.5], [1.0]]), torch.tensor([0.2, 0.1]))
LAM = 1.5
SIGMAS = smcdiff.karras_sigmas(4)


def reward(x0_hat):
    return x0_hat[:, 0] - 0.3 * x0_hat[:, 0] ** 2


def _run(form, G=2, K=8):
    x_init = torch.randn(G, K, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    V = RewardPotential(reward, form=form, lam=LAM)
    res = smcdiff.sample(GMM.denoise, SIGMAS, smcdiff.kernels.EDMHeun(), V, num_groups=G, num_particles=K,
                         x_init=x_init, potential_form=V.potential_form, generator=torch.Generator().manual_seed(0))
    return res, x_init


def test_difference_form_telescopes_to_final_reward():
    res, _ = _run("difference")
    assert res.potential is not None
    final = LAM * reward(res.x.reshape(-1, 1)).reshape(2, 8)
    # The last Heun step to sigma = 0 lands on x0_hat, so lambda r(x0_hat) is lambda r(x0).
    torch.testing.assert_close(res.log_weights, final, rtol=0, atol=1e-10)
    torch.testing.assert_close(res.log_weights, LAM * reward(res.x0_hat.reshape(-1, 1)).reshape(2, 8), rtol=0, atol=1e-14)


def test_current_form_accumulates_every_step():
    res, x_init = _run("current")
    # Hand loop with the same deterministic kernel: the log-weight is lambda * sum_t r(x0_hat_t).
    kernel, g = smcdiff.kernels.EDMHeun(), torch.Generator().manual_seed(0)
    x = SIGMAS[0] * x_init.reshape(-1, 1)
    acc = torch.zeros(16, dtype=torch.float64)
    for i in range(len(SIGMAS) - 1):
        out = kernel(GMM.denoise, x, SIGMAS, i, g)
        acc = acc + LAM * reward(out.x0_hat)
        x = out.x
    torch.testing.assert_close(res.x.reshape(-1, 1), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(res.log_weights.reshape(-1), acc, rtol=0, atol=1e-12)
    # ... which differs from the telescoped final reward (the test can tell the forms apart).
    assert (res.log_weights.reshape(-1) - LAM * reward(x)).abs().max() > 0.1


@pytest.mark.parametrize("form", ["max", "sum"])
def test_running_forms_match_a_hand_loop(form):
    # FK steering's "max"/"sum": log w_t += λ·max_{s<=t} r_s (or Σ_{s<=t} r_s); the running
    # statistic follows the particle (here no resampling, deterministic kernel).
    res, x_init = _run(form)
    kernel, g = smcdiff.kernels.EDMHeun(), torch.Generator().manual_seed(0)
    x = SIGMAS[0] * x_init.reshape(-1, 1)
    run = None
    acc = torch.zeros(16, dtype=torch.float64)
    for i in range(len(SIGMAS) - 1):
        out = kernel(GMM.denoise, x, SIGMAS, i, g)
        r = LAM * reward(out.x0_hat)
        run = r if run is None else (torch.maximum(run, r) if form == "max" else run + r)
        acc = acc + run
        x = out.x
    torch.testing.assert_close(res.log_weights.reshape(-1), acc, rtol=0, atol=1e-12)
    torch.testing.assert_close(res.potential.reshape(-1), run, rtol=0, atol=1e-12)


def test_running_statistic_follows_resampled_particles():
    # Each particle carries an integer tag (as cond, which follows it through resampling) and its
    # reward is its tag, so a correct running sum after t+1 steps is λ·(t+1)·tag: an integer
    # multiple of λ(t+1). A running sum mixed across lineages (t·a + b with a != b) is not.
    G, K = 4, 16
    tags = torch.arange(K, dtype=torch.float64).expand(G, K).reshape(G, K, 1).clone()
    V = RewardPotential(lambda x0_hat, tag: tag[:, 0], form="sum", lam=LAM)
    res = smcdiff.sample(GMM.denoise, SIGMAS, smcdiff.kernels.EDMHeun(S_churn=5), V, num_groups=G, num_particles=K,
                         shape=(1,), resampler=smcdiff.Resampler("multinomial", 1.0), potential_form="incremental",
                         generator=torch.Generator().manual_seed(3), record_history=True, cond={"tag": tags})
    pots = res.history["potential"]  # (T, G, K), before resampling at each step
    assert pots.shape == (4, G, K) and res.resampled[:-1].all()
    for t in range(4):
        q = pots[t] / (LAM * (t + 1))
        torch.testing.assert_close(q, q.round(), rtol=0, atol=1e-9)
    # and the weights are the sums of the running sums along each lineage
    assert torch.isfinite(res.log_weights).all()


def test_forms_map_to_sampler_forms_and_same_value():
    x0 = torch.linspace(-2, 2, 5, dtype=torch.float64)[:, None]
    s = torch.ones(5, dtype=torch.float64)
    a, b = RewardPotential(reward, "difference", 2.0), RewardPotential(reward, "current", 2.0)
    assert (a.potential_form, b.potential_form) == ("difference", "incremental")
    torch.testing.assert_close(a(x0, s, x0), 2.0 * reward(x0))
    assert torch.equal(a(x0, s, x0), b(x0, s, x0))


def test_lam_zero_is_exactly_zero_without_calling_reward():
    def bad(x0_hat):
        raise AssertionError("reward must not be called when lam == 0")
    x0 = torch.zeros(3, 1, dtype=torch.float64)
    assert torch.equal(RewardPotential(bad, lam=0.0)(x0, torch.ones(3), x0), torch.zeros(3, dtype=torch.float64))


def test_cond_forwarded_and_neg_inf_allowed():
    V = RewardPotential(lambda x0_hat, label: torch.where(label > 0, 0.0, -math.inf).double(), lam=3.0)
    x0 = torch.zeros(2, 1, dtype=torch.float64)
    got = V(x0, torch.ones(2), x0, label=torch.tensor([1, 0]))
    assert got.tolist() == [0.0, -math.inf]


@pytest.mark.parametrize("kwargs, err, msg", [
    (dict(form="median"), ValueError, "form must be one of"),
    (dict(form="Sum"), ValueError, "form must be one of"),
    (dict(lam=math.nan), ValueError, "finite"),
    (dict(lam="1"), ValueError, "finite"),
])
def test_bad_construction(kwargs, err, msg):
    with pytest.raises(err, match=msg):
        RewardPotential(reward, **kwargs)
    with pytest.raises(TypeError, match="callable"):
        RewardPotential(None)


def test_wrong_reward_shape():
    x0 = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"reward of 'reward' must return .* shape \(3,\)"):
        RewardPotential(lambda x0_hat: x0_hat)(x0, torch.ones(3), x0)
