"""Discriminator Guidance (DG / EDM-G++, Kim et al. 2023) and SEDM-G++ (DG + ε-scaling).

``dg`` is EDM's stochastic Heun sampler whose denoiser is corrected by the discriminator's
log-ratio gradient, D' = D + w·σ²∇ₓℓ (see :mod:`smcdiff.kernels.guidance`), with DG's defaults:
w1 = 2 on the Euler evaluation, w2 = 0 on the Heun correction (effective weight w1/2 in the
update), guidance only for VP time τ(σ) in [0.01, 1] (with 18 steps: steps 0–14), optional
*boosting* (every 5th step, samples whose last ℓ < 0 get churn S_churn = 4, S_noise = 1 for that
step; every 2nd step their guidance is doubled), and ε-scaling s_i = eps_scaler + kappa·i on both
evaluations. ``sedm`` is ``dg`` with the SEDM-G++ defaults (eps_scaler 1.004, w1 1.67); with
``log_ratio=None`` it is pure ε-scaling (EDM-ES).

    >>> import torch, smcdiff
    >>> from smcdiff.models.pairs import mixture_pair_2d
    >>> data, model, ell = mixture_pair_2d()
    >>> res = smcdiff.methods.dg(model.denoise, smcdiff.karras_sigmas(18), log_ratio=ell,
    ...                          num_samples=1000, shape=(2,), generator=torch.Generator().manual_seed(0))
    >>> res.x.shape, res.nfe, res.disc_calls
    (torch.Size([1000, 2]), 35.0, 15.0)

With ``log_ratio=None`` or w1 = w2 = 0 and eps_scaler = 1, the output equals the EDM sampler's
(:class:`smcdiff.kernels.EDMHeun`) bit for bit for the same generator.
"""

from __future__ import annotations

import math

import torch

from smcdiff.kernels.counting import CallCounter
from smcdiff.kernels.edm import ChurnBoost, EDMHeun
from smcdiff.kernels.guidance import DiscriminatorGuidance, EpsilonScaling, Guided
from smcdiff.methods.base import (
    as_method_result,
    check_callable,
    initial_latents,
    per_group_cond,
    validate_common,
)
from smcdiff.results import Result
from smcdiff.sampling import sample
from smcdiff.types import Denoiser, GeneratorSpec, LogRatio

__all__ = ["dg", "sedm", "BOOST_PERIOD", "BOOST_WEIGHT_PERIOD", "BOOST_S_CHURN", "BOOST_S_NOISE"]

BOOST_PERIOD, BOOST_WEIGHT_PERIOD, BOOST_S_CHURN, BOOST_S_NOISE = 5, 2, 4.0, 1.0


def dg(denoiser: Denoiser, sigmas, *, log_ratio: LogRatio | None = None, num_samples: int, shape,
       generator: GeneratorSpec, x_init=None, w1: float = 2.0, w2: float = 0.0, time_min: float = 0.01,
       time_max: float = 1.0, boosting: bool = False, S_churn: float = 0.0, S_min: float = 0.0,
       S_max: float = math.inf, S_noise: float = 1.0, eps_scaler: float = 1.0, kappa: float = 0.0, cond=None,
       progress: bool = False) -> Result:
    """EDM-G++ sampling of ``num_samples`` outputs of event ``shape``.

    ``log_ratio(x, sigma, **cond) -> (N,)`` the log density ratio (None: no guidance);
    ``generator`` one generator or one per sample; ``x_init : (num_samples, *shape)`` latents;
    ``cond`` tensors (num_samples, ...) passed to the denoiser and ``log_ratio``. Returns the
    :class:`~smcdiff.results.Result` with ``nfe`` network evaluations per output (2N − 1) and
    ``disc_calls`` discriminator forward+backward passes per output; ``diagnostics["log_ratio"]``
    holds ℓ at the last guided evaluation of each sample (+inf where none).
    """
    sigmas, shape = validate_common(sigmas, num_samples, shape, generator)
    check_callable("log_ratio", log_ratio, "log_ratio(x, sigma, **cond) -> (N,)", required=False)
    disc = CallCounter(log_ratio) if log_ratio is not None and (w1 != 0 or w2 != 0) else None
    # Kernel: EDM's stochastic Heun sampler, with DG's boosting of the churn where ℓ < 0.
    boost = ChurnBoost(BOOST_PERIOD, BOOST_S_CHURN, BOOST_S_NOISE) if boosting and disc is not None else None
    kernel = EDMHeun(S_churn, S_min, S_max, S_noise, boost=boost)
    # Guidance: ε-scaling, then D' = D + w·σ²∇ℓ (w doubled where ℓ < 0 when boosting).
    transforms = [EpsilonScaling(eps_scaler, kappa)]
    if disc is not None:
        transforms.append(DiscriminatorGuidance(disc, w1, w2, time_min, time_max,
                                                double_every=BOOST_WEIGHT_PERIOD if boosting else None))
    # One trajectory per output: no potential, no resampling.
    z = initial_latents(x_init, (num_samples,), shape, generator)[:, None]
    res = sample(denoiser, sigmas, Guided(kernel, *transforms), num_groups=num_samples, num_particles=1,
                 shape=shape, generator=generator, x_init=z, final="weighted",
                 cond=per_group_cond(cond, num_samples, 1, particles=False), progress=progress)
    carry = res.diagnostics["state"]["carry"]
    last = carry["log_ratio"][:, 0] if "log_ratio" in carry else torch.full((num_samples,), math.inf,
                                                                             dtype=torch.float64, device=z.device)
    return as_method_result(res, num_samples, disc, log_ratio=last)


def sedm(denoiser: Denoiser, sigmas, *, log_ratio: LogRatio | None = None, num_samples: int, shape,
         generator: GeneratorSpec, x_init=None, eps_scaler: float = 1.004, w1: float = 1.67, kappa: float = 0.0,
         **params) -> Result:
    """SEDM-G++ (Tsonis et al.): :func:`dg` with ε-scaling 1.004 and w1 = 1.67, no correction-step
    guidance; with ``log_ratio=None`` pure ε-scaling (EDM-ES, Ning et al.)."""
    if params.get("w2", 0.0) != 0.0:
        raise ValueError("SEDM-G++ applies no guidance on the Heun correction; w2 must be 0 (use dg for w2)")
    return dg(denoiser, sigmas, log_ratio=log_ratio, num_samples=num_samples, shape=shape, generator=generator,
              x_init=x_init, eps_scaler=eps_scaler, w1=w1, kappa=kappa, **params)
