"""Closed-form tilted mixtures (smcdiff.models.tilted) against numbers computed independently:
REFERENCE-STEERING §F (1601² quadrature), a quadrature here, and importance sampling from the prior."""

import math

import pytest
import torch

from smcdiff.models import GaussianMixture
from smcdiff.models.tilted import (
    LinearReward,
    QuadraticReward,
    component_weights,
    example_2d,
    example_8d,
    linear_tilt,
    quadratic_tilt,
)

F64 = torch.float64


@pytest.mark.parametrize("kind, z, mean", [
    ("quadratic", 0.0994630213, (1.03334927, -0.02800035)),
    ("linear", 2.73380693, (1.45195769, -0.47407519)),
])
def test_2d_matches_reference_quadrature(kind, z, mean):
    tilt = example_2d(kind)
    assert float(tilt.log_z.exp()) == pytest.approx(z, abs=1e-8)  # quoted to 8 decimals
    assert tilt.target.mean.tolist() == pytest.approx(list(mean), abs=1e-8)


@pytest.mark.parametrize("kind", ["quadratic", "linear"])
def test_2d_weights_means_covs_by_quadrature(kind):
    """Riemann sum on a 1201² grid over [-6, 6]²: every component's tilted mass, mean and covariance."""
    tilt = example_2d(kind)
    u = torch.linspace(-6.0, 6.0, 1201, dtype=F64)
    h = float(u[1] - u[0])
    X = torch.stack(torch.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
    comp = tilt.prior.component_log_prob(X) + tilt.reward(X)[:, None]  # (M, C)
    mass = comp.exp() * h * h
    Z = mass.sum()
    assert float(Z) == pytest.approx(float(tilt.log_z.exp()), rel=1e-7)
    weights = mass.sum(0) / Z
    assert weights.tolist() == pytest.approx(tilt.target.weights.tolist(), abs=1e-7)
    for k in range(3):
        wk = mass[:, k] / mass[:, k].sum()
        mk = wk @ X
        ck = (wk[:, None] * (X - mk)).mT @ (X - mk)
        assert mk.tolist() == pytest.approx(tilt.target.means[k].tolist(), abs=1e-6)
        assert ck.flatten().tolist() == pytest.approx(tilt.target.covs[k].flatten().tolist(), abs=1e-6)


@pytest.mark.parametrize("kind", ["quadratic", "linear"])
def test_8d_by_importance_sampling(kind):
    """n = 400 000 prior draws weighted by exp(r): Z, the tilted mean and the component weights
    within 5 standard errors (plain s.e. of the mean for Z; delta method for the self-normalised
    ratios: se(sum w f / sum w) = sqrt(mean(w^2 (f - est)^2) / n) / mean(w))."""
    tilt = example_8d(kind)
    n = 400_000
    x, k = tilt.prior.sample(n, torch.Generator().manual_seed(11), return_components=True)
    w = (tilt.reward(x) - tilt.log_z).exp()  # mean 1 if log_z is right
    assert abs(float(w.mean()) - 1.0) < 5 * float(w.std()) / math.sqrt(n)

    def check(f, exact):
        est = (w[:, None] * f).sum(0) / w.sum()
        se = ((w[:, None] ** 2 * (f - est) ** 2).mean(0) / n).sqrt() / w.mean()
        assert ((est - exact).abs() < 5 * se).all(), (est, exact, se)

    check(x, tilt.target.mean)
    check(torch.nn.functional.one_hot(k, 4).to(F64), tilt.target.weights)
    # The weights really move (the problem is not trivial).
    assert (tilt.target.weights - tilt.prior.weights).abs().sum() > 0.5


def test_log_value_is_the_conditional_expectation():
    """log E[exp r(x0) | x_sigma = x] by Monte Carlo from p(x0 | x_sigma = x) (the prior conditioned
    on x = x0 + sigma n with ``condition(I, x, sigma^2)``), n = 200 000, within 5 s.e. (delta method:
    se(log mean) = std / (sqrt(n) mean))."""
    tilt = example_2d("quadratic")
    for sigma, x in ((0.7, [0.3, -0.2]), (2.0, [-1.0, 1.5])):
        post, _ = tilt.prior.condition(torch.eye(2, dtype=F64), torch.tensor(x, dtype=F64), sigma**2)
        e = tilt.reward(post.sample(200_000, torch.Generator().manual_seed(3))).exp()
        est, se = float(e.mean().log()), float(e.std() / e.mean()) / math.sqrt(e.shape[0])
        exact = float(tilt.log_value(torch.tensor([x], dtype=F64), torch.tensor([sigma], dtype=F64)))
        assert abs(est - exact) < 5 * se
    x = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(tilt.log_value(x, torch.zeros(4, dtype=F64)), tilt.reward(x), atol=1e-12)
    assert torch.allclose(tilt.log_value(x, torch.full((4,), 1e4, dtype=F64)), tilt.log_z.expand(4), atol=1e-6)


def test_rewards_accept_any_event_shape_and_are_differentiable():
    r = QuadraticReward([[1.0, 0.0, 0.0, -1.0]], [0.5], s=0.5, lam=2.0)
    x = torch.ones(3, 1, 2, 2, dtype=F64, requires_grad=True)
    v = r(x)
    assert v.shape == (3,) and torch.allclose(v, torch.full((3,), -2.0 * 0.25 / 0.5, dtype=F64))
    (g,) = torch.autograd.grad(v.sum(), x)
    assert g.shape == x.shape
    assert LinearReward([1.0, 2.0], lam=0.5)(torch.tensor([[1.0, 1.0]], dtype=F64)).item() == 1.5


def test_component_weights_of_exact_samples_and_weighted():
    target = example_2d("linear").target
    x = target.sample(20_000, torch.Generator().manual_seed(5))
    assert (component_weights(target, x) - target.weights).abs().max() < 0.02
    lw = torch.zeros(20_000, dtype=F64)
    lw[10_000:] = -math.inf  # only the first half counts
    assert torch.allclose(component_weights(target, x, lw), component_weights(target, x[:10_000]))


def test_bad_input():
    prior = GaussianMixture(torch.ones(2), torch.tensor([[0.0, 0.0], [1.0, 1.0]]), torch.ones(2))
    with pytest.raises(ValueError, match="lam"):
        linear_tilt(prior, [1.0, 0.0], lam=0.0)
    with pytest.raises(ValueError, match=r"b of shape \(2,\)"):
        linear_tilt(prior, [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="A"):
        quadratic_tilt(prior, [[1.0, 0.0, 0.0]], [0.0])
    with pytest.raises(ValueError, match="s must be"):
        QuadraticReward([[1.0, 0.0]], [0.0], s=-1.0)
    with pytest.raises(ValueError, match="elements per sample"):
        LinearReward([1.0, 0.0])(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="kind"):
        example_8d("cubic")
