"""Twists and potentials of the steering methods (TDS, DAS): a reward read on x̂0, possibly tempered.

A *twist* is ``φ(x0_hat, sigma, **cond) -> (N,)``: an estimate of the soft value ``log E[exp r(x0) |
x_σ]`` read on the denoiser output ``x0_hat : (N, *shape)`` at the noise level ``sigma : (N,)``.
It drives the twisted proposal (:class:`~smcdiff.kernels.twisted.TwistedEulerMaruyama`) and is, as a
difference-form potential, the intermediate target ``p_σ(x)·exp φ`` of the sampler; at ``σ = 0`` it
must equal the reward, so the weights telescope to ``exp r(x0)`` and the sampler targets
``p(x0)·exp r(x0)`` exactly.

* :class:`RewardTwist` — ``φ = r(x̂0)`` (TDS with a plain reward; exact at σ = 0, over-confident
  at high σ, where x̂0 is a blurred average).
* :class:`TemperedReward` — ``φ = γ_σ·r(x̂0)`` with a tempering schedule ``γ`` rising from 0 to 1
  (DAS, Kim et al. 2025); :func:`das_gammas` is DAS's exponential schedule.
* :class:`TwistPotential` — a twist as a potential ``V(x, sigma, x0_hat, **cond)``, to be used with
  ``potential_form="difference"``.

    >>> import torch
    >>> from smcdiff.kernels import karras_sigmas
    >>> sigmas = karras_sigmas(10)
    >>> gammas = das_gammas(10)
    >>> [round(g, 3) for g in gammas.tolist()]
    [0.0, 0.083, 0.173, 0.27, 0.375, 0.489, 0.613, 0.747, 0.892, 1.0, 1.0]
    >>> twist = TemperedReward(lambda x0: -x0.pow(2).sum(-1), sigmas, gammas)
    >>> V = TwistPotential(twist)
    >>> x0 = torch.ones(3, 2, dtype=torch.float64)
    >>> V(x0, torch.zeros(3, dtype=torch.float64), x0)     # γ = 1 at σ = 0: the reward itself
    tensor([-2., -2., -2.], dtype=torch.float64)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from smcdiff.kernels.schedules import check_sigmas
from smcdiff.types import Tensor
from smcdiff.weights.values import log_values

__all__ = ["RewardTwist", "TemperedReward", "TwistPotential", "das_gammas"]


class RewardTwist:
    """``φ(x0_hat, sigma, **cond) = reward(x0_hat, **cond)`` (σ ignored)."""

    def __init__(self, reward: Callable):
        if not callable(reward):
            raise TypeError(f"reward must be callable as reward(x0, **cond) -> (N,), got {reward!r}")
        self.reward = reward

    def __call__(self, x0_hat: Tensor, sigma: Tensor, **cond) -> Tensor:
        return log_values(self.reward(x0_hat, **cond), x0_hat.shape[0], "reward(x0)")

    def __repr__(self) -> str:
        return f"RewardTwist({self.reward!r})"


def das_gammas(num_steps: int, growth: float = 0.008, reference_steps: int = 100) -> Tensor:
    """DAS's exponential tempering ``γ_i = min((1 + g)^{i·100/N} − 1, 1)``, ``i = 0..N`` → ``(N + 1,)``.

    With DAS's defaults (``g = 0.008``, 100 steps) ``γ`` reaches 1 at step 87; the exponent is
    rescaled so that it does so at 87 % of any ``num_steps``. ``γ_N = 1`` always (σ = 0).
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if not math.isfinite(growth) or growth <= 0:
        raise ValueError(f"growth must be a finite float > 0, got {growth!r}")
    i = torch.arange(num_steps + 1, dtype=torch.float64) * (reference_steps / num_steps)
    gammas = ((1.0 + growth) ** i - 1.0).clamp(max=1.0)
    gammas[-1] = 1.0
    return gammas


class TemperedReward:
    """``φ(x0_hat, sigma) = γ(σ)·reward(x0_hat)``: ``γ_i`` at the noise level ``sigmas[i]``.

    ``sigmas : (N + 1,)`` the sampler's schedule (ending in 0), ``gammas : (N + 1,)`` in [0, 1] with
    ``gammas[-1] = 1``. A ``sigma`` between grid points takes the γ of the nearest one in log σ.
    """

    def __init__(self, reward: Callable, sigmas, gammas):
        if not callable(reward):
            raise TypeError(f"reward must be callable as reward(x0, **cond) -> (N,), got {reward!r}")
        self.reward, self.sigmas = reward, check_sigmas(sigmas)
        self.gammas = torch.as_tensor(gammas, dtype=torch.float64)
        if self.gammas.shape != self.sigmas.shape:
            raise ValueError(f"gammas must have the schedule's shape {tuple(self.sigmas.shape)}, "
                             f"got {tuple(self.gammas.shape)}")
        if not torch.isfinite(self.gammas).all() or (self.gammas < 0).any() or (self.gammas > 1).any():
            raise ValueError("gammas must lie in [0, 1]")
        if float(self.gammas[-1]) != 1.0:
            raise ValueError("gammas[-1] must be 1: at σ = 0 the twist is the reward itself")

    def gamma(self, sigma: Tensor) -> Tensor:
        """``γ(σ)`` for ``sigma : (N,)`` → ``(N,)`` float64."""
        grid = self.sigmas.to(sigma.device).clamp_min(1e-300).log()
        idx = (sigma.to(torch.float64).clamp_min(1e-300).log()[:, None] - grid).abs().argmin(1)
        return self.gammas.to(sigma.device)[idx]

    def __call__(self, x0_hat: Tensor, sigma: Tensor, **cond) -> Tensor:
        value = log_values(self.reward(x0_hat, **cond), x0_hat.shape[0], "reward(x0)")
        return self.gamma(torch.as_tensor(sigma).expand(x0_hat.shape[0])).to(value) * value

    def __repr__(self) -> str:
        return f"TemperedReward({self.reward!r}, steps={len(self.sigmas) - 1})"


class TwistPotential:
    """The potential ``V(x, sigma, x0_hat, **cond) = twist(x0_hat, sigma, **cond)`` (difference form)."""

    potential_form = "difference"

    def __init__(self, twist: Callable, name: str = "twist"):
        if not callable(twist):
            raise TypeError(f"twist must be callable as twist(x0_hat, sigma, **cond) -> (N,), got {twist!r}")
        self.twist, self.name = twist, name

    def __call__(self, x: Tensor, sigma: Tensor, x0_hat: Tensor, **cond) -> Tensor:
        return log_values(self.twist(x0_hat, sigma, **cond), x0_hat.shape[0], f"twist {self.name!r}").to(torch.float64)

    def __repr__(self) -> str:
        return f"TwistPotential({self.twist!r})"
