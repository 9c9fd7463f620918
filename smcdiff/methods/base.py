"""What every method shares: the calling convention, its checks, latents, and the method result.

Calling convention of every method in :mod:`smcdiff.methods`::

    NAME(denoiser, sigmas, *, log_ratio=None, num_samples, shape, generator, x_init=None, **params)
        -> Result

(the steering methods take ``reward=`` instead of ``log_ratio=``). ``denoiser(x, sigma, **cond) ->
x0_hat`` (EDM convention, ``x : (N, *shape)``, ``sigma : (N,)``); ``sigmas`` a decreasing schedule
ending in 0; ``log_ratio(x, sigma, **cond) -> (N,)`` the log density ratio ℓ = log q_σ(x)/p_σ(x) in
the EDM scale (a neural discriminator, an exact mixture ratio, any function); ``generator`` one
``torch.Generator`` or one per output sample; ``x_init : (num_samples, *shape)`` (or
``(num_samples, K, *shape)`` for particle methods) unit-variance latents, the start being σ_0·x_init.

Every method returns the one result type, :class:`smcdiff.results.Result`, with ``x :
(num_samples, *shape)`` one output per sample, ``nfe`` network evaluations per output (all calls /
num_samples, counted by :class:`~smcdiff.kernels.CallCounter`, including work on trajectories a
method abandons), ``disc_calls`` discriminator (or score) evaluations per output, the particles, their
weights and the SMC records, and method-specific ``diagnostics``.
"""

from __future__ import annotations

import dataclasses

import torch

from smcdiff import _rng
from smcdiff.checks import check_size
from smcdiff.kernels.counting import CallCounter
from smcdiff.kernels.schedules import check_sigmas
from smcdiff.results import Result
from smcdiff.types import Tensor

__all__ = ["MethodResult", "initial_latents", "validate_common", "as_method_result", "check_callable",
           "per_group_cond", "one_value_per_sample"]

#: Methods return the one result type; this name stays for code written against earlier versions.
MethodResult = Result


def check_callable(name: str, fn, signature: str, required: bool = True):
    """``fn`` itself, after checking it is callable (or None when not ``required``)."""
    if fn is None and not required:
        return None
    if fn is None or not callable(fn):
        raise TypeError(f"{name} must be callable as {signature}, got {fn!r}")
    return fn


def validate_common(sigmas, num_samples: int, shape, generator=None) -> tuple[Tensor, tuple]:
    """Check the shared arguments (``generator``: one, or one per output sample, when given);
    return the float64 schedule and the event shape as a tuple."""
    sigmas = check_sigmas(sigmas)
    check_size("num_samples", num_samples)
    if generator is not None:
        _rng.check_generator(generator, None if isinstance(generator, torch.Generator) else num_samples)
    if shape is None:
        raise ValueError("pass shape=(...), the event shape of one sample")
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a tuple of ints, got {shape!r}") from None
    return sigmas, shape


def initial_latents(x_init, lead: tuple, shape: tuple, generator) -> Tensor:
    """Unit-variance latents of shape ``lead + shape`` (float64): ``x_init`` checked, or drawn."""
    if x_init is None:
        return _rng.randn(lead + shape, generator)
    x_init = torch.as_tensor(x_init)
    if tuple(x_init.shape) != lead + shape:
        raise ValueError(f"x_init must have shape {lead + shape}, got {tuple(x_init.shape)}")
    if not bool(torch.isfinite(x_init).all()):
        raise ValueError("x_init contains NaN or inf")
    return x_init.to(torch.float64)


def per_group_cond(cond, G: int, K: int, particles: bool) -> dict:
    """Conditioning tensors for a method run as G groups of K particles.

    Particle methods (``particles=True``) take ``(G, K, ...)`` tensors as they are (they follow their
    particle through resampling; :func:`smcdiff.sample` checks their leading dims); single-trajectory
    methods take ``(G, ...)``, given a particle axis here.
    """
    out = {}
    for name, value in (cond or {}).items():
        value = torch.as_tensor(value)
        if not particles:
            if value.dim() < 1 or value.shape[0] != G:
                raise ValueError(f"cond[{name!r}] must have leading dim num_samples = {G}, got {tuple(value.shape)}")
            value = value[:, None].expand(G, K, *value.shape[1:])
        out[name] = value
    return out


def one_value_per_sample(name: str, out, n: int) -> Tensor:
    """``out`` as float64 after checking it holds one value per sample, shape ``(n,)``."""
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n,):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{name} must return one value per sample, shape ({n},), got {got}")
    return out.to(torch.float64)


def as_method_result(res: Result, num_outputs: int, disc: CallCounter | None = None, **diagnostics) -> Result:
    """``res`` of :func:`smcdiff.sample` as a method's result: NFE and discriminator calls per output."""
    return dataclasses.replace(res, nfe=res.nfe_total / num_outputs,
                               disc_calls=(disc.count / num_outputs) if disc is not None else 0.0,
                               diagnostics={**res.diagnostics, **diagnostics})
