"""smcdiff: diffusion-model sampling as sequential Monte Carlo.

Proposal kernels (:mod:`smcdiff.kernels`), potentials (:mod:`smcdiff.weights`), resampling
(:mod:`smcdiff.resampling`) and the generic Feynman–Kac engine (:mod:`smcdiff.engine`), joined by
:func:`smcdiff.sample`::

    import torch, smcdiff
    from smcdiff.models import GaussianMixture

    data = GaussianMixture(torch.tensor([0.7, 0.3]), torch.tensor([[-1.0, 0.0], [1.5, 1.0]]), torch.tensor([0.05, 0.1]))
    res = smcdiff.sample(data.denoise, smcdiff.karras_sigmas(18), smcdiff.kernels.EDMHeun(),
                         num_groups=1, num_particles=1000, shape=(2,),
                         generator=torch.Generator().manual_seed(0))
    res.x.shape   # (1, 1000, 2)
"""

from smcdiff import engine, kernels, methods, models, resampling, weights
from smcdiff.engine import SMCFailedError, SMCResult, StepInfo
from smcdiff.kernels import EDMEuler, EDMHeun, EulerMaruyama, karras_sigmas
from smcdiff.resampling import Resampler
from smcdiff.results import Result
from smcdiff.sampling import SampleResult, sample

__version__ = "0.1.0"

__all__ = [
    "engine", "kernels", "methods", "models", "resampling", "weights", "sample", "Result", "SampleResult", "SMCResult",
    "StepInfo", "SMCFailedError", "Resampler", "karras_sigmas", "EDMEuler", "EDMHeun", "EulerMaruyama",
]
