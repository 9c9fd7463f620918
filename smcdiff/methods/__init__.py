"""The published sampling-time corrections, each a short composition on :func:`smcdiff.sample`
(kernel ∘ guidance, potential with its schedule, resampler with its schedule, final choice), all
with one calling convention (see :mod:`smcdiff.methods.base`) and one result type::

    NAME(denoiser, sigmas, *, log_ratio=None, num_samples, shape, generator, x_init=None, **params)

* :func:`dg` — Discriminator Guidance / EDM-G++ (Kim et al. 2023)
* :func:`sedm` — SEDM-G++: DG + ε-scaling; without a discriminator, EDM-ES (Ning et al. 2024)
* :func:`diffrs` — Diffusion Rejection Sampling (Na et al. 2024), the one method with its own loop
* :func:`particle_filter` — particle-filter resampling (Liu et al. 2024), EDM and Restart variants
* :func:`restart_sampler` — the Restart sampler (Xu et al. 2023)
* :func:`best_of_n`, :func:`discriminator_select` — selection baselines
* steering toward p(x0)·exp(reward(x0)) (``docs/steering.md``): :func:`fk_steering` (FK steering),
  :func:`tds` (twisted SMC), :func:`das` (tempered SMC), :func:`fkc` (Feynman–Kac correctors),
  :func:`dts` (tree sampling / search), :func:`noise_search`
* :func:`diffusion_classifier` — the Diffusion Classifier (Li et al. 2023): classes scored by the
  ELBO of a conditional model (``docs/likelihood.md``)
* text to image (``docs/text_to_image.md``): :func:`pf_hybrid`, :func:`pf_detector`,
  :func:`pf_discriminator`, :func:`object_select`

:data:`~smcdiff.methods.registry.METHODS` maps each name to its function and parameters.
"""

from smcdiff.methods.base import MethodResult
from smcdiff.methods.discriminator_guidance import dg, sedm
from smcdiff.methods.fk_correctors import fkc
from smcdiff.methods.particle_filtering import particle_filter
from smcdiff.methods.registry import METHODS
from smcdiff.methods.rejection_sampling import diffrs
from smcdiff.methods.restart_sampling import restart_sampler
from smcdiff.methods.reward_steering import fk_steering
from smcdiff.methods.search_over_noise import noise_search
from smcdiff.methods.selection import best_of_n, discriminator_select
from smcdiff.methods.tempered_smc import das
from smcdiff.methods.text_to_image import (
           object_select,
           pf_detector,
           pf_discriminator,
           pf_hybrid,
)
from smcdiff.methods.tree_search import dts
from smcdiff.methods.twisted_smc import tds
from smcdiff.methods.zero_shot_classifier import ClassifierResult, diffusion_classifier

__all__ = ["MethodResult", "METHODS", "dg", "sedm", "diffrs", "particle_filter", "restart_sampler", "best_of_n",
           "discriminator_select", "fk_steering", "tds", "das", "fkc", "dts", "noise_search", "pf_hybrid",
           "pf_detector", "pf_discriminator", "object_select", "diffusion_classifier", "ClassifierResult"]
