"""Closed-form tilted mixtures: the exact answer every steering method is tested against.

A steering method samples ``pi(x0) = p(x0) exp(r(x0)) / Z`` from a diffusion model of ``p``,
where ``r`` is a reward (any inverse temperature λ folded in). When ``p`` is a
:class:`~smcdiff.models.GaussianMixture` ``sum_k pi_k N(mu_k, Sigma_k)`` and ``r`` is a quadratic
or a linear reward, ``pi`` is again a Gaussian mixture and ``Z = E_p[exp r(x0)]`` is known
(REFERENCE-STEERING §D.1–D.3):

* quadratic, ``r(x) = -λ ||A x - y||^2 / (2 s^2)``: a linear-Gaussian likelihood
  ``N(y; A x, v I)`` with ``v = s^2/λ``, times ``(2π v)^{m/2}``, so ``pi`` is the mixture's
  posterior (:meth:`GaussianMixture.condition`) and ``log Z = log p(y) + (m/2) log(2π v)``;
* linear, ``r(x) = λ bᵀx``: the same covariances, ``mu'_k = mu_k + λ Sigma_k b``,
  ``pi'_k ∝ pi_k exp(λ bᵀmu_k + λ² bᵀSigma_k b / 2)``, ``Z = sum_k`` of those unnormalised weights.

Both come back as a :class:`Tilt`: the ``prior``, the tilted ``target`` mixture, ``log_z``, the
``reward`` callable (``x0 : (N, *shape) -> (N,)``, differentiable, the method's ``reward=``), and
:meth:`Tilt.log_value`, the exact soft value ``log E[exp r(x0) | x_sigma = x] = log Z +
log pi_sigma(x) - log p_sigma(x)`` (the ideal twist of TDS / DTS). :func:`example_2d` and
:func:`example_8d` build the two problems the steering tests and benchmark use.

    >>> import torch
    >>> from smcdiff.models.tilted import example_2d
    >>> tilt = example_2d("quadratic")                       # REFERENCE-STEERING §F numbers
    >>> round(float(tilt.log_z.exp()), 8)
    0.09946302
    >>> [round(v, 6) for v in tilt.target.mean.tolist()]
    [1.033349, -0.028]
    >>> x0 = tilt.target.sample(5, torch.Generator().manual_seed(0))
    >>> tilt.reward(x0).shape                                # (N,) log-tilt, λ folded in
    torch.Size([5])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from smcdiff.models.gmm import GaussianMixture
from smcdiff.types import Tensor

__all__ = [
    "LinearReward",
    "QuadraticReward",
    "Tilt",
    "component_weights",
    "example_2d",
    "example_8d",
    "linear_tilt",
    "quadratic_tilt",
]

F64 = torch.float64


def _flat(x0: Tensor, d: int) -> Tensor:
    if not isinstance(x0, Tensor) or x0.ndim < 1 or math.prod(x0.shape[1:]) != d:
        got = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
        raise ValueError(f"expected x0 of shape (N, ...) with {d} elements per sample, got {got}")
    return x0.reshape(x0.shape[0], d)


def _lam(lam) -> float:
    lam = float(lam)
    if not math.isfinite(lam) or lam <= 0:
        raise ValueError(f"lam must be a finite float > 0, got {lam!r}")
    return lam


class QuadraticReward:
    """``r(x0) = -lam ||A x0 - y||^2 / (2 s^2)``: ``x0 : (N, *shape)`` (``prod(shape) = d``) -> ``(N,)``.

    ``A : (m, d)``, ``y : (m,)``, ``s > 0``, ``lam > 0``. Differentiable in ``x0``; returns
    ``x0``'s dtype if floating.
    """

    def __init__(self, A, y, s: float = 1.0, lam: float = 1.0):
        self.A = torch.as_tensor(A, dtype=F64)
        self.y = torch.as_tensor(y, dtype=F64)
        if self.A.ndim != 2 or self.y.shape != self.A.shape[:1]:
            raise ValueError(f"expected A (m, d) and y (m,), got {tuple(self.A.shape)} and {tuple(self.y.shape)}")
        self.s, self.lam = float(s), _lam(lam)
        if not math.isfinite(self.s) or self.s <= 0:
            raise ValueError(f"s must be a finite float > 0, got {s!r}")

    def __call__(self, x0: Tensor, **cond) -> Tensor:
        x = _flat(x0, self.A.shape[1])
        resid = x @ self.A.to(x).mT - self.y.to(x)
        return -self.lam * resid.pow(2).sum(-1) / (2.0 * self.s**2)

    def __repr__(self) -> str:
        return f"QuadraticReward(m={self.A.shape[0]}, d={self.A.shape[1]}, s={self.s}, lam={self.lam})"


class LinearReward:
    """``r(x0) = lam bᵀx0``: ``x0 : (N, *shape)`` (``prod(shape) = d``) -> ``(N,)``; ``b : (d,)``."""

    def __init__(self, b, lam: float = 1.0):
        self.b = torch.as_tensor(b, dtype=F64)
        if self.b.ndim != 1:
            raise ValueError(f"expected b of shape (d,), got {tuple(self.b.shape)}")
        self.lam = _lam(lam)

    def __call__(self, x0: Tensor, **cond) -> Tensor:
        x = _flat(x0, self.b.shape[0])
        return self.lam * (x @ self.b.to(x))

    def __repr__(self) -> str:
        return f"LinearReward(d={self.b.shape[0]}, lam={self.lam})"


@dataclass(frozen=True)
class Tilt:
    """``target ∝ prior · exp(reward)`` in closed form; ``log_z = log E_prior[exp reward(x0)]`` (0-d)."""

    prior: GaussianMixture
    target: GaussianMixture
    log_z: Tensor
    reward: object

    def log_value(self, x: Tensor, sigma) -> Tensor:
        """Exact soft value ``log E[exp r(x0) | x_sigma = x]``: ``x : (N, *shape)``, ``sigma : (N,)`` -> ``(N,)``.

        Equals ``log Z + log pi_sigma(x) - log p_sigma(x)`` (§D.3); at ``sigma = 0`` it is ``r(x)``
        (up to rounding). Differentiable in ``x``.
        """
        return self.log_z + self.target.log_prob_noised(x, sigma) - self.prior.log_prob_noised(x, sigma)


def quadratic_tilt(prior: GaussianMixture, A, y, s: float = 1.0, lam: float = 1.0) -> Tilt:
    """Tilt ``prior`` by :class:`QuadraticReward` ``(A, y, s, lam)`` (closed form, see the module doc)."""
    reward = QuadraticReward(A, y, s, lam)
    v = reward.s**2 / reward.lam  # exp(r) = N(y; A x, v I) (2π v)^{m/2}
    target, log_evidence = prior.condition(reward.A.to(prior.dtype), reward.y.to(prior.dtype), v)
    m = reward.A.shape[0]
    return Tilt(prior, target, log_evidence + 0.5 * m * math.log(2.0 * math.pi * v), reward)


def linear_tilt(prior: GaussianMixture, b, lam: float = 1.0) -> Tilt:
    """Tilt ``prior`` by :class:`LinearReward` ``(b, lam)`` (closed form, see the module doc)."""
    reward = LinearReward(b, lam)
    if reward.b.shape[0] != prior.dim:
        raise ValueError(f"expected b of shape ({prior.dim},), got {tuple(reward.b.shape)}")
    c = reward.lam * reward.b.to(prior.dtype)  # (d,)
    Sb = prior.covs @ c  # (C, d): Sigma_k λb
    log_w = prior.weights.log() + prior.means @ c + 0.5 * (Sb @ c)
    log_z = log_w.logsumexp(0)
    target = GaussianMixture((log_w - log_z).exp(), prior.means + Sb, prior.covs, dtype=prior.dtype)
    return Tilt(prior, target, log_z, reward)


def component_weights(mixture: GaussianMixture, x: Tensor, log_weights: Tensor | None = None) -> Tensor:
    """Estimate of ``mixture``'s component weights from (weighted) samples: ``(C,)``.

    The (self-normalised) weighted mean of the responsibilities ``p(k | x)``; unbiased for the
    mixture's own weights when ``x : (N, *shape)`` are i.i.d. draws of it (``E[p(k | X)] = pi_k``),
    so its error measures how far a sampler is from the mixture. ``log_weights : (N,)`` optional.
    """
    resp = mixture.responsibilities(_flat(x, mixture.dim).to(mixture.dtype))  # (N, C)
    if log_weights is None:
        return resp.mean(0)
    w = torch.softmax(torch.as_tensor(log_weights, dtype=resp.dtype).reshape(-1), 0)
    if w.shape[0] != resp.shape[0]:
        raise ValueError(f"expected log_weights of shape ({resp.shape[0]},), got {tuple(w.shape)}")
    return w @ resp


def _mixture_2d() -> GaussianMixture:
    L = torch.tensor([[[0.5, 0.0], [0.2, 0.3]], [[0.3, 0.0], [-0.1, 0.4]], [[0.25, 0.0], [0.0, 0.6]]], dtype=F64)
    means = torch.tensor([[-1.0, 0.5], [1.5, -0.5], [0.0, 2.0]], dtype=F64)
    return GaussianMixture(torch.tensor([0.5, 0.3, 0.2], dtype=F64), means, L @ L.mT)


def example_2d(kind: str = "quadratic") -> Tilt:
    """The 2-D problem of REFERENCE-STEERING §F (3 full-covariance components).

    ``"quadratic"``: ``A = [[1, -0.5]]``, ``y = 0.7``, ``s = 1``, ``lam = 3`` (``Z = 0.0994630213``,
    tilted mean ``(1.03334927, -0.02800035)``); ``"linear"``: ``b = (0.8, -0.3)``, ``lam = 1.5``
    (``Z = 2.73380693``, mean ``(1.45195769, -0.47407519)``).
    """
    prior = _mixture_2d()
    if kind == "quadratic":
        return quadratic_tilt(prior, [[1.0, -0.5]], [0.7], 1.0, 3.0)
    if kind == "linear":
        return linear_tilt(prior, [0.8, -0.3], 1.5)
    raise ValueError(f"kind must be 'quadratic' or 'linear', got {kind!r}")


def _mixture_8d() -> GaussianMixture:
    g = torch.Generator().manual_seed(8)
    C, d = 4, 8
    means = 2.0 * torch.randn(C, d, generator=g, dtype=F64)
    L = 0.25 * torch.randn(C, d, d, generator=g, dtype=F64).tril(-1) + torch.diag_embed(
        0.3 + 0.3 * torch.rand(C, d, generator=g, dtype=F64))
    return GaussianMixture(torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=F64), means, L @ L.mT)


def example_8d(kind: str = "quadratic") -> Tilt:
    """An 8-D problem: 4 full-covariance components (weights 0.4/0.3/0.2/0.1, means and
    Cholesky factors from ``torch.Generator().manual_seed(8)``).

    ``"quadratic"``: two measurements ``y = A x + noise`` with ``A`` the first two coordinates'
    sum and difference, ``y = (1, -0.5)``, ``s = 1``, ``lam = 1``; ``"linear"``: ``b = (0.3, -0.2,
    0.1, 0, 0, 0, 0.2, 0)``, ``lam = 1``. Both move most of the mass to other components than
    the prior's (see the tests for the numbers).
    """
    prior = _mixture_8d()
    if kind == "quadratic":
        A = torch.zeros(2, 8, dtype=F64)
        A[0, :2] = 1.0
        A[1, 0], A[1, 1] = 1.0, -1.0
        return quadratic_tilt(prior, A, [1.0, -0.5], 1.0, 1.0)
    if kind == "linear":
        return linear_tilt(prior, [0.3, -0.2, 0.1, 0.0, 0.0, 0.0, 0.2, 0.0], 1.0)
    raise ValueError(f"kind must be 'quadratic' or 'linear', got {kind!r}")
