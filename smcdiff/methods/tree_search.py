"""Diffusion Tree Sampling (DTS) and its greedy search mode DTS* (Jain et al. 2025).

**Target.** ``π(x0) ∝ p(x0)·exp r(x0)`` (any λ folded into ``reward``). **How.** Each output is
one tree over the denoising chain, grown by ``num_particles`` iterations. A node holds a state
``x_j`` at ``σ_j`` and a soft-value estimate ``v̂ ≈ log E[exp r(x0) | x_j]``; the root is a dummy
whose children are prior draws ``σ_0·z``. One iteration:

1. *selection* — from the root, while the node is full (``max_children`` children; nodes one
   step before σ = 0 take one, the last step being deterministic), go to a child drawn
   ``∝ exp v̂`` (DTS, ``selection="boltzmann"``) or to the best child (DTS*, ``"greedy"``),
   among the children whose subtree still has room;
2. *expansion and rollout* — draw a new child with the sampler's kernel and roll it out to σ = 0,
   every state becoming a node;
3. *backup* — the leaf's value is ``r(x0)``; every node on the path takes the soft Bellman value
   ``v̂ = log mean_children exp v̂_child`` (children are i.i.d. draws of ``p(x_{j+1} | x_j)``).

**Output.** The tree is a weighted sample: leaf ``ℓ`` has weight ``exp r(ℓ)·Π_u 1/n_u`` (``n_u``
the number of children of each node above it), these weights sum to ``exp v̂_root = Ẑ``, and
drawing a leaf with them is the same as descending the tree ``∝ exp v̂``. So DTS returns
``particles`` (the leaves), their ``log_weights``, ``log_evidence = v̂_root`` and, with
``final="weighted"``, one draw. These weights are exact (``Ẑ`` unbiased) when the tree's shape
does not depend on the values — ``selection="uniform"``, a nested importance sampler — and once
the tree is complete. With Boltzmann selection the number of children a node gets depends on its
children's values (a node whose first rollout was lucky is revisited and its estimate diluted; an
unlucky one is left alone), which biases ``v̂`` downwards at finite budgets: on the 2-D linear
tilt with 32 steps and 8–64 rollouts the weighted mean went *further* from the target as the
budget grew. DTS is consistent only as every node's children grow without bound. DTS*
(``selection="greedy"``, ``final="argmax"``) returns the best leaf found: a search, **biased**
towards the reward's mode. (The paper's exact estimator, child cap and final draw were not available to
us; this is our reading of it, REFERENCE-STEERING §B5.)

**Cost.** Every edge simulated counts: at most ``num_particles`` × the base NFE per output (a
rollout from depth j costs N − j steps), plus ``num_particles`` reward calls. No gradients.
**When.** A budget of many rollouts per output, a cheap reward, and a sampler whose early steps
decide the reward (the tree re-uses good prefixes); a particle filter spreads the same budget
over K parallel trajectories instead.

    >>> import torch, smcdiff
    >>> from smcdiff.models.tilted import example_2d
    >>> tilt = example_2d("linear")
    >>> res = dts(tilt.prior.denoise, smcdiff.karras_sigmas(16), reward=tilt.reward, num_samples=8,
    ...           shape=(2,), generator=torch.Generator().manual_seed(0), num_particles=8)
    >>> res.x.shape, res.particles.shape, res.log_evidence.shape
    (torch.Size([8, 2]), torch.Size([8, 8, 2]), torch.Size([8]))
"""

from __future__ import annotations

import math

import torch

from smcdiff import _rng
from smcdiff.kernels import EulerMaruyama
from smcdiff.kernels.counting import CallCounter
from smcdiff.methods.base import check_callable, validate_common
from smcdiff.resampling import ess as ess_of
from smcdiff.results import Result, choose_final

__all__ = ["SELECTIONS", "dts"]

#: Child selection rules: DTS, DTS*, and the non-adaptive tree (an unbiased nested importance sampler).
SELECTIONS = ("boltzmann", "greedy", "uniform")


def _subset(generator, idx):
    return generator if isinstance(generator, torch.Generator) else [generator[i] for i in idx.tolist()]


def dts(denoiser, sigmas, *, reward, num_samples: int, shape, generator, num_particles: int = 16,
        max_children: int = 4, selection: str = "boltzmann", kernel=None, final: str | None = None) -> Result:
    """DTS (``selection="boltzmann"``), DTS* (``"greedy"``) or a value-blind tree (``"uniform"``); one
    tree per output (see the module doc).

    ``num_particles`` iterations (rollouts) per tree; ``kernel`` a stochastic kernel (default
    :class:`~smcdiff.kernels.EulerMaruyama`); ``final`` "weighted" (default for DTS), "argmax"
    (the best leaf, default for DTS*) or "all". Iterations that find the tree complete do nothing. Returns a :class:`~smcdiff.results.Result`:
    ``x : (num_samples, *shape)``, ``particles : (num_samples, num_particles, *shape)`` the leaves
    (``log_weights`` −inf where an iteration found its path full and added no leaf),
    ``log_evidence`` the root values, ``nfe`` and ``disc_calls`` (reward calls) per output.
    """
    sigmas, shape = validate_common(sigmas, num_samples, shape)
    if not isinstance(num_particles, int) or num_particles < 1 or not isinstance(max_children, int) or max_children < 1:
        raise ValueError(f"num_particles and max_children must be ints >= 1, got {num_particles!r}, {max_children!r}")
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    final = final or ("argmax" if selection == "greedy" else "weighted")
    _rng.check_generator(generator, None if isinstance(generator, torch.Generator) else num_samples)
    net, R = CallCounter(denoiser), CallCounter(check_callable("reward", reward, "reward(x0) -> (N,)"))
    kernel = EulerMaruyama() if kernel is None else kernel
    T, N, I, B = num_samples, len(sigmas) - 1, num_particles, max_children
    M = 1 + I * (N + 1)  # root + one full rollout per iteration
    f64, rows = torch.float64, torch.arange(num_samples)
    xs = torch.zeros((T, M) + shape, dtype=f64)
    depth = torch.full((T, M), -1, dtype=torch.long)  # root at depth -1, leaves at depth N
    parent = torch.zeros((T, M), dtype=torch.long)
    children = torch.full((T, M, B), -1, dtype=torch.long)
    nchild = torch.zeros((T, M), dtype=torch.long)
    value = torch.full((T, M), -math.inf, dtype=f64)
    size = torch.ones(T, dtype=torch.long)
    leaves = torch.full((T, I), -1, dtype=torch.long)
    done = torch.zeros((T, M), dtype=torch.bool)  # subtree complete: nothing left to expand below
    choose = _rng.derive(generator, "smcdiff.dts.select")
    cap = lambda d: torch.where(d == N - 1, 1, B)
    for it in range(I):
        # Selection: descend while the node is full, among children with room below; stop at a
        # node to expand.
        node = torch.zeros(T, dtype=torch.long)
        for _ in range(N + 1):
            d = depth[rows, node]
            go = (nchild[rows, node] >= cap(d)) & (d < N) & ~done[rows, node]
            if not bool(go.any()):
                break
            kids = children[rows, node]  # (T, B)
            open_ = (kids >= 0) & ~done[rows[:, None], kids.clamp_min(0)]
            v = torch.where(open_, value[rows[:, None], kids.clamp_min(0)], -math.inf)
            if selection == "greedy":
                pick = v.argmax(1)
            else:
                if selection == "uniform":
                    v = torch.where(open_, 0.0, -math.inf)
                u = _rng.rand((T, 1), choose)
                cdf = torch.softmax(torch.where(go[:, None], v, 0.0), 1).cumsum(1)
                pick = torch.searchsorted(cdf, u).clamp_max(B - 1)[:, 0]
            node = torch.where(go, kids[rows, pick], node)
        start = depth[rows, node]
        grow = (start < N) & ~done[rows, node]
        # Expansion and rollout to σ = 0, every state a node.
        x = torch.zeros((T,) + shape, dtype=f64)
        x[grow] = xs[rows, node][grow]
        tip = node.clone()
        for j in range(-1, N):
            act = torch.nonzero(grow & (start <= j)).flatten()
            if act.numel() == 0:
                continue
            if j == -1:  # new prior draws under the root
                x[act] = sigmas[0] * _rng.randn((act.numel(),) + shape, _subset(generator, act))
            else:
                x[act] = kernel(net, x[act], sigmas, j, _subset(generator, act)).x
            new = size[act]
            xs[act, new], depth[act, new], parent[act, new] = x[act], j + 1, tip[act]
            slot = nchild[act, tip[act]]
            children[act, tip[act], slot] = new
            nchild[act, tip[act]] += 1
            tip[act], size[act] = new, new + 1
        # Backup: the leaf's reward, then soft Bellman values up to the root.
        act = torch.nonzero(grow).flatten()
        if act.numel():
            r = R(x[act]).to(f64)
            if tuple(r.shape) != (act.numel(),):
                raise ValueError(f"reward must return one value per sample, shape ({act.numel()},), got {tuple(r.shape)}")
            value[act, tip[act]], done[act, tip[act]] = r, True
            leaves[act, it] = tip[act]
            up = parent[act, tip[act]]
            for _ in range(N + 1):
                kids = children[act, up]
                v = torch.where(kids >= 0, value[act[:, None], kids.clamp_min(0)], -math.inf)
                value[act, up] = v.logsumexp(1) - nchild[act, up].to(f64).log()
                kids_done = ((kids < 0) | done[act[:, None], kids.clamp_min(0)]).all(1)
                done[act, up] = (nchild[act, up] >= cap(depth[act, up])) & kids_done
                if bool((up == 0).all()):
                    break
                up = torch.where(up == 0, up, parent[act, up])
    # The tree as a weighted sample: leaf weight exp r · Π 1/n_u over the nodes above it.
    found = leaves >= 0
    node = leaves.clamp_min(0)
    scores = torch.where(found, value[rows[:, None], node], -math.inf)  # r(leaf)
    log_w, active = scores.clone(), found.clone()
    while bool(active.any()):
        node = parent[rows[:, None], node]
        log_w -= torch.where(active, nchild[rows[:, None], node].to(f64).log(), 0.0)
        active &= node != 0
    particles = xs[rows[:, None], leaves.clamp_min(0)]
    out, log_w_out, selected = choose_final(final, particles, log_w, scores, generator)
    log_z = value[:, 0]
    one = lambda t: t[None]
    return Result(
        x=out, log_weights=log_w_out, log_evidence=log_z, ess=one(ess_of(log_w)),
        resampled=torch.zeros(1, T, dtype=torch.bool), ancestors=one(torch.arange(I).expand(T, I)),
        log_evidence_increments=one(log_z), particles=particles, selected=selected, potential=scores,
        sigmas=sigmas[[0, -1]], nfe=net.count / T, nfe_total=net.count, disc_calls=R.count / T,
        diagnostics={"num_nodes": size, "leaves": found.sum(1), "selection": selection},
    )
