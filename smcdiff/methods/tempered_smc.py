"""DAS — Diffusion Alignment as Sampling (Kim, Kim, Park, ICLR 2025): tempered twisted SMC.

**Target.** ``π(x0) ∝ p(x0)·exp r(x0)`` — DAS writes ``exp(r/α)``; fold ``1/α`` (its ``kl_coeff``)
into ``reward``. **How.** TDS's twisted particle filter (:mod:`smcdiff.methods.twisted_smc`) with a
*tempered* twist ``φ_σ = γ_σ·r(x̂0)``: the intermediate targets are ``p_σ(x)·exp(γ_σ r(x̂0))`` with
``γ`` rising from 0 at the start to 1 (DAS's exponential schedule ``γ_i = min((1 + g)^i − 1, 1)``,
``g = growth``, rescaled so that γ reaches 1 at 87 % of the steps, as at DAS's 100-step default;
:func:`~smcdiff.weights.steering.das_gammas`). Early, blurred x̂0 barely weigh; the last step
applies the full reward, so the target is exact whatever γ (γ only shapes the variance). The
proposal moves the Euler–Maruyama mean by ``v·γ_σ∇ₓr(x̂0)``; the weight adds the exact proposal
correction. Resampling when the ESS falls below ``ess_threshold·K`` (DAS: 0.5, its SSP scheme;
systematic here).

**Output.** Weighted ``particles``, ``log_evidence`` (log Ẑ: unlike DAS's released code, which
sums the running log-weights, this one estimates log E_p[exp r(x0)]); ``x`` by ``final``:
"weighted" (consistent) or "argmax" — DAS's own choice, the particle with the best reward: a
search, **biased** towards the mode. **Cost.** As TDS: one denoiser forward+backward and reward
forward+backward per particle and step (the reward is still called, with γ = 0, early on).
**When.** A reward that is misleading on noisy x̂0 (aesthetic or preference models on blurred
images) or a strong λ where TDS's weights collapse early.

    >>> import torch, smcdiff
    >>> from smcdiff.models.tilted import example_2d
    >>> tilt = example_2d("linear")
    >>> res = das(tilt.prior.denoise, smcdiff.karras_sigmas(16), reward=tilt.reward, num_samples=4, shape=(2,),
    ...           generator=torch.Generator().manual_seed(0), num_particles=16)
    >>> res.x.shape, res.diagnostics["gammas"].shape
    (torch.Size([4, 2]), torch.Size([17]))
"""

from __future__ import annotations

from smcdiff.kernels.counting import CallCounter
from smcdiff.kernels.schedules import check_sigmas
from smcdiff.methods.base import check_callable
from smcdiff.methods.twisted_smc import twisted_smc
from smcdiff.results import Result
from smcdiff.weights.steering import TemperedReward, das_gammas

__all__ = ["das"]


def das(denoiser, sigmas, *, reward, num_samples: int, shape, generator, num_particles: int = 4,
        growth: float = 0.008, gammas=None, ess_threshold: float | None = 0.5, scheme: str = "systematic",
        final: str = "weighted", x_init=None, cond=None, progress: bool = False) -> Result:
    """DAS (see the module doc). ``gammas : (N + 1,)`` overrides the schedule (``gammas[-1] = 1``);
    ``x_init : (num_samples, K, *shape)``, ``cond`` ``(num_samples, K, ...)``."""
    sigmas = check_sigmas(sigmas)
    R = CallCounter(check_callable("reward", reward, "reward(x0, **cond) -> (N,)"))
    # Twist: the reward tempered by γ_σ, from 0 to 1.
    gammas = das_gammas(len(sigmas) - 1, growth) if gammas is None else gammas
    twist = TemperedReward(R, sigmas, gammas)
    return twisted_smc(denoiser, sigmas, twist, reward_counter=R, num_samples=num_samples, shape=shape,
                       generator=generator, num_particles=num_particles, ess_threshold=ess_threshold, scheme=scheme,
                       final=final, x_init=x_init, cond=cond, progress=progress, gammas=twist.gammas)
