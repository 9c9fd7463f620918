"""Checked inputs of the density estimators: the data batch, the σ range, the conditioning, and
one denoiser call whose output is checked (shape, finiteness) and named when it is wrong.

Every density estimator of :mod:`smcdiff.likelihood` and the diffusion classifier validate their
arguments here, so a bad call fails the same way everywhere, with a message saying what was
expected:

    >>> import torch
    >>> check_sigma_range(80.0, 0.002)
    Traceback (most recent call last):
    ...
    ValueError: need 0 < sigma_min < sigma_max < inf, got sigma_min=80.0, sigma_max=0.002
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from smcdiff.types import Tensor

__all__ = ["call_denoiser", "check_batch", "check_cond", "check_sigma_range", "denoiser_name"]


def check_batch(x, name: str = "x") -> Tensor:
    """``x : (N, *shape)`` with N >= 1, a non-empty event and finite floating values -> float64."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, *shape), got {type(x).__name__}")
    if x.ndim < 2 or x.shape[0] < 1 or math.prod(x.shape[1:]) < 1:
        raise ValueError(
            f"{name} must have shape (N, *shape) with N >= 1 and at least one value per sample "
            f"(use (N, 1) for scalars), got {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor (scale uint8 images to [-1, 1] first), got {x.dtype}")
    x = x.detach().to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} holds non-finite values")
    return x


def check_sigma_range(sigma_min, sigma_max, denoiser=None) -> tuple[float, float]:
    """``0 < sigma_min < sigma_max < inf`` as floats; inside the denoiser's own range if it has one.

    A denoiser with ``sigma_min`` / ``sigma_max`` attributes (EDM/VP/VE preconditioners) refuses a
    range outside them rather than evaluating the network where it was never trained.
    """
    try:
        lo, hi = float(sigma_min), float(sigma_max)
    except (TypeError, ValueError):
        raise TypeError(f"sigma_min and sigma_max must be numbers, got {sigma_min!r} and {sigma_max!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}")
    own_lo, own_hi = _number(getattr(denoiser, "sigma_min", None)), _number(getattr(denoiser, "sigma_max", None))
    if own_lo is not None and lo < own_lo * (1 - 1e-9):
        raise ValueError(f"sigma_min={lo:g} is below the denoiser's own sigma_min={own_lo:g} ({denoiser_name(denoiser)})")
    if own_hi is not None and hi > own_hi * (1 + 1e-9):
        raise ValueError(f"sigma_max={hi:g} is above the denoiser's own sigma_max={own_hi:g} ({denoiser_name(denoiser)})")
    return lo, hi


def _number(v) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def check_cond(cond, n: int) -> dict:
    """``cond`` (a mapping of keyword arguments for the denoiser, or None) as a dict; tensors in it
    must have a leading axis of size ``n`` (one row per sample)."""
    if cond is None:
        return {}
    if not isinstance(cond, Mapping):
        raise TypeError(f"cond must be a mapping of denoiser keyword arguments, got {type(cond).__name__}")
    for key, value in cond.items():
        if isinstance(value, Tensor) and (value.ndim == 0 or value.shape[0] != n):
            raise ValueError(f"cond[{key!r}] must have a leading axis of size N={n}, got {tuple(value.shape)}")
    return dict(cond)


def denoiser_name(denoiser) -> str:
    """A readable name of a denoiser for error messages."""
    name = getattr(denoiser, "__name__", None)  # a function's own name; an object's class name
    return name if isinstance(name, str) and name != "<lambda>" else type(denoiser).__name__


def call_denoiser(denoiser, x: Tensor, sigma: Tensor, cond: Mapping | None = None) -> Tensor:
    """``denoiser(x, sigma, **cond)`` as float64, checked: same shape as ``x``, all finite.

    ``x : (N, *shape)``, ``sigma : (N,)`` float64. Raises ``ValueError`` naming the denoiser and the
    noise levels of the offending rows when the output is non-finite, or the shapes when they
    differ; gradients flow through.
    """
    out = denoiser(x, sigma, **(cond or {}))
    if not isinstance(out, Tensor) or tuple(out.shape) != tuple(x.shape):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"denoiser {denoiser_name(denoiser)} returned {shape}; expected x's shape {tuple(x.shape)}")
    if not torch.isfinite(out).all():
        bad = ~torch.isfinite(out.detach()).reshape(out.shape[0], -1).all(1)
        s = sigma.detach().reshape(-1).expand(out.shape[0])[bad]
        raise ValueError(
            f"denoiser {denoiser_name(denoiser)} returned non-finite values at sigma in "
            f"[{float(s.min()):.4g}, {float(s.max()):.4g}]"
        )
    return out.to(torch.float64)
