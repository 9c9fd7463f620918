"""One sampler step each, as short pure functions on a flat batch (EDM conventions).

Shapes: ``x : (N, *event)`` float64, noise levels ``t_cur, t_next : (N,)`` float64 (a per-sample
σ, so slots at different steps can share one network call), ``noise`` like ``x``. The denoiser
contract is ``D(x, sigma, **cond) -> x0_hat``; its output is cast to float64 here, so the sampler's
arithmetic stays in float64 whatever the network runs in. Every step returns a :class:`StepOutput`
with the new ``x``, the latest denoiser output ``x0_hat`` (for a Heun step, the one at the Euler
predictor: it costs nothing extra), ``nfe : (N,)`` network evaluations spent on each sample, and,
where the transition is Gaussian, its ``log_prob : (N,)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import torch

from smcdiff.types import Tensor

__all__ = ["StepOutput", "per_sample", "denoise", "churn", "euler_step", "heun_step", "edm_step", "euler_maruyama_step"]


class StepOutput(NamedTuple):
    """What a step or kernel returns on a flat batch of N samples.

    ``x`` the new state; ``x0_hat`` the latest denoiser output; ``nfe : (N,)`` network evaluations
    spent on each sample; ``log_prob : (N,)`` the transition's log-density where it is Gaussian;
    ``log_weight : (N,)`` a log-weight increment the kernel contributes (a twisted proposal's
    log p(x'|x) − log q(x'|x), say), added by :func:`smcdiff.sample`; ``carry`` per-sample tensors
    ``(N, ...)`` the kernel wants back at its next call (they follow their particle through
    resampling; e.g. DG's last log-ratio for boosting).
    """

    x: Tensor
    x0_hat: Tensor
    nfe: Tensor
    log_prob: Tensor | None = None
    log_weight: Tensor | None = None
    carry: Mapping[str, Tensor] | None = None


def per_sample(sigma: Tensor, x: Tensor) -> Tensor:
    """Broadcast a per-sample ``(N,)`` noise level (or weight) against ``x : (N, *event)``."""
    return sigma.reshape(-1, *([1] * (x.dim() - 1)))


def denoise(denoiser, x: Tensor, sigma: Tensor, cond: Mapping[str, Tensor] | None = None) -> Tensor:
    """Call ``denoiser(x, sigma, **cond)`` and return its output as float64, checking its shape."""
    out = denoiser(x, sigma, **(cond or {}))
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"denoiser must return x0_hat of the input's shape {tuple(x.shape)}, got {got}")
    return out.to(torch.float64)


def churn(x: Tensor, t_cur: Tensor, gamma: Tensor | float, S_noise: Tensor | float, noise: Tensor, round_sigma=None):
    """EDM's stochastic churn: raise σ from t to t̂ = round(t + γt) by adding fresh noise.

    ``gamma`` and ``S_noise`` are floats or per-sample ``(N,)`` tensors. Returns ``(x_hat, t_hat)``.
    With γ = 0 it returns ``x`` and ``t`` unchanged (the noise is still consumed by the caller, as
    EDM draws it every step).
    """
    t_hat = t_cur + gamma * t_cur
    if round_sigma is not None:
        t_hat = round_sigma(t_hat).to(torch.float64)
    if isinstance(S_noise, torch.Tensor):
        S_noise = per_sample(S_noise, x)
    # Increase noise temporarily.
    return x + per_sample(torch.sqrt(torch.clamp(t_hat**2 - t_cur**2, min=0.0)), x) * S_noise * noise, t_hat


def euler_step(denoiser, x: Tensor, t_cur: Tensor, t_next: Tensor, cond=None) -> StepOutput:
    """Euler step of the probability-flow ODE dx/dσ = (x − D(x; σ))/σ from ``t_cur`` to ``t_next``."""
    x0 = denoise(denoiser, x, t_cur, cond)
    d = (x - x0) / per_sample(t_cur, x)
    x_next = x + per_sample(t_next - t_cur, x) * d
    return StepOutput(x_next, x0, torch.ones(x.shape[0], dtype=torch.long, device=x.device))


def heun_step(denoiser, x: Tensor, t_cur: Tensor, t_next: Tensor, cond=None, denoiser2=None, *,
              correct: bool | None = None) -> StepOutput:
    """EDM's 2nd-order Heun step for a batch that shares its step; the step to σ = 0 is Euler only.

    ``correct`` says whether to apply the correction (False on the last step, to σ = 0); None
    decides from ``t_next`` (one host read). ``nfe`` is 2 per sample with the correction, else 1.
    ``denoiser2`` (default: ``denoiser``) is used for the correction, e.g. with another guidance
    weight. A batch whose samples sit at different steps (DiffRS's slots) is the business of
    :func:`smcdiff.methods.rejection_sampling.heun_step_per_slot`.
    """
    # Euler step.
    x0 = denoise(denoiser, x, t_cur, cond)
    d = (x - x0) / per_sample(t_cur, x)
    h = per_sample(t_next - t_cur, x)
    x_next = x + h * d
    nfe = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
    if correct is None:
        correct = bool((t_next > 0).all())
        if not correct and bool((t_next > 0).any()):
            raise ValueError("heun_step takes a batch that shares its step; for samples at different steps (some "
                             "going to sigma = 0) use smcdiff.methods.rejection_sampling.heun_step_per_slot")
    if not correct:
        return StepOutput(x_next, x0, nfe)
    # Apply 2nd order correction.
    x0_2 = denoise(denoiser2 or denoiser, x_next, t_next, cond)
    d2 = (x_next - x0_2) / per_sample(t_next, x)
    return StepOutput(x + h * (0.5 * d + 0.5 * d2), x0_2, nfe + 1)


def edm_step(denoiser, x: Tensor, t_cur: Tensor, t_next: Tensor, *, gamma, S_noise, noise: Tensor,
             second_order: bool = True, last: bool = False, cond=None, denoiser2=None) -> StepOutput:
    """One step of EDM's stochastic sampler (Karras et al. 2022, Algorithm 2), written once.

    ``x : (N, *event)`` at ``t_cur : (N,)`` → ``t_next : (N,)``; ``gamma`` and ``S_noise`` floats
    or ``(N,)``; ``noise`` like ``x`` (drawn by the caller every step, even when γ = 0, as EDM
    does); ``last`` marks the step to σ = 0 (Euler only). ``denoiser.round_sigma`` is used when
    present.
    """
    # Increase noise temporarily.
    x_hat, t_hat = churn(x, t_cur, gamma, S_noise, noise, getattr(denoiser, "round_sigma", None))
    # Euler step, then the 2nd order correction (not on the last step).
    if not second_order:
        return euler_step(denoiser, x_hat, t_hat, t_next, cond)
    return heun_step(denoiser, x_hat, t_hat, t_next, cond, denoiser2, correct=not last)


def euler_maruyama_step(denoiser, x: Tensor, t_cur: Tensor, t_next: Tensor, noise: Tensor, cond=None) -> StepOutput:
    """Euler–Maruyama step of the reverse SDE dx = −2σ∇log p_σ(x) dσ + √(2σ) dW̄ (σ decreasing).

    x' = x + 2(σ − σ')/σ · (D(x; σ) − x) + √(2σ(σ − σ'))·ε, a Gaussian transition whose log-density
    ``log_prob : (N,)`` is returned. A step to σ' = 0 returns the denoiser output D(x; σ)
    (Tweedie's estimate of x₀) with ``log_prob`` 0: that last transition is deterministic.
    """
    x0 = denoise(denoiser, x, t_cur, cond)
    drop = t_cur - t_next
    var = 2.0 * t_cur * drop
    mean = x + per_sample(2.0 * drop / t_cur, x) * (x0 - x)
    x_next = mean + per_sample(torch.sqrt(var), x) * noise
    dim = x[0].numel()
    log_prob = -0.5 * noise.flatten(1).pow(2).sum(1) - 0.5 * dim * torch.log(2 * math.pi * var)
    final = t_next == 0
    x_next = torch.where(per_sample(final, x), x0, x_next)
    log_prob = torch.where(final, torch.zeros_like(log_prob), log_prob)
    return StepOutput(x_next, x0, torch.ones(x.shape[0], dtype=torch.long, device=x.device), log_prob)
