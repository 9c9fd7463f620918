"""Density estimates as SMC potentials: ``V(x, σ, x̂0, **cond) = scale · log p_{σ_min}(x̂0)``.

:class:`DensityPotential` wraps :func:`~smcdiff.likelihood.log_prob` (probability-flow ODE) or
:func:`~smcdiff.likelihood.elbo` (denoising bound) of a *reference* model — a data mixture, a
digits network, any denoiser — into the potential contract of :mod:`smcdiff.weights`: a callable
``(x : (N, *shape), sigma : (N,), x0_hat : (N, *shape), **cond) -> (N,)`` float64. It scores the
particles' current x̂0 (``on="x0_hat"``, default) or the noisy state itself (``on="x"``). The
run's ``cond`` (e.g. ``class_labels``) is passed on to the reference denoiser unless
``pass_cond=False``.

**Cost, per evaluation, for N particles** (it runs at every step where the sampler evaluates the
potential — wrap it in ``smcdiff.weights.Window(V, sigma_max=...)`` to confine it to the last
steps, or use it only as a final score):

* ``estimator="log_prob"``: one ODE solve; ``LogProbResult.nfe`` solver evaluations (dopri5 at
  rtol 1e-5: ~100–300), each one reference-denoiser forward on the N particles plus d (exact
  divergence) or ``num_probes`` (Hutchinson) backward passes.
* ``estimator="elbo"``: ``2·num_draws`` reference-denoiser forwards per particle, no backward.

The random draws (Hutchinson probes, ELBO noise) come from the ``generator`` given at
construction, consumed call after call, so the values depend on the order of the calls.

    >>> import torch
    >>> from smcdiff.models import GaussianMixture
    >>> from smcdiff.likelihood import DensityPotential
    >>> data = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-1.0], [1.0]]), torch.tensor([0.2, 0.2]))
    >>> V = DensityPotential(data, sigma_min=0.01, sigma_max=20.0)
    >>> x0_hat = torch.tensor([[-1.0], [0.0], [1.0]], dtype=torch.float64)
    >>> v = V(x0_hat, torch.full((3,), 0.5, dtype=torch.float64), x0_hat)
    >>> v.shape, bool(v[0] > v[1])
    (torch.Size([3]), True)
"""

from __future__ import annotations

import math

import torch

from smcdiff.likelihood.bound import elbo
from smcdiff.likelihood.ode import log_prob
from smcdiff.types import Tensor

__all__ = ["DensityPotential"]

_ESTIMATORS = ("log_prob", "elbo")


class DensityPotential:
    """``scale · log p_{σ_min}(x̂0)`` (or its ELBO) under ``denoiser``, as an SMC potential.

    Args:
        denoiser: the reference model ``D(x, sigma, **cond)``.
        sigma_min, sigma_max: the range of :func:`log_prob` / :func:`elbo`.
        estimator: ``"log_prob"`` (default) or ``"elbo"``.
        on: ``"x0_hat"`` (default) or ``"x"``: which argument is scored.
        scale: λ multiplying the log-density.
        generator: ``torch.Generator`` for the Hutchinson probes / ELBO draws (needed by those).
        pass_cond: forward the run's ``cond`` to ``denoiser`` (default True).
        name: the name the sampler records the term under (default: ``estimator``).
        **options: further keyword arguments of :func:`log_prob` or :func:`elbo` (``rtol``,
            ``divergence``, ``num_draws``, ``prior``, ...).
    """

    def __init__(self, denoiser, *, sigma_min: float, sigma_max: float, estimator: str = "log_prob",
                 on: str = "x0_hat", scale: float = 1.0, generator=None, pass_cond: bool = True,
                 name: str | None = None, **options):
        if estimator not in _ESTIMATORS:
            raise ValueError(f"estimator must be one of {_ESTIMATORS}, got {estimator!r}")
        if on not in ("x0_hat", "x"):
            raise ValueError(f"on must be 'x0_hat' or 'x', got {on!r}")
        if not math.isfinite(float(scale)):
            raise ValueError(f"scale must be finite, got {scale!r}")
        if not callable(denoiser):
            raise TypeError(f"denoiser must be callable D(x, sigma, **cond), got {type(denoiser).__name__}")
        if estimator == "elbo" and generator is None:
            raise ValueError("estimator='elbo' needs generator= (a torch.Generator) for its draws")
        self.denoiser, self.estimator, self.on, self.scale = denoiser, estimator, on, float(scale)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.generator, self.pass_cond, self.options = generator, bool(pass_cond), dict(options)
        self.name = name or estimator

    def __call__(self, x: Tensor, sigma: Tensor, x0_hat: Tensor, **cond) -> Tensor:
        target = x0_hat if self.on == "x0_hat" else x
        kwargs = dict(sigma_min=self.sigma_min, sigma_max=self.sigma_max, cond=cond if self.pass_cond else None,
                      **self.options)
        if self.generator is not None:
            kwargs["generator"] = self.generator
        if self.estimator == "log_prob":
            value = log_prob(self.denoiser, target, **kwargs).log_prob
        else:
            value = elbo(self.denoiser, target, **kwargs).elbo
        return self.scale * value.to(torch.float64) if self.scale != 1.0 else value.to(torch.float64)

    def __repr__(self) -> str:
        return (f"DensityPotential({self.estimator}, on={self.on!r}, scale={self.scale}, "
                f"sigma=[{self.sigma_min}, {self.sigma_max}])")
