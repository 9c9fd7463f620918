"""FK steering (Singhal, Horvitz, Teehan et al., ICML 2025): a particle filter on the base sampler
with the reward of x̂0 as its potential.

**Target.** ``π(x0) ∝ p(x0)·exp r(x0)`` (``reward`` is the log-tilt, any λ folded in). **How.**
``K = num_particles`` trajectories of a stochastic base kernel (default Euler–Maruyama; a
deterministic solver makes resampled copies identical, FK steering's issue #7). At the evaluation
steps ``S`` (every ``interval`` steps inside ``window``, and always the last step) each particle is
scored by ``r(x̂0)`` and the group is resampled (multinomial, FK's choice) — at every ``s ∈ S``
but the last, or only when the ESS falls below ``ess_threshold·K``. The potential forms:

* ``"diff"`` — difference form, ``log w += r_s − r_{s−}``: the weights telescope to ``r(x0)``, so
  the target is exact whatever the resampling schedule (weights are carried across skipped
  steps: FK steering's issue #12 does not arise);
* ``"rt"``, ``"max"``, ``"sum"`` — the intermediate potentials ``exp r_s``, ``exp max_{s'≤s} r_{s'}``,
  ``exp Σ_{s'≤s} r_{s'}`` (incremental form); the last step then divides by the product of every
  potential applied along the particle's lineage and multiplies by ``exp r(x0)`` (the paper's
  final correction, computed from the recorded genealogy), so all four forms target ``π``. But
  their intermediate targets ``p·exp Σ_s ρ_s`` tilt by about ``|S|·r``: with many evaluation steps
  the final weights degenerate (on the 2-D linear tilt with ``|S| = 11`` and K = 128, "rt" and
  "sum" were 13 standard errors off; with ``|S| = 3`` exact). Prefer "diff".
  (FK's released code applies that correction only for the potentials used at resampling events,
  and its max/sum branches end with the running max/sum: they target ``p·exp max r`` and
  ``p·exp Σ r`` instead — REFERENCE-STEERING §B1.)

**Output.** ``particles`` and ``log_weights`` (a weighted sample of ``π`` per output),
``log_evidence`` (estimate of ``log Z = log E_p[exp r(x0)]``), and ``x`` by ``final``:
``"weighted"`` (one draw from the weights: consistent), ``"argmax"`` (the best reward: a search,
**biased** towards the mode; what FK reports as its best image) or ``"resample"``/``"all"``.
**Cost.** ``K`` × the base NFE per output, plus ``K·|S|`` reward calls; no gradients. **When.** A
reward that is cheap on x̂0 and informative before the end of the chain; gradient-free.

    >>> import torch, smcdiff
    >>> from smcdiff.models.tilted import example_2d
    >>> tilt = example_2d("quadratic")
    >>> res = fk_steering(tilt.prior.denoise, smcdiff.karras_sigmas(16), reward=tilt.reward, num_samples=4,
    ...                   shape=(2,), generator=torch.Generator().manual_seed(0), num_particles=64, interval=2)
    >>> res.x.shape, res.particles.shape, res.nfe, res.disc_calls     # 64 × 16 steps; 64 × 9 rewards (S = 0, 2, .., 14, 15)
    (torch.Size([4, 2]), torch.Size([4, 64, 2]), 1024.0, 576.0)
"""

from __future__ import annotations

import dataclasses

import torch

from smcdiff.checks import check_size
from smcdiff.kernels import EulerMaruyama
from smcdiff.kernels.counting import CallCounter
from smcdiff.methods.base import (
    check_callable,
    initial_latents,
    per_group_cond,
    validate_common,
)
from smcdiff.resampling import Resampler
from smcdiff.results import Result, choose_final
from smcdiff.sampling import sample
from smcdiff.weights import RewardPotential

__all__ = ["POTENTIALS", "evaluation_steps", "fk_steering", "lineage_sum"]

#: FK steering's potential names → the form of :class:`~smcdiff.weights.RewardPotential`.
POTENTIALS = {"diff": "difference", "rt": "current", "max": "max", "sum": "sum"}


def evaluation_steps(num_steps: int, interval: int = 1, window: tuple[int, int] | None = None) -> frozenset:
    """``S = {start, start + interval, ... ≤ end} ∪ {num_steps − 1}``, ``window = (start, end)``
    step indices (default the whole run)."""
    interval = check_size("interval", interval)
    start, end = (0, num_steps - 1) if window is None else (int(window[0]), int(window[1]))
    if not 0 <= start <= end <= num_steps - 1:
        raise ValueError(f"window must be (start, end) with 0 <= start <= end <= {num_steps - 1}, got {window!r}")
    return frozenset(range(start, end + 1, interval)) | {num_steps - 1}


def lineage_sum(values: torch.Tensor, ancestors: torch.Tensor, steps) -> torch.Tensor:
    """Sum over ``steps`` of each final particle's ancestors' values: ``values``, ``ancestors : (T, G, K)``
    (values after step t; ancestors applied after step t) -> ``(G, K)``."""
    idx = torch.arange(values.shape[2], device=values.device).expand(values.shape[1:]).clone()
    total = torch.zeros(values.shape[1:], dtype=torch.float64, device=values.device)
    for t in range(values.shape[0] - 1, -1, -1):
        if t < values.shape[0] - 1:
            idx = ancestors[t].gather(1, idx)
        if t in steps:
            total += values[t].gather(1, idx)
    return total


def fk_steering(denoiser, sigmas, *, reward, num_samples: int, shape, generator, num_particles: int = 4,
                potential: str = "diff", interval: int = 1, window=None, ess_threshold: float | None = None,
                scheme: str = "multinomial", kernel=None, final: str = "weighted", x_init=None, cond=None,
                progress: bool = False) -> Result:
    """FK steering (see the module doc); ``x_init : (num_samples, K, *shape)``, ``cond`` ``(num_samples, K, ...)``."""
    sigmas, shape = validate_common(sigmas, num_samples, shape, generator)
    G, K, T = num_samples, check_size("num_particles", num_particles), len(sigmas) - 1
    if potential not in POTENTIALS:
        raise ValueError(f"potential must be one of {tuple(POTENTIALS)}, got {potential!r}")
    R = CallCounter(check_callable("reward", reward, "reward(x0, **cond) -> (N,)"))
    # Potential: r(x̂0) at the evaluation steps S.
    S = evaluation_steps(T, interval, window)
    V = RewardPotential(R, form=POTENTIALS[potential], name="reward")
    # Resampling: at S but the last, always (ess_threshold None) or when the ESS is low.
    resampler = Resampler(scheme, 1.0 if ess_threshold is None else ess_threshold)
    res = sample(denoiser, sigmas, EulerMaruyama() if kernel is None else kernel, V, resampler, G, K, shape,
                 generator, initial_latents(x_init, (G, K), shape, generator), potential_form=V.potential_form,
                 potential_steps=S, resample_steps=S - {T - 1}, final="all", cond=per_group_cond(cond, G, K, True),
                 record_history=potential != "diff", progress=progress)
    log_w, log_z, r0 = res.log_weights, res.log_evidence, res.potential
    if potential != "diff":
        # Final correction: exp r(x0) over the product of the potentials along each lineage.
        if potential != "rt":
            flat = {k: v.flatten(0, 1) for k, v in res.diagnostics["state"]["cond"].items()}
            r0 = R(res.particles.flatten(0, 1), **flat).to(torch.float64).reshape(G, K)
        fix = r0 - lineage_sum(res.history["potential"], res.ancestors, S)
        log_z = log_z + torch.logsumexp(log_w + fix, 1) - torch.logsumexp(log_w, 1)
        log_w = log_w + fix
    # Final choice: a weighted draw, the best reward, or all particles.
    x, log_w, selected = choose_final(final, res.particles, log_w, r0, generator)
    return dataclasses.replace(res, x=x, log_weights=log_w, log_evidence=log_z, selected=selected, potential=r0,
                               nfe=res.nfe_total / G, disc_calls=R.count / G,
                               diagnostics={**res.diagnostics, "evaluation_steps": sorted(S), "rewards": r0})
