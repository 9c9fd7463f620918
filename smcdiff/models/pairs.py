"""Exact "data vs model" mixture pairs: a data mixture, an imperfect model mixture (other weights,
shifted means) and the exact log density ratio ℓ_σ(x) = log p^data_σ(x) − log p^model_σ(x), the
perfect discriminator in the EDM scale. Every correction method should turn samples of the model
into samples of the data on these problems.

    >>> from smcdiff.models.pairs import mixture_pair_1d
    >>> data, model, log_ratio = mixture_pair_1d()
    >>> log_ratio(torch.zeros(3, 1, dtype=torch.float64), torch.ones(3, dtype=torch.float64)).shape
    torch.Size([3])
"""

from __future__ import annotations

import torch

from smcdiff.models.gmm import GaussianMixture

__all__ = ["mixture_pair_1d", "mixture_pair_2d", "exact_log_ratio", "zero_log_ratio"]

F64 = torch.float64


def mixture_pair_1d():
    """1-D: data weights 0.7/0.3 at −1/1.5; model weights 0.4/0.6 at −0.8/1.3 (variances 0.09, 0.16)."""
    data = GaussianMixture(torch.tensor([0.7, 0.3], dtype=F64), torch.tensor([[-1.0], [1.5]], dtype=F64),
                           torch.tensor([0.09, 0.16], dtype=F64))
    model = GaussianMixture(torch.tensor([0.4, 0.6], dtype=F64), torch.tensor([[-0.8], [1.3]], dtype=F64),
                            torch.tensor([0.09, 0.16], dtype=F64))
    return data, model, exact_log_ratio(data, model)


def mixture_pair_2d():
    """2-D: data weights 0.6/0.3/0.1; model weights 0.2/0.3/0.5 with means shifted by (0.3, −0.2)."""
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], dtype=F64)
    covs = torch.tensor([0.15, 0.15, 0.15], dtype=F64)
    data = GaussianMixture(torch.tensor([0.6, 0.3, 0.1], dtype=F64), means, covs)
    model = GaussianMixture(torch.tensor([0.2, 0.3, 0.5], dtype=F64), means + torch.tensor([0.3, -0.2], dtype=F64), covs)
    return data, model, exact_log_ratio(data, model)


def exact_log_ratio(data: GaussianMixture, model: GaussianMixture):
    """ℓ(x, σ, **cond) = log p^data_σ(x) − log p^model_σ(x) → (N,)."""

    def log_ratio(x, sigma, **cond):
        return data.log_ratio(model, x, sigma)

    return log_ratio


def zero_log_ratio(x, sigma, **cond):
    """ℓ ≡ 0: a discriminator that cannot tell data from model (every method reduces to its base).

    Written as 0·Σx so that it has a gradient path to x (zero), as a real discriminator would:
    guidance refuses a log-ratio whose output does not depend on x through autograd.
    """
    return 0.0 * x.reshape(x.shape[0], -1).sum(1).to(F64)
