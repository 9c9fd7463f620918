"""Log-weights of G groups of K particles: checks, normalisation and effective sample size.

Log-weights are a floating tensor ``(G, K)``, float32 or float64, one row per group (an
independent SMC run). ``-inf`` is a weight of zero and is allowed; NaN and ``+inf`` are not, nor
is a group whose weights are all zero. :func:`check_log_weights` checks the shape and
:func:`check_finite_max` the values (one host read, done by the resampling schemes and
:func:`log_normalize`); :func:`ess` never reads a value back (NaN in, NaN out), so the adaptive
rule costs no host synchronisation.

    >>> import torch
    >>> from smcdiff.log_weights import ess, log_normalize
    >>> lw = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, -50.0, -50.0, float("-inf")]])
    >>> ess(lw).round()
    tensor([4., 1.])
    >>> log_normalize(lw).exp().sum(1)
    tensor([1., 1.])
"""

from __future__ import annotations

import torch

from smcdiff.types import Tensor

__all__ = ["check_finite_max", "check_log_weights", "ess", "log_normalize", "relative_weights"]

_F64 = torch.float64


def check_log_weights(log_weights) -> tuple[int, int]:
    """``(G, K)`` of a floating tensor of log-weights; ``TypeError`` / ``ValueError`` otherwise."""
    if not isinstance(log_weights, torch.Tensor):
        raise TypeError(f"log-weights must be a torch.Tensor, got {type(log_weights).__name__}")
    if log_weights.dim() != 2:
        raise ValueError(f"expected log-weights of shape (G, K), got shape {tuple(log_weights.shape)}")
    if not log_weights.is_floating_point():
        raise TypeError(f"log-weights must be a floating-point tensor, got {log_weights.dtype}")
    G, K = log_weights.shape
    if K < 1:
        raise ValueError(f"expected log-weights of shape (G, K) with K >= 1, got K = {K}")
    return G, K


def check_finite_max(log_weights: Tensor, row_max: Tensor) -> None:
    """Raise ``ValueError`` naming the groups unless every row max of ``log_weights : (G, K)`` is
    finite (a NaN anywhere makes the max NaN; all ``-inf`` makes it ``-inf``). One host read."""
    if not bool(torch.isfinite(row_max).all()):
        bad = {
            "contain NaN": torch.isnan(log_weights).any(1),
            "contain +inf": (log_weights == float("inf")).any(1),
            "all weights are zero (-inf)": (log_weights == float("-inf")).all(1),
        }
        msg = "; ".join(
            f"{what} in group(s) {mask.nonzero().flatten().tolist()}" for what, mask in bad.items()
            if mask.any()
        )
        raise ValueError(f"invalid log-weights: {msg}")


def relative_weights(log_weights: Tensor) -> Tensor:
    """Checked ``exp(log_w - max)`` in float64, ``(G, K)``, each row's max exactly 1 (detached)."""
    check_log_weights(log_weights)
    log_weights = log_weights.detach()  # ancestor indices are not differentiable
    m = log_weights.amax(1, keepdim=True).to(_F64)
    check_finite_max(log_weights, m)
    w = log_weights.to(_F64)  # a copy unless already float64
    w = w - m if w is log_weights else w.sub_(m)
    return w.exp_()


def log_normalize(log_weights: Tensor) -> Tensor:
    """``log_weights : (G, K)`` -> ``(G, K)`` with ``logsumexp`` over K equal to 0.

    Raises ``ValueError`` for a group whose weights are all zero (-inf), or NaN / +inf.
    """
    check_log_weights(log_weights)
    m = log_weights.amax(1, keepdim=True)
    check_finite_max(log_weights, m)
    shifted = log_weights - m  # exact near the max, so the result keeps full precision there
    return shifted - shifted.exp().sum(1, keepdim=True).log()


def ess(log_weights: Tensor) -> Tensor:
    """Effective sample size ``1 / sum_k w_k^2`` of normalised weights: ``(G, K)`` -> ``(G,)``.

    Computed as ``exp(2 lse(lw) - lse(2 lw))`` and clipped to ``[1, K]``; a group with all
    weights zero (-inf) gets 0. No value checks and no host sync (NaN in, NaN out).
    """
    _, K = check_log_weights(log_weights)
    lse = torch.logsumexp(log_weights, 1)
    value = torch.exp(2 * lse - torch.logsumexp(2 * log_weights, 1)).clamp_(1, K)
    return torch.where(lse == float("-inf"), torch.zeros_like(value), value)
