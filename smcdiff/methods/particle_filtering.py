"""Particle-filter resampling of Liu, Zhang, Jaakkola & Chang, "Correcting Diffusion Generation
through Resampling" (CVPR 2024).

What and why. A diffusion model p^θ samples from a slightly wrong distribution. A discriminator
gives the log density ratio ℓ_σ(x) ≈ log q_σ(x)/p^θ_σ(x) between the noised data and model
marginals. Run K particles per output (one *group* per output sample); at a few noise levels σ
resample each group with weights r_σ(x)/r_σ'(ancestor) (σ' the previous resampling level), so that
particles where the model over-produces are dropped and those it under-produces are copied. At the
end every particle gets ℓ at σ = ``final_sigma`` and one particle per group is returned.

Mapping to the paper and its code (REFERENCE §5a, §5d):

* potential: log-weight increment ``ℓ_σ(x) − prev`` where ``prev`` is the ℓ its lineage had at the
  previous resampling event (0 at the start); ``prev`` travels with the particle through
  resampling, so a lineage's weights telescope to ℓ at the last event. All in log space.
* ``sampler="edm"``: EDM stochastic sampler (``S_churn, S_min, S_max, S_noise``); resampling at the
  start of every step i in ``resample_at`` on x at σ_i, and that step uses the maximal churn
  γ = √2 − 1 (t̂ = √2·σ_i) where ``S_min ≤ σ_i ≤ S_max``, to re-diversify the copies. The default
  ``resample_at`` is every 4th step from N/2 − 1 to N − 5 (:func:`default_resample_at`), which is
  the paper's FFHQ-64 schedule for N = 32 (15, 19, 23, 27); ImageNet-64 used
  :data:`IMAGENET64_EDM_RESAMPLE` with N = 64.
* ``sampler="restart"`` (the paper's main setting): the Restart sampler of
  :mod:`smcdiff.kernels.restart` (the kernel :class:`~smcdiff.kernels.Restart`); each restart repeat begins with resampling at the main-grid σ_j
  the interval is attached to (not at its t_min). The ImageNet config gives 11 events.
* final pick: ``select="argmax"`` returns, per group, the particle with the largest *absolute*
  final ℓ (the paper's choice); ``"weighted"`` draws one particle from the normalised final
  importance weights (an unbiased-in-the-limit draw from the corrected distribution).
* resampling: on a fixed schedule (the paper; ``ess_threshold=None``) every event resamples;
  with ``ess_threshold`` τ a group resamples at an event only when its ESS < τ·K (the skipped
  events keep their weights; nothing is dropped), and the forced churn then applies only to the
  groups that resampled.

Randomness. Sampler noise comes from ``generator`` (one, or one per output sample — EDM style:
a group's output then depends on its seed alone); resampling and the weighted final pick draw from
streams *derived* from it without consuming it. Hence **K = 1 is bit-identical to the base
sampler** (plain EDM Heun with the same churn knobs, or :func:`~smcdiff.methods.restart.restart_sampler`).
For the EDM variant this holds because the forced churn belongs to resampling: a group of one
particle never really resamples, so it gets no forced churn. (The reference code forces the churn
at those steps even with K = 1, so its K = 1 run is not the base sampler.)

Cost. ``nfe`` = all network evaluations / outputs = K × per-particle NFE (2N − 1 for EDM Heun,
:func:`~smcdiff.kernels.restart.restart_nfe` for Restart); ``disc_calls`` = K × (events + 1).

    import torch
    from smcdiff.kernels import karras_sigmas
    from smcdiff.methods import particle_filter
    from smcdiff.models.pairs import mixture_pair_1d as pair_1d

    data, model, log_ratio = pair_1d()          # data mixture, imperfect model, exact ℓ
    res = particle_filter(model.denoise, karras_sigmas(18), log_ratio=log_ratio, num_samples=2000,
                          shape=(1,), generator=torch.Generator().manual_seed(0), num_particles=4,
                          sampler="restart", select="weighted")
    data.responsibilities(res.x).mean(0)         # ≈ [0.65, 0.35]: toward the data's [0.7, 0.3]
                                                 # (the model gives [0.4, 0.6]; the gap left is the
                                                 # O(1/K) bias of one weighted draw from K particles)
    res.nfe, res.disc_calls                      # (396.0, 48.0): 4 × 99 and 4 × (11 events + 1)
    res.diagnostics["sigma"]                     # σ of the 11 resampling events

As a composition (:func:`smcdiff.sample`): kernel = EDM Heun with the forced churn
``resample_gamma = √2 − 1`` (or :class:`~smcdiff.kernels.Restart`); potential = ℓ at the noise level
reached, evaluated only at the events and at the end (σ = 0 read as ``final_sigma``), in difference
form; resampler = ``scheme`` on the event steps; final choice = arg-max of the final ℓ, or a
weighted draw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from smcdiff.checks import check_size
from smcdiff.kernels.counting import CallCounter
from smcdiff.kernels.edm import MAX_GAMMA, EDMHeun
from smcdiff.kernels.restart import IMAGENET64_RESTART, Restart
from smcdiff.methods.base import (
    as_method_result,
    check_callable,
    initial_latents,
    one_value_per_sample,
    per_group_cond,
    validate_common,
)
from smcdiff.resampling import Resampler, get_scheme
from smcdiff.results import Result
from smcdiff.sampling import sample
from smcdiff.types import Denoiser, GeneratorSpec, LogRatio, Tensor

__all__ = ["particle_filter", "default_resample_at", "particle_kernel", "LogRatioPotential", "check_final_sigma",
           "IMAGENET64_EDM_RESAMPLE", "FFHQ64_EDM_RESAMPLE", "SAMPLERS"]

#: The paper's EDM-variant resampling steps for ImageNet-64 (64 steps, S_churn 10, S_min 0.05, S_max 50).
IMAGENET64_EDM_RESAMPLE = (31, 35, 39, 43, 47, 51)
#: ... and for FFHQ-64 (32 steps, S_churn 2.5); equal to ``default_resample_at(32)``.
FFHQ64_EDM_RESAMPLE = (15, 19, 23, 27)

SAMPLERS = ("edm", "restart")
_SELECTS = ("argmax", "weighted")


def default_resample_at(num_steps: int) -> tuple[int, ...]:
    """Every 4th step from ``N//2 − 1`` up to ``N − 5`` (empty for N < 7)."""
    return tuple(range(num_steps // 2 - 1, num_steps - 4, 4)) if num_steps >= 4 else ()


class LogRatioPotential:
    """V(x, σ, x̂0) = ℓ(x, σ) of a discriminator, with σ = 0 (the end of a run) read as
    ``final_sigma`` (ℓ is undefined at σ = 0). Named ``"log_ratio"`` in the diagnostics."""

    name = "log_ratio"

    def __init__(self, log_ratio, final_sigma: float):
        self.log_ratio, self.final_sigma = log_ratio, final_sigma

    def __call__(self, x, sigma, x0_hat, **cond) -> Tensor:
        sigma = torch.where(sigma > 0, sigma, torch.full_like(sigma, self.final_sigma))
        return one_value_per_sample("log_ratio", self.log_ratio(x, sigma, **cond), x.shape[0])


def check_final_sigma(final_sigma) -> float:
    final_sigma = float(final_sigma)
    if not (math.isfinite(final_sigma) and final_sigma > 0):
        raise ValueError(f"final_sigma must be finite and > 0, got {final_sigma}")
    return final_sigma


def particle_kernel(sigmas: Tensor, sampler: str, *, resample_at=None, restart=None, S_churn=0.0, S_min=0.0,
                    S_max=math.inf, S_noise=1.0, restart_gamma=0.05, with_events: bool = True):
    """The particle filter's kernel and events: ``(kernel, {step t: main-grid index j of the event σ_j})``.

    ``sampler="edm"``: EDM Heun with the forced churn; an event after step i − 1 for each i in
    ``resample_at`` (default :func:`default_resample_at`). ``"restart"``: :class:`Restart`; an event
    before each restart repeat. ``with_events=False``: the plain base sampler (the selection baselines).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
    N = len(sigmas) - 1
    if sampler == "edm":
        if restart is not None:
            raise ValueError("restart applies to sampler='restart'; pass sampler='restart' to use restart intervals")
        if resample_at is None:
            resample_at = default_resample_at(N) if with_events else ()
        try:
            steps = sorted({int(i) for i in resample_at})
        except (TypeError, ValueError):
            raise ValueError(f"resample_at must be a collection of step indices, got {resample_at!r}") from None
        bad = [i for i in steps if not 1 <= i <= N - 1]
        if bad:
            raise ValueError(f"resample_at must lie in [1, {N - 1}] (resampling at the start of step i), got {bad}")
        forced = MAX_GAMMA if with_events else None
        return EDMHeun(S_churn, S_min, S_max, S_noise, resample_gamma=forced), {i - 1: i for i in steps}
    if resample_at is not None:
        raise ValueError("resample_at applies to sampler='edm'; with 'restart' the events are the restart repeats")
    kernel = Restart(EDMHeun(S_churn, S_min, S_max, S_noise), IMAGENET64_RESTART if restart is None else restart,
                     restart_gamma)
    return kernel, (kernel.repeat_starts(sigmas) if with_events else {})


def particle_filter(denoiser: Denoiser, sigmas, *, log_ratio: LogRatio | None = None, num_samples: int, shape,
                    generator: GeneratorSpec, x_init=None, num_particles: int = 4, sampler: str = "edm",
                    resample_at=None, ess_threshold: float | None = None, scheme="multinomial", restart=None,
                    S_churn: float = 0.0, S_min: float = 0.0, S_max: float = math.inf, S_noise: float = 1.0,
                    restart_gamma: float = 0.05, select: str = "argmax", final_sigma: float = 1e-4,
                    cond: Mapping[str, Tensor] | None = None, progress: bool = False) -> Result:
    """Liu et al.'s particle filter: ``num_samples`` groups × ``num_particles`` (K) particles.

    ``denoiser(x, sigma, **cond)``, ``log_ratio(x, sigma, **cond) -> (N,)`` (ℓ = log q_σ/p_σ),
    ``sigmas`` the main grid (e.g. ``karras_sigmas(18)`` for Restart, 32/64 steps for EDM);
    ``generator`` one or one per output; ``x_init : (num_samples, K, *shape)`` latents;
    ``cond`` tensors ``(num_samples, K, ...)`` (they follow their particle through resampling).
    ``sampler`` "edm" (events at the start of the steps ``resample_at``, default
    :func:`default_resample_at`) or "restart" (``restart`` a spec string or intervals, default
    :data:`~smcdiff.kernels.restart.IMAGENET64_RESTART`; events at each restart repeat).
    ``ess_threshold`` None resamples at every event; τ ∈ [0, 1] only where ESS < τ·K.
    ``scheme`` a resampling scheme name (the paper: multinomial). ``select`` "argmax" | "weighted".

    Returns the :class:`~smcdiff.results.Result` with ``x : (num_samples, *shape)``, ``particles :
    (num_samples, K, *shape)``, ``log_weights : (num_samples, K)`` the final importance log-weights
    (= running weight + ℓ(x, final_sigma) − prev), ``nfe``, ``disc_calls``, the SMC records and
    ``diagnostics``: per event (E events) ``sigma (E,)``, ``main_step (E,)``, ``ess (E, G)``,
    ``resampled (E, G)``, ``ancestors (E, G, K)``; ``final_log_ratio (G, K)``, ``prev (G, K)`` (ℓ
    of each lineage at its last event), ``log_evidence (G,)`` (estimate of log E[r_final] under the
    sampler), ``selected (G,)`` and ``cond`` (the final per-particle cond).
    """
    sigmas, shape = validate_common(sigmas, num_samples, shape, generator)
    if log_ratio is None:
        raise ValueError("particle_filter needs log_ratio=callable(x, sigma, **cond) -> (N,) (a discriminator)")
    check_callable("log_ratio", log_ratio, "log_ratio(x, sigma, **cond) -> (N,)")
    if select not in _SELECTS:
        raise ValueError(f"unknown select {select!r}; expected one of {_SELECTS}")
    final_sigma = check_final_sigma(final_sigma)
    if ess_threshold is not None and not 0.0 <= float(ess_threshold) <= 1.0:
        raise ValueError(f"ess_threshold must be None (fixed schedule) or in [0, 1], got {ess_threshold!r}")
    G, K = num_samples, check_size("num_particles (K)", num_particles)
    # Kernel: EDM Heun with the forced churn after resampling (or Restart); events: where to resample.
    kernel, events = particle_kernel(sigmas, sampler, resample_at=resample_at, restart=restart, S_churn=S_churn,
                                     S_min=S_min, S_max=S_max, S_noise=S_noise, restart_gamma=restart_gamma)
    # Potential: ℓ at each event and at the end; the weights telescope to ℓ(x, final_sigma).
    L = CallCounter(log_ratio)
    resampler = Resampler(get_scheme(scheme), 1.0 if ess_threshold is None else ess_threshold)
    T = kernel.num_steps(sigmas) if hasattr(kernel, "num_steps") else len(sigmas) - 1
    res = sample(denoiser, sigmas, kernel, LogRatioPotential(L, final_sigma), resampler, G, K, shape, generator,
                 initial_latents(x_init, (G, K), shape, generator), potential_steps=set(events) | {T - 1},
                 resample_steps=events, final=select, cond=per_group_cond(cond, G, K, particles=True),
                 progress=progress)
    # Final choice: the largest final ℓ (the paper), or one weighted draw.
    ev = sorted(events)
    state = res.diagnostics["state"]
    return as_method_result(
        res, G, L,
        sigma=torch.stack([sigmas[events[t]] for t in ev]) if ev else sigmas.new_zeros(0),
        main_step=torch.tensor([events[t] for t in ev], dtype=torch.long),
        ess=res.ess[ev], resampled=res.resampled[ev], ancestors=res.ancestors[ev],
        final_log_ratio=res.potential, prev=state["value_before"], log_evidence=res.log_evidence,
        selected=res.selected, cond=state["cond"], smc=res)
