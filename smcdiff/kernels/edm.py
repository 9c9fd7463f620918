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
from dataclasses import dataclass

import torch

from smcdiff import _rng
from smcdiff.kernels.steps import StepOutput, edm_step, euler_maruyama_step

__all__ = ["EDMEuler", "EDMHeun", "EulerMaruyama", "ChurnBoost", "MAX_GAMMA", "levels"]

#: EDM's cap on the churn, γ ≤ √2 − 1 (the noise level at most doubles in variance).
MAX_GAMMA = math.sqrt(2) - 1


def levels(x, sigmas, i):
    """σ_i and σ_{i+1} of schedule ``sigmas`` (kept on the CPU) as per-sample ``(N,)`` float64 tensors
    on ``x``'s device: filled from host numbers, so no copy or host synchronisation per step."""
    n = x.shape[0]
    return (torch.full((n,), float(sigmas[i]), dtype=torch.float64, device=x.device),
            torch.full((n,), float(sigmas[i + 1]), dtype=torch.float64, device=x.device))


def _check_knob(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must be a number, got NaN")
    return value


@dataclass(frozen=True)
class ChurnBoost:
    """DG's *boosting* (Kim et al. 2023): every ``period``-th step, samples whose last log-ratio
    (``carry[key]``, reported by :class:`~smcdiff.kernels.guidance.DiscriminatorGuidance`) is below 0
    get the churn γ = min(``S_churn``/N, √2 − 1) with ``S_noise`` for that step."""

    period: int = 5
    S_churn: float = 4.0
    S_noise: float = 1.0
    key: str = "log_ratio"


class EDMEuler:
    """EDM's stochastic sampler with a first-order (Euler) step.

    γ_i = min(S_churn / N, √2 − 1) where S_min ≤ σ_i ≤ S_max, else 0; N = len(sigmas) − 1.
    ``resample_gamma``: the churn of particles whose group was just resampled (told by the
    sampler through ``resampled``), inside [S_min, S_max] — Liu et al.'s forced churn, which
    re-diversifies the copies (their particle filter uses √2 − 1). ``boost``: DG's boosting
    (:class:`ChurnBoost`).
    """

    second_order = False

    def __init__(self, S_churn: float = 0.0, S_min: float = 0.0, S_max: float = math.inf, S_noise: float = 1.0, *,
                 resample_gamma: float | None = None, boost: ChurnBoost | None = None):
        S_churn, S_min, S_max, S_noise = (_check_knob(n, v) for n, v in
                                          (("S_churn", S_churn), ("S_min", S_min), ("S_max", S_max), ("S_noise", S_noise)))
        if S_churn < 0 or S_noise < 0 or S_min < 0 or S_max < S_min or math.isinf(S_churn) or math.isinf(S_noise):
            raise ValueError(
                "expected finite S_churn >= 0, finite S_noise >= 0 and 0 <= S_min <= S_max, got "
                f"S_churn={S_churn}, S_min={S_min}, S_max={S_max}, S_noise={S_noise}"
            )
        if resample_gamma is not None and not 0.0 <= _check_knob("resample_gamma", resample_gamma) <= MAX_GAMMA:
            raise ValueError(f"resample_gamma must be in [0, sqrt(2) - 1], got {resample_gamma}")
        if boost is not None and not isinstance(boost, ChurnBoost):
            raise TypeError(f"boost must be a smcdiff.kernels.ChurnBoost, got {boost!r}")
        self.S_churn, self.S_min, self.S_max, self.S_noise = S_churn, S_min, S_max, S_noise
        self.resample_gamma, self.boost = resample_gamma, boost

    @property
    def stochastic(self) -> bool:
        return (self.S_churn > 0 or self.resample_gamma is not None) and self.S_noise > 0

    def in_window(self, t: float) -> bool:
        return self.S_min <= t <= self.S_max

    def gamma(self, sigmas: torch.Tensor, i: int) -> float:
        """The churn γ_i of step ``i`` of schedule ``sigmas``."""
        num_steps = len(sigmas) - 1
        if self.in_window(float(sigmas[i])):
            return min(self.S_churn / num_steps, MAX_GAMMA)
        return 0.0

    def __call__(self, denoiser, x, sigmas, i, generator, cond=None, *, resampled=None, carry=None) -> StepOutput:
        t_cur, t_next = levels(x, sigmas, i)
        gamma, S_noise = self.gamma(sigmas, i), self.S_noise
        if resampled is not None and self.resample_gamma is not None and self.in_window(float(sigmas[i])):
            # Re-diversify the copies of just-resampled groups.
            gamma = torch.full(resampled.shape, gamma, dtype=torch.float64, device=x.device)
            gamma = gamma.masked_fill(resampled, self.resample_gamma)
        b = self.boost
        if b is not None and carry and b.key in carry and i % b.period == 0:
            # Boosting: more noise for the samples the discriminator deems fake.
            low = carry[b.key] < 0
            gamma = torch.where(low, min(b.S_churn / (len(sigmas) - 1), MAX_GAMMA),
                                torch.as_tensor(gamma, dtype=torch.float64, device=x.device).expand(low.shape))
            S_noise = torch.where(low, b.S_noise, torch.full(low.shape, S_noise, dtype=torch.float64, device=x.device))
        noise = _rng.randn_batch(x.shape, generator, dtype=x.dtype, device=x.device)
        return edm_step(denoiser, x, t_cur, t_next, gamma=gamma, S_noise=S_noise, noise=noise,
                        second_order=self.second_order, last=float(sigmas[i + 1]) == 0.0, cond=cond)

    def __repr__(self) -> str:
        extra = "" if self.resample_gamma is None else f", resample_gamma={self.resample_gamma}"
        extra += "" if self.boost is None else f", boost={self.boost}"
        return (f"{type(self).__name__}(S_churn={self.S_churn}, S_min={self.S_min}, "
                f"S_max={self.S_max}, S_noise={self.S_noise}{extra})")


class EDMHeun(EDMEuler):
    """EDM Algorithm 2: churn, Euler step, 2nd-order correction (skipped on the last step to σ = 0)."""

    second_order = True


class EulerMaruyama:
    """Euler–Maruyama discretisation of the reverse SDE; returns the transition's log-density."""

    stochastic = True

    def __call__(self, denoiser, x, sigmas, i, generator, cond=None, **context) -> StepOutput:
        t_cur, t_next = levels(x, sigmas, i)
        noise = _rng.randn_batch(x.shape, generator, dtype=x.dtype, device=x.device)
        return euler_maruyama_step(denoiser, x, t_cur, t_next, noise, cond)

    def __repr__(self) -> str:
        return "EulerMaruyama()"
