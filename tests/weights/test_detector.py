import math

import pytest
import torch

from smcdiff.weights import DetectorLikelihood, evaluate_terms


def detector(x0_hat):
    """4 classes; p_c = sigmoid(x0_hat[:, c])."""
    return torch.sigmoid(x0_hat[:, :4])


def _batch(n=6, seed=0):
    x0 = torch.randn(n, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return x0, torch.full((n,), 0.7, dtype=torch.float64)


def _hand(p, m, prior):
    """The formula of REFERENCE §5b for one object, in Python floats."""
    q = m * (1 - prior) / (prior + m * (1 - prior))
    return math.log(p) - math.log((1 - p) * q + p)


def test_value_matches_hand_computation():
    x0, sigma = _batch()
    occ = torch.tensor([0.3, 0.85], dtype=torch.float64)
    V = DetectorLikelihood(detector, objects=[1, 3], occurrence=occ, prior=0.2)
    got = V(x0, sigma, x0)
    for i in range(x0.shape[0]):
        p1, p3 = (1 / (1 + math.exp(-x0[i, c].item())) for c in (1, 3))
        ref = _hand(p1, 0.7, 0.2) + _hand(p3, 0.15, 0.2)
        assert got[i].item() == pytest.approx(ref, rel=1e-13, abs=1e-14)
    assert bool((got <= 0).all())  # Q_c >= p_c


def test_terms_are_named_per_object_and_sum_to_value():
    x0, sigma = _batch(seed=1)
    V = DetectorLikelihood(detector, objects=[3, 0, 2], occurrence=torch.tensor([0.1, 0.5, 0.9]))
    terms = V.terms(x0, sigma, x0)
    assert list(terms) == ["object:3", "object:0", "object:2"]
    p0 = torch.sigmoid(x0[:, 0])
    q = 0.5 * 0.8 / (0.2 + 0.5 * 0.8)
    torch.testing.assert_close(terms["object:0"], p0.log() - ((1 - p0) * q + p0).log())
    value, recorded = evaluate_terms(V, x0, sigma, x0)
    torch.testing.assert_close(value, V(x0, sigma, x0), rtol=0, atol=1e-14)
    assert recorded.keys() == terms.keys()


def test_fallback_missing_rate_is_fraction_of_batch_below_threshold():
    # Object 0 detected (p > 0.5) in 1 of 4 particles, object 2 in 3 of 4.
    x0 = torch.tensor([[2.0, 0, -1.0, 0], [-2.0, 0, 1.0, 0], [-0.5, 0, 0.5, 0], [-1.0, 0, 3.0, 0]], dtype=torch.float64)
    sigma = torch.ones(4, dtype=torch.float64)
    V = DetectorLikelihood(detector, objects=[0, 2])
    terms = V.terms(x0, sigma, x0)
    for j, (c, m) in enumerate([(0, 0.75), (2, 0.25)]):
        ref = [_hand(1 / (1 + math.exp(-x0[i, c].item())), m, 0.2) for i in range(4)]
        torch.testing.assert_close(terms[f"object:{c}"], torch.tensor(ref, dtype=torch.float64), rtol=1e-13, atol=0)
    # Same result as passing the occurrence rates explicitly.
    explicit = DetectorLikelihood(detector, objects=[0, 2], occurrence=torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(V(x0, sigma, x0), explicit(x0, sigma, x0), rtol=1e-14, atol=0)


def test_fallback_per_group():
    x0 = torch.tensor([[2.0], [3.0], [-1.0], [1.0]], dtype=torch.float64).expand(4, 4).contiguous()
    sigma = torch.ones(4, dtype=torch.float64)
    pooled = DetectorLikelihood(detector, objects=[0])
    grouped = DetectorLikelihood(detector, objects=[0], group_size=2)
    # Pooled: m = 1/4. Group 0 detects in both rows (m = 0 -> term 0), group 1 in one row (m = 1/2).
    p = torch.sigmoid(x0[:, 0])
    ref = torch.tensor([_hand(v, 0.25, 0.2) for v in p.tolist()], dtype=torch.float64)
    torch.testing.assert_close(pooled(x0, sigma, x0), ref)
    got = grouped(x0, sigma, x0)
    assert got[:2].tolist() == [0.0, 0.0]
    torch.testing.assert_close(got[2:], torch.tensor([_hand(v, 0.5, 0.2) for v in p[2:].tolist()], dtype=torch.float64))
    with pytest.raises(ValueError, match="group_size=3 does not divide"):
        DetectorLikelihood(detector, objects=[0], group_size=3)(x0, sigma, x0)


def test_limits_of_the_formula():
    x0, sigma = _batch(seed=2)
    log_p = torch.sigmoid(x0[:, [1, 2]]).log()
    occ = torch.tensor([0.4, 0.6])
    # pi -> 0 (m > 0): q -> 1, Q -> 1, term -> log p.
    low = DetectorLikelihood(detector, [1, 2], occ, prior=1e-12)(x0, sigma, x0)
    torch.testing.assert_close(low, log_p.sum(1), rtol=0, atol=1e-10)
    # pi -> 1: q -> 0, Q -> p, term -> 0.
    high = DetectorLikelihood(detector, [1, 2], occ, prior=1 - 1e-12)(x0, sigma, x0)
    assert high.abs().max().item() < 1e-10
    # An object the sampler never misses (occ = 1, m = 0) gives exactly 0.
    always = DetectorLikelihood(detector, [1], torch.tensor([1.0]))(x0, sigma, x0)
    assert torch.equal(always, torch.zeros(6, dtype=torch.float64))
    # Never generated (occ = 0, m = 1): q = 1 - pi, term = log p - log(1 - pi + pi p).
    never = DetectorLikelihood(detector, [1], torch.tensor([0.0]), prior=0.3)(x0, sigma, x0)
    p = torch.sigmoid(x0[:, 1])
    torch.testing.assert_close(never, p.log() - (1 - 0.3 + 0.3 * p).log())


def test_zero_probability_is_clipped_at_eps_and_log_probs_path():
    def hard(x0_hat):
        return torch.tensor([[0.0, 0.8]], dtype=torch.float64).expand(x0_hat.shape[0], 2)
    x0 = torch.zeros(2, 1, dtype=torch.float64)
    sigma = torch.ones(2, dtype=torch.float64)
    got = DetectorLikelihood(hard, [0], torch.tensor([0.5]), eps=1e-6)(x0, sigma, x0)
    assert got.tolist() == pytest.approx([_hand(1e-6, 0.5, 0.2)] * 2, rel=1e-12)
    via_log = DetectorLikelihood(lambda x: hard(x).log(), [1], torch.tensor([0.5]), log_probs=True)(x0, sigma, x0)
    via_prob = DetectorLikelihood(hard, [1], torch.tensor([0.5]))(x0, sigma, x0)
    torch.testing.assert_close(via_log, via_prob, rtol=1e-14, atol=0)


def test_occurrence_callable_of_sigma():
    x0, _ = _batch(n=4, seed=3)
    sigma = torch.tensor([0.1, 0.1, 2.0, 2.0], dtype=torch.float64)
    def occ(s):
        high, low = torch.tensor(0.9, dtype=torch.float64), torch.tensor(0.2, dtype=torch.float64)
        return torch.where(s[:, None] < 1.0, high, low)
    got = DetectorLikelihood(detector, [0], occ)(x0, sigma, x0)
    p = torch.sigmoid(x0[:, 0]).tolist()
    ref = [_hand(p[i], 0.1 if i < 2 else 0.8, 0.2) for i in range(4)]
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64), rtol=1e-13, atol=0)


@pytest.mark.parametrize("kwargs, msg", [
    (dict(objects=[]), "non-empty"),
    (dict(objects=[1, -1]), "ints >= 0"),
    (dict(objects=[1.5]), "ints >= 0"),
    (dict(objects=[1, 1]), "distinct"),
    (dict(objects=[1], prior=1.0), "prior"),
    (dict(objects=[1], prior=0.0), "prior"),
    (dict(objects=[1, 2], occurrence=torch.tensor([0.5])), "shape"),
    (dict(objects=[1], occurrence=torch.tensor([1.5])), r"\[0, 1\]"),
])
def test_bad_construction(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        DetectorLikelihood(detector, **kwargs)


def test_bad_detector_output():
    x0, sigma = _batch(n=3)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        DetectorLikelihood(lambda x: x[:, 0], [0], torch.tensor([0.5]))(x0, sigma, x0)
    with pytest.raises(ValueError, match="C = 4 classes but objects include index 7"):
        DetectorLikelihood(detector, [7], torch.tensor([0.5]))(x0, sigma, x0)
