"""Property-based tests (hypothesis) of the resampling schemes over shapes and weight values.

Properties, for every registered scheme and any (G, K, num), float32 or float64 log-weights with
any pattern of -inf (at least one finite weight per group):
* the output is int64 (G, num), every index in [0, K - 1], never a zero-weight particle;
* float32 softmax weights whose float32 cumsum ends below 1 never overrun;
* counts are unbiased: the mean count over many independent groups is within 5 standard errors of
  num * w_j (see the bound in ``test_counts_unbiased``);
* NaN or +inf anywhere raises a ValueError naming the group.
Examples are derandomised (a fixed database of examples, no flakiness) and few (fast).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smcdiff.resampling import SCHEMES

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

FAST = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
NAMES = sorted(SCHEMES)
NINF = float("-inf")


@st.composite
def log_weights(draw, max_g: int = 4, max_k: int = 12):
    """(G, K) log-weights: finite values of any scale, some -inf, at least one finite per row."""
    G = draw(st.integers(1, max_g))
    K = draw(st.integers(1, max_k))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    scale = draw(st.sampled_from([0.0, 1e-3, 1.0, 30.0, 700.0]))
    values = draw(st.lists(st.floats(-1.0, 1.0), min_size=G * K, max_size=G * K))
    zero = draw(st.lists(st.booleans(), min_size=G * K, max_size=G * K))
    shift = draw(st.floats(-1e4, 1e4))
    lw = torch.tensor(values, dtype=torch.float64).reshape(G, K) * scale + shift
    mask = torch.tensor(zero).reshape(G, K)
    keep = draw(st.lists(st.integers(0, K - 1), min_size=G, max_size=G))
    mask[torch.arange(G), torch.tensor(keep)] = False  # one finite weight per group
    return lw.masked_fill(mask, NINF).to(dtype)


@FAST
@given(lw=log_weights(), num=st.one_of(st.none(), st.integers(1, 20)), seed=st.integers(0, 2**31 - 1),
       per_group=st.booleans())
def test_indices_in_range_and_never_zero_weight(lw, num, seed, per_group):
    G, K = lw.shape
    gen = [torch.Generator().manual_seed(seed + g) for g in range(G)] if per_group \
        else torch.Generator().manual_seed(seed)
    for name in NAMES:
        if per_group:
            gen = [torch.Generator().manual_seed(seed + g) for g in range(G)]
        anc = SCHEMES[name](lw, gen, num=num)
        assert anc.dtype == torch.int64 and anc.shape == (G, num or K), name
        assert int(anc.min()) >= 0 and int(anc.max()) <= K - 1, name
        assert not bool((lw.gather(1, anc) == NINF).any()), name


@FAST
@given(K=st.integers(2**10, 2**14), trailing=st.integers(0, 8), seed=st.integers(0, 10**6))
def test_float32_weights_whose_cumsum_ends_below_one(K, trailing, seed):
    lw = torch.randn(2, K, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    lw[:, K - trailing:] = NINF
    for name in NAMES:
        anc = SCHEMES[name](lw, torch.Generator().manual_seed(seed))
        assert int(anc.max()) < K - trailing and int(anc.min()) >= 0, name


@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(w=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6).filter(lambda v: sum(v) > 1e-3),
       num=st.integers(1, 9), seed=st.integers(0, 10**6))
def test_counts_unbiased(w, num, seed):
    # Each group's offspring count c_j has E[c_j] = num * w_j and Var(c_j) <= num * w_j + 1/4:
    # multinomial and rejection counts are sums of independent indicators (variance <= mean),
    # stratified and residual have at most the multinomial variance, systematic counts are within
    # one of num * w_j (variance <= 1/4). The mean over G independent groups therefore has standard
    # error <= sqrt((num * w_j + 1/4) / G); we allow 5 of them.
    G = 4000
    p = torch.tensor(w, dtype=torch.float64)
    p = p / p.sum()
    lw = p.log().expand(G, -1).contiguous()
    for name in NAMES:
        anc = SCHEMES[name](lw, torch.Generator().manual_seed(seed), num=num)
        counts = torch.zeros(G, len(w), dtype=torch.float64).scatter_add_(1, anc, torch.ones(anc.shape, dtype=torch.float64))
        mean = counts.mean(0)
        se = ((num * p + 0.25) / G).sqrt()
        assert bool(((mean - num * p).abs() <= 5 * se).all()), (name, mean.tolist(), (num * p).tolist())


@FAST
@given(lw=log_weights(max_g=3, max_k=6), bad=st.sampled_from([math.nan, math.inf]), data=st.data())
def test_nan_or_plus_inf_raises_naming_the_group(lw, bad, data):
    G, K = lw.shape
    g = data.draw(st.integers(0, G - 1))
    k = data.draw(st.integers(0, K - 1))
    lw = lw.clone()
    lw[g, k] = bad
    what = "NaN" if math.isnan(bad) else r"\+inf"
    for name in NAMES:
        with pytest.raises(ValueError, match=rf"{what} in group\(s\) \[.*{g}.*\]"):
            SCHEMES[name](lw, torch.Generator().manual_seed(0))
