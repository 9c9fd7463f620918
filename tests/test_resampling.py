"""Tests for smcdiff.resampling: unbiasedness, variance ordering, numerical edge cases, the
adaptive rule, per-group generators and determinism. Statistical checks use many groups with
identical weights in one call, fixed seeds, and tolerances of 5 Monte Carlo standard errors."""

from __future__ import annotations

import doctest
import functools
import math

import pytest
import torch

import smcdiff.resampling as R
import smcdiff.resampling_schemes as S
from smcdiff.resampling import (
    SCHEMES,
    ResampleOutcome,
    Resampler,
    ess,
    get_scheme,
    log_normalize,
    register,
)

NAMES = ["multinomial", "systematic", "stratified", "residual", "rejection"]
SORTED = ["multinomial", "systematic", "stratified", "residual"]
# Rejection with its cap forced low, so the multinomial fallback does (part of) the work.
VARIANTS = {name: SCHEMES[name] for name in NAMES} | {
    "rejection-cap0": functools.partial(R.rejection, max_rounds=0),
    "rejection-cap1": functools.partial(R.rejection, max_rounds=1),
}
W = torch.tensor([0.05, 0.1, 0.15, 0.3, 0.4], dtype=torch.float64)
NINF = float("-inf")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def counts(anc: torch.Tensor, K: int) -> torch.Tensor:
    """Offspring counts ``(G, K)`` in float64 from ancestors ``(G, num)``."""
    return torch.zeros(anc.shape[0], K, dtype=torch.float64).scatter_add_(
        1, anc, torch.ones(anc.shape, dtype=torch.float64)
    )


def test_registry_holds_the_five_schemes():
    assert set(NAMES) <= set(SCHEMES)
    for name in NAMES:
        assert get_scheme(name) is getattr(R, name)


# ----------------------------------------------------------------------------- unbiasedness


@pytest.mark.parametrize("num", [5, 3, 8, 13])
@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("weights", ["positive", "with_zero"])
def test_unbiased_counts(name, num, weights):
    w = W if weights == "positive" else torch.tensor([0.0, 0.1, 0.15, 0.35, 0.4], dtype=torch.float64)
    G = 20_000
    anc = VARIANTS[name](w.log().expand(G, -1), gen(num), num=num)
    assert anc.shape == (G, num) and anc.dtype == torch.int64
    c = counts(anc, len(w))
    assert torch.all(c.sum(1) == num)
    se = c.std(0) / math.sqrt(G)
    # Entries with no spread (e.g. systematic count of a particle with num * w integer, or a zero
    # weight) must then be exact.
    assert torch.all((c.mean(0) - num * w).abs() <= 5 * se + 1e-12), (c.mean(0), num * w, se)


@pytest.mark.parametrize("name", NAMES)
def test_integer_expected_counts_are_deterministic_for_low_variance_schemes(name):
    # num * w = (1, 2, 1): systematic, stratified and residual must give exactly these counts.
    lw = torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64).log().expand(2000, -1)
    c = counts(SCHEMES[name](lw, gen(1), num=4), 3)
    exact = torch.all(c == torch.tensor([1.0, 2.0, 1.0]))
    assert bool(exact) == (name in ("systematic", "stratified", "residual"))


# Closed-form distribution of the offspring count of particle 1, per scheme, on three cases
# (worked out by hand from the scheme definitions; they tell every pair of schemes apart).
COUNT1_LAWS = {
    # weights, num: {scheme: [P(count = 0), P(count = 1), ...]}
    ((0.2, 0.6, 0.2), 2): {
        "multinomial": [0.16, 0.48, 0.36], "systematic": [0, 0.8, 0.2],
        "stratified": [0.16, 0.48, 0.36], "residual": [0, 0.8, 0.2],
        "rejection": [0.16, 0.48, 0.36],  # num < K: every offspring proposes uniformly
    },
    ((0.2, 0.4, 0.4), 2): {
        "multinomial": [0.36, 0.48, 0.16], "systematic": [0.2, 0.8, 0],
        "stratified": [0.32, 0.56, 0.12], "residual": [0.36, 0.48, 0.16],
        "rejection": [0.36, 0.48, 0.16],
    },
    ((0.2, 0.6, 0.2), 3): {
        "multinomial": [0.064, 0.288, 0.432, 0.216], "systematic": [0, 0.2, 0.8, 0],
        "stratified": [0, 0.36, 0.48, 0.16], "residual": [0, 0.36, 0.48, 0.16],
        "rejection": [0, 0.36, 0.48, 0.16],  # offspring 1 always keeps index 1
    },
}


@pytest.mark.parametrize("case", list(COUNT1_LAWS), ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_count_distribution_matches_closed_form(name, case):
    (w, num), G = case, 20_000
    law = torch.tensor(COUNT1_LAWS[case][name], dtype=torch.float64)
    lw = torch.tensor(w, dtype=torch.float64).log().expand(G, -1)
    c1 = counts(SCHEMES[name](lw, gen(21), num=num), 3)[:, 1].long()
    freq = torch.bincount(c1, minlength=num + 1).double() / G
    assert freq.shape == law.shape
    assert torch.all((freq - law).abs() <= 5 * (law * (1 - law) / G).sqrt()), (freq, law)


# ----------------------------------------------------------------------------- variance


def _var_and_se(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-particle sample variance and its standard error ``sqrt((m4 - s^4) / G)``."""
    dev = c - c.mean(0)
    var = dev.pow(2).mean(0)
    return var, ((dev.pow(4).mean(0) - var.pow(2)).clamp(min=0) / c.shape[0]).sqrt()


@pytest.mark.parametrize("num", [5, 8])
def test_variance_ordering_against_multinomial(num):
    G, K = 20_000, len(W)
    lw = W.log().expand(G, K)
    exact = num * W * (1 - W)  # multinomial count variance
    var, se = _var_and_se(counts(SCHEMES["multinomial"](lw, gen(0), num=num), K))
    assert torch.all((var - exact).abs() <= 5 * se)
    for name in ["systematic", "stratified", "residual"]:
        var, se = _var_and_se(counts(SCHEMES[name](lw, gen(1), num=num), K))
        assert torch.all(var <= exact + 5 * se + 1e-12), name
        # Clearly smaller in total (the multinomial would sit at ratio 1).
        assert var.sum() <= 0.8 * exact.sum(), (name, var.sum() / exact.sum())


# ----------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("name", list(VARIANTS))
def test_one_dominant_weight_takes_everything(name):
    lw = torch.tensor([[NINF, 0.0, NINF, NINF], [-1e4, -2e4, 0.0, -1e4]], dtype=torch.float64)
    anc = VARIANTS[name](lw, gen(), num=6)
    assert torch.equal(anc, torch.tensor([[1] * 6, [2] * 6]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_zero_weights_never_selected(name, dtype):
    g = gen(3)
    G, K = 200, 64
    lw = torch.randn(G, K, generator=g, dtype=torch.float64).to(dtype)
    zero = torch.rand(G, K, generator=g) < 0.5
    zero[:, -3:] = True  # trailing zeros: a clip to K - 1 must not land on them
    zero[:, 0] = False
    lw = lw.masked_fill(zero, NINF)
    for num in (1, K, 100):
        anc = VARIANTS[name](lw, gen(num), num=num)
        assert anc.shape == (G, num)
        assert not zero.gather(1, anc).any()


@pytest.mark.parametrize("name", NAMES)
def test_float32_cumsum_below_one_stays_in_range(name):
    # Regression (BlackJAX): float32 softmax weights whose float32 cumsum ends below 1.
    # The seed is the first whose two rows both sum below 1 in float32 (torch versions differ).
    K = 2**16
    for seed in range(21, 200):
        lw = torch.randn(2, K, generator=gen(seed), dtype=torch.float32) * 0.5
        lw[:, -5:] = NINF  # trailing zero weights
        cum = torch.cumsum(torch.softmax(lw, 1), 1)[:, -1]
        if torch.all(cum < 1):
            break
    assert torch.all(cum < 1), cum  # the premise of the test
    anc = SCHEMES[name](lw, gen(6))
    assert anc.dtype == torch.int64 and anc.shape == (2, K)
    assert anc.min() >= 0 and anc.max() < K - 5


def test_counts_end_at_num_when_u_is_next_to_one():
    # Regression: ceil(num - u) with u within ulp(num) of 1 rounds to num - 1 without the clip,
    # which would leave the last offspring without an ancestor.
    num = 2**20 + 3
    x = torch.tensor([[0.0, 0.5 * num, 1.0 * num, 1.0 * num]], dtype=torch.float64)  # trailing zero
    for u in (torch.tensor([[1 - 2.0**-53]], dtype=torch.float64),
              torch.full((1, num), 1 - 2.0**-53, dtype=torch.float64)):
        n = S._cumulative_counts(x.clone(), u, num)
        assert n.tolist() == [[0, num // 2, num, num]]  # i + u < num / 2 for i < num // 2
        anc = S._ancestors_from_counts(n, num)
        assert torch.equal(anc[0], torch.arange(num).ge(num // 2).add(1))  # never the zero at 3


@pytest.mark.parametrize("name", list(VARIANTS))
def test_single_particle_and_single_group(name):
    for num in (1, 4):
        anc = VARIANTS[name](torch.tensor([[-3.0], [7.0]]), gen(), num=num)
        assert torch.equal(anc, torch.zeros(2, num, dtype=torch.int64))
    anc = VARIANTS[name](torch.tensor([[0.0, -1.0, -2.0]]), gen())
    assert anc.shape == (1, 3) and anc.max() <= 2


@pytest.mark.parametrize("name", SORTED)
def test_sorted_schemes_return_sorted_ancestors(name):
    lw = torch.randn(50, 40, generator=gen(8), dtype=torch.float64)
    anc = SCHEMES[name](lw, gen(9), num=70)
    assert torch.all(anc[:, 1:] >= anc[:, :-1])


def _all_bad_inputs():
    ok = torch.zeros(4, 3)
    yield "all -inf", ok.clone().index_fill_(0, torch.tensor([1, 3]), NINF), \
        ValueError, r"all weights are zero \(-inf\) in group\(s\) \[1, 3\]"
    yield "nan", torch.tensor([[0.0, float("nan")], [0.0, 0.0]]), ValueError, r"NaN in group\(s\) \[0\]"
    yield "+inf", torch.tensor([[0.0, 0.0], [float("inf"), 0.0]]), ValueError, r"\+inf in group\(s\) \[1\]"
    yield "1-D", torch.zeros(5), ValueError, r"expected log-weights of shape \(G, K\)"
    yield "3-D", torch.zeros(2, 3, 4), ValueError, r"expected log-weights of shape \(G, K\)"
    yield "K = 0", torch.zeros(3, 0), ValueError, r"K >= 1"
    yield "integer", torch.zeros(2, 3, dtype=torch.int64), TypeError, "floating-point"
    yield "not a tensor", [[0.0, 0.0]], TypeError, "torch.Tensor"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", list(_all_bad_inputs()), ids=lambda c: c[0])
def test_bad_log_weights_raise(name, case):
    _, lw, err, msg = case
    with pytest.raises(err, match=msg):
        SCHEMES[name](lw, gen())


@pytest.mark.parametrize("name", NAMES)
def test_bad_num_and_generator_raise(name):
    lw = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="num"):
        SCHEMES[name](lw, gen(), num=0)
    with pytest.raises(TypeError, match="global RNG"):
        SCHEMES[name](lw, None)
    with pytest.raises(ValueError, match="one torch.Generator per group"):
        SCHEMES[name](lw, [gen(0), gen(1), gen(2)])


def test_log_normalize():
    lw = torch.tensor([[0.0, 1.0, NINF], [-1000.0, -1000.0, -1000.0]], dtype=torch.float64)
    out = log_normalize(lw)
    assert out.dtype == torch.float64
    assert torch.allclose(torch.logsumexp(out, 1), torch.zeros(2, dtype=torch.float64), atol=1e-15)
    assert out[0, 2] == NINF
    assert torch.allclose(out[1], torch.full((3,), -math.log(3), dtype=torch.float64))
    assert log_normalize(lw.float()).dtype == torch.float32
    for _, bad, err, msg in _all_bad_inputs():
        with pytest.raises(err, match=msg):
            log_normalize(bad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ess_closed_forms(dtype):
    K = 8
    lw = torch.tensor(
        [
            [0.0] * K,  # uniform -> K
            [0.0] + [NINF] * (K - 1),  # one-hot -> 1
            [3.0] + [-1e4] * (K - 1),  # numerically one-hot -> 1
            [2.0, NINF, NINF, 2.0, NINF, NINF, NINF, NINF],  # two equal -> 2
            [math.log(w) for w in (0.5, 0.25, 0.25)] + [NINF] * (K - 3),  # 1 / 0.375
            [NINF] * K,  # no weight at all -> 0 (and no error: ess never syncs)
        ],
        dtype=dtype,
    )
    want = torch.tensor([K, 1, 1, 2, 1 / 0.375, 0], dtype=dtype)
    out = ess(lw)
    assert out.shape == (6,) and out.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(out, want, rtol=tol, atol=0)
    rnd = ess(torch.randn(100, K, generator=gen(), dtype=dtype) * 3)
    assert torch.all((rnd >= 1) & (rnd <= K))


# ----------------------------------------------------------------------------- registry


@pytest.fixture
def restore_registry():
    """Put the scheme registry back as it was after a test that registers schemes."""
    saved = dict(SCHEMES)
    yield
    SCHEMES.clear()
    SCHEMES.update(saved)


def test_get_scheme_and_register(restore_registry):
    with pytest.raises(ValueError, match=r"unknown resampling scheme 'sytematic'.*systematic"):
        get_scheme("sytematic")
    with pytest.raises(TypeError):
        get_scheme(3)
    with pytest.raises(ValueError, match="already registered"):
        register("systematic")(lambda lw, g, num=None: None)

    @register("first")
    def first(log_weights, generator, num=None):
        return torch.zeros(log_weights.shape[0], num or log_weights.shape[1], dtype=torch.int64)

    assert R.SCHEMES["first"] is first and get_scheme("first") is first
    assert get_scheme(first) is first
    out = Resampler("first", ess_threshold=1.0)(torch.zeros(2, 3), gen())
    assert torch.equal(out.ancestors, torch.zeros(2, 3, dtype=torch.int64))


# ----------------------------------------------------------------------------- Resampler


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_resampler_threshold_validation(bad):
    with pytest.raises(ValueError, match=r"ess_threshold must be in \[0, 1\], got"):
        Resampler("systematic", ess_threshold=bad)
    with pytest.raises(ValueError, match="unknown resampling scheme"):
        Resampler("nope")


def test_resampler_threshold_zero_is_identity_and_draws_nothing():
    lw = torch.tensor([[0.0, NINF, NINF], [0.0, 0.0, 0.0]], dtype=torch.float64)
    g = gen(4)
    state = g.get_state()
    out = Resampler("multinomial", ess_threshold=0.0)(lw, g)
    assert isinstance(out, ResampleOutcome)
    assert torch.equal(out.ancestors, torch.arange(3).repeat(2, 1))
    assert torch.equal(out.resampled, torch.tensor([False, False]))
    assert torch.allclose(out.ess, torch.tensor([1.0, 3.0], dtype=torch.float64))
    assert torch.equal(g.get_state(), state)


@pytest.mark.parametrize("name", NAMES)
def test_resampler_threshold_one_resamples_every_group(name):
    lw = torch.zeros(3, 6)  # uniform: ESS = K, still resampled
    out = Resampler(name, ess_threshold=1.0)(lw, gen(2))
    assert torch.equal(out.resampled, torch.ones(3, dtype=torch.bool))
    assert torch.equal(out.ancestors, SCHEMES[name](lw, gen(2)))


def test_resampler_resamples_only_degenerate_groups():
    lw = torch.tensor([[0.0, 0.0, 0.0, 0.0], [-60.0, 0.0, -60.0, -60.0]], dtype=torch.float64)
    out = Resampler("systematic", ess_threshold=0.5)(lw, gen())
    assert torch.equal(out.resampled, torch.tensor([False, True]))
    assert torch.equal(out.ancestors, torch.tensor([[0, 1, 2, 3], [1, 1, 1, 1]]))
    assert torch.allclose(out.ess, torch.tensor([4.0, 1.0], dtype=torch.float64))


def test_resampler_errors():
    r = Resampler("systematic", ess_threshold=0.5)
    with pytest.raises(ValueError, match=r"all weights are zero \(-inf\) in group\(s\) \[1\]"):
        r(torch.tensor([[0.0, 0.0], [NINF, NINF]]), gen())
    with pytest.raises(ValueError, match=r"expected log-weights of shape \(G, K\)"):
        r(torch.zeros(4), gen())
    bad = Resampler(lambda lw, g, num=None: torch.zeros(2, dtype=torch.int64), ess_threshold=1.0)
    with pytest.raises(ValueError, match=r"must return int64 ancestors of shape \(2, 3\)"):
        bad(torch.zeros(2, 3), gen())


# ----------------------------------------------------------------------------- randomness


def _mixed_weights() -> torch.Tensor:
    """Groups from flat to peaked (rejection then needs different numbers of rounds per group)."""
    g = gen(11)
    lw = torch.randn(4, 50, generator=g, dtype=torch.float64) * torch.tensor([[0.1], [1.0], [2.0], [3.0]])
    lw[1, :7] = NINF
    return lw


@pytest.mark.parametrize("name", list(VARIANTS))
def test_per_group_generators_make_groups_independent_of_the_batch(name):
    lw = _mixed_weights()
    scheme = VARIANTS[name]
    batch = scheme(lw, [gen(100 + g) for g in range(4)], num=33)
    for g in range(4):
        alone = scheme(lw[g : g + 1], [gen(100 + g)], num=33)
        assert torch.equal(batch[g : g + 1], alone), g
        assert torch.equal(alone, scheme(lw[g : g + 1], gen(100 + g), num=33))
    out = Resampler(name if name in SCHEMES else scheme, ess_threshold=1.0)(lw, [gen(100 + g) for g in range(4)])
    assert torch.equal(out.ancestors, scheme(lw, [gen(100 + g) for g in range(4)]))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_same_seed_same_indices_and_global_rng_untouched(name):
    lw = _mixed_weights()
    before = torch.get_rng_state()
    a = VARIANTS[name](lw, gen(7))
    b = VARIANTS[name](lw, gen(7))
    Resampler(VARIANTS[name], ess_threshold=0.7)(lw, gen(7))
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a, b)
    c = VARIANTS[name](lw, gen(8))
    assert not torch.equal(a, c)  # the generator is actually used


def test_module_docstring_example_runs():
    result = doctest.testmod(R, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
