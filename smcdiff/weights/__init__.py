"""Potentials: callables ``V(x, sigma, x0_hat, **cond) -> (N,)`` giving a log-weight per sample.

Any Python function with that signature is a potential (``x : (N, *event)`` particles, ``sigma :
(N,)`` float64 noise levels, ``x0_hat : (N, *event)`` denoiser outputs). A potential may also
define ``terms(...) -> {name: (N,)}``, named parts that sum to its value; the sampler records them
separately (see :func:`evaluate_terms`). Built in:

* :class:`DensityRatio` — discriminator log density ratio log d/(1−d) on x at σ (DG, DiffRS, the
  particle filter of Liu et al.); :func:`log_ratio_from_prob`.
* :class:`DetectorLikelihood` — the object-detector likelihood ratio of Liu et al. on x̂0.
* :class:`RewardPotential` — λ·reward(x̂0) for FK steering.
* :class:`GaussianLikelihood` — log N(y; A x̂0, R + c_σ A Aᵀ) for linear inverse problems.
* :class:`Sum`, :class:`Scale`, :class:`Window` — composition; :func:`program` — a Pyro program
  whose ``pyro.factor`` statements are the terms.
* :func:`log_values`, :func:`num_samples` — the checks the built-ins apply to what they return
  (one log-value per sample, never NaN or +inf; −inf is a weight of zero), for custom potentials.

    >>> import torch
    >>> from smcdiff.weights import Sum, Scale, Window, RewardPotential
    >>> V = Sum(Scale(RewardPotential(lambda x0: -x0.pow(2).sum(-1)), 0.5),
    ...         Window(lambda x, sigma, x0_hat: x0_hat[:, 0].double(), sigma_max=1.0, name="late"))
"""

from smcdiff.weights.compose import Scale, Sum, Window, evaluate_terms, potential_name
from smcdiff.weights.detector import DetectorLikelihood
from smcdiff.weights.gaussian import GaussianLikelihood
from smcdiff.weights.programs import Program, program
from smcdiff.weights.ratio import DG_CLIP, PF_CLIP, DensityRatio, log_ratio_from_prob
from smcdiff.weights.reward import RewardPotential
from smcdiff.weights.values import log_values, num_samples

__all__ = [
    "GaussianLikelihood", "DensityRatio", "log_ratio_from_prob", "DG_CLIP", "PF_CLIP", "DetectorLikelihood",
    "RewardPotential", "Sum", "Scale", "Window", "evaluate_terms", "potential_name", "program", "Program",
    "log_values", "num_samples",
]
