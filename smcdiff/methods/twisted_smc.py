"""TDS — the Twisted Diffusion Sampler (Wu, Trippe, Naesseth, Blei, Cunningham, NeurIPS 2023).

**Target.** ``π(x0) ∝ p(x0)·exp r(x0)`` (``reward`` the log-tilt: a log-likelihood ``log p(y|x0)``,
a classifier's ``λ·log p(c|x0)``, ...). **How.** A particle filter whose proposal is *twisted*:
each Euler–Maruyama step moves its mean by ``v·∇ₓφ_σ(x)`` (``v`` the step variance), with the twist
``φ_σ(x) = twist(x̂0(x), σ)`` — by default the reward of the denoiser output — differentiated
through the denoiser (:class:`~smcdiff.kernels.twisted.TwistedEulerMaruyama`). The weight of a step
is ``log p(x'|x) − log q(x'|x) + φ_σ'(x') − φ_σ(x)``: the exact proposal correction (from the
kernel) plus the twist as a difference-form potential. The last step is the *untwisted* Tweedie
estimate and its potential the true ``r(x0)``, so the weights end in ``exp r(x0)``: exact as K → ∞
for any twist (the twist only decides the variance). Systematic resampling after every step (or
when the ESS falls below ``ess_threshold·K``).

A sharp reward read on a blurred x̂0 over-states its confidence at high σ; TDS then inflates the
likelihood's variance (pass such a ``twist(x0_hat, sigma, **cond)``; it must equal the reward at
σ = 0), and DAS (:mod:`smcdiff.methods.tempered_smc`) tempers it.

**Output.** Weighted ``particles``, ``log_evidence`` (log Ẑ), ``x`` by ``final`` ("weighted" draw —
consistent; "argmax" — the best reward, biased; "resample"; "all"). **Cost.** Per particle and
step one denoiser forward *and backward* and one reward forward+backward, plus one reward forward
for the potential: about 2–3× the NFE of FK steering at the same K, and the memory of a backward
pass. ``diagnostics["grad_nfe"]`` and ``["reward_grad_calls"]`` count the backward passes per output. **When.** A
differentiable reward whose gradient points the right way early in the chain (likelihoods of
measurements, classifiers); with few particles it beats untwisted resampling.

    >>> import torch, smcdiff
    >>> from smcdiff.models.tilted import example_2d
    >>> tilt = example_2d("quadratic")
    >>> res = tds(tilt.prior.denoise, smcdiff.karras_sigmas(16), reward=tilt.reward, num_samples=4, shape=(2,),
    ...           generator=torch.Generator().manual_seed(0), num_particles=16)
    >>> res.x.shape, res.nfe, res.diagnostics["grad_nfe"]          # 16 particles × 16 denoiser calls
    (torch.Size([4, 2]), 256.0, 256.0)
"""

from __future__ import annotations

import dataclasses

from smcdiff.checks import check_size
from smcdiff.kernels.counting import CallCounter
from smcdiff.kernels.twisted import TwistedEulerMaruyama
from smcdiff.methods.base import (
    check_callable,
    initial_latents,
    per_group_cond,
    validate_common,
)
from smcdiff.resampling import Resampler
from smcdiff.results import Result, choose_final
from smcdiff.sampling import sample
from smcdiff.weights.steering import RewardTwist, TwistPotential

__all__ = ["tds", "twisted_smc"]


def twisted_smc(denoiser, sigmas, twist, *, reward_counter: CallCounter, num_samples: int, shape, generator,
                num_particles: int, ess_threshold: float | None, scheme: str, final: str, x_init=None, cond=None,
                progress: bool = False, **diagnostics) -> Result:
    """The twisted particle filter shared by TDS and DAS: ``twist(x0_hat, sigma, **cond)`` drives the
    kernel and is the difference-form potential (it must equal the reward at σ = 0)."""
    sigmas, shape = validate_common(sigmas, num_samples, shape, generator)
    G, K = num_samples, check_size("num_particles", num_particles)
    # Kernel: EM with its mean moved by v·∇φ; the proposal correction comes back as log_weight.
    kernel = TwistedEulerMaruyama(twist)
    # Potential: the twist, difference form (ends in the reward at σ = 0).
    potential = TwistPotential(twist)
    # Resampling: systematic after every step (ess_threshold None) or when the ESS is low.
    resampler = Resampler(scheme, 1.0 if ess_threshold is None else ess_threshold)
    res = sample(denoiser, sigmas, kernel, potential, resampler, G, K, shape, generator,
                 initial_latents(x_init, (G, K), shape, generator), potential_form="difference", final="all",
                 cond=per_group_cond(cond, G, K, True), progress=progress)
    # Final choice on the weighted particles (the last potential value is r(x0)).
    x, log_w, selected = choose_final(final, res.particles, res.log_weights, res.potential, generator)
    return dataclasses.replace(res, x=x, log_weights=log_w, selected=selected, nfe=res.nfe_total / G,
                               disc_calls=reward_counter.count / G,
                               diagnostics={**res.diagnostics, "grad_nfe": res.nfe_total / G,
                                            "reward_grad_calls": res.nfe_total / G, **diagnostics})


def tds(denoiser, sigmas, *, reward, num_samples: int, shape, generator, num_particles: int = 4, twist=None,
        ess_threshold: float | None = None, scheme: str = "systematic", final: str = "weighted", x_init=None,
        cond=None, progress: bool = False) -> Result:
    """TDS (see the module doc). ``twist(x0_hat, sigma, **cond) -> (N,)`` defaults to ``reward(x0_hat)``;
    ``x_init : (num_samples, K, *shape)``, ``cond`` ``(num_samples, K, ...)``."""
    R = CallCounter(check_callable("reward", reward, "reward(x0, **cond) -> (N,)"))
    twist = RewardTwist(R) if twist is None else check_callable("twist", twist, "twist(x0_hat, sigma, **cond) -> (N,)")
    return twisted_smc(denoiser, sigmas, twist, reward_counter=R, num_samples=num_samples, shape=shape,
                       generator=generator, num_particles=num_particles, ess_threshold=ess_threshold, scheme=scheme,
                       final=final, x_init=x_init, cond=cond, progress=progress)
