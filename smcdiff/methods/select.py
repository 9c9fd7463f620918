"""Selection baselines: best-of-N and the discriminator select ("D-Select") of Liu et al. (CVPR 2024).

Best-of-N runs K independent base-sampler trajectories per output (no resampling, no weights on
the way) and keeps the one with the highest score. ``score(x, **cond) -> (N,)`` may be any
verifier; without it the score is the discriminator's ℓ(x, ``final_sigma``) — that is the
paper's "D-Select" baseline (:func:`discriminator_select`), i.e. the particle filter without its
resampling events. It spends the same network budget as a particle filter with the same K, which
is how the paper compares them (NFE = K × per-particle NFE).

The base sampler is EDM Heun with the churn knobs (``sampler="edm"``, NFE 2N − 1 per particle) or
the Restart sampler (``sampler="restart"``, the paper's main setting; NFE
:func:`~smcdiff.methods.restart.restart_nfe`). Particle k of group g uses the same noise as in
:func:`~smcdiff.methods.particle_filter.particle_filter` with resampling switched off, so K = 1 is
the base sampler itself.

    >>> import torch
    >>> from smcdiff.kernels import karras_sigmas
    >>> from smcdiff.methods.select import best_of_n, discriminator_select
    >>> from smcdiff.models.pairs import mixture_pair_1d as pair_1d
    >>> data, model, log_ratio = pair_1d()
    >>> res = discriminator_select(model.denoise, karras_sigmas(18), log_ratio=log_ratio, num_samples=500,
    ...                            shape=(1,), generator=torch.Generator().manual_seed(0), num_particles=4)
    >>> res.nfe, res.disc_calls                        # 4 × 35 network calls, 4 discriminator calls per output
    (140.0, 4.0)
    >>> res = best_of_n(model.denoise, karras_sigmas(18), score=lambda x: -x[:, 0].abs(), num_samples=500,
    ...                 shape=(1,), generator=torch.Generator().manual_seed(0))   # the sample nearest 0
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from smcdiff.methods.base import CallCounter, MethodResult
from smcdiff.methods.particle_filter import check_final_sigma, final_log_ratio, pick, run_particles
from smcdiff.types import Tensor

__all__ = ["best_of_n", "discriminator_select"]


def best_of_n(denoiser, sigmas, *, log_ratio=None, num_samples: int, shape, generator, x_init=None,
              num_particles: int = 4, score=None, sampler: str = "edm", restart=None, S_churn: float = 0.0,
              S_min: float = 0.0, S_max: float = math.inf, S_noise: float = 1.0, restart_gamma: float = 0.05,
              final_sigma: float = 1e-4, cond: Mapping[str, Tensor] | None = None,
              progress: bool = False) -> MethodResult:
    """K = ``num_particles`` independent base samples per output; return the highest-scoring one.

    Scores: ``score(x, **cond) -> (N,)`` if given, else ``log_ratio(x, final_sigma, **cond)``
    (one of the two is required). ``x_init : (num_samples, K, *shape)``; ``cond`` tensors
    ``(num_samples, K, ...)``. Returns ``MethodResult`` with ``x : (num_samples, *shape)``,
    ``particles (num_samples, K, *shape)``, ``log_weights (num_samples, K)`` = the scores (for
    D-Select, ℓ at ``final_sigma``: the particles' importance log-weights w.r.t. the data),
    ``nfe`` = K × per-particle NFE, ``disc_calls`` = K (score / discriminator calls per output), and
    ``diagnostics["selected"] (num_samples,)``.
    """
    if score is None and log_ratio is None:
        raise ValueError("best_of_n needs score=callable(x, **cond) -> (N,) or log_ratio=callable(x, sigma, **cond)")
    for name, fn in (("score", score), ("log_ratio", log_ratio)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    final_sigma = check_final_sigma(final_sigma)
    res, _, D, _, _, fcond = run_particles(
        denoiser, sigmas, log_ratio=None, num_samples=num_samples, shape=shape, generator=generator,
        x_init=x_init, num_particles=num_particles, sampler=sampler, resample_at=None, ess_threshold=None,
        scheme="multinomial", restart=restart, S_churn=S_churn, S_min=S_min, S_max=S_max, S_noise=S_noise,
        restart_gamma=restart_gamma, cond=cond, progress=progress, with_events=False)
    x = res.x["x"]
    G, K = x.shape[:2]
    if score is not None:
        S = CallCounter(score)
        flat = {k: v.reshape((G * K,) + tuple(v.shape[2:])) for k, v in fcond.items()}
        scores = S(x.reshape((G * K,) + tuple(x.shape[2:])), **flat)
        if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (G * K,):
            got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(f"score must return one value per sample, shape ({G * K},), got {got}")
        scores = scores.to(torch.float64).reshape(G, K)
    else:
        S = CallCounter(log_ratio)
        scores = final_log_ratio(S, x, final_sigma, fcond)
    chosen = scores.argmax(dim=1)
    return MethodResult(x=pick(x, chosen), nfe=D.count / G, disc_calls=S.count / G, particles=x,
                        log_weights=scores, diagnostics={"selected": chosen, "scores": scores, "cond": fcond})


def discriminator_select(denoiser, sigmas, *, log_ratio=None, num_samples: int, shape, generator, x_init=None,
                         num_particles: int = 4, **params) -> MethodResult:
    """The paper's "D-Select": :func:`best_of_n` scored by the discriminator's ℓ at ``final_sigma``.

    Takes the keywords of :func:`best_of_n` except ``score``.
    """
    if log_ratio is None:
        raise ValueError("discriminator_select needs log_ratio=callable(x, sigma, **cond) -> (N,)")
    if "score" in params:
        raise TypeError("discriminator_select scores with log_ratio; use best_of_n(score=...) for another score")
    return best_of_n(denoiser, sigmas, log_ratio=log_ratio, num_samples=num_samples, shape=shape,
                     generator=generator, x_init=x_init, num_particles=num_particles, **params)
