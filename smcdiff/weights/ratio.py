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

``prob`` must return probabilities: a value outside [0, 1] (typically a logit passed by mistake)
or NaN raises a ``ValueError`` that suggests ``logit=True``; ``clip_range=True`` clamps values
outside [0, 1] into it instead (NaN is refused either way). ℓ itself may be ``-inf`` (weight
zero) but never NaN or ``+inf``: the potential raises, naming itself.

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
from smcdiff.weights.values import check_probabilities, log_values, num_samples

__all__ = ["DensityRatio", "log_ratio_from_prob", "check_clip", "DG_CLIP", "PF_CLIP"]

#: Probability clipping of Discriminator Guidance (Kim et al.).
DG_CLIP = 1e-5
#: Probability clipping of the particle-filter resampling of Liu et al.
PF_CLIP = 1e-6


def check_clip(clip) -> float:
    """A probability clip as a float in [0, 0.5); ``ValueError`` otherwise (bool and str included)."""
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
    clip = check_clip(clip)
    d_c = d.clamp(clip, 1.0 - clip)
    return torch.log(d_c / (1.0 - d_c))


class DensityRatio:
    """Potential ℓ(x, σ) from a log-ratio, a discriminator probability or a discriminator logit.

    ``DensityRatio(log_ratio=None, prob=None, clip=1e-5, logit=False, *, clip_range=False,
    name="log_ratio")`` with exactly one of ``log_ratio(x, sigma, **cond) -> (N,)`` and
    ``prob(x, sigma, **cond) -> (N,)`` (see the module doc); ``clip_range=True`` clamps a
    ``prob`` output outside [0, 1] instead of refusing it. Call: ``(x : (N, *event), sigma :
    (N,), x0_hat, **cond) -> (N,)`` float64; ``x0_hat`` is ignored.
    """

    def __init__(self, log_ratio: Callable | None = None, prob: Callable | None = None, clip: float = DG_CLIP,
                 logit: bool = False, *, clip_range: bool = False, name: str = "log_ratio"):
        if (log_ratio is None) == (prob is None):
            raise ValueError("DensityRatio needs exactly one of log_ratio=(x, sigma) -> (N,) and prob=(x, sigma) -> (N,)")
        arg, fn = ("log_ratio", log_ratio) if log_ratio is not None else ("prob", prob)
        if not callable(fn):
            raise TypeError(f"DensityRatio: {arg} must be callable as f(x, sigma, **cond) -> (N,), got {fn!r}")
        if logit and log_ratio is not None:
            raise ValueError("logit=True describes prob (a discriminator returning raw logits), not log_ratio")
        for flag, value in (("logit", logit), ("clip_range", clip_range)):
            if not isinstance(value, bool):
                raise TypeError(f"DensityRatio: {flag} must be True or False, got {value!r}")
        if clip_range and (log_ratio is not None or logit):
            raise ValueError("clip_range=True clamps probabilities: it applies to prob=..., not to log_ratio or logits")
        self.log_ratio, self.prob, self.logit, self.name = log_ratio, prob, logit, name
        self.clip, self.clip_range = check_clip(clip), clip_range

    def __call__(self, x: Tensor, sigma: Tensor, x0_hat: Tensor | None = None, **cond) -> Tensor:
        N = num_samples(x)
        if self.log_ratio is not None:
            return log_values(self.log_ratio(x, sigma, **cond), N, f"log_ratio of {self.name!r}")
        who = f"{'logit' if self.logit else 'prob'} of {self.name!r}"
        d = self.prob(x, sigma, **cond)
        if not isinstance(d, torch.Tensor) or tuple(d.shape) != (N,):
            log_values(d, N, who, check_finite=False)
        if not d.is_floating_point():
            raise TypeError(f"{who} must return a floating-point tensor, got {d.dtype}")
        if self.logit:
            return log_values(d, N, who)
        d = check_probabilities(d, who, clip_range=self.clip_range,
                                hint="pass logit=True if prob returns logits (as DiffRS's discriminator does)")
        return log_values(log_ratio_from_prob(d, self.clip), N, f"potential {self.name!r} (log d/(1-d))")

    def __repr__(self) -> str:
        if self.log_ratio is not None:
            return f"DensityRatio(log_ratio={self.log_ratio!r}, name={self.name!r})"
        return (f"DensityRatio(prob={self.prob!r}, clip={self.clip}, logit={self.logit}, "
                f"clip_range={self.clip_range}, name={self.name!r})")
