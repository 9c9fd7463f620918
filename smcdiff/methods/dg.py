"""Discriminator Guidance (DG / EDM-G++, Kim et al. 2023) and SEDM-G++ (DG + ε-scaling).

``dg`` is EDM's stochastic Heun sampler whose denoiser is corrected by the discriminator's
log-ratio gradient, D' = D + w·σ²∇ₓℓ (see :mod:`smcdiff.kernels.guidance`), with DG's defaults:
w1 = 2 on the Euler evaluation, w2 = 0 on the Heun correction (effective weight w1/2 in the
update), guidance only for VP time τ(σ) in [0.01, 1] (with 18 steps: steps 0–14), optional
*boosting* (every 5th step, samples whose last ℓ < 0 get churn S_churn = 4, S_noise = 1 for that
step; every 2nd step their guidance is doubled), and ε-scaling s_i = eps_scaler + kappa·i on both
evaluations. ``sedm`` is ``dg`` with the SEDM-G++ defaults (eps_scaler 1.004, w1 1.67); with
``log_ratio=None`` it is pure ε-scaling (EDM-ES).

    >>> import torch, smcdiff
    >>> from smcdiff.models.pairs import mixture_pair_2d
    >>> data, model, ell = mixture_pair_2d()
    >>> res = smcdiff.methods.dg(model.denoise, smcdiff.karras_sigmas(18), log_ratio=ell,
    ...                          num_samples=1000, shape=(2,), generator=torch.Generator().manual_seed(0))
    >>> res.x.shape, res.nfe, res.disc_calls
    (torch.Size([1000, 2]), 35.0, 15.0)

With ``log_ratio=None`` or w1 = w2 = 0 and eps_scaler = 1, the output equals the EDM sampler's
(:class:`smcdiff.kernels.EDMHeun`) bit for bit for the same generator.
"""

from __future__ import annotations

import math

import torch

from smcdiff.kernels.edm import EDMHeun
from smcdiff.kernels.guidance import DiscriminatorGuidance, EpsilonScaling
from smcdiff.kernels.steps import churn, heun_step
from smcdiff.methods.base import CallCounter, MethodResult, initial_latents, validate_common
from smcdiff import _rng

__all__ = ["dg", "sedm", "BOOST_PERIOD", "BOOST_WEIGHT_PERIOD", "BOOST_S_CHURN", "BOOST_S_NOISE"]

BOOST_PERIOD, BOOST_WEIGHT_PERIOD, BOOST_S_CHURN, BOOST_S_NOISE = 5, 2, 4.0, 1.0


def dg(denoiser, sigmas, *, log_ratio=None, num_samples: int, shape, generator, x_init=None,
       w1: float = 2.0, w2: float = 0.0, time_min: float = 0.01, time_max: float = 1.0, boosting: bool = False,
       S_churn: float = 0.0, S_min: float = 0.0, S_max: float = math.inf, S_noise: float = 1.0,
       eps_scaler: float = 1.0, kappa: float = 0.0, cond=None, progress: bool = False) -> MethodResult:
    """EDM-G++ sampling of ``num_samples`` outputs of event ``shape``.

    ``log_ratio(x, sigma, **cond) -> (N,)`` the log density ratio (None: no guidance);
    ``generator`` one generator or one per sample; ``x_init : (num_samples, *shape)`` latents;
    ``cond`` tensors (num_samples, ...) passed to the denoiser and ``log_ratio``. Returns a
    :class:`MethodResult` with ``nfe`` network evaluations per output (2N − 1) and ``disc_calls``
    discriminator forward+backward passes per output; ``diagnostics["log_ratio"]`` holds ℓ at the
    last guided evaluation of each sample.
    """
    sigmas, shape = validate_common(sigmas, num_samples, shape)
    kernel = EDMHeun(S_churn, S_min, S_max, S_noise)  # validates the churn knobs
    eps = EpsilonScaling(eps_scaler, kappa)
    net = CallCounter(denoiser)
    disc = CallCounter(log_ratio) if log_ratio is not None else None
    guide = DiscriminatorGuidance(disc, w1, w2, time_min, time_max) if disc is not None else None
    if guide is not None and w1 == 0 and w2 == 0:
        guide = None
    cond = {k: torch.as_tensor(v) for k, v in (cond or {}).items()}
    x = sigmas[0] * initial_latents(x_init, (num_samples,), shape, generator)
    N, n = len(sigmas) - 1, num_samples
    round_sigma = getattr(denoiser, "round_sigma", None)
    ell_prev = torch.full((n,), math.inf, dtype=torch.float64, device=x.device)
    steps = range(N)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="dg", leave=False)
    for i in steps:
        t_cur, t_next = sigmas[i].expand(n), sigmas[i + 1].expand(n)
        gamma = torch.full((n,), kernel.gamma(sigmas, i), dtype=torch.float64)
        s_noise = torch.full((n,), S_noise, dtype=torch.float64)
        boost = boosting and guide is not None
        if boost and i % BOOST_PERIOD == 0:
            # Boosting: resample more noise for samples the discriminator deems fake.
            low = ell_prev < 0
            gamma = torch.where(low, min(BOOST_S_CHURN / N, math.sqrt(2) - 1), gamma)
            s_noise = torch.where(low, BOOST_S_NOISE, s_noise)
        # Increase noise temporarily.
        noise = _rng.randn_batch(x.shape, generator, dtype=x.dtype, device=x.device)
        x_hat, t_hat = churn(x, t_cur, gamma, s_noise.reshape(-1, *([1] * len(shape))), noise, round_sigma)
        base = eps.bind(net, sigmas, i)
        if guide is None:
            step = heun_step(base, x_hat, t_hat, t_next, cond)
        else:
            double = boost and i % BOOST_WEIGHT_PERIOD == 0
            step, ell = _guided_heun(base, guide, x_hat, t_hat, t_next, cond, double)
            if ell is not None:
                ell_prev = ell  # as DG: 1e7 outside the window, so boosting never fires there
        x = step.x
    diagnostics = {"log_ratio": ell_prev}
    return MethodResult(x=x, nfe=net.count / n, disc_calls=(disc.count / n) if disc else 0.0, diagnostics=diagnostics)


def _guided_heun(base, guide: DiscriminatorGuidance, x_hat, t_hat, t_next, cond, double: bool):
    """One Heun step with DG on the Euler evaluation (w1, doubled where ℓ < 0 if ``double``) and the
    correction (w2). Returns (StepOutput, ℓ at x̂ or None when w1 = 0)."""
    seen = {}

    def first(x, sigma, **c):
        x0 = base(x, sigma, **c).to(torch.float64)
        if guide.w1 == 0:
            return x0
        term, ell = guide.guidance(x, sigma, c)
        w = torch.full_like(ell, guide.w1)
        if double:
            w = torch.where(ell < 0, 2 * w, w)
        seen["ell"] = ell
        return x0 + w.reshape(-1, *([1] * (x0.dim() - 1))) * term

    def second(x, sigma, **c):
        x0 = base(x, sigma, **c).to(torch.float64)
        if guide.w2 == 0:
            return x0
        term, _ = guide.guidance(x, sigma, c)
        return x0 + guide.w2 * term

    out = heun_step(first, x_hat, t_hat, t_next, cond, denoiser2=second)
    return out, seen.get("ell")


def sedm(denoiser, sigmas, *, log_ratio=None, num_samples: int, shape, generator, x_init=None,
         eps_scaler: float = 1.004, w1: float = 1.67, kappa: float = 0.0, **params) -> MethodResult:
    """SEDM-G++ (Tsonis et al.): :func:`dg` with ε-scaling 1.004 and w1 = 1.67, no correction-step
    guidance; with ``log_ratio=None`` pure ε-scaling (EDM-ES, Ning et al.)."""
    if params.get("w2", 0.0) != 0.0:
        raise ValueError("SEDM-G++ applies no guidance on the Heun correction; w2 must be 0 (use dg for w2)")
    return dg(denoiser, sigmas, log_ratio=log_ratio, num_samples=num_samples, shape=shape, generator=generator,
              x_init=x_init, eps_scaler=eps_scaler, w1=w1, kappa=kappa, **params)
