"""Selection baselines: best-of-N and the discriminator select ("D-Select") of Liu et al. (CVPR 2024).

Best-of-N runs K independent base-sampler trajectories per output (no resampling, no weights on
the way) and keeps the one with the highest score. ``score(x, **cond) -> (N,)`` may be any
verifier; without it the score is the discriminator's ℓ(x, ``final_sigma``) — that is the
paper's "D-Select" baseline (:func:`discriminator_select`), i.e. the particle filter without its
resampling events. It spends the same network budget as a particle filter with the same K, which
is how the paper compares them (NFE = K × per-particle NFE).

The base sampler is EDM Heun with the churn knobs (``sampler="edm"``, NFE 2N − 1 per particle) or
the Restart sampler (``sampler="restart"``, the paper's main setting; NFE
:func:`~smcdiff.kernels.restart.restart_nfe`). Particle k of group g uses the same noise as in
:func:`~smcdiff.methods.particle_filter` with resampling switched off, so K = 1 is
the base sampler itself.

    >>> import torch
    >>> from smcdiff.kernels import karras_sigmas
    >>> from smcdiff.methods import best_of_n, discriminator_select
    >>> from smcdiff.models.pairs import mixture_pair_1d as pair_1d
    >>> data, model, log_ratio = pair_1d()
    >>> res = discriminator_select(model.denoise, karras_sigmas(18), log_ratio=log_ratio, num_samples=500,
    ...                            shape=(1,), generator=torch.Generator().manual_seed(0), num_particles=4)
    >>> res.nfe, res.disc_calls                        # 4 × 35 network calls, 4 discriminator calls per output
    (140.0, 4.0)
    >>> res = best_of_n(model.denoise, karras_sigmas(18), score=lambda x: -x[:, 0].abs(), num_samples=500,
    ...                 shape=(1,), generator=torch.Generator().manual_seed(0))   # the sample nearest 0

As a composition (:func:`smcdiff.sample`): the base kernel, no resampling, the score as a potential
evaluated at the last step only, and the final choice "argmax" (never a NaN: a NaN score raises,
naming the step; ties go to the lowest particle index).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from smcdiff.checks import check_size
from smcdiff.kernels.counting import CallCounter
from smcdiff.methods.base import (
    as_method_result,
    check_callable,
    initial_latents,
    one_value_per_sample,
    per_group_cond,
    validate_common,
)
from smcdiff.methods.particle_filtering import (
    LogRatioPotential,
    check_final_sigma,
    particle_kernel,
)
from smcdiff.results import Result
from smcdiff.sampling import sample
from smcdiff.types import Denoiser, GeneratorSpec, LogRatio, Tensor

__all__ = ["best_of_n", "discriminator_select"]


class _Score:
    """V(x, σ, x̂0) = score(x, **cond): a verifier of the final sample."""

    name = "score"

    def __init__(self, score):
        self.score = score

    def __call__(self, x, sigma, x0_hat, **cond) -> Tensor:
        return one_value_per_sample("score", self.score(x, **cond), x.shape[0])


def best_of_n(denoiser: Denoiser, sigmas, *, log_ratio: LogRatio | None = None, num_samples: int, shape,
              generator: GeneratorSpec, x_init=None, num_particles: int = 4, score=None, sampler: str = "edm",
              restart=None, S_churn: float = 0.0, S_min: float = 0.0, S_max: float = math.inf, S_noise: float = 1.0,
              restart_gamma: float = 0.05, final_sigma: float = 1e-4, cond: Mapping[str, Tensor] | None = None,
              progress: bool = False) -> Result:
    """K = ``num_particles`` independent base samples per output; return the highest-scoring one.

    Scores: ``score(x, **cond) -> (N,)`` if given, else ``log_ratio(x, final_sigma, **cond)``
    (one of the two is required). ``x_init : (num_samples, K, *shape)``; ``cond`` tensors
    ``(num_samples, K, ...)``. Returns the :class:`~smcdiff.results.Result` with ``x :
    (num_samples, *shape)``, ``particles (num_samples, K, *shape)``, ``log_weights (num_samples, K)``
    = the scores (for D-Select, ℓ at ``final_sigma``: the particles' importance log-weights w.r.t.
    the data), ``nfe`` = K × per-particle NFE, ``disc_calls`` = K (score / discriminator calls per
    output), and ``diagnostics["selected"] (num_samples,)``, ``diagnostics["scores"]``.
    """
    sigmas, shape = validate_common(sigmas, num_samples, shape, generator)
    if score is None and log_ratio is None:
        raise ValueError("best_of_n needs score=callable(x, **cond) -> (N,) or log_ratio=callable(x, sigma, **cond)")
    check_callable("score", score, "score(x, **cond) -> (N,)", required=False)
    check_callable("log_ratio", log_ratio, "log_ratio(x, sigma, **cond) -> (N,)", required=False)
    final_sigma = check_final_sigma(final_sigma)
    G, K = num_samples, check_size("num_particles (K)", num_particles)
    # Kernel: the base sampler, K independent runs per output (no events, no resampling).
    kernel, _ = particle_kernel(sigmas, sampler, restart=restart, S_churn=S_churn, S_min=S_min, S_max=S_max,
                                S_noise=S_noise, restart_gamma=restart_gamma, with_events=False)
    # Potential: the score of the final sample, at the last step only.
    S = CallCounter(score if score is not None else log_ratio)
    potential = _Score(S) if score is not None else LogRatioPotential(S, final_sigma)
    T = kernel.num_steps(sigmas) if hasattr(kernel, "num_steps") else len(sigmas) - 1
    res = sample(denoiser, sigmas, kernel, potential, None, G, K, shape, generator,
                 initial_latents(x_init, (G, K), shape, generator), potential_steps={T - 1}, final="argmax",
                 cond=per_group_cond(cond, G, K, particles=True), progress=progress)
    # Final choice: the highest score.
    return as_method_result(res, G, S, selected=res.selected, scores=res.potential,
                            cond=res.diagnostics["state"]["cond"])


def discriminator_select(denoiser: Denoiser, sigmas, *, log_ratio: LogRatio | None = None, num_samples: int, shape,
                         generator: GeneratorSpec, x_init=None, num_particles: int = 4, **params) -> Result:
    """The paper's "D-Select": :func:`best_of_n` scored by the discriminator's ℓ at ``final_sigma``.

    Takes the keywords of :func:`best_of_n` except ``score``.
    """
    if log_ratio is None:
        raise ValueError("discriminator_select needs log_ratio=callable(x, sigma, **cond) -> (N,)")
    if "score" in params:
        raise TypeError("discriminator_select scores with log_ratio; use best_of_n(score=...) for another score")
    return best_of_n(denoiser, sigmas, log_ratio=log_ratio, num_samples=num_samples, shape=shape,
                     generator=generator, x_init=x_init, num_particles=num_particles, **params)
