"""Gaussian observation potentials: log N(y; A x̂0, R + c_σ·A Aᵀ) on the denoiser's x̂0.

``GaussianLikelihood(A, y, R)`` is the potential of a linear-Gaussian observation y = A x0 + e,
e ~ N(0, R). At σ > 0 it is evaluated on x̂0 = D(x; σ) with the covariance inflated by the
variance of x0 around x̂0, approximated as c_σ = σ²·v/(σ² + v) for data of per-coordinate variance
``data_var`` = v (the ΠGDM-style "noise-aware" variance); at σ = 0, x̂0 = x0 and c_0 = 0, so the
final potential is exactly log p(y | x0). In difference form the weights telescope to that final
value, so the intermediate approximation only affects efficiency, never the target.

    >>> import torch
    >>> lik = GaussianLikelihood(A=torch.eye(2), y=torch.tensor([1.0, 0.0]), R=0.1 * torch.eye(2))
    >>> x0_hat = torch.zeros(5, 2, dtype=torch.float64)
    >>> lik(x0_hat, torch.zeros(5, dtype=torch.float64), x0_hat).shape
    torch.Size([5])
"""

from __future__ import annotations

import math

import torch

from smcdiff.checks import check_real
from smcdiff.types import Tensor
from smcdiff.weights.values import log_values, num_samples

__all__ = ["GaussianLikelihood"]


def _as_float64(value, name: str) -> Tensor:
    """``value`` as a finite float64 tensor; ``TypeError`` / ``ValueError`` saying what was expected."""
    try:
        t = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a tensor or array of numbers, got {type(value).__name__}") from None
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite (it contains NaN or inf)")
    return t


def _as_cov(R, m: int) -> Tensor:
    R = _as_float64(R, "R")
    if R.dim() == 0:
        R = R * torch.eye(m, dtype=torch.float64)
    elif R.dim() == 1:
        R = torch.diag(R)
    if tuple(R.shape) != (m, m):
        raise ValueError(f"R must be a scalar, (m,) or (m, m) with m = {m}, got shape {tuple(R.shape)}")
    if not bool(torch.allclose(R, R.T)) or bool((torch.linalg.eigvalsh(R) <= 0).any()):
        raise ValueError("R must be symmetric positive definite")
    return R


class GaussianLikelihood:
    """Potential log N(y; A x̂0, R + c_σ A Aᵀ) with c_σ = σ² v / (σ² + v).

    ``A : (m, d)`` (d = number of elements of one sample), ``y : (m,)``, ``R`` scalar, ``(m,)`` or
    ``(m, m)``; ``data_var`` v the per-coordinate variance of the data (1 for unit-scaled data).
    Call: ``(x : (N, *event), sigma : (N,), x0_hat : (N, *event)) -> (N,)``.
    """

    def __init__(self, A, y, R, data_var: float = 1.0):
        A = _as_float64(A, "A")
        if A.dim() != 2:
            raise ValueError(f"A must be a (m, d) matrix, got shape {tuple(A.shape)}")
        y = _as_float64(y, "y")
        if tuple(y.shape) != (A.shape[0],):
            raise ValueError(f"y must have shape (m,) = ({A.shape[0]},), got {tuple(y.shape)}")
        data_var = check_real(data_var, "data_var", low=0.0, low_open=True)
        self.A, self.y, self.R, self.data_var = A, y, _as_cov(R, A.shape[0]), data_var
        self._AAt = A @ A.T

    def __call__(self, x: Tensor, sigma: Tensor, x0_hat: Tensor, **cond) -> Tensor:
        N = num_samples(x0_hat)
        flat = x0_hat.reshape(N, -1).to(torch.float64)
        if flat.shape[1] != self.A.shape[1]:
            raise ValueError(f"x0_hat has {flat.shape[1]} elements per sample but A expects d = {self.A.shape[1]}")
        A, y = self.A.to(flat.device), self.y.to(flat.device)
        resid = y - flat @ A.T  # (N, m)
        s2 = torch.as_tensor(sigma, dtype=torch.float64, device=flat.device).expand(N) ** 2
        c = s2 * self.data_var / (s2 + self.data_var)
        m = A.shape[0]
        finite, uniform, finite_x0 = torch.stack(  # one host read
            [torch.isfinite(c).all(), (c == c[0]).all(), torch.isfinite(flat).all()]).tolist()
        if not finite:
            raise ValueError("GaussianLikelihood: sigma must be finite (got NaN or inf)")
        if not finite_x0:
            raise ValueError("potential GaussianLikelihood: x0_hat must be finite (did the denoiser return NaN or inf?)")
        if uniform:
            cov = (self.R.to(flat.device) + c[0] * self._AAt.to(flat.device)).expand(1, m, m)
        else:
            cov = self.R.to(flat.device) + c[:, None, None] * self._AAt.to(flat.device)
        L = torch.linalg.cholesky(cov)
        z = torch.linalg.solve_triangular(L, resid.unsqueeze(-1), upper=False)
        logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        value = -0.5 * z.squeeze(-1).pow(2).sum(-1) - 0.5 * logdet - 0.5 * m * math.log(2 * math.pi)
        return log_values(value, N, "potential GaussianLikelihood (is x0_hat finite?)")

    def __repr__(self) -> str:
        return f"GaussianLikelihood(m={self.A.shape[0]}, d={self.A.shape[1]}, data_var={self.data_var})"
