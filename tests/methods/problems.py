"""Exact test problems for the methods: a data mixture, an imperfect model mixture (other weights,
shifted means) and the exact log density ratio ℓ_σ = log p^data_σ − log p^model_σ (the perfect
discriminator, EDM scale)."""

import torch

from smcdiff.models import GaussianMixture

F64 = torch.float64


def pair_1d():
    data = GaussianMixture(torch.tensor([0.7, 0.3], dtype=F64), torch.tensor([[-1.0], [1.5]], dtype=F64),
                           torch.tensor([0.09, 0.16], dtype=F64))
    model = GaussianMixture(torch.tensor([0.4, 0.6], dtype=F64), torch.tensor([[-0.8], [1.3]], dtype=F64),
                            torch.tensor([0.09, 0.16], dtype=F64))
    return data, model, ratio(data, model)


def pair_2d():
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], dtype=F64)
    data = GaussianMixture(torch.tensor([0.6, 0.3, 0.1], dtype=F64), means, torch.tensor([0.15, 0.15, 0.15], dtype=F64))
    model = GaussianMixture(torch.tensor([0.2, 0.3, 0.5], dtype=F64), means + torch.tensor([0.3, -0.2], dtype=F64),
                            torch.tensor([0.15, 0.15, 0.15], dtype=F64))
    return data, model, ratio(data, model)


def ratio(data, model):
    def log_ratio(x, sigma, **cond):
        return data.log_ratio(model, x, sigma)

    return log_ratio


def zero_ratio(x, sigma, **cond):
    return torch.zeros(x.shape[0], dtype=F64, device=x.device)
