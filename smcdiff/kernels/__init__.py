"""Proposal kernels, schedules, single sampler steps and guidance transforms.

* kernels (:mod:`smcdiff.kernels.edm`, :mod:`smcdiff.kernels.restart`): :class:`EDMEuler`,
  :class:`EDMHeun` (EDM Algorithm 2, with Liu et al.'s forced churn and DG's boosting as options),
  :class:`EulerMaruyama`, :class:`Restart`;
* guidance transforms D → D' (:mod:`smcdiff.kernels.guidance`): :class:`EpsilonScaling`,
  :class:`DiscriminatorGuidance`, :class:`ClassifierFreeGuidance`, composed onto any kernel by
  :class:`Guided`;
* schedules (:mod:`smcdiff.kernels.schedules`) and the steps themselves (:mod:`smcdiff.kernels.steps`);
* :class:`CallCounter` (:mod:`smcdiff.kernels.counting`), the honest NFE counter.
"""

from smcdiff.kernels.cfg import ClassifierFreeGuidance
from smcdiff.kernels.counting import CallCounter
from smcdiff.kernels.edm import MAX_GAMMA, ChurnBoost, EDMEuler, EDMHeun, EulerMaruyama
from smcdiff.kernels.guidance import (
    CorrectedEulerMaruyama,
    DiscriminatorGuidance,
    EpsilonScaling,
    Guided,
    log_ratio_grad,
)
from smcdiff.kernels.restart import Restart
from smcdiff.kernels.schedules import (
    check_sigmas,
    iddpm_sigmas,
    karras_sigmas,
    ve_sigmas,
    vp_sigmas,
)
from smcdiff.kernels.steps import (
    StepOutput,
    churn,
    edm_step,
    euler_maruyama_step,
    euler_step,
    heun_step,
)

__all__ = [
    "EDMEuler", "EDMHeun", "EulerMaruyama", "Restart", "ChurnBoost", "MAX_GAMMA",
    "EpsilonScaling", "DiscriminatorGuidance", "ClassifierFreeGuidance", "Guided", "CorrectedEulerMaruyama", "log_ratio_grad", "CallCounter",
    "StepOutput", "churn", "euler_step", "heun_step", "edm_step", "euler_maruyama_step",
    "karras_sigmas", "vp_sigmas", "ve_sigmas", "iddpm_sigmas", "check_sigmas",
]
