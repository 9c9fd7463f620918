"""Proposal kernels, schedules and single sampler steps (see :mod:`smcdiff.kernels.edm`)."""

from smcdiff.kernels.edm import EDMEuler, EDMHeun, EulerMaruyama
from smcdiff.kernels.schedules import check_sigmas, iddpm_sigmas, karras_sigmas, ve_sigmas, vp_sigmas
from smcdiff.kernels.steps import StepOutput, churn, euler_maruyama_step, euler_step, heun_step

__all__ = [
    "EDMEuler", "EDMHeun", "EulerMaruyama", "StepOutput", "churn", "euler_step", "heun_step",
    "euler_maruyama_step", "karras_sigmas", "vp_sigmas", "ve_sigmas", "iddpm_sigmas", "check_sigmas",
]
