"""The one result type of :func:`smcdiff.sample` and of every method, and the final choice.

:class:`Result` is the engine's :class:`~smcdiff.engine.SMCResult` (per-step ESS, ancestors,
resampling flags, log-evidence increments, acceptance rates) plus what a diffusion run adds:
``particles``, the output ``x`` picked from them by the *final choice*, the last ``x0_hat`` and
potential values, the noise level of each step, NFE and discriminator calls, and a dict of
method-specific ``diagnostics``. Every result exports to ArviZ (``result.to_arviz()``), plots
(:func:`smcdiff.diagnostics.plot`) and summarises (:func:`smcdiff.diagnostics.summary`).

Final choices (``final=`` of :func:`smcdiff.sample`), per group:

``"all"``       keep every weighted particle: ``x = particles`` (G, K, *shape);
``"argmax"``    the particle with the largest last potential value (never a NaN: a NaN potential
                has already stopped the run); ties go to the lowest index — ``x : (G, *shape)``;
``"weighted"``  one particle drawn from the normalised final weights (a consistent draw from the
                weighted target) — ``x : (G, *shape)``;
``"resample"``  resample the group to K equally weighted particles (i.i.d.-looking output);
                ``x : (G, K, *shape)`` and ``log_weights`` equal within each group.

Draws for the final choice come from a stream derived from the run's generator (they never shift
the sampler's noise); with K = 1 nothing is drawn and the output is the one particle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from smcdiff import _rng
from smcdiff.engine import SMCResult
from smcdiff.resampling import multinomial
from smcdiff.types import Tensor

__all__ = ["Result", "FINAL_CHOICES", "choose_final", "FINAL_STREAM"]

FINAL_CHOICES = ("all", "argmax", "weighted", "resample")
#: The purpose string of the final draw's stream (:func:`smcdiff._rng.derive`).
FINAL_STREAM = "smcdiff.particle_filter.select"


@dataclass(frozen=True)
class Result(SMCResult):
    """A diffusion SMC run (see the module doc). On top of :class:`~smcdiff.engine.SMCResult`:

    ``x`` the output — ``(G, K, *shape)`` for the final choices "all"/"resample", ``(G, *shape)``
    for "argmax"/"weighted" (a method's ``num_samples`` outputs); ``particles : (G, K, *shape)``
    all final particles (before a final resample), ``log_weights : (G, K)`` their weights;
    ``selected : (G,)`` the chosen index (or None); ``x0_hat`` the last denoiser outputs;
    ``potential : (G, K)`` the last potential values; ``named_potentials`` the last value of each
    named term; ``sigmas : (T + 1,)`` the noise level before the first step and after each step;
    ``nfe`` network evaluations per particle trajectory (all calls / (G·K)) for
    :func:`smcdiff.sample`, per output for a method; ``nfe_total`` all calls; ``disc_calls``
    discriminator (or reward) evaluations per output; ``diagnostics`` method-specific records.
    """

    particles: Tensor | None = None
    selected: Tensor | None = None
    x0_hat: Tensor | None = None
    potential: Tensor | None = None
    named_potentials: Mapping[str, Tensor] = field(default_factory=dict)
    sigmas: Tensor | None = None
    nfe: float = 0.0
    nfe_total: int = 0
    disc_calls: float = 0.0
    diagnostics: Mapping[str, Any] = field(default_factory=dict)


def _pick(x: Tensor, index: Tensor) -> Tensor:
    return x[torch.arange(x.shape[0], device=x.device), index]


def choose_final(final: str, particles: Tensor, log_weights: Tensor, potential: Tensor | None, generator,
                 ) -> tuple[Tensor, Tensor, Tensor | None]:
    """Apply the final choice: returns ``(x, log_weights, selected)`` (see the module doc).

    ``particles : (G, K, *shape)``, ``log_weights : (G, K)``, ``potential : (G, K)`` (needed by
    "argmax"), ``generator`` the run's generator spec (the draws use a derived stream).
    """
    G, K = log_weights.shape
    if final == "all":
        return particles, log_weights, None
    if final == "argmax":
        if potential is None:
            raise ValueError('final="argmax" picks by the last potential value; the run has no potential')
        chosen = potential.argmax(dim=1)
        return _pick(particles, chosen), log_weights, chosen
    if final == "weighted":
        if K == 1:
            chosen = torch.zeros(G, dtype=torch.long, device=log_weights.device)
        else:
            chosen = multinomial(log_weights, _rng.derive(generator, FINAL_STREAM), num=1)[:, 0]
        return _pick(particles, chosen), log_weights, chosen
    if final == "resample":
        ancestors = multinomial(log_weights, _rng.derive(generator, FINAL_STREAM))
        rows = torch.arange(G, device=particles.device)[:, None]
        log_z = torch.logsumexp(log_weights, dim=1, keepdim=True) - math.log(K)
        return particles[rows, ancestors], log_z.expand(G, K), None
    raise ValueError(f"final must be one of {FINAL_CHOICES}, got {final!r}")
