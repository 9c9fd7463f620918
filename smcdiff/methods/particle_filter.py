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
  :mod:`smcdiff.methods.restart`; each restart repeat begins with resampling at the main-grid σ_j
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
:func:`~smcdiff.methods.restart.restart_nfe` for Restart); ``disc_calls`` = K × (events + 1).

    import torch
    from smcdiff.kernels import karras_sigmas
    from smcdiff.methods.particle_filter import particle_filter
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
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import torch

from smcdiff import _rng, engine
from smcdiff.engine import StepInfo
from smcdiff.kernels.edm import EDMHeun
from smcdiff.kernels.steps import churn, heun_step
from smcdiff.methods.base import CallCounter, MethodResult, initial_latents, validate_common
from smcdiff.methods.restart import (
    IMAGENET64_RESTART, ScheduleOp, attach_restarts, restart_jump, restart_schedule, restart_step,
)
from smcdiff.resampling import Resampler, get_scheme, multinomial
from smcdiff.types import Tensor

__all__ = ["particle_filter", "default_resample_at", "IMAGENET64_EDM_RESAMPLE", "FFHQ64_EDM_RESAMPLE"]

#: The paper's EDM-variant resampling steps for ImageNet-64 (64 steps, S_churn 10, S_min 0.05, S_max 50).
IMAGENET64_EDM_RESAMPLE = (31, 35, 39, 43, 47, 51)
#: ... and for FFHQ-64 (32 steps, S_churn 2.5); equal to ``default_resample_at(32)``.
FFHQ64_EDM_RESAMPLE = (15, 19, 23, 27)

_SAMPLERS = ("edm", "restart")
_SELECTS = ("argmax", "weighted")
_MAX_CHURN = math.sqrt(2) - 1


def default_resample_at(num_steps: int) -> tuple[int, ...]:
    """Every 4th step from ``N//2 − 1`` up to ``N − 5`` (empty for N < 7)."""
    return tuple(range(num_steps // 2 - 1, num_steps - 4, 4)) if num_steps >= 4 else ()


# ----------------------------------------------------------------------------- the plan


class _Plan(NamedTuple):
    ops: list  # of ScheduleOp
    events: dict  # op index after which an event happens -> main-grid index j of its σ_j
    forced: frozenset  # op indices of main steps that get the forced churn (when their group resampled)


def _edm_plan(N: int, resample_at) -> _Plan:
    ops = [ScheduleOp("main", i) for i in range(N)]
    events = {i - 1: i for i in resample_at}
    return _Plan(ops, events, frozenset(resample_at))


def _restart_plan(sigmas: Tensor, intervals, restart_gamma: float, S_min: float, S_max: float,
                  with_events: bool) -> _Plan:
    ops = restart_schedule(sigmas, attach_restarts(sigmas, intervals), restart_gamma, S_min, S_max)
    # Resample at σ_j before each repeat, i.e. after the op that precedes its jump.
    events = {k - 1: op.j for k, op in enumerate(ops) if op.jump} if with_events else {}
    return _Plan(ops, events, frozenset())


# ----------------------------------------------------------------------------- the FK model


class _PFModel:
    """Feynman–Kac model of the particle filter, run by :func:`smcdiff.engine.run`.

    State: ``x : (G, K, *shape)``, ``v : (G, K)`` the ℓ of the lineage at its last event
    (``prev``), ``cond.<name> : (G, K, ...)``. ``log_potential`` is ``v_new − v_old`` (non-zero only
    at events). ``observe`` is the engine callback: it notes which groups resampled, so that the
    next main step can force the churn on them.
    """

    def __init__(self, denoiser, log_ratio, sigmas, plan: _Plan, kernel: EDMHeun, shape, z, cond, K):
        self.denoiser, self.log_ratio, self.sigmas, self.plan = denoiser, log_ratio, sigmas, plan
        self.kernel, self.shape, self.z, self.cond, self.K = kernel, shape, z, cond, K
        self.num_steps = len(plan.ops)
        self._forced_groups = None

    def init(self, G, K, generator):
        state = {"x": self.sigmas[0] * self.z, "v": torch.zeros(G, K, dtype=torch.float64, device=self.z.device)}
        for name, value in self.cond.items():
            state[f"cond.{name}"] = value
        return state

    def move(self, t, state, generator):
        x = state["x"]
        G, K = x.shape[:2]
        N = G * K
        xf = x.reshape((N,) + self.shape)
        cond = {k[5:]: v.reshape((N,) + tuple(v.shape[2:])) for k, v in state.items() if k.startswith("cond.")}
        op = self.plan.ops[t]
        if op.kind == "main" and t in self.plan.forced and self._forced_groups is not None:
            xf = self._forced_step(xf, op.index, self._forced_groups.repeat_interleave(K), generator, cond)
        elif op.kind == "main":
            xf = self.kernel(self.denoiser, xf, self.sigmas, op.index, generator, cond).x
        else:
            if op.jump:
                xf = restart_jump(xf, float(op.grid[-1]), float(op.grid[0]), self.kernel.S_noise, generator)
            xf = restart_step(self.denoiser, xf, op.grid, op.index, op.gamma, self.kernel.S_noise, generator, cond).x
        self._forced_groups = None
        new = dict(state)
        new["x"] = xf.reshape(x.shape)
        if t in self.plan.events:
            sigma = self.sigmas[self.plan.events[t]].to(x.device).expand(N)
            new["v"] = _log_ratio(self.log_ratio, xf, sigma, cond).reshape(G, K)
        return new

    def _forced_step(self, xf, i, forced, generator, cond):
        """EDM step i with γ = √2 − 1 on the rows ``forced`` (N,) bool, inside [S_min, S_max]."""
        k = self.kernel
        t_cur = self.sigmas[i].to(xf.device).expand(xf.shape[0])
        t_next = self.sigmas[i + 1].to(xf.device).expand(xf.shape[0])
        base = k.gamma(self.sigmas, i)
        window = k.S_min <= float(self.sigmas[i]) <= k.S_max
        gamma = torch.full(forced.shape, base, dtype=torch.float64, device=xf.device)
        gamma = gamma.masked_fill(forced & window, _MAX_CHURN)
        noise = _rng.randn_batch(xf.shape, generator, dtype=xf.dtype, device=xf.device)
        x_hat, t_hat = churn(xf, t_cur, gamma, k.S_noise, noise, getattr(self.denoiser, "round_sigma", None))
        return heun_step(self.denoiser, x_hat, t_hat, t_next, cond).x

    def log_potential(self, t, prev, new):
        return new["v"] - prev["v"]

    def observe(self, info: StepInfo) -> None:
        if info.t in self.plan.events and info.t + 1 in self.plan.forced and self.K > 1:
            self._forced_groups = info.resampled.clone()


def _log_ratio(fn, x, sigma, cond) -> Tensor:
    out = fn(x, sigma, **cond)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (x.shape[0],):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"log_ratio must return one value per sample, shape ({x.shape[0]},), got {got}")
    return out.to(torch.float64)


# ----------------------------------------------------------------------------- shared front-end


def _check_particle_cond(cond, G: int, K: int) -> dict:
    out = {}
    for name, value in (cond or {}).items():
        value = torch.as_tensor(value)
        if value.dim() < 2 or tuple(value.shape[:2]) != (G, K):
            raise ValueError(
                f"cond[{name!r}] must have leading dims (num_samples, num_particles) = ({G}, {K}), got "
                f"{tuple(value.shape)}; to share a label within a group use y[:, None].expand(-1, {K}, *y.shape[1:])"
            )
        out[name] = value
    return out


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {allowed}")


def run_particles(denoiser, sigmas, *, log_ratio, num_samples, shape, generator, x_init, num_particles, sampler,
                  resample_at, ess_threshold, scheme, restart, S_churn, S_min, S_max, S_noise, restart_gamma,
                  cond, progress, with_events: bool):
    """Validate, build and run the particle model; returns ``(smc_result, plan, D, L, sigmas, cond)``.

    Shared by :func:`particle_filter` (``with_events=True``) and the selection baselines of
    :mod:`smcdiff.methods.select` (no events: K independent base-sampler runs per output).
    """
    sigmas, shape = validate_common(sigmas, num_samples, shape)
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"num_particles (K) must be an int >= 1, got {num_particles!r}")
    _check_choice("sampler", sampler, _SAMPLERS)
    if restart_gamma < 0:
        raise ValueError(f"restart_gamma must be >= 0, got {restart_gamma}")
    _rng.check_generator(generator, None if isinstance(generator, torch.Generator) else num_samples)
    G, K, N = num_samples, num_particles, len(sigmas) - 1
    kernel = EDMHeun(S_churn, S_min, S_max, S_noise)
    if sampler == "edm":
        if resample_at is None:
            resample_at = default_resample_at(N) if with_events else ()
        try:
            steps = sorted({int(i) for i in resample_at})
        except (TypeError, ValueError):
            raise ValueError(f"resample_at must be a collection of step indices, got {resample_at!r}") from None
        bad = [i for i in steps if not 1 <= i <= N - 1]
        if bad:
            raise ValueError(f"resample_at must lie in [1, {N - 1}] (resampling at the start of step i), got {bad}")
        if restart is not None:
            raise ValueError("restart applies to sampler='restart'; pass sampler='restart' to use restart intervals")
        plan = _edm_plan(N, steps)
    else:
        if resample_at is not None:
            raise ValueError("resample_at applies to sampler='edm'; with 'restart' the events are the restart repeats")
        plan = _restart_plan(sigmas, IMAGENET64_RESTART if restart is None else restart, restart_gamma,
                             S_min, S_max, with_events)
    resampler = None
    if plan.events:
        get_scheme(scheme)  # unknown names raise here
        resampler = Resampler(scheme, 1.0 if ess_threshold is None else ess_threshold)
    z = initial_latents(x_init, (G, K), shape, generator)
    cond = _check_particle_cond(cond, G, K)
    D = CallCounter(denoiser)
    L = CallCounter(log_ratio) if log_ratio is not None else None
    model = _PFModel(D, L, sigmas, plan, kernel, shape, z, cond, K)
    res = engine.run(model, G, K, resampler, generator, model.observe,
                     resample_steps=plan.events.keys(), progress=progress)
    return res, plan, D, L, sigmas, {k[5:]: v for k, v in res.x.items() if k.startswith("cond.")}


def final_log_ratio(L, x: Tensor, final_sigma: float, cond) -> Tensor:
    """ℓ at σ = ``final_sigma`` of particles ``x : (G, K, *shape)`` → (G, K)."""
    G, K = x.shape[:2]
    flat = {k: v.reshape((G * K,) + tuple(v.shape[2:])) for k, v in cond.items()}
    xf = x.reshape((G * K,) + tuple(x.shape[2:]))
    sigma = torch.full((G * K,), float(final_sigma), dtype=torch.float64, device=x.device)
    return _log_ratio(L, xf, sigma, flat).reshape(G, K)


def check_final_sigma(final_sigma) -> float:
    final_sigma = float(final_sigma)
    if not (math.isfinite(final_sigma) and final_sigma > 0):
        raise ValueError(f"final_sigma must be finite and > 0, got {final_sigma}")
    return final_sigma


def pick(x: Tensor, index: Tensor) -> Tensor:
    """``x[g, index[g]]`` for ``x : (G, K, ...)``, ``index : (G,)``."""
    return x[torch.arange(x.shape[0], device=x.device), index]


# ----------------------------------------------------------------------------- the method


def particle_filter(denoiser, sigmas, *, log_ratio=None, num_samples: int, shape, generator, x_init=None,
                    num_particles: int = 4, sampler: str = "edm", resample_at=None, ess_threshold: float | None = None,
                    scheme="multinomial", restart=None, S_churn: float = 0.0, S_min: float = 0.0,
                    S_max: float = math.inf, S_noise: float = 1.0, restart_gamma: float = 0.05,
                    select: str = "argmax", final_sigma: float = 1e-4, cond: Mapping[str, Tensor] | None = None,
                    progress: bool = False) -> MethodResult:
    """Liu et al.'s particle filter: ``num_samples`` groups × ``num_particles`` (K) particles.

    ``denoiser(x, sigma, **cond)``, ``log_ratio(x, sigma, **cond) -> (N,)`` (ℓ = log q_σ/p_σ),
    ``sigmas`` the main grid (e.g. ``karras_sigmas(18)`` for Restart, 32/64 steps for EDM);
    ``generator`` one or one per output; ``x_init : (num_samples, K, *shape)`` latents;
    ``cond`` tensors ``(num_samples, K, ...)`` (they follow their particle through resampling).
    ``sampler`` "edm" (events at the start of the steps ``resample_at``, default
    :func:`default_resample_at`) or "restart" (``restart`` a spec string or intervals, default
    :data:`~smcdiff.methods.restart.IMAGENET64_RESTART`; events at each restart repeat).
    ``ess_threshold`` None resamples at every event; τ ∈ [0, 1] only where ESS < τ·K.
    ``scheme`` a resampling scheme name (the paper: multinomial). ``select`` "argmax" | "weighted".

    Returns ``MethodResult`` with ``x : (num_samples, *shape)``, ``particles : (num_samples, K, *shape)``,
    ``log_weights : (num_samples, K)`` the final importance log-weights
    (= running weight + ℓ(x, final_sigma) − prev), ``nfe``, ``disc_calls`` and ``diagnostics``:
    per event (E events) ``sigma (E,)``, ``main_step (E,)``, ``ess (E, G)``, ``resampled (E, G)``,
    ``ancestors (E, G, K)``; ``final_log_ratio (G, K)``, ``prev (G, K)`` (ℓ of each lineage at its
    last event), ``log_evidence (G,)`` (estimate of log E[r_final] under the sampler),
    ``selected (G,)``, ``cond`` (the final per-particle cond) and ``smc`` (the engine's record).
    """
    if log_ratio is None:
        raise ValueError("particle_filter needs log_ratio=callable(x, sigma, **cond) -> (N,) (a discriminator)")
    if not callable(log_ratio):
        raise TypeError(f"log_ratio must be callable, got {type(log_ratio).__name__}")
    _check_choice("select", select, _SELECTS)
    final_sigma = check_final_sigma(final_sigma)
    if ess_threshold is not None and not 0.0 <= float(ess_threshold) <= 1.0:
        raise ValueError(f"ess_threshold must be None (fixed schedule) or in [0, 1], got {ess_threshold!r}")
    get_scheme(scheme)
    res, plan, D, L, sigmas, fcond = run_particles(
        denoiser, sigmas, log_ratio=log_ratio, num_samples=num_samples, shape=shape, generator=generator,
        x_init=x_init, num_particles=num_particles, sampler=sampler, resample_at=resample_at,
        ess_threshold=ess_threshold, scheme=scheme, restart=restart, S_churn=S_churn, S_min=S_min, S_max=S_max,
        S_noise=S_noise, restart_gamma=restart_gamma, cond=cond, progress=progress, with_events=True)
    G, K = num_samples, num_particles
    x, prev = res.x["x"], res.x["v"]
    # Final weights: ℓ at final_sigma for every particle, telescoped against its lineage's prev.
    ell = final_log_ratio(L, x, final_sigma, fcond)
    log_w = res.log_weights + (ell - prev)
    if select == "argmax":
        chosen = ell.argmax(dim=1)
    else:
        chosen = multinomial(log_w, _rng.derive(generator, "smcdiff.particle_filter.select"), num=1)[:, 0]
    ev = sorted(plan.events)
    diagnostics = {
        "sigma": torch.stack([sigmas[plan.events[t]] for t in ev]) if ev else sigmas.new_zeros(0),
        "main_step": torch.tensor([plan.events[t] for t in ev], dtype=torch.long),
        "ess": res.ess[ev], "resampled": res.resampled[ev], "ancestors": res.ancestors[ev],
        "final_log_ratio": ell, "prev": prev,
        "log_evidence": torch.logsumexp(log_w, dim=1) - math.log(K),
        "selected": chosen, "cond": fcond, "smc": res,
    }
    return MethodResult(x=pick(x, chosen), nfe=D.count / G, disc_calls=L.count / G, particles=x,
                        log_weights=log_w, diagnostics=diagnostics)
