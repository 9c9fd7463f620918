"""Plain Restart sampling (Xu et al. 2023): the base sampler of the particle filter's
``sampler="restart"``, as one composition — the :class:`~smcdiff.kernels.Restart` kernel, one
particle per output, no potential.

    >>> import torch
    >>> from smcdiff.kernels import karras_sigmas
    >>> from smcdiff.kernels.restart import IMAGENET64_RESTART
    >>> from smcdiff.methods import restart_sampler
    >>> from smcdiff.models.pairs import mixture_pair_1d as pair_1d
    >>> data, model, log_ratio = pair_1d()
    >>> res = restart_sampler(model.denoise, karras_sigmas(18), restart=IMAGENET64_RESTART, num_samples=1000,
    ...                       shape=(1,), generator=torch.Generator().manual_seed(0))
    >>> res.x.shape, res.nfe
    (torch.Size([1000, 1]), 99.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from smcdiff.kernels.edm import EDMHeun
from smcdiff.kernels.restart import IMAGENET64_RESTART, Restart, attach_restarts
from smcdiff.methods.base import (
    as_method_result,
    initial_latents,
    per_group_cond,
    validate_common,
)
from smcdiff.results import Result
from smcdiff.sampling import sample
from smcdiff.types import Denoiser, GeneratorSpec, Tensor

__all__ = ["restart_sampler"]


def restart_sampler(denoiser: Denoiser, sigmas, *, log_ratio=None, num_samples: int, shape,
                    generator: GeneratorSpec, x_init=None, restart=IMAGENET64_RESTART, S_churn: float = 0.0,
                    S_min: float = 0.0, S_max: float = math.inf, S_noise: float = 1.0, restart_gamma: float = 0.05,
                    cond: Mapping[str, Tensor] | None = None, progress: bool = False) -> Result:
    """Plain Restart sampling of ``num_samples`` outputs.

    ``x_init : (num_samples, *shape)`` unit-variance latents (drawn from ``generator`` if None);
    ``restart`` a spec string or intervals; main steps are EDM Heun steps with churn ``S_churn``
    (0 in the paper); ``cond`` tensors ``(num_samples, ...)`` go to the denoiser. ``log_ratio`` is
    ignored (calling convention). Returns the :class:`~smcdiff.results.Result` (``x``, ``nfe``, the
    step records) with ``diagnostics["attached"]`` the main index of each interval.
    """
    sigmas, shape = validate_common(sigmas, num_samples, shape, generator)
    kernel = Restart(EDMHeun(S_churn, S_min, S_max, S_noise), restart, restart_gamma)
    z = initial_latents(x_init, (num_samples,), shape, generator)[:, None]
    res = sample(denoiser, sigmas, kernel, num_groups=num_samples, num_particles=1, shape=shape,
                 generator=generator, x_init=z, final="weighted",
                 cond=per_group_cond(cond, num_samples, 1, particles=False), progress=progress)
    return as_method_result(res, num_samples, attached=dict(attach_restarts(sigmas, kernel.intervals)))
