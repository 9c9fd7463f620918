"""Noise-level schedules σ_0 > σ_1 > … > σ_{N-1} > σ_N = 0 (float64), as in EDM (Karras et al.).

    >>> [round(s, 3) for s in karras_sigmas(18)[:3].tolist()]
    [80.0, 57.586, 40.786]
    >>> [len(f(18)) for f in (vp_sigmas, ve_sigmas, iddpm_sigmas)]
    [19, 19, 19]

Every schedule returns ``num_steps + 1`` values ending in 0; :func:`check_sigmas` validates a
user-supplied one. Arguments are checked before any arithmetic: ``num_steps`` an int >= 1
(a NumPy integer is fine, ``True`` and ``8.0`` are refused), every knob a finite real number in
its range (``karras_sigmas(8, rho=nan)`` raises ``ValueError: rho must be > 0, got nan``), and the
result is checked once more to be finite and strictly decreasing.
"""

from __future__ import annotations

import math

import torch

from smcdiff.checks import check_int, check_real

__all__ = ["karras_sigmas", "vp_sigmas", "ve_sigmas", "iddpm_sigmas", "check_sigmas", "vp_time", "vp_time_from_integral", "vp_alpha", "VP_BETA_D", "VP_BETA_MIN"]

VP_BETA_D = 19.9
VP_BETA_MIN = 0.1


def _check_n(num_steps) -> int:
    return check_int(num_steps, "num_steps", minimum=1)


def _check_range(sigma_min, sigma_max) -> tuple[float, float]:
    lo = check_real(sigma_min, "sigma_min", low=0, low_open=True)
    hi = check_real(sigma_max, "sigma_max", low=0, low_open=True)
    if not lo < hi:
        raise ValueError(f"expected 0 < sigma_min < sigma_max, got sigma_min={lo}, sigma_max={hi}")
    return lo, hi


def _append_zero(s: torch.Tensor, who: str) -> torch.Tensor:
    """``s`` followed by 0, after checking it is finite, positive and strictly decreasing (a knob
    combination can still overflow, e.g. a huge rho)."""
    if not bool(torch.isfinite(s).all() & (s > 0).all() & (s[1:] < s[:-1]).all()):
        raise ValueError(f"{who}: these settings give noise levels that are not finite, positive and strictly "
                         f"decreasing ({s.tolist()[:4]}...); use values closer to the defaults")
    return torch.cat([s, s.new_zeros(1)])


def karras_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """EDM's schedule (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, i = 0..N−1, then 0.

    Returns a float64 tensor of ``num_steps + 1`` values. With ``num_steps = 1`` it is [σ_max, 0].
    """
    num_steps = _check_n(num_steps)
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    rho = check_real(rho, "rho", low=0, low_open=True)
    i = torch.arange(num_steps, dtype=torch.float64)
    frac = i / max(num_steps - 1, 1)
    s = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return _append_zero(s, "karras_sigmas")


def _vp_sigma(t: torch.Tensor, beta_d: float, beta_min: float) -> torch.Tensor:
    return torch.sqrt(torch.exp(0.5 * beta_d * t**2 + beta_min * t) - 1)


def vp_sigmas(num_steps: int, epsilon_s: float = 1e-3, beta_d: float = VP_BETA_D, beta_min: float = VP_BETA_MIN) -> torch.Tensor:
    """The VP (DDPM++) discretisation: t_i = 1 + i/(N−1)·(ε_s − 1), σ_i = σ_vp(t_i), then 0.

    ``epsilon_s`` in (0, 1), ``beta_d`` > 0 and ``beta_min`` >= 0 (finite).
    """
    num_steps = _check_n(num_steps)
    epsilon_s = check_real(epsilon_s, "epsilon_s", low=0, high=1, low_open=True, high_open=True)
    beta_d = check_real(beta_d, "beta_d", low=0, low_open=True)
    beta_min = check_real(beta_min, "beta_min", low=0)
    i = torch.arange(num_steps, dtype=torch.float64)
    t = 1 + i / max(num_steps - 1, 1) * (epsilon_s - 1)
    return _append_zero(_vp_sigma(t, beta_d, beta_min), "vp_sigmas")


def ve_sigmas(num_steps: int, sigma_min: float = 0.02, sigma_max: float = 100.0) -> torch.Tensor:
    """The VE (NCSN++) discretisation: geometric σ_i = σ_max·(σ_min/σ_max)^{i/(N−1)}, then 0."""
    num_steps = _check_n(num_steps)
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    i = torch.arange(num_steps, dtype=torch.float64)
    s = sigma_max * (sigma_min / sigma_max) ** (i / max(num_steps - 1, 1))
    return _append_zero(s, "ve_sigmas")


def iddpm_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 81.0, C1: float = 0.001, C2: float = 0.008, M: int = 1000) -> torch.Tensor:
    """The improved-DDPM discretisation: N evenly spaced (rounded) points of the cosine grid u_j.

    ``C1`` in (0, 1], ``C2`` >= 0, ``M`` an int >= 1 (the grid size); at least two grid points
    must fall in [sigma_min, sigma_max] when ``num_steps`` > 1.
    """
    num_steps = _check_n(num_steps)
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    C1 = check_real(C1, "C1", low=0, high=1, low_open=True)
    C2 = check_real(C2, "C2", low=0)
    M = check_int(M, "M", minimum=1)

    def alpha_bar(j: int) -> float:
        return math.sin(0.5 * math.pi * j / M / (C2 + 1)) ** 2

    u = [0.0] * (M + 1)
    for j in range(M, 0, -1):
        u[j - 1] = math.sqrt((u[j] ** 2 + 1) / max(alpha_bar(j - 1) / alpha_bar(j), C1) - 1)
    u_t = torch.tensor(u, dtype=torch.float64)
    u_t = u_t[(u_t >= sigma_min) & (u_t <= sigma_max)]
    if len(u_t) < min(num_steps, 2):
        raise ValueError(f"iddpm_sigmas: {len(u_t)} of the M + 1 = {M + 1} grid points lie in [sigma_min, sigma_max] = "
                         f"[{sigma_min}, {sigma_max}]; need at least {min(num_steps, 2)} (widen the range or raise M)")
    idx = torch.arange(num_steps, dtype=torch.float64) * (len(u_t) - 1) / max(num_steps - 1, 1)
    return _append_zero(u_t[torch.round(idx).long()], "iddpm_sigmas")


def check_sigmas(sigmas) -> torch.Tensor:
    """Validate a schedule and return it as a float64 1-D tensor.

    Expects at least two values, all finite and non-negative, strictly decreasing, ending in 0
    (the last step denoises). Raises ``ValueError`` saying what was expected.
    """
    if isinstance(sigmas, (str, bytes)) or (isinstance(sigmas, torch.Tensor) and sigmas.dtype == torch.bool):
        raise TypeError(f"sigmas must be a 1-D tensor or sequence of numbers, got {sigmas!r:.60}")
    try:
        s = torch.as_tensor(sigmas, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"sigmas must be a 1-D tensor or sequence of numbers, got {sigmas!r:.60}") from None
    if s.dim() != 1 or s.numel() < 2:
        raise ValueError(f"expected a 1-D schedule of at least 2 noise levels, got shape {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise ValueError("noise levels must be finite and non-negative")
    if not bool((s[1:] < s[:-1]).all()):
        raise ValueError(f"sigmas must be strictly decreasing (σ_0 > σ_1 > … > 0), got {s.tolist()}")
    if float(s[-1]) != 0.0:
        raise ValueError(f"sigmas must end in 0 (got last value {float(s[-1])}); use karras_sigmas(...) or append 0")
    return s


def vp_time(sigma, beta_min: float = VP_BETA_MIN, beta_max: float = 20.0):
    """The VP time τ(σ) ∈ [0, 1] of an EDM noise level (REFERENCE §0.3).

    τ = (−β0 + √(β0² + 2(β1 − β0)·ln(1 + σ²))) / (β1 − β0), β0 = 0.1, β1 = 20. Elementwise on a tensor.
    """
    sigma = torch.as_tensor(sigma)
    return vp_time_from_integral(torch.log1p(sigma**2), beta_min, beta_max)


def vp_time_from_integral(integral, beta_min: float = VP_BETA_MIN, beta_max: float = 20.0):
    """The VP time t whose integrated β, I(t) = ½t²(β1 − β0) + tβ0, equals ``integral`` (= ln(1 + σ²))."""
    bd = beta_max - beta_min
    return (-beta_min + torch.sqrt(beta_min**2 + 2 * bd * integral)) / bd


def vp_alpha(tau, beta_min: float = VP_BETA_MIN, beta_max: float = 20.0):
    """The VP signal scale α(τ) = exp(−¼τ²(β1 − β0) − ½τβ0) (= 1/√(1 + σ²) at τ = τ(σ))."""
    tau = torch.as_tensor(tau)
    return torch.exp(-0.25 * tau**2 * (beta_max - beta_min) - 0.5 * tau * beta_min)
