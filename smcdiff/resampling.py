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

Only the ``-inf``/NaN check inside the schemes (and :func:`log_normalize`) reads a value back to
the host, once per call; :func:`ess` and the adaptive rule never do. ``rejection`` also checks
once per round whether any offspring is still waiting.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import NamedTuple

import torch

from smcdiff._rng import check_generator, rand
from smcdiff.types import GeneratorSpec, Tensor

__all__ = [
    "SCHEMES", "ResampleOutcome", "Resampler", "ess", "get_scheme", "log_normalize",
    "multinomial", "register", "rejection", "residual", "stratified", "systematic",
]

Scheme = Callable[..., Tensor]
SCHEMES: dict[str, Scheme] = {}

_F64 = torch.float64
_BELOW_ONE = 1.0 - 2.0**-53  # largest float64 below 1


# ----------------------------------------------------------------------------- validation


def _check_shape(log_weights) -> tuple[int, int]:
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


def _check_values(log_weights: Tensor, row_max: Tensor) -> None:
    """One host sync: every row max must be finite (a NaN anywhere makes the max NaN)."""
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


def _weights(log_weights, generator, num) -> tuple[Tensor, int, int, int]:
    """Validate and return ``exp(log_w - max)`` in float64 (row max exactly 1), G, K, num."""
    G, K = _check_shape(log_weights)
    log_weights = log_weights.detach()  # ancestor indices are not differentiable
    check_generator(generator, G)
    if num is None:
        num = K
    else:
        num = operator.index(num)
        if num < 1:
            raise ValueError(f"num (offspring per group) must be >= 1, got {num}")
    m = log_weights.amax(1, keepdim=True).to(_F64)
    _check_values(log_weights, m)
    w = log_weights.to(_F64)  # a copy unless already float64
    w = w - m if w is log_weights else w.sub_(m)
    return w.exp_(), G, K, num


def _cdf_(w: Tensor) -> Tensor:
    """In place: cumulative weights normalised so that the last column is exactly 1."""
    torch.cumsum(w, 1, out=w)
    return w.div_(w[:, -1:].clone())


# ----------------------------------------------------------------------------- shared pieces


def _to_int64_(x: Tensor) -> Tensor:
    """Integer-valued float64 ``x`` -> int64 in the same memory (an elementwise cast over the
    same bytes; saves allocating, and page-faulting, a second buffer of the size of ``x``)."""
    return x.view(torch.int64).copy_(x)


def _ancestors_from_counts(n: Tensor, num: int) -> Tensor:
    """Cumulative offspring counts ``n : (G, K)`` (non-decreasing, last = num) -> ``(G, num)``.

    Offspring ``i`` descends from ``#{j : n_j <= i}``: a histogram of ``n`` and a cumulative sum.
    """
    G, K = n.shape
    ones = torch.ones((), dtype=torch.int64, device=n.device).expand(G, K)
    hist = torch.zeros(G, num + 1, dtype=torch.int64, device=n.device).scatter_add_(1, n, ones)
    return torch.cumsum(hist, 1, out=hist)[:, :num].contiguous()


def _cumulative_counts(x: Tensor, u: Tensor, num: int) -> Tensor:
    """``n_j = #{i : u_i + i < x_j} = ceil(x_j - u_floor(x_j))`` for ``x = num * cdf : (G, K)``.

    ``u`` is ``(G, 1)`` (systematic) or ``(G, num)`` (stratified). Overwrites ``x``; int64 out.
    ``u`` is first clipped to ``1 - ulp(num)`` (a move below 2^-32 for num <= 2^20), so that
    rounding ``x - u`` never crosses ``floor(x) - 1``: counts stay monotone and end at num.
    """
    if u.shape[1] > 1:  # the u of stratum floor(x_j); x_j = num behaves like stratum num - 1
        u = u.gather(1, x.to(torch.int64).clamp_(max=num - 1))
    return _to_int64_(x.sub_(u.clamp(max=1.0 - math.ulp(num))).ceil_())


def _sorted_positions(G: int, n: int, generator, device) -> Tensor:
    """Cumulative sums ``S : (G, n + 1)`` of n + 1 Exp(1) draws; ``S[:, :m] / S[:, m]`` are m
    sorted uniforms for any m <= n."""
    e = rand((G, n + 1), generator, dtype=_F64, device=device).neg_().log1p_().neg_()
    return torch.cumsum(e, 1, out=e)


def _inverse_cdf(cdf: Tensor, u: Tensor) -> Tensor:
    """Index ``j`` with ``cdf[j-1] <= u < cdf[j]``, clipped to ``[0, K - 1]``."""
    return torch.searchsorted(cdf, u.clamp_(max=_BELOW_ONE), right=True).clamp_(max=cdf.shape[1] - 1)


# ----------------------------------------------------------------------------- registry


def register(name: str) -> Callable[[Scheme], Scheme]:
    """Decorator adding a scheme ``(log_weights, generator, num=None) -> (G, num)`` to SCHEMES."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"scheme name must be a non-empty string, got {name!r}")

    def add(fn: Scheme) -> Scheme:
        if name in SCHEMES:
            raise ValueError(f"resampling scheme {name!r} is already registered")
        SCHEMES[name] = fn
        return fn

    return add


def get_scheme(name_or_callable: str | Scheme) -> Scheme:
    """The scheme registered as ``name``, or the callable itself."""
    if callable(name_or_callable):
        return name_or_callable
    if isinstance(name_or_callable, str):
        if name_or_callable not in SCHEMES:
            raise ValueError(
                f"unknown resampling scheme {name_or_callable!r}; known: {sorted(SCHEMES)}"
            )
        return SCHEMES[name_or_callable]
    raise TypeError(f"scheme must be a name or a callable, got {type(name_or_callable).__name__}")


# ----------------------------------------------------------------------------- weights


def log_normalize(log_weights: Tensor) -> Tensor:
    """``log_weights : (G, K)`` -> ``(G, K)`` with ``logsumexp`` over K equal to 0.

    Raises ``ValueError`` for a group whose weights are all zero (-inf), or NaN / +inf.
    """
    _check_shape(log_weights)
    m = log_weights.amax(1, keepdim=True)
    _check_values(log_weights, m)
    shifted = log_weights - m  # exact near the max, so the result keeps full precision there
    return shifted - shifted.exp().sum(1, keepdim=True).log()


def ess(log_weights: Tensor) -> Tensor:
    """Effective sample size ``1 / sum_k w_k^2`` of normalised weights: ``(G, K)`` -> ``(G,)``.

    Computed as ``exp(2 lse(lw) - lse(2 lw))`` and clipped to ``[1, K]``; a group with all
    weights zero (-inf) gets 0. No value checks and no host sync (NaN in, NaN out).
    """
    _, K = _check_shape(log_weights)
    lse = torch.logsumexp(log_weights, 1)
    value = torch.exp(2 * lse - torch.logsumexp(2 * log_weights, 1)).clamp_(1, K)
    return torch.where(lse == float("-inf"), torch.zeros_like(value), value)


# ----------------------------------------------------------------------------- schemes


@register("multinomial")
def multinomial(log_weights: Tensor, generator: GeneratorSpec, num: int | None = None) -> Tensor:
    """``num`` i.i.d. ancestors per group: ``log_weights : (G, K)`` -> ``(G, num)`` int64, sorted.

    Sorted uniforms come from normalised cumulative sums of num + 1 exponentials, then one
    ``searchsorted`` against the float64 cumulative weights.
    """
    w, G, _, num = _weights(log_weights, generator, num)
    cdf = _cdf_(w)
    s = _sorted_positions(G, num, generator, w.device)
    return _inverse_cdf(cdf, s[:, :num].div_(s[:, num:].clone()).contiguous())


@register("systematic")
def systematic(log_weights: Tensor, generator: GeneratorSpec, num: int | None = None) -> Tensor:
    """Positions ``(u + i) / num`` with one ``u ~ U[0, 1)`` per group.

    ``log_weights : (G, K)`` -> ``(G, num)`` int64, sorted. O(K + num), no search.
    """
    w, G, _, num = _weights(log_weights, generator, num)
    u = rand((G, 1), generator, dtype=_F64, device=w.device)
    x = _cdf_(w).mul_(num)
    return _ancestors_from_counts(_cumulative_counts(x, u, num), num)


@register("stratified")
def stratified(log_weights: Tensor, generator: GeneratorSpec, num: int | None = None) -> Tensor:
    """Positions ``(u_i + i) / num`` with one ``u_i ~ U[0, 1)`` per stratum.

    ``log_weights : (G, K)`` -> ``(G, num)`` int64, sorted. O(K + num), no search.
    """
    w, G, _, num = _weights(log_weights, generator, num)
    u = rand((G, num), generator, dtype=_F64, device=w.device)
    x = _cdf_(w).mul_(num)
    return _ancestors_from_counts(_cumulative_counts(x, u, num), num)


@register("residual")
def residual(log_weights: Tensor, generator: GeneratorSpec, num: int | None = None) -> Tensor:
    """``floor(num * w_j)`` copies of each particle, the ``R = num - sum floor`` others drawn
    multinomially from the remainders ``num * w_j - floor(num * w_j)``.

    ``log_weights : (G, K)`` -> ``(G, num)`` int64, sorted. R varies by group; every group uses
    num + 1 exponentials, of which its first R + 1 make its R sorted uniforms.
    """
    w, G, _, num = _weights(log_weights, generator, num)
    # Deterministic copies.
    x = w.mul_(num / w.sum(1, keepdim=True))  # expected offspring counts
    copies = torch.floor(x)
    rest = (num - copies.sum(1, keepdim=True)).clamp_(0, num).to(torch.int64)  # R : (G, 1)
    # Multinomial on the remainders: R sorted uniforms per group, the unused slots at +inf.
    rem_cdf = torch.cumsum(x.sub_(copies), 1, out=x)
    rem_cdf.div_(rem_cdf[:, -1:].clamp(min=torch.finfo(_F64).tiny))  # all-zero when R = 0
    s = _sorted_positions(G, num, generator, w.device)
    u = s[:, :num].div_(s.gather(1, rest)).clamp_(max=_BELOW_ONE).contiguous()
    u.masked_fill_(torch.arange(num, device=w.device) >= rest, float("inf"))
    drawn = torch.searchsorted(u, rem_cdf)  # #{i < R : u_i < cdf_j}
    # Cumulative counts: copies then drawn; the last is (num - R) + R = num.
    torch.cumsum(copies, 1, out=copies)
    return _ancestors_from_counts(drawn.add_(_to_int64_(copies)), num)


@register("rejection")
def rejection(
    log_weights: Tensor, generator: GeneratorSpec, num: int | None = None, *, max_rounds: int = 100
) -> Tensor:
    """Rejection resampling (Murray, Lee & Jacob 2016): no cumulative sum, no search.

    ``log_weights : (G, K)`` -> ``(G, num)`` int64, not sorted. Offspring ``i`` starts at
    ``j = i mod K`` and keeps it with probability ``w_j / w_max``; until it accepts, it proposes
    ``j ~ Uniform{0..K-1}`` and accepts with probability ``w_j / w_max``. (When num is not a
    multiple of K, the last ``num mod K`` offspring skip the first step, whose starts would
    otherwise favour the low indices.)

    Vectorised in rounds: each round every group draws ``num`` proposals and hands them
    round-robin to its offspring still waiting, so stragglers get many per round and a group's
    ancestors never depend on the other groups (its generator may be advanced further while
    other groups finish); an offspring takes its first accepted proposal.
    Expect about ``w_max / mean(w)`` rounds, one host sync each: use it for fairly even weights.
    After ``max_rounds`` rounds the offspring still waiting draw from the multinomial directly.
    A waiting offspring's proposals are fresh i.i.d. draws, so (memorylessness) that is exactly
    the distribution it would reach: the cap bounds the time and costs no bias.
    """
    if operator.index(max_rounds) < 0:
        raise ValueError(f"max_rounds must be >= 0, got {max_rounds}")
    ratio, G, K, num = _weights(log_weights, generator, num)  # w_j / w_max
    dev = ratio.device
    slots = torch.arange(num, device=dev).expand(G, num)
    # Round 0: each offspring proposes its own index (only the first num // K * K, whose starts
    # cover every index equally often; the others start straight with uniform proposals).
    anc = (slots % K).contiguous()
    done = rand((G, num), generator, dtype=_F64, device=dev) < ratio.gather(1, anc)
    done &= slots < num // K * K
    for _ in range(max_rounds):
        waiting = ~done
        if not bool(waiting.any()):
            return anc
        # Hand the num proposal slots of each group round-robin to its waiting offspring.
        n_wait = waiting.sum(1, keepdim=True)
        rank = torch.where(waiting, waiting.cumsum(1) - 1, num)
        members = torch.zeros(G, num + 1, dtype=torch.int64, device=dev).scatter_(1, rank, slots)
        owner = members.gather(1, slots % n_wait.clamp(min=1))
        # Propose uniformly; accept with probability w_j / w_max.
        prop = (rand((G, num), generator, dtype=_F64, device=dev) * K).to(torch.int64).clamp_(max=K - 1)
        ok = (rand((G, num), generator, dtype=_F64, device=dev) < ratio.gather(1, prop)) & (n_wait > 0)
        # Each waiting offspring takes its first accepted slot.
        first = torch.full((G, num), num, dtype=torch.int64, device=dev).scatter_reduce_(
            1, owner, torch.where(ok, slots, num), "amin"
        )
        won = waiting & (first < num)
        anc = torch.where(won, prop.gather(1, first.clamp(max=num - 1)), anc)
        done = done | won
    # Cap reached: stragglers draw from the multinomial (exact, see above).
    waiting = ~done
    if bool(waiting.any()):
        u = rand((G, num), generator, dtype=_F64, device=dev)
        anc = torch.where(waiting, _inverse_cdf(_cdf_(ratio), u), anc)
    return anc


# ----------------------------------------------------------------------------- adaptive rule


class ResampleOutcome(NamedTuple):
    """``ancestors : (G, K)`` int64 (``arange(K)`` where not resampled), ``resampled : (G,)``
    bool, ``ess : (G,)``."""

    ancestors: Tensor
    resampled: Tensor
    ess: Tensor


class Resampler:
    """Resample the groups whose ESS is below ``ess_threshold * K`` with ``scheme``.

    ``ess_threshold`` 0 never resamples (and draws nothing), 1 always resamples every group.
    ``scheme`` is a registered name or a callable with the scheme signature.
    """

    __slots__ = ("ess_threshold", "scheme")

    def __init__(self, scheme: str | Scheme = "systematic", ess_threshold: float = 0.5):
        threshold = float(ess_threshold)
        if not 0.0 <= threshold <= 1.0:  # also rejects NaN
            raise ValueError(f"ess_threshold must be in [0, 1], got {ess_threshold!r}")
        self.scheme = get_scheme(scheme)
        self.ess_threshold = threshold

    def __repr__(self) -> str:
        name = getattr(self.scheme, "__name__", repr(self.scheme))
        return f"Resampler(scheme={name!r}, ess_threshold={self.ess_threshold})"

    def __call__(self, log_weights: Tensor, generator: GeneratorSpec) -> ResampleOutcome:
        """``log_weights : (G, K)`` -> :class:`ResampleOutcome`; no host sync beyond the scheme's."""
        G, K = _check_shape(log_weights)
        check_generator(generator, G)
        value = ess(log_weights)
        identity = torch.arange(K, device=log_weights.device).repeat(G, 1)
        if self.ess_threshold == 0.0:
            return ResampleOutcome(identity, torch.zeros(G, dtype=torch.bool, device=identity.device), value)
        anc = self.scheme(log_weights, generator)
        if not isinstance(anc, torch.Tensor) or anc.shape != (G, K) or anc.dtype != torch.int64:
            raise ValueError(
                f"scheme {self.scheme!r} must return int64 ancestors of shape {(G, K)}, got "
                f"{getattr(anc, 'dtype', type(anc).__name__)} {tuple(getattr(anc, 'shape', ()))}"
            )
        if self.ess_threshold == 1.0:
            resampled = torch.ones(G, dtype=torch.bool, device=identity.device)
        else:
            resampled = value < self.ess_threshold * K
        return ResampleOutcome(torch.where(resampled[:, None], anc, identity), resampled, value)
