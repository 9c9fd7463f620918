"""Partial rejection control (Liu, Chen & Wong 1998) for any Feynman–Kac model of the engine.

Pass ``rejection_control=RejectionControl(...)`` to :func:`smcdiff.engine.run` (or
:func:`smcdiff.engine.step`, or :func:`smcdiff.sample`). After the potential of step t, a particle
with incremental weight w is accepted with probability min(1, w/c); a rejected particle is
re-proposed from its previous state until accepted, and its weight is corrected so that weights and
evidence stay unbiased (see :class:`RejectionControl`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from smcdiff import _rng
from smcdiff.types import State, Tensor

__all__ = ["RejectionControl", "apply_rejection_control", "select_particles", "take_groups", "put_groups"]


@dataclass(frozen=True)
class RejectionControl:
    """Partial rejection control (Liu, Chen & Wong 1998), usable with any model.

    After the potential of step t, a particle with incremental weight w is accepted with
    probability min(1, w/c); a rejected particle is re-proposed from its previous state
    (``move(t, x_prev)``) until accepted. The accepted particle's weight becomes
    max(w, c)·r̂, where r̂ estimates the acceptance probability r_c(x_prev) without bias: each
    particle keeps proposing until its second acceptance (n trials in all) and r̂ = 1/(n − 1)
    (Haldane's negative-binomial estimator), so weights and evidence stay unbiased. The threshold
    c is ``exp(log_c)`` if given, else the ``quantile`` of the group's incremental weights.
    ``max_rounds`` bounds the proposals per step; particles still short of two acceptances then
    get a biased r̂ (one acceptance: 1/n) or weight zero (none), with a ``RuntimeWarning``.
    """

    quantile: float = 0.5
    log_c: float | None = None
    max_rounds: int = 64

    def __post_init__(self):
        if self.log_c is None and not 0.0 <= self.quantile <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {self.quantile}")
        if self.log_c is not None and not math.isfinite(self.log_c):
            raise ValueError(f"log_c must be a finite number or None, got {self.log_c}")
        if isinstance(self.max_rounds, bool) or not isinstance(self.max_rounds, int) or self.max_rounds < 2:
            raise ValueError(f"max_rounds must be an int >= 2, got {self.max_rounds!r}")


def apply_rejection_control(model, t: int, x_prev: State, x_new: State, inc: Tensor, rc: RejectionControl,
                            generator, rc_generator):
    """Apply :class:`RejectionControl` to step t; returns (state, incremental log-weight, accept rate (G,))."""
    G, K = inc.shape
    if rc.log_c is not None:
        log_c = torch.full((G, 1), float(rc.log_c), dtype=inc.dtype, device=inc.device)
    else:
        finite = torch.where(torch.isfinite(inc), inc, torch.full_like(inc, math.nan))
        log_c = torch.nanquantile(finite, rc.quantile, dim=1, keepdim=True)
        log_c = torch.nan_to_num(log_c, nan=0.0)
    count = torch.zeros(G, K, dtype=torch.long, device=inc.device)
    trials = torch.zeros_like(count)
    keep_x, keep_inc = x_new, inc.clone()
    cand_x, cand_inc = x_new, inc
    per_group = not isinstance(generator, torch.Generator)
    rows = torch.arange(G, device=inc.device)
    for r in range(rc.max_rounds):
        if r > 0 and per_group:
            # Per-group streams: only the groups still waiting propose and draw, so a group's output
            # does not depend on the others (nor on how many groups run together).
            rows = torch.nonzero((count < 2).any(1)).flatten()
            sub = [int(g) for g in rows]
            part_x = model.move(t, take_groups(x_prev, rows), [generator[g] for g in sub])
            part_inc = model.log_potential(t, take_groups(x_prev, rows), part_x).to(inc.dtype)
            cand_x, cand_inc = put_groups(cand_x, rows, part_x), cand_inc.index_put((rows,), part_inc)
            u_rows = _rng.rand((len(sub), K), [rc_generator[g] for g in sub], dtype=inc.dtype, device=inc.device)
            u = torch.ones(G, K, dtype=inc.dtype, device=inc.device).index_put((rows,), u_rows)
        else:
            if r > 0:
                cand_x = model.move(t, x_prev, generator)
                cand_inc = model.log_potential(t, x_prev, cand_x).to(inc.dtype)
            u = _rng.rand((G, K), rc_generator, dtype=inc.dtype, device=inc.device)
        accept = torch.log(u) < cand_inc - log_c
        active = count < 2
        if r > 0 and per_group:
            active = active & torch.zeros(G, 1, dtype=torch.bool, device=inc.device).index_fill(0, rows, True)
        trials = trials + active.long()
        first = accept & active & (count == 0)
        keep_x = select_particles(first, cand_x, keep_x)
        keep_inc = torch.where(first, cand_inc, keep_inc)
        count = count + (accept & active).long()
        if bool((count >= 2).all()):
            break
    if bool((count < 2).any()):
        warnings.warn(
            f"rejection control at step {t}: {int((count < 2).sum())} particle(s) did not reach two "
            f"acceptances in max_rounds={rc.max_rounds}; their weights are biased (one acceptance) "
            "or zero (none). Raise max_rounds or lower the threshold.",
            RuntimeWarning,
            stacklevel=4,
        )
    log_r = torch.where(count >= 2, -torch.log((trials - 1).clamp(min=1).to(inc.dtype)),
                        -torch.log(trials.clamp(min=1).to(inc.dtype)))
    new_inc = torch.maximum(keep_inc, log_c) + log_r
    new_inc = torch.where(count > 0, new_inc, torch.full_like(new_inc, -math.inf))
    rate = count.sum(1).to(inc.dtype) / trials.sum(1).clamp(min=1).to(inc.dtype)
    return keep_x, new_inc, rate


def take_groups(x: State, rows: Tensor) -> State:
    """The groups ``rows`` of a (nested) state: ``x[rows]`` for every entry."""
    if isinstance(x, Mapping):
        return {k: take_groups(v, rows) for k, v in x.items()}
    return None if x is None else x[rows]


def put_groups(full: State, rows: Tensor, part: State) -> State:
    """``full`` with its groups ``rows`` replaced by ``part`` (a new state; ``full`` is not changed)."""
    if isinstance(full, Mapping):
        return {k: put_groups(full[k], rows, part[k]) for k in full}
    return None if full is None else full.index_put((rows,), part)


def select_particles(mask: Tensor, a: State, b: State) -> State:
    """Per-particle select between two states (``mask : (G, K)``): ``a`` where True, else ``b``.

    States are tensors ``(G, K, ...)`` or (nested) dicts of them; ``None`` entries stay ``None``.
    """
    if isinstance(a, Mapping):
        return {k: select_particles(mask, a[k], b[k]) for k in a}
    if a is None:
        return None
    return torch.where(mask.reshape(mask.shape + (1,) * (a.dim() - 2)), a, b)
