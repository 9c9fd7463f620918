import math

import pytest
import torch
from scipy.stats import multivariate_normal

from smcdiff.weights import GaussianLikelihood

A = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]], dtype=torch.float64)
Y = torch.tensor([0.3, -0.2], dtype=torch.float64)
R = torch.tensor([[0.2, 0.05], [0.05, 0.3]], dtype=torch.float64)


def test_exact_at_sigma_zero():
    x0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lik = GaussianLikelihood(A, Y, R)
    got = lik(x0, torch.zeros(5, dtype=torch.float64), x0)
    ref = [multivariate_normal(mean=(A @ x).numpy(), cov=R.numpy()).logpdf(Y.numpy()) for x in x0]
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64))


def test_noise_aware_variance_per_sample():
    x0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigma = torch.tensor([0.0, 0.5, 2.0, 10.0], dtype=torch.float64)
    lik = GaussianLikelihood(A, Y, R, data_var=0.25)
    got = lik(x0, sigma, x0)
    for j in range(4):
        c = sigma[j] ** 2 * 0.25 / (sigma[j] ** 2 + 0.25)
        cov = (R + c * A @ A.T).numpy()
        ref = multivariate_normal(mean=(A @ x0[j]).numpy(), cov=cov).logpdf(Y.numpy())
        assert math.isclose(got[j].item(), ref, rel_tol=1e-12)


def test_event_shapes_are_flattened_and_scalar_r():
    lik = GaussianLikelihood(torch.eye(4), torch.zeros(4), 0.5)
    x0 = torch.ones(2, 2, 2, dtype=torch.float64)
    ref = multivariate_normal(mean=[1.0] * 4, cov=0.5 * torch.eye(4).numpy()).logpdf([0.0] * 4)
    torch.testing.assert_close(lik(x0, torch.zeros(2, dtype=torch.float64), x0),
                               torch.full((2,), ref, dtype=torch.float64))


@pytest.mark.parametrize("kwargs, msg", [
    (dict(A=torch.ones(3), y=Y, R=R), "A must be"),
    (dict(A=A, y=torch.ones(3), R=R), "y must have shape"),
    (dict(A=A, y=Y, R=torch.ones(3, 3)), "R must be"),
    (dict(A=A, y=Y, R=-torch.eye(2)), "positive definite"),
    (dict(A=A, y=Y, R=R, data_var=0.0), "data_var"),
])
def test_bad_construction(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        GaussianLikelihood(**kwargs)


def test_wrong_sample_size():
    with pytest.raises(ValueError, match="elements per sample"):
        GaussianLikelihood(A, Y, R)(torch.ones(2, 4), torch.zeros(2), torch.ones(2, 4))
