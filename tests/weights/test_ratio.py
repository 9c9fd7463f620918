import math

import pytest
import torch

from smcdiff.models import GaussianMixture
from smcdiff.weights import DG_CLIP, PF_CLIP, DensityRatio, log_ratio_from_prob

# The DG clip case of the parity fixtures (dg_discriminator_32_uncond.pt, `clip_case`): float32 head
# logits and the reference log-ratio, sigmoid -> clip(1e-5) -> log(d / (1 - d)) all in float32.
CLIP_LOGITS = [24.098506927490234, -11.903482437133789, 9.493537902832031, 6.794309616088867,
               -3.6096954345703125, -9.716228485107422, -3.0156784057617188, -4.225986480712891]
CLIP_LOG_RATIO = [11.511558532714844, -11.51291561126709, 9.493420600891113, 6.794344425201416,
                  -3.6096954345703125, -9.716228485107422, -3.0156784057617188, -4.225986480712891]

DATA = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-1.0, 0.0], [1.5, 0.5]]), torch.tensor([0.05, 0.2]))
MODEL = GaussianMixture(torch.tensor([0.8, 0.2]), torch.tensor([[-1.2, 0.1], [1.5, 0.5]]), torch.tensor([0.1, 0.2]))


def _points(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.randn(n, 2, dtype=torch.float64, generator=g)
    sigma = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(math.log(0.01), math.log(5.0), generator=g))
    return x, sigma


def test_float32_clip_case_matches_reference_bit_for_bit():
    logits = torch.tensor(CLIP_LOGITS, dtype=torch.float32)
    V = DensityRatio(prob=lambda x, sigma: torch.sigmoid(logits), clip=DG_CLIP)
    x = torch.zeros(8, 2, dtype=torch.float64)
    got = V(x, torch.ones(8, dtype=torch.float64), x)
    assert got.dtype == torch.float64
    assert torch.equal(got, torch.tensor(CLIP_LOG_RATIO, dtype=torch.float32).double())
    # d rounds to 1.0 in float32, clips to 1 - 1e-5, and 1 - d_c is float32: not logit(1 - 1e-5).
    assert got[0].item() == pytest.approx(11.511559, abs=5e-7)
    assert abs(got[0].item() - math.log((1 - 1e-5) / 1e-5)) > 1e-3
    assert got[1].item() == pytest.approx(-11.512916, abs=5e-7)
    # Unclipped small logits come back as the logit (float32 cancellation only above ~5).
    torch.testing.assert_close(got[4:], logits[4:].double(), rtol=0, atol=2e-6)


def test_clipped_samples_have_zero_gradient():
    logits = torch.tensor(CLIP_LOGITS, dtype=torch.float32, requires_grad=True)
    ell = log_ratio_from_prob(torch.sigmoid(logits), DG_CLIP)
    ell.sum().backward()
    assert torch.equal(logits.grad[:2], torch.zeros(2))
    assert bool((logits.grad[2:] != 0).all())


def test_exact_mixture_log_ratio_is_passed_through():
    x, sigma = _points()
    V = DensityRatio(log_ratio=lambda x, s: DATA.log_ratio(MODEL, x, s))
    x0_hat = torch.full_like(x, 123.0)  # ignored: the ratio is evaluated on x
    torch.testing.assert_close(V(x, sigma, x0_hat), DATA.log_ratio(MODEL, x, sigma), rtol=0, atol=0)


@pytest.mark.parametrize("clip", [DG_CLIP, PF_CLIP])
def test_probability_round_trips_within_clipping(clip):
    x, sigma = _points(n=256, seed=1)
    ell = DATA.log_ratio(MODEL, x, sigma)
    V = DensityRatio(prob=lambda x, s: torch.sigmoid(DATA.log_ratio(MODEL, x, s)), clip=clip)
    got = V(x, sigma, x)
    bound = math.log((1 - clip) / clip)
    inside = ell.abs() < bound - 1e-6
    assert inside.sum() > 100 and (~inside).sum() > 5  # both regimes are exercised
    torch.testing.assert_close(got[inside], ell[inside], rtol=0, atol=1e-6)
    torch.testing.assert_close(got[~inside], ell[~inside].sign() * bound, rtol=0, atol=1e-9)


def test_logit_mode_uses_raw_logit_without_clipping():
    logits = torch.tensor([30.0, -25.0, 0.5], dtype=torch.float32)
    V = DensityRatio(prob=lambda x, s: logits, logit=True)
    x = torch.zeros(3, 1, dtype=torch.float64)
    assert torch.equal(V(x, torch.ones(3, dtype=torch.float64), x), logits.double())


def test_cond_is_forwarded():
    V = DensityRatio(log_ratio=lambda x, s, label: label.double())
    x = torch.zeros(2, 1, dtype=torch.float64)
    got = V(x, torch.ones(2, dtype=torch.float64), x, label=torch.tensor([3, 4]))
    assert got.tolist() == [3.0, 4.0]


def test_log_ratio_from_prob_float64_and_no_clip():
    d = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    got = log_ratio_from_prob(d, 0.0)
    assert got[0].item() == -math.inf and got[3].item() == math.inf
    assert got[1].item() == pytest.approx(math.log(1 / 3), rel=1e-15) and got[2].item() == 0.0


@pytest.mark.parametrize("kwargs, err, msg", [
    (dict(), ValueError, "exactly one"),
    (dict(log_ratio=lambda x, s: x, prob=lambda x, s: x), ValueError, "exactly one"),
    (dict(log_ratio=lambda x, s: x, logit=True), ValueError, "logit=True"),
    (dict(prob=lambda x, s: x, clip=0.5), ValueError, "clip"),
    (dict(prob=lambda x, s: x, clip=-1e-3), ValueError, "clip"),
    (dict(prob=3.0), TypeError, "callable"),
])
def test_bad_construction(kwargs, err, msg):
    with pytest.raises(err, match=msg):
        DensityRatio(**kwargs)


def test_bad_outputs():
    x = torch.zeros(3, 2, dtype=torch.float64)
    s = torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        DensityRatio(log_ratio=lambda x, s: x)(x, s, x)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        DensityRatio(prob=lambda x, s: torch.full((3, 1), 0.5))(x, s, x)
    with pytest.raises(TypeError, match="floating-point"):
        log_ratio_from_prob(torch.tensor([0, 1]))
