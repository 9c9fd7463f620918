"""Density estimation with diffusion models: log p(x) by the probability-flow ODE, the denoising
ELBO, and both as SMC potentials.

* :func:`log_prob` (:mod:`~smcdiff.likelihood.ode`) — ``log p_{σ_min}(x)`` of the model defined by
  any denoiser ``D(x, σ, **cond)``: the augmented probability-flow ODE integrated with
  ``torchdiffeq.odeint`` (dopri5) from σ_min to σ_max, prior ``N(0, σ_max² I)`` at σ_max included;
  exact or Hutchinson divergence; bits/dim for images with uniform dequantisation.
* :func:`elbo` (:mod:`~smcdiff.likelihood.bound`) — the variational lower bound on the same
  ``log p_{σ_min}(x)``: a Monte Carlo average over (σ, ε) draws, no gradients, tight for exact
  denoisers.
* :class:`DensityPotential` (:mod:`~smcdiff.likelihood.potential`) — either of them as a potential
  ``V(x, σ, x̂0, **cond) -> (N,)`` for :mod:`smcdiff.weights` / the SMC samplers.
* The Diffusion Classifier built on the ELBO is :mod:`smcdiff.methods.zero_shot_classifier`.

The density is that of the data **smoothed to σ_min** (data ⊛ N(0, σ_min² I)), never of the clean
data: quote σ_min with every number. Everything runs under ``torch.no_grad``, in float64, and
every random draw comes from the ``generator`` the caller passes.

    >>> import torch
    >>> from smcdiff.models import GaussianMixture
    >>> from smcdiff.likelihood import elbo, log_prob
    >>> gmm = GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-2.0, 0.0], [2.0, 1.0]]),
    ...                       torch.tensor([0.5, 0.2]))
    >>> x = gmm.sample(16, torch.Generator().manual_seed(0))
    >>> lp = log_prob(gmm, x, sigma_min=0.002, sigma_max=80.0)        # exact divergence, d = 2
    >>> exact = gmm.noised(0.002).log_prob(x)
    >>> err = (lp.log_prob - exact).abs()            # N(0, 80²) is not exactly p_80: ~0.02 nats here
    >>> bool(err.max() < 0.05)
    True
    >>> lb = elbo(gmm, x, sigma_min=0.002, sigma_max=80.0, num_draws=64,
    ...           generator=torch.Generator().manual_seed(1))
    >>> lb.elbo.shape, lb.nfe                                         # 2 evaluations per draw
    (torch.Size([16]), 128)
"""

from smcdiff.likelihood.bound import SIGMA_DISTS, ElboResult, elbo
from smcdiff.likelihood.ode import (
    DIVERGENCES,
    PROBES,
    LogProbResult,
    gaussian_prior,
    log_prob,
    to_bits_per_dim,
    uniform_dequantize,
)
from smcdiff.likelihood.potential import DensityPotential

__all__ = [
    "DIVERGENCES",
    "PROBES",
    "SIGMA_DISTS",
    "DensityPotential",
    "ElboResult",
    "LogProbResult",
    "elbo",
    "gaussian_prior",
    "log_prob",
    "to_bits_per_dim",
    "uniform_dequantize",
]
