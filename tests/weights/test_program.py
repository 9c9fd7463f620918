import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import smcdiff
from smcdiff.models import GaussianMixture
from smcdiff.weights import Program, Sum, Window, evaluate_terms, program

X = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
SIGMA = torch.full((6,), 0.5, dtype=torch.float64)


def plain(x, sigma, x0_hat):
    return -torch.relu(-x0_hat[:, 0]) + (-0.5 * (x0_hat ** 2).sum(-1) / (1 + sigma))


@program
def two_factors(x, sigma, x0_hat):
    pyro.factor("right", -torch.relu(-x0_hat[:, 0]))
    pyro.factor("small", -0.5 * (x0_hat ** 2).sum(-1) / (1 + sigma))


def test_two_factors_value_and_terms():
    assert isinstance(two_factors, Program) and two_factors.name == "two_factors"
    torch.testing.assert_close(two_factors(X, SIGMA, X), plain(X, SIGMA, X), rtol=0, atol=0)
    terms = two_factors.terms(X, SIGMA, X)
    assert list(terms) == ["right", "small"]
    torch.testing.assert_close(terms["right"], -torch.relu(-X[:, 0]), rtol=0, atol=0)
    torch.testing.assert_close(terms["small"], -0.5 * (X ** 2).sum(-1) / 1.5, rtol=0, atol=0)
    value, recorded = evaluate_terms(Sum(two_factors), X, SIGMA, X)
    assert list(recorded) == ["two_factors.right", "two_factors.small"]
    torch.testing.assert_close(value, plain(X, SIGMA, X))


def test_same_log_weights_as_plain_function_through_sample():
    gmm = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-1.0, 0.0], [1.0, 0.5]]), torch.tensor([0.1, 0.2]))

    def run(potential):
        return smcdiff.sample(gmm.denoise, smcdiff.karras_sigmas(5), smcdiff.kernels.EDMHeun(S_churn=5.0), potential,
                              resampler=smcdiff.Resampler("systematic", 0.7), num_groups=2, num_particles=16,
                              shape=(2,), generator=torch.Generator().manual_seed(3))

    a, b = run(two_factors), run(plain)
    assert bool(a.resampled.any())  # resampling happened, so ancestors must agree too
    assert torch.equal(a.x, b.x) and torch.equal(a.ancestors, b.ancestors)
    torch.testing.assert_close(a.log_weights, b.log_weights, rtol=0, atol=0)
    torch.testing.assert_close(a.log_evidence, b.log_evidence, rtol=0, atol=0)


def test_decorator_with_name_cond_plate_and_observed_site():
    y = torch.tensor(0.3, dtype=torch.float64)

    @program(name="lik")
    def lik(x, sigma, x0_hat, scale):
        with pyro.plate("particles", x0_hat.shape[0]):
            pyro.sample("y", dist.Normal(x0_hat[:, 0], scale), obs=y)
            pyro.deterministic("mean", x0_hat[:, 0])
            pyro.factor("prior", -x0_hat[:, 1] ** 2)

    terms = lik.terms(X, SIGMA, X, scale=torch.tensor(2.0, dtype=torch.float64))
    assert lik.name == "lik" and list(terms) == ["y", "prior"]
    torch.testing.assert_close(terms["y"], torch.distributions.Normal(X[:, 0], 2.0).log_prob(y))
    assert program(lambda x, s, x0: pyro.factor("f", x0[:, 0])).name == "program"


def test_sites_hidden_from_outer_handlers():
    with poutine.trace() as outer:
        two_factors(X, SIGMA, X)
    assert not [n for n, s in outer.trace.nodes.items() if s["type"] == "sample"]


def test_no_global_rng_or_param_store_touched():
    pyro.clear_param_store()
    state = torch.get_rng_state()
    two_factors(X, SIGMA, X)

    @program
    def latent(x, sigma, x0_hat):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.factor("f", x0_hat[:, 0] * z)

    with pytest.raises(ValueError, match="latent sample site 'z'.*deterministic function"):
        latent(X, SIGMA, X)

    @program
    def with_param(x, sigma, x0_hat):
        w = pyro.param("w", torch.tensor(1.0))
        pyro.factor("f", w * x0_hat[:, 0])

    with pytest.raises(ValueError, match="parameter store"):
        with_param(X, SIGMA, X)

    @program
    def subsampled(x, sigma, x0_hat):
        with pyro.plate("p", 6, subsample_size=3):
            pyro.factor("f", x0_hat[:3, 0])

    with pytest.raises(ValueError, match="subsamples"):
        subsampled(X, SIGMA, X)
    assert torch.equal(torch.get_rng_state(), state)
    assert list(pyro.get_param_store().keys()) == []


def test_no_factor_or_wrong_shape_is_refused():
    @program
    def empty(x, sigma, x0_hat):
        return x0_hat[:, 0]

    with pytest.raises(ValueError, match="recorded no pyro.factor"):
        empty(X, SIGMA, X)

    @program
    def scalar(x, sigma, x0_hat):
        pyro.factor("total", x0_hat.sum())

    with pytest.raises(ValueError, match=r"site 'total' has log-value of shape \(\), expected \(6,\)"):
        scalar(X, SIGMA, X)

    @program
    def per_coordinate(x, sigma, x0_hat):
        pyro.sample("y", dist.Normal(x0_hat, 1.0), obs=torch.zeros(2, dtype=torch.float64))

    with pytest.raises(ValueError, match=r"shape \(6, 2\).*to_event"):
        per_coordinate(X, SIGMA, X)
    with pytest.raises(TypeError, match="pyro.factor"):
        program(3)


def test_window_learns_program_term_names_when_skipped():
    W = Window(two_factors, sigma_max=0.1)
    assert W.term_names is None and Sum(W, lambda x, s, x0: x0[:, 0]).term_names is None
    terms = W.terms(X, SIGMA, X)  # all sigma = 0.5 > 0.1: the program runs only to name its terms
    assert list(terms) == ["right", "small"]
    assert all(torch.equal(v, torch.zeros(6, dtype=torch.float64)) for v in terms.values())
