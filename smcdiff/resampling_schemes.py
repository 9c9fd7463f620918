"""The resampling schemes: ancestors ``(G, num)`` from log-weights ``(G, K)``, registered by name.

One signature, ``scheme(log_weights, generator, num=None) -> (G, num)`` int64 (``num`` defaults
to K), every draw from the caller's ``torch.Generator`` or from one generator per group (see
:mod:`smcdiff._rng`); with per-group generators a group's ancestors, and how far its generator
advances, depend on its own weights and seed alone, never on the other groups. The weights are
shifted by their maximum, exponentiated and accumulated in float64 (the normalising constant is
the last cumulative sum), and indices are in ``[0, K - 1]`` by construction or clipped after
``searchsorted``: a cumulative sum that ends a hair below 1 can never overrun, nor land on a
trailing zero weight. The user guide is :mod:`smcdiff.resampling`.

    >>> import torch
    >>> from smcdiff.resampling_schemes import SCHEMES, get_scheme
    >>> sorted(SCHEMES)
    ['multinomial', 'rejection', 'residual', 'stratified', 'systematic']
    >>> get_scheme("Systematic") is SCHEMES["systematic"]   # names are case-insensitive
    True
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch

from smcdiff._rng import check_generator, rand
from smcdiff.checks import check_int
from smcdiff.log_weights import check_log_weights, relative_weights
from smcdiff.types import GeneratorSpec, Tensor

__all__ = [
    "BUILTIN_SCHEMES", "SCHEMES", "get_scheme", "scheme_name", "multinomial", "register", "rejection", "residual", "stratified",
    "systematic",
]

Scheme = Callable[..., Tensor]
SCHEMES: dict[str, Scheme] = {}

_F64 = torch.float64
_BELOW_ONE = 1.0 - 2.0**-53  # largest float64 below 1
_SIGNATURE = "scheme(log_weights, generator, num=None) -> (G, num) int64 ancestors"


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


def scheme_name(fn) -> str:
    """A short name for a scheme in messages: its ``__qualname__`` / ``__name__``, else its repr."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return name if isinstance(name, str) else f"{fn!r:.60}"


def _check_callable(fn) -> Scheme:
    """``fn`` if it can be called as ``fn(log_weights, generator)``; else a ``TypeError`` saying how."""
    if isinstance(fn, type) or hasattr(fn, "ess_threshold"):
        what = f"the class {fn.__name__}" if isinstance(fn, type) else f"a {type(fn).__name__} object"
        raise TypeError(
            f"scheme must be a scheme name such as 'systematic' or a function {_SIGNATURE}, got {what}; "
            "pass a Resampler itself where one is expected (resampler=Resampler('systematic'))"
        )
    try:
        inspect.signature(fn).bind(None, None)
    except TypeError:
        raise TypeError(f"scheme {scheme_name(fn)} cannot be called as {_SIGNATURE}") from None
    except ValueError:  # no signature to inspect (some builtins): trust it, the output is checked
        pass
    return fn


def get_scheme(name_or_callable: str | Scheme) -> Scheme:
    """The scheme registered as ``name`` (case-insensitive), or the callable itself, checked to
    accept ``(log_weights, generator)``."""
    if isinstance(name_or_callable, str):
        name = name_or_callable
        if name not in SCHEMES:
            name = name.strip().lower()
        if name not in SCHEMES:
            raise ValueError(
                f"unknown resampling scheme {name_or_callable!r}; known: {sorted(SCHEMES)} "
                f"(or pass a function {_SIGNATURE})"
            )
        return SCHEMES[name]
    if callable(name_or_callable):
        return _check_callable(name_or_callable)
    raise TypeError(
        f"scheme must be a name (one of {sorted(SCHEMES)}) or a function {_SIGNATURE}, "
        f"got {type(name_or_callable).__name__}"
    )


# ----------------------------------------------------------------------------- shared pieces


def _weights(log_weights, generator, num) -> tuple[Tensor, int, int, int]:
    """Validate and return ``exp(log_w - max)`` in float64 (row max exactly 1), G, K, num."""
    G, K = check_log_weights(log_weights)
    check_generator(generator, G)
    num = K if num is None else check_int(num, "num (offspring per group)", minimum=1)
    return relative_weights(log_weights), G, K, num


def _cdf_(w: Tensor) -> Tensor:
    """In place: cumulative weights normalised so that the last column is exactly 1."""
    torch.cumsum(w, 1, out=w)
    return w.div_(w[:, -1:].clone())


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


def _uniform_rows(rows: list[int], G: int, num: int, generator, device, fill: float) -> Tensor:
    """``(G, num)`` uniforms drawn for ``rows`` only (each from its own stream with per-group
    generators), ``fill`` elsewhere: groups that are not drawing leave their generator alone."""
    if len(rows) == G:
        return rand((G, num), generator, dtype=_F64, device=device)
    gens = generator if isinstance(generator, torch.Generator) else [generator[g] for g in rows]
    out = torch.full((G, num), fill, dtype=_F64, device=device)
    out[torch.tensor(rows, device=device)] = rand((len(rows), num), gens, dtype=_F64, device=device)
    return out


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

    Vectorised in rounds: each round every group that still has a waiting offspring draws
    ``num`` proposals and hands them round-robin to its waiting offspring, so stragglers get many
    per round; an offspring takes its first accepted proposal. A group whose offspring have all
    accepted draws nothing more, so with per-group generators both its ancestors and how far its
    generator advances are independent of the other groups (and of how many there are).
    Expect about ``w_max / mean(w)`` rounds, one host sync each: use it for fairly even weights.
    After ``max_rounds`` rounds the offspring still waiting draw from the multinomial directly.
    A waiting offspring's proposals are fresh i.i.d. draws, so (memorylessness) that is exactly
    the distribution it would reach: the cap bounds the time and costs no bias.
    """
    max_rounds = check_int(max_rounds, "max_rounds", minimum=0)
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
        rows = waiting.any(1).nonzero().flatten().tolist()  # the groups still drawing
        if not rows:
            return anc
        # Hand the num proposal slots of each group round-robin to its waiting offspring.
        n_wait = waiting.sum(1, keepdim=True)
        rank = torch.where(waiting, waiting.cumsum(1) - 1, num)
        members = torch.zeros(G, num + 1, dtype=torch.int64, device=dev).scatter_(1, rank, slots)
        owner = members.gather(1, slots % n_wait.clamp(min=1))
        # Propose uniformly; accept with probability w_j / w_max (finished groups draw nothing).
        u_prop = _uniform_rows(rows, G, num, generator, dev, fill=0.0)
        prop = (u_prop * K).to(torch.int64).clamp_(max=K - 1)
        u_acc = _uniform_rows(rows, G, num, generator, dev, fill=1.0)
        ok = (u_acc < ratio.gather(1, prop)) & (n_wait > 0)
        # Each waiting offspring takes its first accepted slot.
        first = torch.full((G, num), num, dtype=torch.int64, device=dev).scatter_reduce_(
            1, owner, torch.where(ok, slots, num), "amin"
        )
        won = waiting & (first < num)
        anc = torch.where(won, prop.gather(1, first.clamp(max=num - 1)), anc)
        done = done | won
    # Cap reached: stragglers draw from the multinomial (exact, see above).
    waiting = ~done
    rows = waiting.any(1).nonzero().flatten().tolist()
    if rows:
        u = _uniform_rows(rows, G, num, generator, dev, fill=0.0)
        anc = torch.where(waiting, _inverse_cdf(_cdf_(ratio), u), anc)
    return anc


#: The built-in schemes (correct by construction: :class:`~smcdiff.resampling.Resampler` checks
#: only the output of other callables).
BUILTIN_SCHEMES = frozenset(SCHEMES.values())
