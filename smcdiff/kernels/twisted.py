"""Steering kernels: the twisted proposal of TDS / DAS and the Feynman–Kac-corrected kernels of FKC.

All three are Euler–Maruyama steps of the reverse SDE (the transition of
:class:`~smcdiff.kernels.EulerMaruyama`: mean ``m = x + (v/σ²)(D(x; σ) − x)``, variance
``v = 2σ(σ − σ')``, and the deterministic ``x0 = D(x; σ)`` on the step to σ' = 0) that change the
drift and return, as ``StepOutput.log_weight``, the exact log-weight increment that keeps the
sampler's target. Each is used through :func:`smcdiff.sample` like any kernel.

* :class:`TwistedEulerMaruyama` (TDS, Wu et al. 2023; DAS, Kim et al. 2025). With a twist
  ``φ_σ(x) = twist(D(x; σ), σ)`` (e.g. ``reward(x̂0)``, or a tempered ``γ_σ·reward(x̂0)``), the
  proposal is ``q = N(m + v ∇ₓφ_σ(x), v)`` — the same Gaussian with its mean moved along the
  gradient of the twist, taken by autograd *through the denoiser* — and ``log_weight = log p(x'|x)
  − log q(x'|x) = −√v εᵀg − v‖g‖²/2`` (``x' = m + v g + √v ε``, ``g = ∇ₓφ``). The twist values
  themselves are the sampler's potential (difference form, ending in ``reward(x0)``: see
  :mod:`smcdiff.weights.steering`). The denoiser output and gradient at the new point are
  computed in the same call and kept in ``carry`` for the next one, so the returned ``x0_hat`` is
  ``D(x'; σ')`` and a whole run costs one denoiser forward+backward per step, like TDS. The last
  step returns the untwisted ``D(x; σ_{N−1})`` (no noise, no shift): the final weight is then the
  true ``reward(x0)`` over the last twist.
* :class:`ProductEulerMaruyama` (FKC, Skreta et al. 2025): targets ``q_σ ∝ p₁,σ^a · p₂,σ^b`` at
  every σ (classifier-free guidance: a = 1 − w on the unconditional, b = w on the conditional
  model; product of experts: a = b = 1) for two denoisers ``D₁, D₂``. The step is EM with the
  score ``a s₁ + b s₂`` (``s = (D − x)/σ²``), i.e. the denoiser ``a D₁ + b D₂ + (1 − a − b) x``,
  and the weight ``½(a‖s₁‖² + b‖s₂‖² − ‖a s₁ + b s₂‖²)·(σ'² − σ²)`` (REFERENCE-STEERING §B4; for
  CFG ``w(w − 1)‖D_c − D_u‖²(σ² − σ'²)/(2σ⁴)``). Two denoiser calls per step, no gradients.
* :class:`RewardEulerMaruyama` (FKC for a reward on the noisy state): targets ``q_σ ∝ p_σ(x)
  exp(β_σ r(x))`` with an annealing ``β`` (0 at σ_max, 1 at σ = 0). The step is EM with the drift
  ``m + (v/2) β_σ ∇r(x)`` and the weight ``(β_σ' − β_σ) r(x) + ½ β_σ sᵀ∇r(x) (σ² − σ'²)`` (no
  Laplacian: the derivation is in the class docstring). One denoiser forward and one reward
  forward+backward per step, no gradient through the denoiser.

    >>> import torch, smcdiff
    >>> from smcdiff.models.tilted import example_2d
    >>> tilt = example_2d("linear")
    >>> kernel = TwistedEulerMaruyama(lambda x0_hat, sigma: tilt.reward(x0_hat))
    >>> g = torch.Generator().manual_seed(0)
    >>> x = 80.0 * torch.randn(4, 2, dtype=torch.float64, generator=g)
    >>> out = kernel(tilt.prior.denoise, x, smcdiff.karras_sigmas(8), 0, g)
    >>> out.x.shape, out.log_weight.shape, out.nfe.tolist(), sorted(out.carry)
    (torch.Size([4, 2]), torch.Size([4]), [2, 2, 2, 2], ['twisted.grad', 'twisted.x0_hat'])
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from smcdiff import _rng
from smcdiff.kernels.edm import levels
from smcdiff.kernels.steps import StepOutput, denoise, per_sample
from smcdiff.types import Tensor
from smcdiff.weights.values import log_values

__all__ = ["ProductEulerMaruyama", "RewardEulerMaruyama", "TwistedEulerMaruyama", "twist_gradient"]


def twist_gradient(denoiser, twist: Callable, x: Tensor, sigma: Tensor, cond=None) -> tuple[Tensor, Tensor, Tensor]:
    """``(D(x; σ), φ, ∇ₓφ)`` with ``φ = twist(D(x; σ), σ, **cond) : (N,)``, the gradient by autograd
    through the denoiser; ``x : (N, *shape)``, ``sigma : (N,)``; outputs detached, float64."""
    with torch.enable_grad():
        x_ = x.detach().requires_grad_(True)
        x0 = denoise(denoiser, x_, sigma, cond)
        value = log_values(twist(x0, sigma, **(cond or {})), x.shape[0], "twist(x0_hat, sigma)")
        grad = torch.autograd.grad(value.sum(), x_, allow_unused=True)[0] if value.requires_grad else None
    grad = torch.zeros_like(x) if grad is None else grad.to(torch.float64)
    return x0.detach(), value.detach().to(torch.float64), grad.detach()


def _em_moments(x: Tensor, x0: Tensor, t_cur: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``(N, *shape)`` and variance ``(N,)`` of the EM step of :class:`~smcdiff.kernels.EulerMaruyama`."""
    var = 2.0 * t_cur * (t_cur - t_next)
    return x + per_sample(var / t_cur**2, x) * (x0 - x), var


def _flat_dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).flatten(1).sum(1)


class TwistedEulerMaruyama:
    """TDS's twisted EM proposal (see the module docstring); ``twist(x0_hat, sigma, **cond) -> (N,)``.

    Call: ``(denoiser, x : (N, *shape), sigmas, i, generator, cond=None, *, resampled=None,
    carry=None) -> StepOutput`` with ``x0_hat = D(x'; σ_{i+1})``, ``log_weight = log p − log q``
    and ``carry = {"twisted.x0_hat", "twisted.grad"}``; ``nfe`` counts denoiser forwards (2 on
    the first step, 1 after, 0 on the last step; each forward also has a backward pass).
    """

    stochastic = True
    KEYS = ("twisted.x0_hat", "twisted.grad")

    def __init__(self, twist: Callable):
        if not callable(twist):
            raise TypeError(f"twist must be callable as twist(x0_hat, sigma, **cond) -> (N,), got {twist!r}")
        self.twist = twist

    def __call__(self, denoiser, x, sigmas, i, generator, cond=None, *, resampled=None, carry=None) -> StepOutput:
        t_cur, t_next = levels(x, sigmas, i)
        nfe = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        if carry and all(k in carry for k in self.KEYS):
            x0, grad = carry[self.KEYS[0]].to(x), carry[self.KEYS[1]].to(x)
        else:
            x0, _, grad = twist_gradient(denoiser, self.twist, x, t_cur, cond)
            nfe += 1
        zero = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        if float(sigmas[i + 1]) == 0.0:
            # Last step: the untwisted Tweedie estimate, no noise; the weight is the reward's business.
            return StepOutput(x0, x0, nfe, zero, zero, {self.KEYS[0]: x0, self.KEYS[1]: torch.zeros_like(x0)})
        # Twisted Gaussian move: the base mean shifted by v·∇φ, the base variance.
        mean, var = _em_moments(x, x0, t_cur, t_next)
        eps = _rng.randn_batch(x.shape, generator, dtype=x.dtype, device=x.device)
        sd = var.sqrt()
        x_next = mean + per_sample(var, x) * grad + per_sample(sd, x) * eps
        # Proposal correction log p(x'|x) − log q(x'|x).
        log_weight = -sd * _flat_dot(eps, grad) - 0.5 * var * grad.flatten(1).pow(2).sum(1)
        dim = x[0].numel()
        log_q = -0.5 * eps.flatten(1).pow(2).sum(1) - 0.5 * dim * torch.log(2 * torch.pi * var)
        # Denoiser and twist gradient at the new point, for the potential and the next step.
        x0_next, _, grad_next = twist_gradient(denoiser, self.twist, x_next, t_next, cond)
        return StepOutput(x_next, x0_next, nfe + 1, log_q, log_weight,
                          {self.KEYS[0]: x0_next, self.KEYS[1]: grad_next})

    def __repr__(self) -> str:
        return f"TwistedEulerMaruyama(twist={self.twist!r})"


class ProductEulerMaruyama:
    """FKC's corrected EM kernel for ``p₁^a p₂^b`` (see the module docstring).

    ``ProductEulerMaruyama(expert, a, b)``: the sampler's denoiser is ``D₁``, ``expert`` is
    ``D₂(x, sigma, **cond)``. ``nfe`` is 2 per step (two denoiser forwards). The sampler starts
    from ``N(0, σ_0² I)``, which for ``a + b = 1`` (CFG) is ``q_{σ_0}`` up to ``O(1/σ_0²)``; otherwise
    the first step weights it by ``exp(−(a + b − 1)‖x‖²/(2σ_0²))`` (each expert ≈ ``N(0, σ_0² I)``).
    """

    stochastic = True

    def __init__(self, expert: Callable, a: float, b: float):
        if not callable(expert):
            raise TypeError(f"expert must be a denoiser D2(x, sigma, **cond), got {expert!r}")
        self.expert, self.a, self.b = expert, float(a), float(b)

    def __call__(self, denoiser, x, sigmas, i, generator, cond=None, *, resampled=None, carry=None) -> StepOutput:
        t_cur, t_next = levels(x, sigmas, i)
        eps = _rng.randn_batch(x.shape, generator, dtype=x.dtype, device=x.device)
        d1, d2 = denoise(denoiser, x, t_cur, cond), denoise(self.expert, x, t_cur, cond)
        s1, s2 = (d1 - x) / per_sample(t_cur**2, x), (d2 - x) / per_sample(t_cur**2, x)
        s = self.a * s1 + self.b * s2
        # FK corrector: c·(τ' − τ) with c = ½(a‖s₁‖² + b‖s₂‖² − ‖a s₁ + b s₂‖²), τ = σ².
        sq = lambda v: v.flatten(1).pow(2).sum(1)
        c = 0.5 * (self.a * sq(s1) + self.b * sq(s2) - sq(s))
        log_weight = c * (t_next**2 - t_cur**2)
        if i == 0 and self.a + self.b != 1.0:  # start N(0, σ_0²) towards q_{σ_0} ≈ N(0, σ_0²)^{a+b}
            log_weight = log_weight - (self.a + self.b - 1.0) * x.flatten(1).pow(2).sum(1) / (2 * t_cur**2)
        # EM step with the product score (denoiser x + σ² s).
        x0 = x + per_sample(t_cur**2, x) * s
        nfe = torch.full((x.shape[0],), 2, dtype=torch.long, device=x.device)
        if float(sigmas[i + 1]) == 0.0:
            return StepOutput(x0, x0, nfe, None, log_weight)
        mean, var = _em_moments(x, x0, t_cur, t_next)
        return StepOutput(mean + per_sample(var.sqrt(), x) * eps, x0, nfe, None, log_weight)

    def __repr__(self) -> str:
        return f"ProductEulerMaruyama(expert={self.expert!r}, a={self.a}, b={self.b})"


class RewardEulerMaruyama:
    """FKC for ``q_σ ∝ p_σ(x) exp(β_σ r(x))``, ``r`` evaluated on the noisy state.

    ``RewardEulerMaruyama(reward, beta)``: ``reward(x, **cond) -> (N,)`` differentiable;
    ``beta(sigma : (N,)) -> (N,)`` with ``beta = 1`` at σ = 0. Derivation (τ = σ², u = −τ the
    sampling time): the simulated process ``dX = [s + (1/2) β∇r] du + dW`` has generator ``L``,
    and the target ``q̃ = p_τ e^φ`` (φ = β r, ``∂_τ log p = ½(Δ log p + ‖s‖²)``) gives
    ``(∂_u q̃ − L*q̃)/q̃ = −∂_τφ + ½ sᵀ∇φ``: the ``Δφ`` and ``‖∇φ‖²`` terms cancel for this
    drift. Integrated over a step (left point, ``−∂_τφ dτ ≈ φ_τ'(x) − φ_τ(x)``) that is the
    ``log_weight`` of the module docstring; the first step adds ``β_{σ_0} r(x)``, the weight of the
    start ``N(0, σ_0² I) ≈ p_{σ_0}`` towards ``q_{σ_0}`` (small when ``β_{σ_0} ≈ 0``).
    """

    stochastic = True

    def __init__(self, reward: Callable, beta: Callable):
        if not callable(reward) or not callable(beta):
            raise TypeError("RewardEulerMaruyama needs reward(x, **cond) -> (N,) and beta(sigma) -> (N,) callables")
        self.reward, self.beta = reward, beta

    def __call__(self, denoiser, x, sigmas, i, generator, cond=None, *, resampled=None, carry=None) -> StepOutput:
        t_cur, t_next = levels(x, sigmas, i)
        eps = _rng.randn_batch(x.shape, generator, dtype=x.dtype, device=x.device)
        x0 = denoise(denoiser, x, t_cur, cond)
        with torch.enable_grad():
            x_ = x.detach().requires_grad_(True)
            r = log_values(self.reward(x_, **(cond or {})), x.shape[0], "reward(x)")
            grad = torch.autograd.grad(r.sum(), x_, allow_unused=True)[0] if r.requires_grad else None
        grad = torch.zeros_like(x) if grad is None else grad.detach().to(torch.float64)
        r = r.detach().to(torch.float64)
        b_cur, b_next = self.beta(t_cur).to(r), self.beta(t_next).to(r)
        score = (x0 - x) / per_sample(t_cur**2, x)
        log_weight = (b_next - b_cur) * r + 0.5 * b_cur * _flat_dot(score, grad) * (t_cur**2 - t_next**2)
        if i == 0:  # the start N(0, σ_0²) ≈ p_{σ_0}: weight it to q_{σ_0} ∝ p_{σ_0} exp(β_{σ_0} r)
            log_weight = log_weight + b_cur * r
        # EM step with the drift s + (β/2)∇r (denoiser x + σ²(s + (β/2)∇r)).
        x0_drift = x0 + per_sample(0.5 * b_cur * t_cur**2, x) * grad
        nfe = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
        if float(sigmas[i + 1]) == 0.0:
            return StepOutput(x0_drift, x0, nfe, None, log_weight)
        mean, var = _em_moments(x, x0_drift, t_cur, t_next)
        return StepOutput(mean + per_sample(var.sqrt(), x) * eps, x0, nfe, None, log_weight)

    def __repr__(self) -> str:
        return f"RewardEulerMaruyama(reward={self.reward!r}, beta={self.beta!r})"
