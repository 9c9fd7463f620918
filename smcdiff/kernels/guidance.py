"""Guidance as denoiser transforms D → D', so every kernel gets it for free.

A *transform* has ``bind(denoiser, sigmas, i) -> denoiser'``: the denoiser to use for step ``i`` of
schedule ``sigmas``. :class:`Guided` wraps any kernel with a chain of transforms (applied left to
right). Expressed on D, the ODE direction d = (x − D)/σ changes exactly as in the papers:

* :class:`EpsilonScaling` (Ning et al.; SEDM-G++): the ε estimate (x − D)/σ is divided by
  s_i = b + κ·i, i.e. D' = x − (x − D)/s_i, the same s_i for both Heun evaluations of step i and
  on the final Euler step.
* :class:`DiscriminatorGuidance` (Kim et al., DG / EDM-G++): D' = D + w·σ²·∇ₓℓ(x, σ), which adds
  w·∇ₓℓ to the score and is DG's d ← d + w·G/σ with G = −σ²·α·∇_{x_vp}ℓ = −σ²∇ₓℓ. The weight is
  ``w1`` for the step's first (Euler) evaluation and ``w2`` for the Heun correction (the evaluation
  at σ_{i+1}); with w2 = 0 the guidance enters the Heun update with effective weight w1/2. Outside
  the VP-time window (τ(σ) < ``time_min`` or > ``time_max``) the guidance is zero. The window is
  applied per sample; DG applies it to the whole batch by the batch minimum of τ, which is the
  same whenever the batch shares one σ (every sampler here except DiffRS's per-slot batches).

    >>> import torch
    >>> from smcdiff.kernels import EDMHeun, karras_sigmas
    >>> from smcdiff.models.pairs import mixture_pair_2d
    >>> data, model, log_ratio = mixture_pair_2d()
    >>> kernel = Guided(EDMHeun(), EpsilonScaling(1.004), DiscriminatorGuidance(log_ratio, w1=1.67))
    >>> g = torch.Generator().manual_seed(0)
    >>> x = 80.0 * torch.randn(8, 2, dtype=torch.float64, generator=g)
    >>> out = kernel(model.denoise, x, karras_sigmas(18), 0, g)
    >>> out.x.shape, out.nfe.tolist()
    (torch.Size([8, 2]), [2, 2, 2, 2, 2, 2, 2, 2])

``log_ratio(x, sigma, **cond) -> (N,)`` is ℓ ≈ log q_σ(x)/p_σ(x) in the EDM scale (the
VP-scaling α of a neural discriminator is its wrapper's business; by the chain rule ∇ₓℓ already
carries it). Cost: one ℓ forward+backward per guided evaluation.
"""

from __future__ import annotations

import torch

from smcdiff.kernels.schedules import vp_time
from smcdiff.kernels.steps import StepOutput, _b
from smcdiff.types import Tensor

__all__ = ["EpsilonScaling", "DiscriminatorGuidance", "Guided", "log_ratio_grad", "OUTSIDE_WINDOW"]

#: DG reports ℓ = 1e7 where the time window switches guidance off (so boosting never fires there).
OUTSIDE_WINDOW = 1e7


def log_ratio_grad(log_ratio, x: Tensor, sigma: Tensor, cond=None) -> tuple[Tensor, Tensor]:
    """(∇ₓℓ(x, σ), ℓ(x, σ)) by autograd, float64: ``x : (N, *event)`` → ((N, *event), (N,))."""
    with torch.enable_grad():
        x_ = x.detach().requires_grad_(True)
        ell = log_ratio(x_, sigma, **(cond or {}))
        if not isinstance(ell, Tensor) or tuple(ell.shape) != (x.shape[0],):
            got = tuple(ell.shape) if isinstance(ell, Tensor) else type(ell).__name__
            raise ValueError(f"log_ratio must return one value per sample, shape ({x.shape[0]},), got {got}")
        grad = torch.autograd.grad(ell.sum(), x_, allow_unused=True)[0] if ell.requires_grad else None
    if grad is None:  # ℓ does not depend on x
        grad = torch.zeros_like(x_)
    return grad.detach().to(torch.float64), ell.detach().to(torch.float64)


class EpsilonScaling:
    """ε-scaling: D' = x − (x − D)/s_i with s_i = ``b`` + ``kappa``·i (i = step index, 0-based)."""

    def __init__(self, b: float = 1.0, kappa: float = 0.0):
        self.b, self.kappa = float(b), float(kappa)

    def scale(self, i: int) -> float:
        s = self.b + self.kappa * i
        if s <= 0:
            raise ValueError(f"epsilon scale s_i = b + kappa*i must be positive, got {s} at step {i}")
        return s

    def bind(self, denoiser, sigmas: Tensor, i: int):
        s = self.scale(i)
        if s == 1.0:
            return denoiser

        def scaled(x, sigma, **cond):
            return x - (x - denoiser(x, sigma, **cond).to(x.dtype)) / s

        scaled.round_sigma = getattr(denoiser, "round_sigma", None)
        return scaled

    def __repr__(self) -> str:
        return f"EpsilonScaling(b={self.b}, kappa={self.kappa})"


class DiscriminatorGuidance:
    """DG: D' = D + w·σ²·∇ₓℓ(x, σ) inside the VP-time window, w = ``w1`` (Euler eval) / ``w2`` (correction)."""

    def __init__(self, log_ratio, w1: float = 2.0, w2: float = 0.0, time_min: float = 0.01, time_max: float = 1.0):
        if not callable(log_ratio):
            raise TypeError("DiscriminatorGuidance needs a callable log_ratio(x, sigma, **cond) -> (N,)")
        if not 0.0 <= time_min <= time_max:
            raise ValueError(f"expected 0 <= time_min <= time_max, got {time_min}, {time_max}")
        self.log_ratio, self.w1, self.w2 = log_ratio, float(w1), float(w2)
        self.time_min, self.time_max = float(time_min), float(time_max)

    def in_window(self, sigma: Tensor) -> Tensor:
        """(N,) bool: where τ(σ) lies in [time_min, time_max]."""
        tau = vp_time(sigma.to(torch.float64))
        return (tau >= self.time_min) & (tau <= self.time_max)

    def guidance(self, x: Tensor, sigma: Tensor, cond=None) -> tuple[Tensor, Tensor]:
        """(σ²∇ₓℓ masked to the window (N, *event), ℓ with ``OUTSIDE_WINDOW`` outside (N,))."""
        inside = self.in_window(sigma)
        if not bool(inside.any()):
            return torch.zeros_like(x, dtype=torch.float64), torch.full((x.shape[0],), OUTSIDE_WINDOW, dtype=torch.float64, device=x.device)
        grad, ell = log_ratio_grad(self.log_ratio, x, sigma, cond)
        term = _b(sigma.to(torch.float64) ** 2 * inside, x) * grad
        return term, torch.where(inside, ell, torch.full_like(ell, OUTSIDE_WINDOW))

    def bind(self, denoiser, sigmas: Tensor, i: int):
        t_next = float(sigmas[i + 1])
        if self.w1 == 0.0 and self.w2 == 0.0:
            return denoiser

        def guided(x, sigma, **cond):
            x0 = denoiser(x, sigma, **cond).to(torch.float64)
            # The Heun correction is the evaluation at σ_{i+1}; the first one is at σ̂_i > σ_{i+1}.
            w = torch.where(sigma.to(torch.float64) <= t_next, self.w2, self.w1).to(x0.device)
            if not bool((w != 0).any()):
                return x0
            term, _ = self.guidance(x, sigma, cond)
            return x0 + _b(w, x0) * term

        guided.round_sigma = getattr(denoiser, "round_sigma", None)
        return guided

    def __repr__(self) -> str:
        return (f"DiscriminatorGuidance(w1={self.w1}, w2={self.w2}, time_min={self.time_min}, "
                f"time_max={self.time_max})")


class Guided:
    """A kernel whose denoiser is transformed, per step, by ``transforms`` (applied left to right)."""

    def __init__(self, kernel, *transforms):
        for t in transforms:
            if not hasattr(t, "bind"):
                raise TypeError(f"{t!r} is not a denoiser transform: it needs bind(denoiser, sigmas, i)")
        self.kernel, self.transforms = kernel, transforms

    @property
    def stochastic(self) -> bool:
        return getattr(self.kernel, "stochastic", True)

    def __call__(self, denoiser, x, sigmas, i, generator, cond=None) -> StepOutput:
        for t in self.transforms:
            denoiser = t.bind(denoiser, sigmas, i)
        return self.kernel(denoiser, x, sigmas, i, generator, cond)

    def __repr__(self) -> str:
        return f"Guided({self.kernel!r}, {', '.join(map(repr, self.transforms))})"
