"""2-D toy distributions: shapes, seeding, no global RNG, and their exact statistics."""

import math

import pytest
import torch

from smcdiff.data import checkerboard, checkerboard_scale, known_mixture, two_moons

pytestmark = pytest.mark.usefixtures("one_thread")

N = 20_000
SAMPLERS = [two_moons, checkerboard]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_shape_dtype_seeding_and_no_global_rng(sampler):
    state = torch.get_rng_state()
    x = sampler(100, gen(0))
    assert x.shape == (100, 2) and x.dtype == torch.float64
    assert torch.equal(x, sampler(100, gen(0)))
    assert not torch.equal(x, sampler(100, gen(1)))
    assert sampler(0, gen(0)).shape == (0, 2)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_per_row_generators(sampler):
    """With one generator per row, row i depends on its own seed alone."""
    x = sampler(3, [gen(5), gen(6), gen(7)])
    y = sampler(2, [gen(9), gen(6)])
    assert torch.equal(x[1], y[1])
    with pytest.raises(ValueError, match="one torch.Generator per group"):
        sampler(3, [gen(0), gen(1)])
    with pytest.raises(TypeError, match="global RNG"):
        sampler(3, None)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_roughly_unit_variance_and_centred(sampler):
    x = sampler(N, gen(1))
    # Coordinate variances are at most 1.5 (the moons' x) and fourth moments below 5, so the
    # standard errors are below sqrt(1.5 / N) for the means and sqrt(5 / N) for the variances.
    assert x.mean(0).abs().max() < 4 * math.sqrt(1.5 / N)
    assert abs(float(x.var(0).mean()) - 1.0) < 4 * math.sqrt(5 / N)


def test_two_moons_noise_free_on_the_two_circles():
    x = two_moons(2000, gen(2), noise=0.0)
    scale = math.sqrt((0.75 + 0.5625 - 1 / math.pi) / 2)
    u = x * scale + torch.tensor([0.5, 0.25], dtype=torch.float64)  # back to the unscaled moons
    upper = (u.norm(dim=1) - 1).abs() < 1e-9
    lower = ((u - torch.tensor([1.0, 0.5], dtype=torch.float64)).norm(dim=1) - 1).abs() < 1e-9
    assert bool((upper | lower).all())
    assert bool((u[upper, 1] >= -1e-12).all()) and bool((u[lower, 1] <= 0.5 + 1e-12).all())
    # Each moon is picked with probability 1/2.
    assert abs(float(upper.double().mean()) - 0.5) < 4 * 0.5 / math.sqrt(2000)


def test_two_moons_noise_adds_variance():
    x0, x1 = two_moons(N, gen(3), noise=0.0), two_moons(N, gen(3), noise=0.3)
    # Same angles and picks (draw order), plus noise: the scaled difference is the scaled noise.
    s0 = math.sqrt((0.75 + 0.5625 - 1 / math.pi) / 2)
    s1 = math.sqrt(s0**2 + 0.09)
    noise = x1 * s1 - x0 * s0
    assert abs(float(noise.std()) - 0.3) < 4 * 0.3 / math.sqrt(2 * N)


@pytest.mark.parametrize("squares", [2, 3, 4, 5])
def test_checkerboard_only_black_squares_and_uniform(squares):
    x = checkerboard(N, gen(4), squares=squares)
    u = x * checkerboard_scale(squares) + squares / 2
    assert bool((u >= 0).all()) and bool((u <= squares).all())
    cell = u.floor().long()
    assert bool((cell.sum(1) % 2 == 0).all())
    # Each black cell equally likely.
    black = (squares * squares + 1) // 2
    counts = torch.bincount(cell[:, 0] * squares + cell[:, 1], minlength=squares * squares)
    counts = counts[counts > 0].double()
    assert counts.numel() == black
    p = 1 / black
    assert (counts / N - p).abs().max() < 4 * math.sqrt(p * (1 - p) / N)


def test_checkerboard_scale_closed_form():
    for s in (2, 4, 6):
        assert checkerboard_scale(s) == pytest.approx(s / math.sqrt(12), rel=1e-12)
    with pytest.raises(ValueError):
        checkerboard_scale(0)


def test_known_mixture_unit_covariance_and_sampling():
    gmm = known_mixture()
    assert gmm.num_components == 8 and gmm.dim == 2
    torch.testing.assert_close(gmm.mean, torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(gmm.cov, torch.eye(2, dtype=torch.float64), atol=1e-12, rtol=0)
    state = torch.get_rng_state()
    x = gmm.sample(N, gen(5))
    assert torch.equal(torch.get_rng_state(), state)
    assert x.mean(0).abs().max() < 4 / math.sqrt(N)
    # The density is normalised: a grid integral of exp(log_prob) is 1.
    t = torch.linspace(-3, 3, 201, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    mass = float(gmm.log_prob(grid).exp().sum() * (t[1] - t[0]) ** 2)
    assert mass == pytest.approx(1.0, abs=1e-3)
    five = known_mixture(5, component_var=0.3)
    torch.testing.assert_close(five.cov, torch.eye(2, dtype=torch.float64), atol=1e-12, rtol=0)
    with pytest.raises(ValueError):
        known_mixture(2)
    with pytest.raises(ValueError):
        known_mixture(component_var=1.0)
