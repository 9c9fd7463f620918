"""Inference-time search over noises (Ma et al. 2025): random search, zero-order search, search over paths.

**Target.** None in the sampling sense: each mode *searches* for a sample with a high ``reward``
and returns the best one found — **biased** towards the reward's mode (and prone to "verifier
hacking": report other metrics too). Use it when the goal is the best sample per budget, not
samples of ``p·exp r``.

* ``mode="random"`` — random search = best-of-N: ``rounds × K`` fresh noises, each sampled to
  σ = 0, the best reward kept. (TTS draws 2^r noises in round r; here every round draws K.)
* ``mode="zero_order"`` — a pivot noise ``n``; each round samples ``K`` neighbours at cosine
  similarity exactly ``threshold`` with ``‖n′‖ = ‖n‖`` (``n′ = ‖n‖(c·u + √(1 − c²)·w)``, ``u =
  n/‖n‖``, ``w`` a random unit vector ⊥ u); the best neighbour becomes the pivot if it beats it,
  else the round is rejected and a fresh noise becomes the pivot. The best sample ever seen is
  returned. A deterministic kernel makes the noise → sample map a function (the default, EDM Heun).
* ``mode="paths"`` — search over paths: ``K·branch`` trajectories of a stochastic kernel; every
  ``interval`` steps each group keeps its ``K`` best by ``r(x̂0)`` (truncation selection) and
  copies each ``branch`` times; the best final reward is returned. Our reading of Ma et al.'s
  "search over paths" (its Δf/Δb re-noising details are unverified, REFERENCE-STEERING §B6): a
  greedy beam search — one :func:`smcdiff.sample` call whose resampling scheme is
  :func:`truncation`.

**Cost.** ``rounds·K`` samples for random and zero-order search (a rejected round's fresh pivot is
not sampled: any neighbour beats an unscored pivot), ``K·branch`` trajectories for paths; one
reward call per sample (paths: one per trajectory and checkpoint). No gradients.

    >>> import torch, smcdiff
    >>> from smcdiff.models.tilted import example_2d
    >>> tilt = example_2d("linear")
    >>> res = noise_search(tilt.prior.denoise, smcdiff.karras_sigmas(8), reward=tilt.reward, num_samples=3,
    ...                    shape=(2,), generator=torch.Generator().manual_seed(0), num_particles=4,
    ...                    mode="zero_order", rounds=3)
    >>> res.x.shape, res.nfe, res.disc_calls              # 12 samples of 15 NFE (Heun), 12 rewards
    (torch.Size([3, 2]), 180.0, 12.0)
"""

from __future__ import annotations

import math

import torch

from smcdiff import _rng
from smcdiff.checks import check_size
from smcdiff.kernels import EDMHeun, EulerMaruyama
from smcdiff.kernels.counting import CallCounter
from smcdiff.methods.base import check_callable, validate_common
from smcdiff.resampling import Resampler
from smcdiff.resampling import ess as ess_of
from smcdiff.results import Result, choose_final
from smcdiff.sampling import sample
from smcdiff.weights.steering import RewardTwist, TwistPotential

__all__ = ["MODES", "neighbours", "noise_search", "truncation"]

MODES = ("random", "zero_order", "paths")


def neighbours(pivot: torch.Tensor, num: int, threshold: float, generator) -> torch.Tensor:
    """``num`` noises at cosine ``threshold`` from ``pivot : (G, *shape)`` with its norm → ``(G, num, *shape)``."""
    G = pivot.shape[0]
    p = pivot.reshape(G, 1, -1)
    norm = p.norm(dim=2, keepdim=True)
    u = p / norm
    z = _rng.randn((G, num, p.shape[2]), generator)
    w = z - (z * u).sum(2, keepdim=True) * u
    w = w / w.norm(dim=2, keepdim=True)
    return (norm * (threshold * u + math.sqrt(1.0 - threshold**2) * w)).reshape((G, num) + pivot.shape[1:])


def _scored(denoiser, sigmas, kernel, R, latents, generator):
    """Sample from ``latents : (G, K, *shape)`` to σ = 0 and score with the reward → ``(x, scores, nfe)``."""
    G, K = latents.shape[:2]
    res = sample(denoiser, sigmas, kernel, TwistPotential(RewardTwist(R), name="reward"), None, G, K,
                 tuple(latents.shape[2:]), generator, latents, potential_steps={len(sigmas) - 2}, final="all")
    return res.particles, res.potential, res.nfe_total


def truncation(keep: int, branch: int):
    """Truncation selection as a resampling scheme: each group's ``keep`` particles of highest
    log-weight, each copied ``branch`` times (deterministic; ``(G, keep·branch)`` ancestors)."""

    def scheme(log_weights, generator, num=None):
        return log_weights.topk(keep, dim=1).indices.repeat_interleave(branch, dim=1)

    scheme.__name__ = f"truncation({keep}x{branch})"
    return scheme


def _paths(denoiser, sigmas, kernel, R, G, K, branch, interval, shape, generator):
    """Search over paths as one composition: ``K·branch`` trajectories, the reward of x̂0 as an
    incremental potential at every ``interval``-th step (after a copy all weights are equal, so the
    weight is the current reward), truncation selection there, the final rewards at the end."""
    T = len(sigmas) - 1
    checkpoints = set(range(interval - 1, T - 1, interval))
    res = sample(denoiser, sigmas, kernel, TwistPotential(RewardTwist(R), name="reward"),
                 Resampler(truncation(K, branch), 1.0), G, K * branch, shape, generator,
                 potential_form="incremental", potential_steps=checkpoints | {T - 1}, resample_steps=checkpoints,
                 final="all")
    return res.particles, res.potential, res.nfe_total


def noise_search(denoiser, sigmas, *, reward, num_samples: int, shape, generator, num_particles: int = 4,
                 mode: str = "random", rounds: int = 4, threshold: float = 0.95, branch: int = 4,
                 interval: int | None = None, kernel=None) -> Result:
    """Random, zero-order or path search (see the module doc); ``num_particles`` candidates per round
    (paths: kept per checkpoint). Returns ``x : (num_samples, *shape)`` the best found,
    ``particles``/``log_weights`` every candidate scored (paths: the final trajectories) and its
    reward, ``selected`` the best one's index, ``diagnostics["best"] : (rounds, num_samples)`` the
    best reward so far after each round."""
    sigmas, shape = validate_common(sigmas, num_samples, shape, generator)
    G, K, rounds = num_samples, check_size("num_particles", num_particles), check_size("rounds", rounds)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    R = CallCounter(check_callable("reward", reward, "reward(x0, **cond) -> (N,)"))
    trace, seen, scored = [], [], []
    if mode == "paths":
        interval = check_size("interval", interval or max(1, (len(sigmas) - 1) // 4))
        x, scores, nfe = _paths(denoiser, sigmas, kernel or EulerMaruyama(), R, G, K, check_size("branch", branch),
                                interval, shape, generator)
        seen, scored = [x], [scores]
        trace.append(scores.max(1).values)
    else:
        kernel, nfe, rows = kernel or EDMHeun(), 0, torch.arange(G)
        pivot, pivot_r = _rng.randn((G,) + shape, generator), torch.full((G,), -math.inf, dtype=torch.float64)
        for _ in range(rounds):
            # Candidates: fresh noises (random) or the pivot's neighbours (zero-order).
            z = _rng.randn((G, K) + shape, generator) if mode == "random" else neighbours(pivot, K, threshold, generator)
            x, scores, calls = _scored(denoiser, sigmas, kernel, R, z, generator)
            nfe += calls
            seen.append(x)
            scored.append(scores)
            trace.append(torch.cat(scored, 1).max(1).values)
            # Zero-order: move the pivot on improvement, else start again from a fresh noise.
            top = scores.argmax(1)
            improved = scores[rows, top] > pivot_r
            fresh = _rng.randn((G,) + shape, generator)
            pivot = torch.where(improved.reshape((G,) + (1,) * len(shape)), z[rows, top], fresh)
            pivot_r = torch.where(improved, scores[rows, top], -math.inf)
    # Every candidate evaluated, its reward, and the best one.
    particles, scores = torch.cat(seen, 1), torch.cat(scored, 1)
    n = scores.shape[1]
    x, _, best = choose_final("argmax", particles, scores, scores, generator)
    return Result(x=x, log_weights=scores, log_evidence=torch.full((G,), math.nan, dtype=torch.float64),
                  ess=ess_of(scores)[None], resampled=torch.zeros(1, G, dtype=torch.bool),
                  ancestors=torch.arange(n).expand(1, G, n), log_evidence_increments=torch.zeros(1, G, dtype=torch.float64),
                  particles=particles, selected=best, potential=scores, sigmas=sigmas[[0, -1]], nfe=nfe / G,
                  nfe_total=nfe, disc_calls=R.count / G, diagnostics={"best": torch.stack(trace), "mode": mode})
