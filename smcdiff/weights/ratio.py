"""Density-ratio potentials: V(x, σ) = ℓ(x, σ) ≈ log q_σ(x) / p^θ_σ(x) from a discriminator.

A time-dependent discriminator d(x, σ) = P(real | x_σ) estimates the ratio of the data marginal q_σ
to the model marginal p^θ_σ as r = d/(1−d), so ℓ = log r is a potential. Used in the sampler's
``"difference"`` form (log w += ℓ_new − ℓ_old) the weights telescope to ℓ at the last noise level:
this is the particle-filter correction of Liu et al. (the PF keeps the ancestor's ratio as
``prev``; smcdiff keeps the previous potential value per particle). ℓ is evaluated on the noisy
``x`` at its ``sigma``, not on x̂0.

``DensityRatio`` takes exactly one of

* ``log_ratio(x, sigma, **cond) -> (N,)`` — ℓ directly, e.g. the exact ratio of two Gaussian
  mixtures (a perfect discriminator): ``lambda x, s: data.log_ratio(model, x, s)``;
* ``prob(x, sigma, **cond) -> (N,)`` — a probability d ∈ (0, 1). Then ℓ = log(d_c / (1 − d_c)) with
  d_c = clamp(d, clip, 1 − clip), evaluated in d's own dtype (float32 for the published
  discriminators, exactly like the reference code: a float32 d that rounds to 1.0 gives
  ℓ = 11.511559 with clip 1e-5, not logit(1 − 1e-5) = 11.512925, because 1 − d_c is float32) and
  cast to float64. Discriminator Guidance uses ``clip=1e-5`` (:data:`DG_CLIP`), the particle filter
  ``clip=1e-6`` (:data:`PF_CLIP`). Clipping bounds |ℓ| by about log(1/clip) and gives clipped
  samples exactly zero gradient.
* ``prob`` with ``logit=True`` — ``prob`` returns the raw logit, used as ℓ with no sigmoid and no
  clipping (DiffRS).

    >>> import torch
    >>> from smcdiff.models import GaussianMixture
    >>> from smcdiff.weights import DensityRatio
    >>> data = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-1.0], [1.0]]), torch.tensor([0.1, 0.1]))
    >>> model = GaussianMixture(torch.tensor([0.8, 0.2]), torch.tensor([[-1.0], [1.0]]), torch.tensor([0.1, 0.1]))
    >>> exact = DensityRatio(log_ratio=lambda x, sigma: data.log_ratio(model, x, sigma))
    >>> learned = DensityRatio(prob=lambda x, sigma: torch.sigmoid(data.log_ratio(model, x, sigma)), clip=1e-6)
    >>> x = torch.tensor([[-1.0], [0.0], [1.0]], dtype=torch.float64)
    >>> sigma = torch.full((3,), 0.5, dtype=torch.float64)
    >>> bool(torch.allclose(exact(x, sigma, x), learned(x, sigma, x)))
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from smcdiff.types import Tensor
from smcdiff.weights.compose import _check_value, _num

__all__ = ["DensityRatio", "log_ratio_from_prob", "DG_CLIP", "PF_CLIP"]

#: Probability clipping of Discriminator Guidance (Kim et al.).
DG_CLIP = 1e-5
#: Probability clipping of the particle-filter resampling of Liu et al.
PF_CLIP = 1e-6


def _check_clip(clip) -> float:
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not (0.0 <= clip < 0.5):
        raise ValueError(f"clip must be a number in [0, 0.5), got {clip!r}")
    return float(clip)


def log_ratio_from_prob(d: Tensor, clip: float = DG_CLIP) -> Tensor:
    """ℓ = log(d_c / (1 − d_c)), d_c = clamp(d, clip, 1 − clip), in ``d``'s dtype.

    ``d : (N,)`` (any shape) floating-point probabilities. ``clip = 0`` means no clipping (d = 0 or
    1 then gives ∓inf). The arithmetic stays in ``d``'s dtype so float32 discriminators reproduce the
    reference values bit for bit; cast the result to float64 afterwards.
    """
    if not isinstance(d, torch.Tensor) or not d.is_floating_point():
        raise TypeError(f"d must be a floating-point tensor of probabilities, got {d!r:.80}")
    clip = _check_clip(clip)
    d_c = d.clamp(clip, 1.0 - clip)
    return torch.log(d_c / (1.0 - d_c))


class DensityRatio:
    """Potential ℓ(x, σ) from a log-ratio, a discriminator probability or a discriminator logit.

    ``DensityRatio(log_ratio=None, prob=None, clip=1e-5, logit=False, *, name="log_ratio")`` with
    exactly one of ``log_ratio(x, sigma, **cond) -> (N,)`` and ``prob(x, sigma, **cond) -> (N,)``
    (see the module doc). Call: ``(x : (N, *event), sigma : (N,), x0_hat, **cond) -> (N,)``
    float64; ``x0_hat`` is ignored.
    """

    def __init__(self, log_ratio: Callable | None = None, prob: Callable | None = None, clip: float = DG_CLIP,
                 logit: bool = False, *, name: str = "log_ratio"):
        if (log_ratio is None) == (prob is None):
            raise ValueError("DensityRatio needs exactly one of log_ratio=(x, sigma) -> (N,) and prob=(x, sigma) -> (N,)")
        arg, fn = ("log_ratio", log_ratio) if log_ratio is not None else ("prob", prob)
        if not callable(fn):
            raise TypeError(f"DensityRatio: {arg} must be callable as f(x, sigma, **cond) -> (N,), got {fn!r}")
        if logit and log_ratio is not None:
            raise ValueError("logit=True describes prob (a discriminator returning raw logits), not log_ratio")
        self.log_ratio, self.prob, self.logit, self.name = log_ratio, prob, bool(logit), name
        self.clip = _check_clip(clip)

    def __call__(self, x: Tensor, sigma: Tensor, x0_hat: Tensor | None = None, **cond) -> Tensor:
        N = _num(x)
        if self.log_ratio is not None:
            return _check_value(self.log_ratio(x, sigma, **cond), N, f"log_ratio of {self.name!r}")
        d = self.prob(x, sigma, **cond)
        if not isinstance(d, torch.Tensor) or tuple(d.shape) != (N,):
            _check_value(d, N, f"prob of {self.name!r}")
        if self.logit:
            return d.to(torch.float64)
        return log_ratio_from_prob(d, self.clip).to(torch.float64)

    def __repr__(self) -> str:
        if self.log_ratio is not None:
            return f"DensityRatio(log_ratio={self.log_ratio!r}, name={self.name!r})"
        return f"DensityRatio(prob={self.prob!r}, clip={self.clip}, logit={self.logit}, name={self.name!r})"
