"""What every method shares: the result record, honest call counters, latents and labels.

Calling convention of every method in :mod:`smcdiff.methods`::

    NAME(denoiser, sigmas, *, log_ratio=None, num_samples, shape, generator, x_init=None, **params)
        -> MethodResult

``denoiser(x, sigma, **cond) -> x0_hat`` (EDM convention, ``x : (N, *shape)``, ``sigma : (N,)``);
``sigmas`` a decreasing schedule ending in 0; ``log_ratio(x, sigma, **cond) -> (N,)`` the log
density ratio ℓ = log q_σ(x)/p_σ(x) in the EDM scale (a neural discriminator, an exact mixture
ratio, any function); ``generator`` one ``torch.Generator`` or one per output sample;
``x_init : (num_samples, *shape)`` (or ``(num_samples, K, *shape)`` for particle methods)
unit-variance latents, the start being σ_0·x_init.

NFE is counted by wrapping the denoiser in a :class:`CallCounter`: every sample sent to the
network counts, including work on trajectories a method later abandons, and ``nfe`` is that total
divided by the number of outputs. Discriminator evaluations are counted the same way, separately.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from smcdiff import _rng
from smcdiff.kernels.schedules import check_sigmas
from smcdiff.types import Tensor

__all__ = ["MethodResult", "CallCounter", "initial_latents", "validate_common"]


@dataclass(frozen=True)
class MethodResult:
    """Outputs of a method.

    ``x : (num_samples, *shape)`` one output per sample; ``nfe`` network evaluations per output
    (all calls / num_samples); ``disc_calls`` discriminator evaluations per output (forward or
    forward+backward each count once); particle methods add ``particles : (num_samples, K, *shape)``
    and ``log_weights : (num_samples, K)``; ``diagnostics`` holds method-specific records
    (per-step ESS, acceptance rates, ...).
    """

    x: Tensor
    nfe: float
    disc_calls: float = 0.0
    particles: Tensor | None = None
    log_weights: Tensor | None = None
    diagnostics: Mapping[str, Any] = field(default_factory=dict)


class CallCounter:
    """Wraps a callable ``f(x, ...)`` and counts the samples it evaluates (``x.shape[0]`` per call).

    Attributes (``round_sigma`` ...) of the wrapped callable stay reachable.
    """

    def __init__(self, fn):
        if not callable(fn):
            raise TypeError(f"expected a callable, got {type(fn).__name__}")
        self.fn = fn
        self.count = 0

    def __call__(self, x, *args, **kwargs):
        self.count += int(x.shape[0])
        return self.fn(x, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.fn, name)


def validate_common(sigmas, num_samples: int, shape) -> tuple[Tensor, tuple]:
    """Check the shared arguments; return the float64 schedule and the event shape as a tuple."""
    sigmas = check_sigmas(sigmas)
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
    if shape is None:
        raise ValueError("pass shape=(...), the event shape of one sample")
    return sigmas, tuple(shape)


def initial_latents(x_init, lead: tuple, shape: tuple, generator) -> Tensor:
    """Unit-variance latents of shape ``lead + shape`` (float64): ``x_init`` checked, or drawn."""
    if x_init is None:
        return _rng.randn(lead + shape, generator)
    x_init = torch.as_tensor(x_init)
    if tuple(x_init.shape) != lead + shape:
        raise ValueError(f"x_init must have shape {lead + shape}, got {tuple(x_init.shape)}")
    return x_init.to(torch.float64)
