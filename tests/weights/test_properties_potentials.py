"""Property-based tests (hypothesis) of the potentials: whatever values the user's callable (reward,
log-ratio, discriminator probability, detector, Pyro factor) returns, a potential either returns
float64 values with no NaN and no +inf (-inf, a weight of zero, is allowed), and finite values
for finite valid input, or raises a ValueError that names the potential. Never a silent NaN."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smcdiff.weights import (
    DensityRatio,
    DetectorLikelihood,
    GaussianLikelihood,
    RewardPotential,
    Scale,
    Sum,
    Window,
    evaluate_terms,
    program,
)

FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
ANY = st.floats(allow_nan=True, allow_infinity=True, width=64)
FINITE = st.floats(-1e6, 1e6)


def values(elements=ANY, n=st.integers(1, 6)):
    return n.flatmap(lambda k: st.lists(elements, min_size=k, max_size=k)).map(
        lambda v: torch.tensor(v, dtype=torch.float64))


def _inputs(v: torch.Tensor):
    N = v.shape[0]
    x = torch.zeros(N, 2, dtype=torch.float64)
    return x, torch.ones(N, dtype=torch.float64), x


def _outcome(fn, name: str):
    """The output when ``fn()`` returns; None after checking a raised error names ``name``."""
    try:
        out = fn()
    except ValueError as err:
        assert name in str(err), str(err)
        return None
    assert out.dtype == torch.float64
    assert not bool(torch.isnan(out).any()) and not bool((out == math.inf).any()), out
    return out


def _has(v, what: str) -> bool:
    return bool({"nan": torch.isnan(v), "+inf": v == math.inf, "-inf": v == -math.inf}[what].any())


@FAST
@given(v=values())
def test_log_ratio_passes_values_through_or_names_itself(v):
    V = DensityRatio(log_ratio=lambda x, s: v, name="ratio")
    out = _outcome(lambda: V(*_inputs(v)), "'ratio'")
    bad = _has(v, "nan") or _has(v, "+inf")
    assert (out is None) == bad
    if out is not None:
        assert torch.equal(out, v)


@FAST
@given(v=values(), clip_range=st.booleans(), clip=st.sampled_from([1e-5, 1e-6, 0.0]))
def test_discriminator_probability(v, clip_range, clip):
    V = DensityRatio(prob=lambda x, s: v, clip=clip, clip_range=clip_range, name="disc")
    out = _outcome(lambda: V(*_inputs(v)), "'disc'")
    out_of_range = bool(((v < 0) | (v > 1)).any())
    if _has(v, "nan") or (out_of_range and not clip_range):
        assert out is None
    elif clip > 0:  # valid (or clamped) probabilities, clipped: finite
        assert out is not None and bool(torch.isfinite(out).all())


@FAST
@given(v=values(FINITE), clip=st.sampled_from([1e-5, 1e-6]))
def test_finite_probabilities_in_give_finite_log_ratios_out(v, clip):
    p = torch.sigmoid(v)  # always in [0, 1]
    out = DensityRatio(prob=lambda x, s: p, clip=clip)(*_inputs(v))
    assert bool(torch.isfinite(out).all())


@FAST
@given(v=values(), lam=st.floats(-10, 10), form=st.sampled_from(["difference", "current", "max", "sum"]))
def test_reward(v, lam, form):
    V = RewardPotential(lambda x0_hat: v, form=form, lam=lam, name="score")
    x, s, x0 = _inputs(v)
    out = _outcome(lambda: V(x, s, x0, previous=torch.zeros_like(v)), "'score'")
    if lam != 0 and (_has(v, "nan") or bool((lam * v == math.inf).any())):
        assert out is None
    if bool(torch.isfinite(v).all()):
        assert out is not None and bool(torch.isfinite(out).all())


@FAST
@given(v=values(), log_probs=st.booleans(), clip_range=st.booleans(),
       occurrence=st.one_of(st.none(), st.floats(0.0, 1.0)))
def test_detector(v, log_probs, clip_range, occurrence):
    occ = None if occurrence is None else torch.tensor([occurrence])
    V = DetectorLikelihood(lambda x0_hat: v[:, None], [0], occ, log_probs=log_probs, clip_range=clip_range,
                           name="det")
    out = _outcome(lambda: V(*_inputs(v)), "'det'")
    low, high = (-math.inf, 0.0) if log_probs else (0.0, 1.0)
    valid = not _has(v, "nan") and bool(((v >= low) & (v <= high)).all())
    if _has(v, "nan") or not (valid or clip_range):
        assert out is None
    elif not log_probs:  # probabilities clamped to [eps, 1]: every term finite
        assert out is not None and bool(torch.isfinite(out).all())


@FAST
@given(v=values(), sigma=st.floats(0.0, 100.0))
def test_gaussian_likelihood(v, sigma):
    V = GaussianLikelihood(torch.ones(1, 1), torch.tensor([0.5]), 0.1)
    x0 = v[:, None]
    s = torch.full((v.shape[0],), sigma, dtype=torch.float64)
    out = _outcome(lambda: V(x0, s, x0), "GaussianLikelihood")
    if not bool(torch.isfinite(v).all()):
        assert out is None
    elif bool((v.abs() < 1e100).all()):  # beyond, the squared residual overflows: -inf (weight 0)
        assert out is not None and bool(torch.isfinite(out).all())


@FAST
@given(v=values(), w=values(), lam=st.floats(-3, 3))
def test_composition_through_evaluate_terms(v, w, lam):
    n = min(v.shape[0], w.shape[0])
    v, w = v[:n], w[:n]

    def first(x, s, x0):
        return v

    def second(x, s, x0):
        return w

    V = Sum(Scale(first, lam), Window(second, sigma_max=2.0))
    try:
        value, terms = evaluate_terms(V, *_inputs(v))
    except ValueError as err:
        assert "'sum'" in str(err) and ("'first'" in str(err) or "'second'" in str(err)), str(err)
        return
    assert not bool(torch.isnan(value).any()) and not bool((value == math.inf).any())
    assert set(terms) == {"first", "second"}


@FAST
@given(v=values())
def test_program_factors(v):
    @program
    def prog(x, sigma, x0_hat):
        pyro.factor("a", v)

    out = _outcome(lambda: prog(*_inputs(v)), "'prog'")
    assert (out is None) == (_has(v, "nan") or _has(v, "+inf"))


def test_finite_in_finite_out_has_examples():
    # Not vacuous: a NaN from the user's function is refused with the potential's name.
    with pytest.raises(ValueError, match=r"reward of 'score' returned NaN at 1 of 2 samples"):
        RewardPotential(lambda x0: torch.tensor([0.0, math.nan], dtype=torch.float64), name="score")(
            *_inputs(torch.zeros(2)))
