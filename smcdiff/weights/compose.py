"""Composing potentials: sums, scaling, σ-windows, and named terms.

A potential is any callable ``V(x, sigma, x0_hat, **cond) -> (N,)`` log-value, with ``x : (N,
*event)`` the particles, ``sigma : (N,)`` their float64 noise level and ``x0_hat : (N, *event)`` the
denoiser output. A potential *may* also define ``terms(x, sigma, x0_hat, **cond) -> dict[str,
(N,)]``: named components whose sum is the value. The sampler then records each term separately in
its diagnostics, so the names should be the same at every step. A potential whose names are fixed
in advance may list them as ``term_names`` (a tuple); :class:`Window` and :class:`Scale` use it to
return zeros under the right names without evaluating their child (:func:`static_term_names`).

* ``Sum(V1, V2, ...)`` — V = Σ_i V_i. Terms: a child with no ``terms`` gives one term named by the
  child (its ``name`` attribute, else its function ``__name__``, else ``term{i}``); a child with
  ``terms`` gives its terms prefixed ``"<child>."`` (a term already named like the child keeps that
  name). Child names must be distinct.
* ``Scale(V, lam)`` — λ·V (each term scaled). λ = 0 gives exactly 0 without evaluating V, so a
  potential that is −∞ somewhere cannot turn into NaN.
* ``Window(V, sigma_min, sigma_max)`` — V where sigma_min ≤ σ ≤ sigma_max, 0 elsewhere, per sample.
  V is evaluated on the whole batch (some potentials use batch statistics) and skipped entirely
  when no sample is inside the window — except that ``terms`` must then still learn the names of a
  child whose terms have no ``term_names`` (a :func:`~smcdiff.weights.program`), so it evaluates
  such a child and returns zeros.
* :func:`evaluate_terms` — what the sampler calls: ``(value (N,), {name: (N,)})`` in float64, with
  the shapes checked and NaN / +inf refused, naming the potential and the term (one host read;
  ``check_finite=False`` skips it for a caller that checks the values itself).

With the sampler's ``"difference"`` form (log w += V_new − V_old) a window makes the weight jump
by V when a particle enters it; the weights still telescope to the final V.

    >>> import torch
    >>> from smcdiff.weights import Sum, Scale, Window, evaluate_terms
    >>> def near_origin(x, sigma, x0_hat):
    ...     return -(x0_hat ** 2).sum(-1)
    >>> def right_half(x, sigma, x0_hat):
    ...     return torch.where(x0_hat[:, 0] > 0, 0.0, -5.0).double()
    >>> V = Sum(Scale(near_origin, 0.5), Window(right_half, sigma_max=1.0))
    >>> x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> sigma = torch.tensor([0.1, 0.5, 2.0, 5.0], dtype=torch.float64)
    >>> value, terms = evaluate_terms(V, x, sigma, x)
    >>> sorted(terms)
    ['near_origin', 'right_half']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from smcdiff.checks import check_real
from smcdiff.types import Tensor
from smcdiff.weights.values import (
    check_factor,
    check_log_terms,
    log_values,
    num_samples,
)

__all__ = ["Sum", "Scale", "Window", "evaluate_terms", "potential_name", "static_term_names"]


def potential_name(potential, default: str = "potential") -> str:
    """The name a potential's value is recorded under.

    Its ``name`` attribute if that is a non-empty string, else a function's ``__name__`` (not
    ``"<lambda>"``), else ``default``.
    """
    name = getattr(potential, "name", None)
    if isinstance(name, str) and name:
        return name
    name = getattr(potential, "__name__", None)
    if isinstance(name, str) and name and name != "<lambda>":
        return name
    return default


def _shape_checked(v, N: int, who: str) -> Tensor:
    """``v`` as float64 (N,), shape checked only: composites pass their children's values on,
    and :func:`evaluate_terms` checks the values once at the top."""
    return log_values(v, N, who, check_finite=False)


def _has_terms(potential) -> bool:
    return callable(getattr(potential, "terms", None))


def static_term_names(potential, name: str) -> tuple[str, ...] | None:
    """The names ``potential``'s terms will have, known without evaluating it, or None.

    ``(name,)`` for a potential without ``terms`` (it is recorded under ``name``), its
    ``term_names`` attribute when it has one, else None (names only known by evaluating).
    """
    if not _has_terms(potential):
        return (name,)
    names = getattr(potential, "term_names", None)
    return None if names is None else tuple(names)


def _prefixed(child: str, key: str, count: int) -> str:
    """The name in a :class:`Sum` of term ``key`` of the child named ``child`` with ``count`` terms."""
    return key if (key == child and count == 1) else f"{child}.{key}"


def _zero_terms(potential, name: str, x, sigma, x0_hat, cond) -> dict[str, Tensor]:
    """Zeros under the names ``potential``'s terms would have (evaluating it only if they are unknown)."""
    names = static_term_names(potential, name)
    if names is None:
        names = tuple(_raw_terms(potential, name, x, sigma, x0_hat, cond))
    return {k: torch.zeros(num_samples(x), dtype=torch.float64, device=x.device) for k in names}


def _raw_terms(potential, name: str, x, sigma, x0_hat, cond) -> dict[str, Tensor]:
    """The terms of ``potential``, or ``{name: value}`` when it has none; shape-checked, float64."""
    N = num_samples(x)
    who = f"potential {name!r}"
    if _has_terms(potential):
        terms = potential.terms(x, sigma, x0_hat, **cond)
        if not isinstance(terms, Mapping):
            raise ValueError(f"{who}.terms must return a dict of name -> (N,) tensors, got {type(terms).__name__}")
        out = {}
        for key, v in terms.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"{who}.terms must use non-empty string names, got {key!r}")
            out[key] = _shape_checked(v, N, f"{who}.terms[{key!r}]")
        return out
    return {name: _shape_checked(potential(x, sigma, x0_hat, **cond), N, who)}


def evaluate_terms(potential: Callable, x: Tensor, sigma: Tensor, x0_hat: Tensor, *,
                   check_finite: bool = True, **cond) -> tuple[Tensor, dict[str, Tensor]]:
    """Evaluate a potential and its named terms: ``-> (value : (N,), {name: (N,)})``, float64.

    Uses ``potential.terms`` when it exists (value = sum of the terms), else
    ``potential(...)`` recorded as one term named by :func:`potential_name`. ``x : (N, *event)``,
    ``sigma : (N,)``, ``x0_hat : (N, *event)``. Raises ``ValueError`` naming the potential when
    an output is not a tensor of shape (N,), or (unless ``check_finite=False``, which saves the
    one host read) contains NaN or +inf (−inf is allowed: zero weight).
    """
    if not callable(potential):
        raise TypeError(f"potential must be callable as V(x, sigma, x0_hat, **cond) -> (N,), got {potential!r}")
    name = potential_name(potential)
    terms = _raw_terms(potential, name, x, sigma, x0_hat, cond)
    if check_finite:
        check_log_terms(terms, f"potential {name!r}")
    value = torch.zeros(num_samples(x), dtype=torch.float64, device=x.device)
    for v in terms.values():
        value = value + v
    return value, terms


class Sum:
    """V = Σ_i V_i(x, sigma, x0_hat, **cond); ``terms`` flattens the children's terms (see module doc).

    ``Sum(*potentials, name="sum")``; at least one potential, with distinct names.
    """

    def __init__(self, *potentials: Callable, name: str = "sum"):
        if not potentials:
            raise ValueError("Sum needs at least one potential")
        for i, p in enumerate(potentials):
            if not callable(p):
                raise TypeError(f"Sum: argument {i} must be a potential V(x, sigma, x0_hat, **cond) -> (N,), got {p!r}")
        names = [potential_name(p, f"term{i}") for i, p in enumerate(potentials)]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"Sum: potentials must have distinct names, {dup} repeated; pass name=... to tell them apart")
        self.potentials, self.names, self.name = tuple(potentials), names, name

    def __call__(self, x: Tensor, sigma: Tensor, x0_hat: Tensor, **cond) -> Tensor:
        N = num_samples(x)
        total = torch.zeros(N, dtype=torch.float64, device=x.device)
        for p, n in zip(self.potentials, self.names):
            total = total + _shape_checked(p(x, sigma, x0_hat, **cond), N, f"potential {n!r}")
        return total

    def terms(self, x: Tensor, sigma: Tensor, x0_hat: Tensor, **cond) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for p, n in zip(self.potentials, self.names):
            child = _raw_terms(p, n, x, sigma, x0_hat, cond)
            for key, v in child.items():
                full = _prefixed(n, key, len(child))
                if full in out:
                    raise ValueError(f"Sum: two terms are both named {full!r}; rename one of the potentials")
                out[full] = v
        return out

    @property
    def term_names(self) -> tuple[str, ...] | None:
        out: list[str] = []
        for p, n in zip(self.potentials, self.names):
            child = static_term_names(p, n)
            if child is None:
                return None
            out += [_prefixed(n, k, len(child)) for k in child]
        return tuple(out)

    def __repr__(self) -> str:
        return f"Sum({', '.join(self.names)})"


class Scale:
    """λ·V(x, sigma, x0_hat, **cond); λ a finite float (0 → exactly 0, V not evaluated).

    ``Scale(potential, lam, name=None)``: ``name`` defaults to the child's name, so a scaled
    potential is recorded under the same name; ``terms`` are the child's terms times λ (with λ = 0:
    zeros under the child's ``term_names``, or one zero term named ``name`` if it has none).
    """

    def __init__(self, potential: Callable, lam: float, name: str | None = None):
        if not callable(potential):
            raise TypeError(f"Scale: potential must be callable as V(x, sigma, x0_hat, **cond), got {potential!r}")
        self.potential, self.lam = potential, check_factor(lam)
        self.name = name or potential_name(potential, "scaled")

    def __call__(self, x: Tensor, sigma: Tensor, x0_hat: Tensor, **cond) -> Tensor:
        N = num_samples(x)
        if self.lam == 0:
            return torch.zeros(N, dtype=torch.float64, device=x.device)
        return self.lam * _shape_checked(self.potential(x, sigma, x0_hat, **cond), N, f"potential {self.name!r}")

    def terms(self, x: Tensor, sigma: Tensor, x0_hat: Tensor, **cond) -> dict[str, Tensor]:
        if self.lam == 0:
            return {k: torch.zeros(num_samples(x), dtype=torch.float64, device=x.device) for k in self.term_names or ()}
        child = _raw_terms(self.potential, self.name, x, sigma, x0_hat, cond)
        return {k: self.lam * v for k, v in child.items()}

    @property
    def term_names(self) -> tuple[str, ...] | None:
        names = static_term_names(self.potential, self.name)
        return (self.name,) if (names is None and self.lam == 0) else names

    def __repr__(self) -> str:
        return f"Scale({self.name!r}, lam={self.lam})"


class Window:
    """V(x, sigma, x0_hat, **cond) where sigma_min ≤ σ ≤ sigma_max (per sample), else 0.

    ``Window(potential, sigma_min=0.0, sigma_max=inf, name=None)``. The child is evaluated on the
    whole batch when any sample is inside the window and not at all otherwise; ``terms`` are the
    child's terms masked the same way (zeros under the same names when the child is skipped; a
    child with ``terms`` but no ``term_names`` is then evaluated anyway, to learn its names).
    """

    def __init__(self, potential: Callable, sigma_min: float = 0.0, sigma_max: float = math.inf, name: str | None = None):
        if not callable(potential):
            raise TypeError(f"Window: potential must be callable as V(x, sigma, x0_hat, **cond), got {potential!r}")
        sigma_min = check_real(sigma_min, "Window: sigma_min", low=0.0)
        sigma_max = check_real(sigma_max, "Window: sigma_max", low=0.0, allow_inf=True)
        if not sigma_min <= sigma_max:
            raise ValueError(f"Window needs 0 <= sigma_min <= sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.potential, self.sigma_min, self.sigma_max = potential, sigma_min, sigma_max
        self.name = name or potential_name(potential, "windowed")

    def mask(self, sigma: Tensor, N: int) -> Tensor:
        """``(N,)`` bool: which samples are inside the window (``sigma`` scalar or (N,))."""
        s = torch.as_tensor(sigma)
        if s.dim() == 0:
            s = s.expand(N)
        if tuple(s.shape) != (N,):
            raise ValueError(f"Window: sigma must have shape ({N},) (one noise level per sample), got {tuple(s.shape)}")
        return (s >= self.sigma_min) & (s <= self.sigma_max)

    def __call__(self, x: Tensor, sigma: Tensor, x0_hat: Tensor, **cond) -> Tensor:
        N = num_samples(x)
        inside = self.mask(sigma, N).to(x.device)
        zero = torch.zeros(N, dtype=torch.float64, device=x.device)
        if not bool(inside.any()):
            return zero
        v = _shape_checked(self.potential(x, sigma, x0_hat, **cond), N, f"potential {self.name!r}")
        return torch.where(inside, v, zero)

    def terms(self, x: Tensor, sigma: Tensor, x0_hat: Tensor, **cond) -> dict[str, Tensor]:
        N = num_samples(x)
        inside = self.mask(sigma, N).to(x.device)
        if not bool(inside.any()):
            return _zero_terms(self.potential, self.name, x, sigma, x0_hat, cond)
        child = _raw_terms(self.potential, self.name, x, sigma, x0_hat, cond)
        zero = torch.zeros(N, dtype=torch.float64, device=x.device)
        return {k: torch.where(inside, v, zero) for k, v in child.items()}

    @property
    def term_names(self) -> tuple[str, ...] | None:
        return static_term_names(self.potential, self.name)

    def __repr__(self) -> str:
        return f"Window({self.name!r}, sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"
