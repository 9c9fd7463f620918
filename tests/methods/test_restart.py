"""The Restart sampler and its configs: spec parsing, NFE formula, attachment, noise scales."""

import math

import pytest
import torch

from smcdiff.kernels import EDMHeun, karras_sigmas
from smcdiff.kernels.restart import (
    FFHQ64_RESTART, FFHQ64_RESTART_SPEC, IMAGENET64_RESTART, IMAGENET64_RESTART_SPEC, RestartInterval,
    attach_restarts, format_restart, parse_restart, restart_grid, restart_nfe,
)
from smcdiff.methods import restart_sampler

from .problems import pair_1d

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


class Counting:
    """A denoiser that counts the samples it evaluates and records (x, σ) of every call."""

    def __init__(self, fn):
        self.fn, self.count, self.calls = fn, 0, []

    def __call__(self, x, sigma, **cond):
        self.count += x.shape[0]
        self.calls.append((x.clone(), sigma.clone()))
        return self.fn(x, sigma, **cond)


# ----------------------------------------------------------------------------- configs


def test_nfe_formula_gives_the_papers_budgets():
    assert restart_nfe(18, IMAGENET64_RESTART) == 99
    assert restart_nfe(18, FFHQ64_RESTART) == 67
    assert restart_nfe(18, IMAGENET64_RESTART_SPEC) == 99
    assert restart_nfe(18, []) == 35
    assert restart_nfe(10, [[3, 2, 0.5, 1.0]]) == 19 + 2 * 2 * 2


def test_parse_restart_reads_the_reference_strings():
    assert parse_restart(IMAGENET64_RESTART_SPEC) == [
        RestartInterval(3, 1, 19.35, 40.79), RestartInterval(4, 1, 1.09, 1.92), RestartInterval(4, 4, 0.59, 1.09),
        RestartInterval(4, 1, 0.30, 0.59), RestartInterval(4, 4, 0.06, 0.30),
    ]
    assert list(FFHQ64_RESTART) == [(5, 1, 1.09, 1.92), (5, 2, 0.59, 1.09), (5, 1, 0.06, 0.30)]
    assert sum(iv.repeats for iv in IMAGENET64_RESTART) == 11  # resampling events in the paper
    # braces optional, whitespace free
    assert parse_restart(" [4,1, 1.09 ,1.92],[3,2,0.5,1] ") == [(4, 1, 1.09, 1.92), (3, 2, 0.5, 1.0)]


@pytest.mark.parametrize("spec", [IMAGENET64_RESTART_SPEC, FFHQ64_RESTART_SPEC, "{[2,3,0.001,1e-2]}"])
def test_parse_and_format_round_trip(spec):
    ivs = parse_restart(spec)
    text = format_restart(ivs)
    assert parse_restart(text) == ivs
    assert format_restart(parse_restart(text)) == text
    assert all(isinstance(iv.num_steps, int) and isinstance(iv.t_min, float) for iv in ivs)


def test_format_restart_canonical_text():
    assert format_restart(FFHQ64_RESTART) == "{[5,1,1.09,1.92], [5,2,0.59,1.09], [5,1,0.06,0.3]}"


@pytest.mark.parametrize("spec, match", [
    ("", "no interval"),
    ("{}", "no interval"),
    ("{[3,1,19.35]}", "4 numbers"),
    ("{[3.5,1,1.0,2.0]}", "num_steps must be an integer"),
    ("{[3,x,1.0,2.0]}", "repeats must be an integer"),
    ("{[3,0,1.0,2.0]}", "repeats must be >= 1"),
    ("{[1,1,1.0,2.0]}", "num_steps must be >= 2"),
    ("{[3,1,2.0,1.0]}", "t_min < t_max"),
    ("{[3,1,0,1.0]}", "t_min < t_max"),
    ("{[3,1,a,2.0]}", "numbers"),
    ("{[3,1,1.0,2.0]", "unbalanced"),
    ("18; {[3,1,1.0,2.0]}", "outside"),
])
def test_parse_restart_rejects_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_restart(spec)


def test_bad_interval_sequences_are_rejected():
    with pytest.raises(ValueError, match="num_steps must be an int"):
        restart_nfe(18, [[3.0, 1, 1.0, 2.0]])
    with pytest.raises(ValueError, match="expected"):
        restart_nfe(18, [[3, 1, 1.0]])
    with pytest.raises(ValueError, match="num_main_steps"):
        restart_nfe(0, IMAGENET64_RESTART)


# ----------------------------------------------------------------------------- attachment and grid


def test_intervals_attach_to_the_nearest_main_sigma():
    sig = karras_sigmas(18)
    att = attach_restarts(sig, IMAGENET64_RESTART)
    assert sorted(att) == [4, 10, 11, 12, 14]
    for j, iv in att.items():
        assert abs(float(sig[j]) - iv.t_min) < 0.01  # 19.35245, 1.08817, 0.58535, 0.29644, 0.05995
    assert sorted(attach_restarts(sig, FFHQ64_RESTART)) == [10, 11, 14]


def test_attachment_errors():
    sig = karras_sigmas(18)
    with pytest.raises(ValueError, match="both attach"):
        attach_restarts(sig, [[3, 1, 1.09, 1.92], [3, 1, 1.1, 2.5]])
    with pytest.raises(ValueError, match="t_max must exceed"):
        attach_restarts(sig, [[3, 1, 1.0, 1.05]])  # attaches to σ = 1.088 > t_max


def test_restart_grid_is_an_edm_grid_ending_at_the_main_sigma():
    t_j = float(karras_sigmas(18)[11])  # 0.58535, not the configured t_min 0.59
    grid = restart_grid(t_j, RestartInterval(4, 4, 0.59, 1.09))
    assert grid.dtype == F64 and grid.shape == (4,)
    assert float(grid[0]) == 1.09 and float(grid[-1]) == t_j
    torch.testing.assert_close(grid, karras_sigmas(4, sigma_min=t_j, sigma_max=1.09)[:-1], rtol=1e-12, atol=0)
    assert bool((grid[1:] < grid[:-1]).all())


# ----------------------------------------------------------------------------- the sampler


@pytest.mark.parametrize("intervals, expected", [(IMAGENET64_RESTART, 99), (FFHQ64_RESTART, 67)])
def test_measured_nfe_equals_the_formula(intervals, expected):
    _, model, _ = pair_1d()
    D = Counting(model.denoise)
    res = restart_sampler(D, karras_sigmas(18), restart=intervals, num_samples=3, shape=(1,), generator=gen(0),
                          S_min=0.01, S_max=1.0, restart_gamma=0.05)
    assert D.count == 3 * expected
    assert res.nfe == expected == restart_nfe(18, intervals)
    assert sorted(res.diagnostics["attached"]) == sorted(attach_restarts(karras_sigmas(18), intervals))


def test_without_intervals_it_is_the_edm_sampler_bit_for_bit():
    _, model, _ = pair_1d()
    sig = karras_sigmas(12)
    res = restart_sampler(model.denoise, sig, restart=[], num_samples=6, shape=(1,), generator=gen(3), S_churn=4.0)
    g = gen(3)
    x = sig[0] * torch.randn((6, 1), generator=g, dtype=F64)
    k = EDMHeun(S_churn=4.0)
    for i in range(12):
        x = k(model.denoise, x, sig, i, g).x
    assert torch.equal(res.x, x)
    assert res.nfe == 23


def test_jumps_and_churn_keep_the_noise_scale_exact():
    # Data = point mass at 0 (D ≡ 0): the exact marginal at every σ is N(0, σ²). Restart's jumps
    # (variance t_max² − σ_j²), its churn and the (exact, for this D) Heun steps must keep x/σ ~ N(0, 1)
    # at every network call, including those at t_max and at the churned σ̂.
    n = 4000
    D = Counting(lambda x, sigma, **c: torch.zeros_like(x))
    restart_sampler(D, karras_sigmas(18), restart=IMAGENET64_RESTART, num_samples=n, shape=(1,), generator=gen(1),
                    restart_gamma=0.3)
    assert len(D.calls) == 99
    tol = 5 * math.sqrt(2 / n)  # 5 SE of a sample variance of N(0, 1)
    for x, sigma in D.calls:
        var = float(((x[:, 0] / sigma) ** 2).mean())
        assert abs(var - 1) < tol, (float(sigma[0]), var)


def test_per_sample_generators_make_each_output_depend_on_its_seed_only():
    _, model, _ = pair_1d()
    sig = karras_sigmas(18)
    both = restart_sampler(model.denoise, sig, restart=FFHQ64_RESTART, num_samples=2, shape=(1,),
                           generator=[gen(7), gen(8)], restart_gamma=0.1)
    for row, seed in enumerate((7, 8)):
        alone = restart_sampler(model.denoise, sig, restart=FFHQ64_RESTART, num_samples=1, shape=(1,),
                                generator=gen(seed), restart_gamma=0.1)
        assert torch.equal(both.x[row], alone.x[0])


def test_restart_sampler_input_errors():
    _, model, _ = pair_1d()
    kw = dict(num_samples=2, shape=(1,), generator=gen(0))
    with pytest.raises(ValueError, match="restart_gamma"):
        restart_sampler(model.denoise, karras_sigmas(18), restart_gamma=-0.1, **kw)
    with pytest.raises(ValueError, match="cond"):
        restart_sampler(model.denoise, karras_sigmas(18), cond={"y": torch.zeros(3)}, **kw)
    with pytest.raises(ValueError, match="x_init"):
        restart_sampler(model.denoise, karras_sigmas(18), x_init=torch.zeros(2, 2), **kw)
    with pytest.raises(ValueError, match="no interval"):
        restart_sampler(model.denoise, karras_sigmas(18), restart="{}", **kw)
