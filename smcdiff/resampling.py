"""Resampling: pick ancestors for the particles of every group from their log-weights.

Everything here is a pure function of log-weights ``(G, K)`` (G groups = independent SMC runs,
K particles each) and a caller-owned ``torch.Generator`` (or one per group, see
:mod:`smcdiff._rng`). All groups are resampled in one vectorised call; weights may be float32 or
float64 and may contain ``-inf`` (weight zero, never selected). Internally the weights are
shifted by their maximum, exponentiated and accumulated in float64 (the normalising constant is
the last cumulative sum, so no separate ``logsumexp`` pass), and indices are in ``[0, K - 1]`` by
construction or clipped after ``searchsorted``: a cumulative sum that ends a hair below 1 can
never overrun, nor land on a trailing zero weight.

Schemes (one signature ``scheme(log_weights, generator, num=None) -> (G, num)`` int64, registered
by name in :data:`SCHEMES`):

``multinomial``   ``num`` i.i.d. draws, via ``num`` sorted uniforms (normalised cumulative sums
                  of exponentials) and one ``searchsorted``: O(N log K), no sort, no
                  ``torch.multinomial``.
``stratified``    one uniform in each stratum ``[i/num, (i+1)/num)``.
``systematic``    one uniform per group, shifted by ``i/num``: the cheapest, the default.
``residual``      ``floor(num * w)`` deterministic copies, the rest multinomial on the remainders.
``rejection``     Murray, Lee & Jacob (2016): each offspring proposes uniformly until it accepts
                  with probability ``w_j / w_max``; needs no cumulative sum (see its docstring).

All are unbiased: ``E[count_j] = num * w_j``. Per-particle count variance: systematic <=
stratified <= multinomial and residual <= multinomial (systematic keeps every count within one
of ``num * w_j``, the least possible; for weighted averages over many particles it is usually,
though not provably always, the best). Multinomial, stratified, systematic and residual return
ancestors sorted ascending; rejection returns, for offspring ``i``, either ``i mod K`` itself or
a proposal (so well-weighted particles tend to stay in place).

:class:`Resampler` adds the adaptive rule: resample a group only when its effective sample size
falls below ``ess_threshold * K``; other groups keep the identity ancestors ``arange(K)``.

    >>> import torch
    >>> from smcdiff.resampling import Resampler, ess, systematic
    >>> g = torch.Generator().manual_seed(0)
    >>> log_w = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, -50.0, -50.0, -50.0]])
    >>> ess(log_w).round()
    tensor([4., 1.])
    >>> systematic(log_w, g)[1]
    tensor([0, 0, 0, 0])
    >>> out = Resampler("systematic", ess_threshold=0.5)(log_w, g)
    >>> out.resampled
    tensor([False,  True])
    >>> out.ancestors
    tensor([[0, 1, 2, 3],
            [0, 0, 0, 0]])

``scheme`` is a registered name (case-insensitive) or any function with the scheme signature;
the output of a function that is not one of the built-in schemes is checked where the
:class:`Resampler` calls it (an int64 tensor ``(G, K)``, every index in ``[0, K - 1]``, no
zero-weight particle chosen), so a faulty custom scheme raises instead of corrupting a run.

Only the ``-inf``/NaN check inside the schemes (and :func:`log_normalize`) reads a value back to
the host, once per call; :func:`ess` and the adaptive rule never do. ``rejection`` also checks
once per round whether any offspring is still waiting, and a custom scheme's output is checked
with one more read. With one generator per group every scheme, rejection included, gives group
``g`` the same ancestors, and leaves its generator in the same state, whatever the other groups.

The pieces live in :mod:`smcdiff.log_weights` (checks, :func:`ess`, :func:`log_normalize`) and
:mod:`smcdiff.resampling_schemes` (the registry and the schemes); this module re-exports them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from smcdiff._rng import check_generator
from smcdiff.checks import check_real
from smcdiff.log_weights import check_log_weights, ess, log_normalize
from smcdiff.resampling_schemes import (
    BUILTIN_SCHEMES,
    SCHEMES,
    Scheme,
    get_scheme,
    multinomial,
    register,
    rejection,
    residual,
    scheme_name,
    stratified,
    systematic,
)
from smcdiff.types import GeneratorSpec, Tensor

__all__ = [
    "SCHEMES", "ResampleOutcome", "Resampler", "ess", "get_scheme", "log_normalize",
    "multinomial", "register", "rejection", "residual", "stratified", "systematic",
]


class ResampleOutcome(NamedTuple):
    """``ancestors : (G, K)`` int64 (``arange(K)`` where not resampled), ``resampled : (G,)``
    bool, ``ess : (G,)``."""

    ancestors: Tensor
    resampled: Tensor
    ess: Tensor


def _check_ancestors(scheme, anc, log_weights: Tensor) -> None:
    """Refuse a custom scheme's output unless int64 ``(G, K)`` indices of non-zero weights."""
    G, K = log_weights.shape
    if not isinstance(anc, torch.Tensor) or anc.shape != (G, K) or anc.dtype != torch.int64:
        raise ValueError(
            f"scheme {scheme_name(scheme)} must return int64 ancestors of shape {(G, K)}, got "
            f"{getattr(anc, 'dtype', type(anc).__name__)} {tuple(getattr(anc, 'shape', ()))}"
        )
    out_of_range = (anc < 0) | (anc >= K)
    zero = log_weights.detach().gather(1, anc.clamp(0, K - 1)) == float("-inf")
    if bool((out_of_range | zero).any()):  # one host read, for custom schemes only
        groups = (out_of_range | zero).any(1).nonzero().flatten().tolist()
        what = (f"indices outside [0, {K - 1}] (e.g. {anc[out_of_range][:3].tolist()})"
                if bool(out_of_range.any()) else "particles of weight zero (log-weight -inf)")
        raise ValueError(f"scheme {scheme_name(scheme)} returned {what} in group(s) {groups}; ancestors must index "
                         "particles of non-zero weight")


class Resampler:
    """Resample the groups whose ESS is below ``ess_threshold * K`` with ``scheme``.

    ``ess_threshold`` a number in [0, 1]: 0 never resamples (and draws nothing), 1 always
    resamples every group. ``scheme`` is a registered name (case-insensitive) or a function
    ``scheme(log_weights, generator, num=None) -> (G, num)`` int64, whose output is checked.
    """

    __slots__ = ("ess_threshold", "scheme")

    def __init__(self, scheme: str | Scheme = "systematic", ess_threshold: float = 0.5):
        self.ess_threshold = check_real(ess_threshold, "ess_threshold", low=0.0, high=1.0)
        self.scheme = get_scheme(scheme)

    def __repr__(self) -> str:
        name = getattr(self.scheme, "__name__", repr(self.scheme))
        return f"Resampler(scheme={name!r}, ess_threshold={self.ess_threshold})"

    def __call__(self, log_weights: Tensor, generator: GeneratorSpec) -> ResampleOutcome:
        """``log_weights : (G, K)`` -> :class:`ResampleOutcome`; no host sync beyond the scheme's
        (and one to check a custom scheme's output)."""
        G, K = check_log_weights(log_weights)
        check_generator(generator, G)
        value = ess(log_weights)
        identity = torch.arange(K, device=log_weights.device).repeat(G, 1)
        if self.ess_threshold == 0.0:
            return ResampleOutcome(identity, torch.zeros(G, dtype=torch.bool, device=identity.device), value)
        anc = self.scheme(log_weights, generator)
        if not any(self.scheme is s for s in BUILTIN_SCHEMES):
            _check_ancestors(self.scheme, anc, log_weights)
        if self.ess_threshold == 1.0:
            resampled = torch.ones(G, dtype=torch.bool, device=identity.device)
        else:
            resampled = value < self.ess_threshold * K
        return ResampleOutcome(torch.where(resampled[:, None], anc, identity), resampled, value)
