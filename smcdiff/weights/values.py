"""What a potential must return, checked: one float64 log-value per sample, never NaN or +inf.

A potential's output is a log-weight: ``-inf`` is a weight of zero and is allowed, NaN and
``+inf`` are not (a NaN weight would silently poison the whole group, a ``+inf`` one would take
all the mass). The built-in potentials check what the user's callables give them (a reward, a
log-ratio, a discriminator probability, a detector output, a Pyro factor) and raise a
``ValueError`` that names the potential; :func:`~smcdiff.weights.evaluate_terms` checks every
term once more. Each check reads one flag back from the device (on a GPU, one synchronisation
per potential per step; the sampler's resampling step synchronises once per step anyway).

These helpers are public so that custom potentials can use them too:

    >>> import torch
    >>> from smcdiff.weights.values import log_values
    >>> log_values(torch.tensor([0.0, -float("inf")]), 2, "potential 'mine'")
    tensor([0., -inf], dtype=torch.float64)
    >>> log_values(torch.tensor([0.0, float("nan")]), 2, "potential 'mine'")
    Traceback (most recent call last):
    ...
    ValueError: potential 'mine' returned NaN at 1 of 2 samples (use -inf for a weight of zero)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from smcdiff.checks import check_real
from smcdiff.types import Tensor

__all__ = ["check_factor", "check_log_terms", "check_probabilities", "log_values", "num_samples"]

_HINT = {
    "NaN": "use -inf for a weight of zero",
    "+inf": "+inf is not a usable log-weight: return a finite value, or -inf for a weight of zero",
}


def num_samples(x) -> int:
    """N of a tensor ``x : (N, *event)``; ``ValueError`` for anything else."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape (N, *event), got {got}")
    return x.shape[0]


def _bad_kind(v: Tensor) -> tuple[str, int] | None:
    """``("NaN" | "+inf", count)`` of the first kind of bad value in ``v``, or None."""
    if not v.is_floating_point():
        return None
    nan = torch.isnan(v)
    if bool(nan.any()):
        return "NaN", int(nan.sum())
    pos = v == float("inf")
    return ("+inf", int(pos.sum())) if bool(pos.any()) else None


def log_values(v, N: int, who: str, *, check_finite: bool = True, allow_pos_inf: bool = False) -> Tensor:
    """``v`` as float64 after checking it is a tensor of shape (N,), with no NaN or +inf.

    ``who`` names the source in the message (``"reward of 'reward'"``); ``check_finite=False``
    checks the shape only (no host read); ``allow_pos_inf=True`` refuses NaN only (for a value
    that is scaled before it becomes a log-weight).
    """
    if not isinstance(v, torch.Tensor) or tuple(v.shape) != (N,):
        got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"{who} must return one log-value per sample, a tensor of shape ({N},), got {got}")
    if v.is_complex() or v.dtype == torch.bool:
        raise TypeError(f"{who} must return real log-values, got dtype {v.dtype}")
    if check_finite and v.is_floating_point():
        bad = torch.isnan(v) if allow_pos_inf else torch.isnan(v) | (v == float("inf"))
        if bool(bad.any()):
            kind, count = _bad_kind(v)
            raise ValueError(f"{who} returned {kind} at {count} of {N} samples ({_HINT[kind]})")
    return v.to(torch.float64)


def check_log_terms(terms: Mapping[str, Tensor], who: str) -> None:
    """Refuse NaN / +inf in any of the named ``(N,)`` terms, with one host read for all of them."""
    if not terms:
        return
    flags = torch.stack([(torch.isnan(v) | (v == float("inf"))).any() for v in terms.values()])
    if not bool(flags.any()):
        return
    for key, v in terms.items():
        found = _bad_kind(v)
        if found:
            kind, count = found
            raise ValueError(f"{who} returned {kind} in term {key!r} at {count} of {v.shape[0]} samples "
                             f"({_HINT[kind]})")


def check_probabilities(p: Tensor, who: str, *, clip_range: bool, log: bool = False, hint: str = "") -> Tensor:
    """``p`` after checking the values are probabilities in [0, 1] (``log=True``: log-probabilities
    in [-inf, 0]); NaN is always refused; with ``clip_range=True`` values out of range are clamped
    into it instead of refused. ``hint`` (e.g. "pass logit=True if they are logits") goes into the
    message. One host read."""
    low, high = (-float("inf"), 0.0) if log else (0.0, 1.0)
    bad = torch.isnan(p) | (p < low) | (p > high)
    if bool(bad.any()):
        if bool(torch.isnan(p).any()):
            raise ValueError(f"{who} returned NaN at {int(torch.isnan(p).sum())} of {p.numel()} values")
        if not clip_range:
            span = "[-inf, 0] (log-probabilities)" if log else "[0, 1] (probabilities)"
            raise ValueError(
                f"{who} returned {int(bad.sum())} values outside {span} (min {float(p.min()):.4g}, max "
                f"{float(p.max()):.4g}); {hint + ', or ' if hint else ''}pass clip_range=True to clamp them into range"
            )
        p = p.clamp(low, high)
    return p


def check_factor(lam) -> float:
    """A potential's scale λ as a float: a finite real number (not bool); ``ValueError`` otherwise."""
    try:
        return check_real(lam, "lam")
    except TypeError as err:
        raise ValueError(f"lam must be a finite number, got {lam!r}") from err
    except ValueError:
        raise ValueError(f"lam must be a finite number, got {lam!r}") from None
