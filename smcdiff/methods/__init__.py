"""The published sampling-time corrections, each a short composition of kernels, potentials and
resamplers, all with one calling convention (see :mod:`smcdiff.methods.base`)::

    NAME(denoiser, sigmas, *, log_ratio=None, num_samples, shape, generator, x_init=None, **params)

* :func:`dg` — Discriminator Guidance / EDM-G++ (Kim et al. 2023)
* :func:`sedm` — SEDM-G++: DG + ε-scaling; without a discriminator, EDM-ES (Ning et al. 2024)
* :func:`diffrs` — Diffusion Rejection Sampling (Na et al. 2024)
* :func:`particle_filter` — particle-filter resampling (Liu et al. 2024), EDM and Restart variants
* :func:`best_of_n`, :func:`discriminator_select` — selection baselines
"""

from smcdiff.methods.base import CallCounter, MethodResult
from smcdiff.methods.dg import dg, sedm

__all__ = ["MethodResult", "CallCounter", "dg", "sedm"]

try:  # modules written alongside; imported when present
    from smcdiff.methods.diffrs import diffrs  # noqa: F401

    __all__.append("diffrs")
except ImportError:  # pragma: no cover
    pass
try:
    from smcdiff.methods.particle_filter import particle_filter  # noqa: F401
    from smcdiff.methods.select import best_of_n, discriminator_select  # noqa: F401

    __all__ += ["particle_filter", "best_of_n", "discriminator_select"]
except ImportError:  # pragma: no cover
    pass
