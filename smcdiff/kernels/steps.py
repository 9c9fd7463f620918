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

__all__ = ["StepOutput", "denoise", "churn", "euler_step", "heun_step", "euler_maruyama_step"]


class StepOutput(NamedTuple):
    x: Tensor
    x0_hat: Tensor
    nfe: Tensor
    log_prob: Tensor | None = None


def _b(sigma: Tensor, x: Tensor) -> Tensor:
    """Broadcast a per-sample (N,) noise level against x (N, *event)."""
    return sigma.reshape(-1, *([1] * (x.dim() - 1)))


def _subset(cond: Mapping[str, Tensor] | None, idx: Tensor) -> dict:
    return {k: v[idx] for k, v in (cond or {}).items()}


def denoise(denoiser, x: Tensor, sigma: Tensor, cond: Mapping[str, Tensor] | None = None) -> Tensor:
    """Call ``denoiser(x, sigma, **cond)`` and return its output as float64, checking its shape."""
    out = denoiser(x, sigma, **(cond or {}))
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"denoiser must return x0_hat of the input's shape {tuple(x.shape)}, got {got}")
    return out.to(torch.float64)


def churn(x: Tensor, t_cur: Tensor, gamma: Tensor | float, S_noise: float, noise: Tensor, round_sigma=None):
    """EDM's stochastic churn: raise σ from t to t̂ = round(t + γt) by adding fresh noise.

    Returns ``(x_hat, t_hat)``. With γ = 0 it returns ``x`` and ``t`` unchanged (the noise is still
    consumed by the caller, as EDM draws it every step).
    """
    t_hat = t_cur + gamma * t_cur
    if round_sigma is not None:
        t_hat = round_sigma(t_hat).to(torch.float64)
    # Increase noise temporarily.
    x_hat = x + _b(torch.sqrt(torch.clamp(t_hat**2 - t_cur**2, min=0.0)), x) * S_noise * noise
    return x_hat, t_hat


def euler_step(denoiser, x: Tensor, t_cur: Tensor, t_next: Tensor, cond=None) -> StepOutput:
    """Euler step of the probability-flow ODE dx/dσ = (x − D(x; σ))/σ from ``t_cur`` to ``t_next``."""
    x0 = denoise(denoiser, x, t_cur, cond)
    d = (x - x0) / _b(t_cur, x)
    x_next = x + _b(t_next - t_cur, x) * d
    return StepOutput(x_next, x0, torch.ones(x.shape[0], dtype=torch.long, device=x.device))


def heun_step(denoiser, x: Tensor, t_cur: Tensor, t_next: Tensor, cond=None, denoiser2=None) -> StepOutput:
    """EDM's 2nd-order Heun step; samples whose ``t_next`` is 0 take the Euler step only.

    Only the samples that need the correction are sent to the network, so ``nfe`` is 2 for them
    and 1 for the others. ``denoiser2`` (default: ``denoiser``) is used for the correction, e.g.
    with a different guidance weight.
    """
    # Euler step.
    x0 = denoise(denoiser, x, t_cur, cond)
    d = (x - x0) / _b(t_cur, x)
    h = _b(t_next - t_cur, x)
    x_next = x + h * d
    nfe = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
    second = t_next > 0
    if bool(second.all()):
        idx = None
    elif bool(second.any()):
        idx = torch.nonzero(second).flatten()
    else:
        return StepOutput(x_next, x0, nfe)
    # Apply 2nd order correction.
    xs, ts = (x_next, t_next) if idx is None else (x_next[idx], t_next[idx])
    x0_2 = denoise(denoiser2 or denoiser, xs, ts, cond if idx is None else _subset(cond, idx))
    d2 = (xs - x0_2) / _b(ts, xs)
    if idx is None:
        return StepOutput(x + h * (0.5 * d + 0.5 * d2), x0_2, nfe + 1)
    x_next = x_next.clone()
    x_next[idx] = x[idx] + h[idx] * (0.5 * d[idx] + 0.5 * d2)
    x0 = x0.clone()
    x0[idx] = x0_2
    nfe[idx] += 1
    return StepOutput(x_next, x0, nfe)


def euler_maruyama_step(denoiser, x: Tensor, t_cur: Tensor, t_next: Tensor, noise: Tensor, cond=None) -> StepOutput:
    """Euler–Maruyama step of the reverse SDE dx = −2σ∇log p_σ(x) dσ + √(2σ) dW̄ (σ decreasing).

    x' = x + 2(σ − σ')/σ · (D(x; σ) − x) + √(2σ(σ − σ'))·ε, a Gaussian transition whose log-density
    ``log_prob : (N,)`` is returned. A step to σ' = 0 returns the denoiser output D(x; σ)
    (Tweedie's estimate of x₀) with ``log_prob`` 0: that last transition is deterministic.
    """
    x0 = denoise(denoiser, x, t_cur, cond)
    drop = t_cur - t_next
    var = 2.0 * t_cur * drop
    mean = x + _b(2.0 * drop / t_cur, x) * (x0 - x)
    x_next = mean + _b(torch.sqrt(var), x) * noise
    dim = x[0].numel()
    log_prob = -0.5 * noise.flatten(1).pow(2).sum(1) - 0.5 * dim * torch.log(2 * math.pi * var)
    final = t_next == 0
    x_next = torch.where(_b(final, x), x0, x_next)
    log_prob = torch.where(final, torch.zeros_like(log_prob), log_prob)
    return StepOutput(x_next, x0, torch.ones(x.shape[0], dtype=torch.long, device=x.device), log_prob)
