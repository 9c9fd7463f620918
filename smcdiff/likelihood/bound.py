"""The denoising lower bound (ELBO) on log p_{σ_min}(x), in the EDM convention.

For a point ``y`` at noise level ``σ_min`` (the density :func:`~smcdiff.likelihood.log_prob`
returns), noise it further: ``z = y + √τ ε`` with ``τ = σ² − σ_min²``, so ``z`` is a draw of
``p_σ``. The model's guess of ``y`` is ``ŷ = z + (τ/σ²)(D(z; σ) − z)`` (Tweedie with the score
``(D − z)/σ²``). The continuous-time variational bound of Kingma et al. (2021), written in
``u = ln σ`` (its ``τ₀ → 0`` limit, with the Gaussian reconstruction term folded in), is

    log p_{σ_min}(y) ≥ E_ε log π(y + √τ_max ε) + ∫_{ln σ_min}^{ln σ_max} σ² (dτ − E_ε‖y − ŷ‖²)/τ² du,

``d`` values per sample, ``π`` the prior (default ``N(0, σ_max² I)``, integrated in closed form).
It bounds the density of the reverse-**SDE** model; for an exact denoiser that equals the ODE
density of :func:`log_prob`, and with the exact prior the bound is **tight**: equality in
expectation for any Gaussian mixture (the model's path law is the data's). The estimator:

* **σ distribution.** ``ln σ`` is drawn on ``[ln σ_min, ln σ_max]`` from ``sigma_dist``:
  ``"loguniform"`` (uniform in ln σ; default) or ``"edm"`` (EDM's training law ln σ ~ N(−1.2, 1.2²),
  truncated), each draw weighted by 1/density. Draw ``j`` of sample ``i`` takes the quantile
  ``frac(φ(j) + U_i)`` (φ the base-2 van der Corput sequence, one uniform shift ``U_i`` per sample
  from ``generator``): each draw is exactly distributed, and every prefix of the draws is spread
  evenly over the range (randomised quasi-Monte Carlo). ``stderr`` uses the i.i.d. formula, which
  over-states the error of such draws.
* **Noise.** ε ~ N(0, I) from ``generator``, used as the antithetic pair ±ε (2 network evaluations
  per draw): it cancels the ``1/√τ`` term near σ_min, whose variance would otherwise be infinite.
* **Control variates.** ``dτ`` is replaced by ``cτ‖ε‖² + (1 − c)dτ`` (same mean) with
  ``c = (v/(v + τ))²``, ``v = σ_data² + σ_min²``, and the integrand's value for a Gaussian of
  variance ``v`` centred on the point, ``dσ²(2v + τ)/(v + τ)²``, is integrated in closed form
  (:func:`baseline_integral`), so what is sampled vanishes at both ends of the σ range and
  heavy importance weights (``sigma_dist="edm"``) stay harmless.
* **Cost.** ``2·num_draws`` denoiser evaluations per sample, no gradients.
* **Weighting.** In ``u = ln σ`` the x̂0 error enters with weight ``1/σ²`` (``τ = σ²`` when
  σ_min → 0: the integrand is ``d − E‖D(y + σε; σ) − y‖²/σ²``, the ε-prediction error), not EDM's
  training weight ``λ(σ) = (σ² + σ_d²)/(σσ_d)²``.

    >>> import torch
    >>> from smcdiff.models import GaussianMixture
    >>> from smcdiff.likelihood import elbo
    >>> gmm = GaussianMixture(torch.tensor([1.0]), torch.tensor([[0.5, -1.0]]), torch.tensor([0.4]))
    >>> x = gmm.sample(4, torch.Generator().manual_seed(0))
    >>> res = elbo(gmm, x, sigma_min=0.01, sigma_max=50.0, num_draws=256,
    ...            generator=torch.Generator().manual_seed(1), prior=gmm.noised(50.0).log_prob)
    >>> exact = gmm.noised(0.01).log_prob(x)
    >>> bool(((res.elbo - exact).abs() < 5 * res.stderr + 1e-9).all()), res.nfe
    (True, 512)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from smcdiff import _rng
from smcdiff.likelihood.inputs import (
    call_denoiser,
    check_batch,
    check_cond,
    check_sigma_range,
)
from smcdiff.types import Tensor

__all__ = ["SIGMA_DISTS", "ElboResult", "baseline_integral", "elbo", "elbo_integrand", "radical_inverse", "sigma_points"]

#: ln σ distributions of :func:`elbo` and the diffusion classifier.
SIGMA_DISTS = ("loguniform", "edm")
#: EDM's training law of ln σ (Karras et al. 2022): N(P_mean, P_std²).
EDM_P_MEAN, EDM_P_STD = -1.2, 1.2


@dataclass(frozen=True)
class ElboResult:
    """What :func:`elbo` returns: ``elbo : (N,)`` float64 (nats), its Monte Carlo ``stderr : (N,)``,
    ``nfe`` denoiser evaluations per sample (``2·num_draws``), and the settings used."""

    elbo: Tensor
    stderr: Tensor
    nfe: int
    num_draws: int
    sigma_min: float
    sigma_max: float
    sigma_dist: str


def radical_inverse(index: Tensor) -> Tensor:
    """Base-2 van der Corput points ``φ(j)`` in [0, 1) of ``index : (K,)`` (non-negative ints)."""
    i = torch.as_tensor(index, dtype=torch.int64).clone()
    if (i < 0).any():
        raise ValueError("radical_inverse needs non-negative indices")
    out, f = torch.zeros(i.shape, dtype=torch.float64), 0.5
    while bool((i > 0).any()):
        out += f * (i & 1).to(torch.float64)
        i >>= 1
        f /= 2
    return out


def sigma_points(shift: Tensor, index: Tensor, *, sigma_min: float, sigma_max: float,
                 dist: str = "loguniform") -> tuple[Tensor, Tensor]:
    """``(ln σ, log density of ln σ)``, both ``(N, K)`` float64, for uniform shifts ``shift : (N,)``
    (or one per draw, ``(N, K)``) and draw indices ``index : (K,)``: the quantile
    ``1 − frac(φ(j) + shift)`` in (0, 1] of ``dist`` on ``[ln sigma_min, ln sigma_max]`` (see the
    module docstring)."""
    if dist not in SIGMA_DISTS:
        raise ValueError(f"sigma_dist must be one of {SIGMA_DISTS}, got {dist!r}")
    shift = shift.to(torch.float64)
    q = 1.0 - torch.frac(radical_inverse(index)[None, :] + (shift[:, None] if shift.ndim == 1 else shift))
    a, b = math.log(sigma_min), math.log(sigma_max)
    if dist == "loguniform":
        return a + (b - a) * q, torch.full_like(q, -math.log(b - a))
    lo, hi = (torch.tensor((a, b), dtype=torch.float64) - EDM_P_MEAN) / EDM_P_STD
    c_lo, c_hi = torch.special.ndtr(lo), torch.special.ndtr(hi)
    w = (EDM_P_MEAN + EDM_P_STD * torch.special.ndtri(c_lo + q * (c_hi - c_lo))).clamp(a, b)
    r = (w - EDM_P_MEAN) / EDM_P_STD
    log_pdf = -0.5 * r * r - 0.5 * math.log(2 * math.pi) - math.log(EDM_P_STD) - torch.log(c_hi - c_lo)
    return w, log_pdf


def elbo_integrand(denoiser, y: Tensor, log_sigma: Tensor, eps: Tensor, *, sigma_level: float, sigma_data: float,
                   cond: dict | None = None) -> Tensor:
    """The bound's integrand in ``u = ln σ`` minus its Gaussian baseline, one draw per row.

    ``y : (R, *shape)`` points at noise level ``sigma_level`` (>= 0; 0 = clean data),
    ``log_sigma : (R,)`` above it, ``eps : (R, *shape)``; returns ``(R,)`` float64

        −σ²(2v + τ)‖ε‖²/(v + τ)² − 2εᵀg/√τ − ‖g‖²/σ²,   g = D(z; σ) − z,  z = y + √τ ε,

    ``v = σ_data² + sigma_level²``: the integrand with the control variate, minus
    ``b(u) = dσ²(2v + τ)/(v + τ)²`` (whose integral :func:`baseline_integral` gives in closed form),
    written without cancellation. It vanishes at both ends of the σ range.
    """
    R, d = y.shape[0], math.prod(y.shape[1:])
    sigma = log_sigma.exp()
    tau = _tau(log_sigma, sigma_level)
    root = tau.sqrt().reshape(R, *([1] * (y.dim() - 1)))
    z = y + root * eps
    g = (call_denoiser(denoiser, z, sigma, cond) - z).reshape(R, d)
    e = eps.reshape(R, d)
    v = sigma_data**2 + sigma_level**2
    return -sigma**2 * (2 * v + tau) * (e * e).sum(1) / (v + tau) ** 2 - 2 * (e * g).sum(1) / tau.sqrt() - (g * g).sum(1) / sigma**2


def _tau(log_sigma: Tensor, sigma_level: float) -> Tensor:
    """τ = σ² − s0² (without cancellation just above s0)."""
    if sigma_level > 0:
        return sigma_level**2 * torch.expm1(2 * (log_sigma - math.log(sigma_level)))
    return torch.exp(2 * log_sigma)


def baseline_integral(d: int, *, sigma_lo: float, sigma_hi: float, sigma_level: float, sigma_data: float) -> float:
    """``∫ dσ²(2v + τ)/(v + τ)² d ln σ`` over ``[ln sigma_lo, ln sigma_hi]`` = ``d/2 [ln(v + τ) − v/(v + τ)]``
    between the ends (``τ = σ² − sigma_level²``, ``v = sigma_data² + sigma_level²``)."""
    v = sigma_data**2 + sigma_level**2

    def F(sigma: float) -> float:
        tau = sigma**2 - sigma_level**2
        return 0.5 * d * (math.log(v + tau) - v / (v + tau))

    return F(sigma_hi) - F(sigma_lo)


@torch.no_grad()
def elbo(denoiser, x: Tensor, *, sigma_min: float, sigma_max: float, num_draws: int = 64, generator,
         cond=None, sigma_dist: str = "loguniform", prior: Callable[[Tensor], Tensor] | None = None,
         sigma_data: float | None = None, replicates: int = 8, batch_size: int = 4096) -> ElboResult:
    """Monte Carlo ELBO of log p_{σ_min}(x) for ``x : (N, *shape)`` (see the module docstring).

    Args:
        denoiser: ``D(x, sigma, **cond) -> x0_hat``.
        sigma_min, sigma_max: ``0 < sigma_min < sigma_max``; the bound is on the density smoothed
            to ``sigma_min``, with the prior at ``sigma_max``.
        num_draws: (σ, ε) draws per sample, each evaluated at ±ε.
        generator: ``torch.Generator`` or one per sample; draws the shifts, then ε.
        cond: denoiser keyword arguments (tensors with a leading axis N).
        sigma_dist: ``"loguniform"`` or ``"edm"``.
        prior: ``log π(z) : (N, *shape) -> (N,)``; default ``N(0, sigma_max² I)`` in closed form,
            otherwise averaged over the same ±ε draws.
        sigma_data: scale of the control variate (default: the denoiser's ``sigma_data``, else 0.5);
            it changes the variance, never the expectation.
        replicates: independent shifts per sample (``num_draws`` must be a multiple); ``stderr``
            is the spread of the replicate means (randomised QMC); 1 gives the i.i.d. formula.
        batch_size: rows per denoiser call.
    """
    x = check_batch(x)
    lo, hi = check_sigma_range(sigma_min, sigma_max, denoiser)
    N, shape, d = x.shape[0], tuple(x.shape[1:]), math.prod(x.shape[1:])
    cond = check_cond(cond, N)
    for name, value in (("num_draws", num_draws), ("replicates", replicates), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if num_draws % replicates:
        raise ValueError(f"num_draws={num_draws} must be a multiple of replicates={replicates}")
    sd = float(getattr(denoiser, "sigma_data", 0.5) if sigma_data is None else sigma_data)
    if not (math.isfinite(sd) and sd > 0):
        raise ValueError(f"sigma_data must be positive, got {sigma_data!r}")
    _rng.check_generator(generator, None if isinstance(generator, torch.Generator) else N)
    K, R = num_draws, replicates
    # Draws: R shifts per sample (draw j in replicate j // (K/R)), then the noises.
    shift = _rng.rand((N, R), generator).repeat_interleave(K // R, dim=1)
    index = torch.arange(K) % (K // R)
    log_sigma, log_pdf = sigma_points(shift, index, sigma_min=lo, sigma_max=hi, dist=sigma_dist)
    eps = _rng.randn((N, K, *shape), generator)
    # The integrand at +ε and −ε, row-chunked: rows are (sample, draw, sign).
    rows_i = torch.arange(N).repeat_interleave(2 * K)
    rows_j = torch.arange(K).repeat_interleave(2).repeat(N)
    sign = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(N * K)
    values = torch.empty(N * K * 2, dtype=torch.float64)
    for start in range(0, values.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        i, j = rows_i[sl], rows_j[sl]
        e = sign[sl].reshape(-1, *([1] * len(shape))) * eps[i, j]
        c = {k: (v[i] if isinstance(v, Tensor) else v) for k, v in cond.items()}
        values[sl] = elbo_integrand(denoiser, x[i], log_sigma[i, j], e, sigma_level=lo, sigma_data=sd, cond=c)
    terms = values.reshape(N, K, 2).mean(2) * torch.exp(-log_pdf)  # (N, K) importance-weighted
    terms = terms + baseline_integral(d, sigma_lo=lo, sigma_hi=hi, sigma_level=lo, sigma_data=sd)
    # Prior term: closed form for N(0, σ_max² I), else the same ±ε draws.
    tau_max = hi**2 - lo**2
    if prior is None:
        terms = terms + (-0.5 * (d * math.log(2 * math.pi * hi**2) + ((x * x).reshape(N, -1).sum(1) + d * tau_max) / hi**2))[:, None]
    else:
        z = x[:, None, None] + math.sqrt(tau_max) * torch.stack([eps, -eps], 2)  # (N, K, 2, *shape)
        lp = torch.as_tensor(prior(z.reshape(N * K * 2, *shape)), dtype=torch.float64)
        if lp.shape != (N * K * 2,) or not torch.isfinite(lp).all():
            raise ValueError(f"prior must return finite values of shape (M,) for z : (M, *shape), got {tuple(lp.shape)}")
        terms = terms + lp.reshape(N, K, 2).mean(2)
    groups = terms.reshape(N, R, K // R).mean(2) if R > 1 else terms  # replicate means (or draws)
    n_groups = groups.shape[1]
    stderr = groups.std(1) / math.sqrt(n_groups) if n_groups >= 2 else torch.full((N,), math.inf, dtype=torch.float64)
    return ElboResult(terms.mean(1), stderr, 2 * K, K, lo, hi, sigma_dist)
