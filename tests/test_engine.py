"""The generic Feynman–Kac engine against closed-form answers (Kalman filter evidence)."""

import math

import pytest
import torch

from smcdiff import engine
from smcdiff.engine import SMCFailedError
from smcdiff.resampling import Resampler

# A linear-Gaussian state-space model: x_0 ~ N(0, P0), x_t = a x_{t-1} + N(0, Q), y_t = x_t + N(0, Rv).
A_COEF, Q, RV, P0 = 0.9, 0.5, 0.4, 1.0
YS = [0.3, -0.5, 1.2, 0.8, 0.1, -1.0, 0.4, 2.0]


def normal_logpdf(y, mean, var):
    return -0.5 * (y - mean) ** 2 / var - 0.5 * math.log(2 * math.pi * var)


def kalman_log_evidence(ys):
    mean, var, logz = 0.0, P0, 0.0
    for t, y in enumerate(ys):
        if t > 0:
            mean, var = A_COEF * mean, A_COEF**2 * var + Q
        logz += normal_logpdf(y, mean, var + RV)
        gain = var / (var + RV)
        mean, var = mean + gain * (y - mean), (1 - gain) * var
    return logz


class LinearGaussian:
    """Bootstrap particle filter: move draws from the transition, the potential is p(y_t | x_t)."""

    def __init__(self, ys):
        self.ys = ys
        self.num_steps = len(ys)

    def init(self, G, K, generator):
        return torch.zeros(G, K, dtype=torch.float64)

    def move(self, t, x, generator):
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        if t == 0:
            return math.sqrt(P0) * noise
        return A_COEF * x + math.sqrt(Q) * noise

    def log_potential(self, t, x_prev, x):
        return normal_logpdf(self.ys[t], x, RV)


@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0])
def test_log_evidence_matches_kalman(threshold):
    # Z_hat is unbiased for Z, so mean_g exp(logZ_hat_g - logZ) = 1 within a few standard errors.
    G, K = 400, 256
    res = engine.run(LinearGaussian(YS), G, K, Resampler("systematic", threshold), torch.Generator().manual_seed(1))
    exact = kalman_log_evidence(YS)
    ratio = torch.exp(res.log_evidence - exact)
    se = ratio.std() / math.sqrt(G)
    assert abs(ratio.mean().item() - 1.0) < 5 * se.item() + 1e-12
    if threshold > 0:
        # with resampling the log-scale estimate is close too (its bias is O(T/K) for K = 256);
        # without, it is plain importance sampling over 8 steps, whose log-scale bias is large.
        assert abs(res.log_evidence.mean().item() - exact) < 0.05
    # the increments sum to the evidence
    torch.testing.assert_close(res.log_evidence_increments.sum(0), res.log_evidence)


def test_skipped_resampling_keeps_weights():
    # With resampling off the estimate is plain importance sampling: log mean_k exp(sum_t log G_t).
    model = LinearGaussian(YS[:3])
    gen = torch.Generator().manual_seed(3)
    res = engine.run(model, 5, 64, Resampler("systematic", 0.0), gen)
    assert not res.resampled.any()
    gen = torch.Generator().manual_seed(3)
    x = model.init(5, 64, gen)
    total = torch.zeros(5, 64, dtype=torch.float64)
    for t in range(3):
        x = model.move(t, x, gen)
        total += model.log_potential(t, None, x)
    torch.testing.assert_close(res.log_weights, total)
    torch.testing.assert_close(res.log_evidence, torch.logsumexp(total, 1) - math.log(64))


def test_first_step_is_weighted():
    # One step: the weight is exactly the first potential (no off-by-one).
    model = LinearGaussian(YS[:1])
    res = engine.run(model, 2, 10, Resampler("systematic", 1.0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(res.log_weights, normal_logpdf(YS[0], res.x, RV))
    assert res.ess.shape == (1, 2) and not res.resampled.any()


def test_records_have_documented_shapes_and_ancestors_follow_particles():
    model = LinearGaussian(YS)
    res = engine.run(model, 3, 7, Resampler("multinomial", 1.0), torch.Generator().manual_seed(0))
    T = len(YS)
    assert res.ess.shape == (T, 3) and res.resampled.shape == (T, 3)
    assert res.ancestors.shape == (T, 3, 7) and res.log_evidence.shape == (3,)
    assert res.resampled[:-1].all() and not res.resampled[-1].any()
    assert ((res.ess >= 1 - 1e-9) & (res.ess <= 7 + 1e-9)).all()
    torch.testing.assert_close(res.weights.sum(-1), torch.ones(3, dtype=torch.float64))


def test_dict_state_extras_follow_their_particle():
    class Tagged:
        num_steps = 3

        def init(self, G, K, generator):
            tag = torch.arange(K, dtype=torch.float64).expand(G, K).clone()
            return {"x": tag.clone(), "tag": tag}

        def move(self, t, x, generator):
            return {"x": x["x"] + 0.0, "tag": x["tag"]}

        def log_potential(self, t, x_prev, x):
            return -((x["x"] - 3.0) ** 2)  # favours particle 3

    res = engine.run(Tagged(), 2, 8, Resampler("systematic", 1.0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(res.x["x"], res.x["tag"])


def test_all_minus_inf_raises_naming_the_step():
    class Dies(LinearGaussian):
        def log_potential(self, t, x_prev, x):
            lp = super().log_potential(t, x_prev, x)
            return torch.full_like(lp, -math.inf) if t == 2 else lp

    with pytest.raises(SMCFailedError, match="step 2"):
        engine.run(Dies(YS), 2, 16, Resampler("systematic", 0.5), torch.Generator().manual_seed(0))


def test_nan_potential_raises():
    class Nan(LinearGaussian):
        def log_potential(self, t, x_prev, x):
            return torch.full_like(x, math.nan)

    with pytest.raises(SMCFailedError, match="NaN"):
        engine.run(Nan(YS), 1, 4, None, torch.Generator().manual_seed(0))


def test_minus_inf_for_some_particles_is_allowed():
    class Half(LinearGaussian):
        def log_potential(self, t, x_prev, x):
            lp = super().log_potential(t, x_prev, x)
            return torch.where(x > 0, lp, torch.full_like(lp, -math.inf))

    res = engine.run(Half(YS[:2]), 2, 256, Resampler("systematic", 0.5), torch.Generator().manual_seed(0))
    assert torch.isfinite(res.log_evidence).all()
    assert (res.x[torch.isfinite(res.log_weights)] > 0).all()


def test_bad_input():
    model = LinearGaussian(YS)
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="num_particles"):
        engine.run(model, 1, 0, None, gen)
    with pytest.raises(ValueError, match="num_groups"):
        engine.run(model, 0, 1, None, gen)
    with pytest.raises(TypeError, match="missing log_potential"):
        engine.run(object.__new__(type("M", (), {"num_steps": 1, "init": 0, "move": 0})), 1, 1, None, gen)
    with pytest.raises(TypeError, match="global RNG"):
        engine.run(model, 1, 1, None, None)

    class WrongShape(LinearGaussian):
        def log_potential(self, t, x_prev, x):
            return x[:, 0]

    with pytest.raises(ValueError, match=r"\(G, K\)"):
        engine.run(WrongShape(YS), 2, 3, None, gen)


def test_k1_resampling_changes_nothing():
    # Resampling draws from its own stream: with K = 1 the particles are those of the model alone.
    a = engine.run(LinearGaussian(YS), 3, 1, Resampler("multinomial", 1.0), torch.Generator().manual_seed(5))
    b = engine.run(LinearGaussian(YS), 3, 1, None, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)
    torch.testing.assert_close(a.log_evidence, b.log_evidence)


def test_callback_sees_every_step():
    seen = []
    engine.run(LinearGaussian(YS), 2, 4, Resampler("systematic", 0.5), torch.Generator().manual_seed(0),
               callback=lambda info: seen.append((info.t, info.log_weights.shape, info.ess.shape)))
    assert seen == [(t, (2, 4), (2,)) for t in range(len(YS))]


@pytest.mark.parametrize("rc", [engine.RejectionControl(quantile=0.5, max_rounds=2000), engine.RejectionControl(log_c=-5.0, max_rounds=2000)],
                         ids=["quantile", "fixed-c"])
def test_rejection_control_keeps_the_evidence_unbiased(rc):
    # Haldane's estimate of the acceptance probability keeps Z_hat unbiased (Kalman check again).
    G, K = 300, 64
    res = engine.run(LinearGaussian(YS), G, K, Resampler("systematic", 0.5), torch.Generator().manual_seed(2),
                     rejection_control=rc)
    exact = kalman_log_evidence(YS)
    ratio = torch.exp(res.log_evidence - exact)
    assert abs(ratio.mean().item() - 1.0) < 5 * ratio.std().item() / math.sqrt(G)
    assert res.accept_rate.shape == (len(YS), G)
    assert ((res.accept_rate > 0) & (res.accept_rate <= 1)).all()


def test_rejection_control_moves_particles_towards_high_weight():
    # One step, prior N(0, 1), potential favouring x > 1: with c at the median weight the
    # accepted particles have a larger mean than the raw proposals.
    model = LinearGaussian([3.0])
    plain = engine.run(model, 1, 4000, None, torch.Generator().manual_seed(0))
    rc = engine.run(model, 1, 4000, None, torch.Generator().manual_seed(0),
                    rejection_control=engine.RejectionControl(quantile=0.5))
    assert rc.x.mean() > plain.x.mean() + 0.2
    # the weighted estimates of E[x | y] agree (both consistent): posterior mean = y * P0 / (P0 + RV)
    exact = 3.0 * P0 / (P0 + RV)
    for res in (plain, rc):
        est = (res.weights * res.x).sum().item()
        assert abs(est - exact) < 0.1


def test_resample_steps_restricts_resampling():
    res = engine.run(LinearGaussian(YS), 2, 8, Resampler("systematic", 1.0), torch.Generator().manual_seed(0),
                     resample_steps=[1, 4])
    assert res.resampled[:, 0].nonzero().flatten().tolist() == [1, 4]
    with pytest.raises(ValueError, match="resample_steps"):
        engine.run(LinearGaussian(YS), 2, 8, Resampler(), torch.Generator(), resample_steps=[99])
