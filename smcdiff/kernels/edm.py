"""Proposal kernels: one sampler step σ_i → σ_{i+1} of a schedule, with its randomness injected.

A kernel is called as ``kernel(denoiser, x, sigmas, i, generator, cond=None) -> StepOutput`` on a
flat batch ``x : (N, *event)`` (float64), where ``sigmas`` is the whole schedule (float64, ending in
0) and ``i`` the step index; ``generator`` is one ``torch.Generator`` or one per group (rows of x
grouped group-major). ``kernel.stochastic`` says whether two copies of a particle can diverge —
resampling needs that.

* :class:`EDMEuler`, :class:`EDMHeun` — EDM Algorithm 2 (Karras et al. 2022) with stochastic churn
  (``S_churn, S_min, S_max, S_noise``); the churn noise is drawn every step, even when γ = 0, so a
  seed reproduces EDM's stream. With ``S_churn = 0`` the sampler is the deterministic Heun ODE
  solver with NFE 2N − 1.
* :class:`EulerMaruyama` — the reverse SDE, with a Gaussian transition density.

    >>> import torch
    >>> from smcdiff.kernels import EDMHeun, karras_sigmas
    >>> from smcdiff.models.pairs import mixture_pair_2d
    >>> data, _, _ = mixture_pair_2d()
    >>> g = torch.Generator().manual_seed(0)
    >>> sigmas = karras_sigmas(18)
    >>> x = 80.0 * torch.randn(4, 2, dtype=torch.float64, generator=g)
    >>> for i in range(18):
    ...     x = EDMHeun(S_churn=10)(data.denoise, x, sigmas, i, g).x
    >>> x.shape
    torch.Size([4, 2])
"""

from __future__ import annotations

import math

import torch

from smcdiff import _rng
from smcdiff.kernels.steps import StepOutput, churn, euler_maruyama_step, euler_step, heun_step

__all__ = ["EDMEuler", "EDMHeun", "EulerMaruyama"]


def _levels(x, sigmas, i):
    n = x.shape[0]
    t_cur = sigmas[i].to(x.device).expand(n)
    t_next = sigmas[i + 1].to(x.device).expand(n)
    return t_cur, t_next


class EDMEuler:
    """EDM's stochastic sampler with a first-order (Euler) step.

    γ_i = min(S_churn / N, √2 − 1) where S_min ≤ σ_i ≤ S_max, else 0; N = len(sigmas) − 1.
    """

    second_order = False

    def __init__(self, S_churn: float = 0.0, S_min: float = 0.0, S_max: float = math.inf, S_noise: float = 1.0):
        if S_churn < 0 or S_noise < 0 or S_min < 0 or S_max < S_min:
            raise ValueError(
                "expected S_churn >= 0, S_noise >= 0 and 0 <= S_min <= S_max, got "
                f"S_churn={S_churn}, S_min={S_min}, S_max={S_max}, S_noise={S_noise}"
            )
        self.S_churn, self.S_min, self.S_max, self.S_noise = float(S_churn), float(S_min), float(S_max), float(S_noise)

    @property
    def stochastic(self) -> bool:
        return self.S_churn > 0 and self.S_noise > 0

    def gamma(self, sigmas: torch.Tensor, i: int) -> float:
        """The churn γ_i of step ``i`` of schedule ``sigmas``."""
        num_steps = len(sigmas) - 1
        t = float(sigmas[i])
        if self.S_min <= t <= self.S_max:
            return min(self.S_churn / num_steps, math.sqrt(2) - 1)
        return 0.0

    def __call__(self, denoiser, x, sigmas, i, generator, cond=None) -> StepOutput:
        t_cur, t_next = _levels(x, sigmas, i)
        noise = _rng.randn_batch(x.shape, generator, dtype=x.dtype, device=x.device)
        x_hat, t_hat = churn(x, t_cur, self.gamma(sigmas, i), self.S_noise, noise, getattr(denoiser, "round_sigma", None))
        step = heun_step if self.second_order else euler_step
        return step(denoiser, x_hat, t_hat, t_next, cond)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(S_churn={self.S_churn}, S_min={self.S_min}, "
                f"S_max={self.S_max}, S_noise={self.S_noise})")


class EDMHeun(EDMEuler):
    """EDM Algorithm 2: churn, Euler step, 2nd-order correction (skipped on the last step to σ = 0)."""

    second_order = True


class EulerMaruyama:
    """Euler–Maruyama discretisation of the reverse SDE; returns the transition's log-density."""

    stochastic = True

    def __call__(self, denoiser, x, sigmas, i, generator, cond=None) -> StepOutput:
        t_cur, t_next = _levels(x, sigmas, i)
        noise = _rng.randn_batch(x.shape, generator, dtype=x.dtype, device=x.device)
        return euler_maruyama_step(denoiser, x, t_cur, t_next, noise, cond)

    def __repr__(self) -> str:
        return "EulerMaruyama()"
