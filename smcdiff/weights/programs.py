"""Potentials written as Pyro programs: each ``pyro.factor(name, value)`` is a named term.

``program(fn)`` (or the decorator ``@program``) turns a function ``fn(x, sigma, x0_hat, **cond)``
that calls ``pyro.factor(name, log_value)`` one or more times, each ``log_value : (N,)``, into a
potential whose value is the sum of the factors and whose ``terms`` are the factors by name, so the
sampler records each one in its diagnostics. Observed sample statements,
``pyro.sample(name, dist, obs=y)`` with a distribution of batch shape (N,), are terms too (their
log-density is a deterministic function of the particle); ``pyro.plate`` is allowed.

How: ``fn`` runs under ``pyro.poutine.trace``, ``trace.compute_log_prob()`` evaluates the sites,
and the factor sites (``pyro.poutine.util.site_is_factor``) and observed sites are collected by
name. The program runs inside ``poutine.block``, so an outer Pyro handler sees none of its sites.

A potential must be a deterministic function of the particle, so the program is refused with a
``ValueError`` — before anything is drawn or stored — when it reaches a latent ``pyro.sample``
(it would draw from the global RNG), a subsampling ``pyro.plate`` (the same) or ``pyro.param`` /
``pyro.module`` (they would write to the global parameter store). It is also refused when it
records no factor, or a factor whose log-value is not of shape (N,), and a factor that is NaN or
+inf raises a ``ValueError`` naming the program and the site (−inf is a weight of zero).

Cost: Pyro's bookkeeping, measured at about 50–60 µs per factor per call plus about 45 µs per
call (one thread of a 2-core development CPU; ``pyro.factor`` alone is about 20 µs of that, the
validation in ``compute_log_prob`` about 25 µs). Negligible next to a network evaluation,
noticeable next to a cheap closed-form potential — write those as plain functions.

    >>> import torch, pyro
    >>> from smcdiff.weights import program
    >>> @program
    ... def prefer_right(x, sigma, x0_hat):
    ...     pyro.factor("right", -torch.relu(-x0_hat[:, 0]))
    ...     pyro.factor("small", -0.5 * (x0_hat ** 2).sum(-1))
    >>> x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> sigma = torch.ones(5, dtype=torch.float64)
    >>> prefer_right(x, sigma, x).shape
    torch.Size([5])
    >>> list(prefer_right.terms(x, sigma, x))
    ['right', 'small']
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_factor, site_is_subsample

from smcdiff.types import Tensor
from smcdiff.weights.values import check_log_terms, num_samples

__all__ = ["program", "Program"]


class _Deterministic(Messenger):
    """Refuses Pyro statements that would draw random numbers or touch the parameter store."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"]:
            return
        if site_is_subsample(msg):
            fn = msg["fn"]
            if fn.subsample_size is None or fn.subsample_size == fn.size:
                return
            raise ValueError(
                f"potential program {self.name!r}: pyro.plate({msg['name']!r}) subsamples, which draws random "
                "numbers; a potential must be a deterministic function of the particle (use the full plate)"
            )
        raise ValueError(
            f"potential program {self.name!r} has a latent sample site {msg['name']!r} (pyro.sample without obs=); "
            "a potential must be a deterministic function of the particle: use pyro.factor(name, log_value)"
        )

    def _pyro_param(self, msg) -> None:
        raise ValueError(
            f"potential program {self.name!r} calls pyro.param/pyro.module ({msg['name']!r}); a potential must not "
            "touch Pyro's global parameter store: pass tensors or modules to the function instead"
        )


def _is_term(site) -> bool:
    """A factor or an observed sample site (not a plate, not a pyro.deterministic record)."""
    if site["type"] != "sample":
        return False
    if site_is_factor(site):
        return True
    return bool(site["is_observed"]) and not site_is_subsample(site) and not site["infer"].get("_deterministic", False)


class Program:
    """A potential from a Pyro program ``fn(x, sigma, x0_hat, **cond)`` that calls ``pyro.factor``.

    ``Program(fn, name=None)`` (usually made by :func:`program`); ``name`` defaults to
    ``fn.__name__``. Call: ``(x : (N, *event), sigma : (N,), x0_hat : (N, *event), **cond) ->
    (N,)`` float64, the sum of the factors; ``terms`` gives ``{factor name: (N,)}``.
    """

    def __init__(self, fn: Callable, name: str | None = None):
        if not callable(fn):
            raise TypeError(f"program needs a function fn(x, sigma, x0_hat, **cond) that calls pyro.factor, got {fn!r}")
        functools.update_wrapper(self, fn)
        fn_name = getattr(fn, "__name__", None)
        self.fn = fn
        self.name = name or (fn_name if isinstance(fn_name, str) and fn_name != "<lambda>" else "program")

    def trace(self, x: Tensor, sigma: Tensor, x0_hat: Tensor, **cond):
        """Run the program and return its Pyro trace, with ``log_prob`` computed on the term sites."""
        who = f"potential program {self.name!r}"
        try:
            with poutine.block():
                tr = poutine.trace(_Deterministic(self.name)(self.fn)).get_trace(x, sigma, x0_hat, **cond)
            with warnings.catch_warnings():  # a +inf factor is refused below, naming the program
                warnings.filterwarnings("ignore", message="Encountered \\+inf", category=UserWarning)
                tr.compute_log_prob(lambda name, site: _is_term(site))
        except ValueError as err:  # Pyro's own validation (e.g. a NaN factor): say which potential
            if str(err).startswith(who):
                raise
            raise ValueError(f"{who}: {str(err).splitlines()[0]}") from err
        return tr

    def terms(self, x: Tensor, sigma: Tensor, x0_hat: Tensor, **cond) -> dict[str, Tensor]:
        N = num_samples(x)
        out = {}
        for name, site in self.trace(x, sigma, x0_hat, **cond).nodes.items():
            if not _is_term(site):
                continue
            lp = site["log_prob"]
            if tuple(lp.shape) != (N,):
                raise ValueError(
                    f"potential program {self.name!r}: site {name!r} has log-value of shape {tuple(lp.shape)}, "
                    f"expected ({N},) (one value per sample; use .to_event() for observed multivariate sites)"
                )
            out[name] = lp.to(torch.float64)
        if not out:
            raise ValueError(f"potential program {self.name!r} recorded no pyro.factor(name, log_value)")
        check_log_terms(out, f"potential program {self.name!r}")
        return out

    def __call__(self, x: Tensor, sigma: Tensor, x0_hat: Tensor, **cond) -> Tensor:
        terms = iter(self.terms(x, sigma, x0_hat, **cond).values())
        total = next(terms)
        for v in terms:
            total = total + v
        return total

    def __repr__(self) -> str:
        return f"program({self.name!r})"


def program(fn: Callable | None = None, *, name: str | None = None):
    """Make a potential from a Pyro program: ``program(fn)``, ``@program`` or ``@program(name=...)``.

    ``fn(x, sigma, x0_hat, **cond)`` calls ``pyro.factor(name, log_value : (N,))`` one or more
    times; returns a :class:`Program` (see the module doc).
    """
    if fn is None:
        return lambda f: Program(f, name=name)
    return Program(fn, name=name)
