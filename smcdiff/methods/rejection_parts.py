"""The pieces of DiffRS (:mod:`smcdiff.methods.rejection_sampling`): the acceptance test, re-noising,
the NFE cap, the acceptance constants M (phase 1, the warm-up) and the Heun step of slots that sit
at different steps. Small pure functions, each tested on its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from smcdiff import _rng
from smcdiff.kernels.edm import EDMHeun
from smcdiff.kernels.steps import StepOutput, denoise, euler_step, per_sample
from smcdiff.methods.base import validate_common
from smcdiff.sampling import sample
from smcdiff.types import Tensor

__all__ = ["U_OFFSET", "accept", "renoise", "needs_restart", "log_M_from_ratios", "heun_step_per_slot",
           "estimate_log_M", "check_percentile", "log_ratio_values", "rows_of", "check_cond_rows",
           "single_generator"]

U_OFFSET = 1e-7  # the reference adds this to U before the log, so log(U + 1e-7) is never −∞


# --------------------------------------------------------------------------- small pure pieces
def accept(ell: Tensor, log_M: Tensor, u: Tensor, ell_prev: Tensor | None = None) -> Tensor:
    """The DiffRS test ``ℓ ≥ log M + log(U + 1e−7) (+ ℓprev)`` → bool ``(n,)``.

    Without ``ell_prev`` it is the marginal test (probability min(1, e^ℓ/M)); with it, the
    transition test (min(1, e^{ℓ − ℓprev}/M)). All arguments ``(n,)`` (or broadcastable).
    """
    bound = log_M + torch.log(u + U_OFFSET)
    if ell_prev is not None:
        bound = bound + ell_prev
    return ell >= bound


def renoise(x: Tensor, t_from: Tensor, t_to: Tensor, eps: Tensor) -> Tensor:
    """Forward-noise ``x : (n, *event)`` from σ = ``t_from`` up to ``t_to`` (both ``(n,)``):
    ``x + sqrt(t_to² − t_from²)·ε``."""
    scale = torch.sqrt(t_to**2 - t_from**2)
    return x + scale.reshape(-1, *([1] * (x.dim() - 1))) * eps


def needs_restart(nfe: Tensor, k: Tensor, num_steps: int, max_iter: int | None) -> Tensor:
    """Slots that cannot finish within ``max_iter`` NFE: ``nfe + (2N − 1 − 2k) > max_iter`` → bool."""
    if max_iter is None:
        return torch.zeros_like(k, dtype=torch.bool)
    return nfe + (2 * num_steps - 1 - 2 * k) > max_iter


def log_M_from_ratios(ratios: Tensor, rej_percentile: float = 0.75, no_zero: bool = False) -> tuple[Tensor, Tensor]:
    """log M from warm-up records ``ratios : (W, N+1)``, column k = ℓ_k(x_k) along W trajectories.

    Returns ``(log_M_marginal, log_M_transition)``, each ``(N+1,)``: the γ-quantiles (linear
    interpolation, as ``torch.quantile``) of ℓ_k and of ℓ_k − ℓ_{k−1} (column 0: zeros), floored at 0
    unless ``no_zero``.
    """
    check_percentile(rej_percentile)
    ratios = torch.as_tensor(ratios, dtype=torch.float64)
    if ratios.dim() != 2 or ratios.shape[0] < 1 or ratios.shape[1] < 2:
        raise ValueError(f"expected warm-up ratios of shape (W, N+1), got {tuple(ratios.shape)}")
    steps = torch.cat([torch.zeros_like(ratios[:, :1]), ratios[:, 1:] - ratios[:, :-1]], dim=1)
    marg = torch.quantile(ratios, rej_percentile, dim=0)
    trans = torch.quantile(steps, rej_percentile, dim=0)
    if not no_zero:
        marg, trans = marg.clamp_min(0.0), trans.clamp_min(0.0)
    return marg, trans


def heun_step_per_slot(denoiser, x: Tensor, t_cur: Tensor, t_next: Tensor, cond=None) -> StepOutput:
    """EDM's Heun step for slots at different steps (``t_cur, t_next : (N,)`` per slot): the slots
    whose next level is 0 take the Euler step only, and only the others are sent to the network for
    the correction, so ``nfe`` is 2 for them and 1 for the rest."""
    # Euler step.
    out = euler_step(denoiser, x, t_cur, t_next, cond)
    second = t_next > 0
    if not bool(second.any()):
        return out
    idx = torch.nonzero(second).flatten()
    # Apply 2nd order correction where the next level is not 0.
    xs, ts = out.x[idx], t_next[idx]
    x0_2 = denoise(denoiser, xs, ts, {k: v[idx] for k, v in (cond or {}).items()})
    d = (x[idx] - out.x0_hat[idx]) / per_sample(t_cur[idx], xs)
    d2 = (xs - x0_2) / per_sample(ts, xs)
    x_next, x0, nfe = out.x.clone(), out.x0_hat.clone(), out.nfe.clone()
    x_next[idx] = x[idx] + per_sample(ts - t_cur[idx], xs) * (0.5 * d + 0.5 * d2)
    x0[idx] = x0_2
    nfe[idx] += 1
    return StepOutput(x_next, x0, nfe)


def check_percentile(rej_percentile) -> None:
    if not isinstance(rej_percentile, (int, float)) or not 0.0 <= rej_percentile <= 1.0:
        raise ValueError("rej_percentile must be a number in [0, 1] (the quantile γ of the warm-up ratios), "
                         f"got {rej_percentile!r}")


def log_ratio_values(log_ratio, x: Tensor, sigma: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
    """ℓ(x, σ, **cond) as float64 ``(n,)``, checking the shape."""
    out = log_ratio(x, sigma, **cond)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (x.shape[0],):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"log_ratio must return one value per sample, shape ({x.shape[0]},), got {got}")
    return out.to(torch.float64)


def rows_of(cond: Mapping[str, Tensor], idx: Tensor) -> dict:
    return {name: v[idx] for name, v in cond.items()}


def check_cond_rows(cond, n: int, what: str) -> dict:
    cond = dict(cond or {})
    for name, v in cond.items():
        if not isinstance(v, torch.Tensor) or v.dim() < 1 or v.shape[0] != n:
            raise ValueError(f"cond[{name!r}] must be a tensor with one row per {what} ({n})")
    return cond


def single_generator(generator) -> None:
    _rng.check_generator(generator)
    if not isinstance(generator, torch.Generator):
        raise NotImplementedError(
            "DiffRS takes one torch.Generator: continuous batching refills slots with new "
            "trajectories at run-time, so per-sample generator streams cannot be kept")


# --------------------------------------------------------------------------- phase 1: warm-up
def estimate_log_M(denoiser, sigmas, log_ratio, *, num_warmup: int, shape, generator, rej_percentile: float = 0.75,
                   no_zero: bool = False, batch_size: int | None = None, S_churn: float = 0.0, S_min: float = 0.0,
                   S_max: float = math.inf, S_noise: float = 1.0, cond=None) -> tuple[Tensor, Tensor]:
    """Phase 1 of DiffRS: run ``num_warmup`` plain EDM Heun trajectories, record ℓ_k(x_k) at every
    level k = 0..N, and return ``(log_M_marginal, log_M_transition)``, each ``(N+1,)`` float64
    (see :func:`log_M_from_ratios`).

    Trajectories run in chunks of ``batch_size`` (default: all at once); each chunk draws its
    latents ``(b, *shape)`` and then one churn noise per step from ``generator`` (one generator).
    ``cond`` tensors have C rows; trajectory w uses row ``w % C``.
    """
    sigmas, shape = validate_common(sigmas, 1, shape)
    check_percentile(rej_percentile)
    single_generator(generator)
    if not isinstance(num_warmup, int) or num_warmup < 1:
        raise ValueError(f"num_warmup must be an int >= 1, got {num_warmup!r}")
    batch_size = num_warmup if batch_size is None else batch_size
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    cond = dict(cond or {})
    rows_of = {name: v.shape[0] for name, v in cond.items()}
    kernel = EDMHeun(S_churn, S_min, S_max, S_noise)
    records = []
    for start in range(0, num_warmup, batch_size):
        w = torch.arange(start, min(start + batch_size, num_warmup))
        c = {name: v[w % rows_of[name]] for name, v in cond.items()}
        b = len(w)

        def ell_at(x, sigma):
            return log_ratio_values(log_ratio, x, torch.full((b,), float(sigma), dtype=torch.float64,
                                                             device=x.device), c)

        # The plain sampler as one composition; ℓ recorded at the start and after every step.
        z = _rng.randn((b,) + shape, generator)
        ell = [ell_at(z * sigmas[0], sigmas[0])]
        sample(denoiser, sigmas, kernel, num_groups=b, num_particles=1, shape=shape, generator=generator,
               x_init=z[:, None], cond={k: v[:, None] for k, v in c.items()},
               callback=lambda info: ell.append(ell_at(info.x["x"][:, 0], sigmas[info.t + 1])))
        records.append(torch.stack(ell, dim=1))
    return log_M_from_ratios(torch.cat(records), rej_percentile, no_zero)
