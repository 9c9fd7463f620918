"""Exact Gaussian mixtures: the closed-form target every smcdiff method is tested against.

A :class:`GaussianMixture` ``p(x0) = sum_k pi_k N(x0; mu_k, Sigma_k)`` in any dimension ``d``
(float64 by default) gives, in closed form, everything a diffusion sampler only approximates
(EDM convention ``x_sigma = x0 + sigma * n``, ``n ~ N(0, I)``):

* noised marginal  ``p_sigma(x) = sum_k pi_k N(x; mu_k, Sigma_k + sigma^2 I)``;
* exact denoiser   ``D(x; sigma) = E[x0 | x_sigma = x]
  = sum_k r_k(x) [mu_k + Sigma_k (Sigma_k + sigma^2 I)^{-1} (x - mu_k)]``
  with ``r_k`` the responsibilities under ``p_sigma`` (a log-softmax: far-away ``x`` stays finite);
* score            ``grad_x log p_sigma(x) = (D - x) / sigma^2
  = -sum_k r_k (Sigma_k + sigma^2 I)^{-1} (x - mu_k)``;
* perfect discriminator between two mixtures: ``log p^a_sigma(x) - log p^b_sigma(x)``;
* tilting by a linear-Gaussian likelihood ``N(y; A x0, R)``: again a mixture, with per-component
  Kalman updates, weights ``~ pi_k N(y; A mu_k, A Sigma_k A^T + R)`` and the evidence ``log p(y)``.

Each ``Sigma_k = U_k diag(lam_k) U_k^T`` is eigendecomposed once, so ``(Sigma_k + s^2 I)^{-1}
= U_k diag(1 / (lam_k + s^2)) U_k^T`` costs nothing extra for any per-sample ``s``; diagonal and
isotropic covariances take an elementwise path (``U = I``). The noised methods take ``x : (N,
*event)`` with ``prod(event) == d`` and ``sigma : (N,)`` (or a scalar), matching the denoiser
contract ``D(x, sigma, **cond)``; a mixture is itself such a denoiser (``gmm(x, sigma)``).

    >>> import torch
    >>> from smcdiff.models import GaussianMixture
    >>> gmm = GaussianMixture(torch.tensor([0.3, 0.7]),
    ...                       torch.tensor([[-2.0, 0.0], [2.0, 1.0]]),
    ...                       torch.tensor([0.5, 0.2]))              # isotropic variances
    >>> x0 = gmm.sample(1000, torch.Generator().manual_seed(0))      # (1000, 2) float64
    >>> sigma = torch.full((1000,), 1.5, dtype=torch.float64)
    >>> x = x0 + sigma[:, None] * torch.randn(1000, 2, dtype=torch.float64,
    ...                                       generator=torch.Generator().manual_seed(1))
    >>> x0_hat = gmm.denoise(x, sigma)                               # E[x0 | x_sigma = x]
    >>> bool(torch.allclose(gmm.score(x, sigma), (x0_hat - x) / 1.5**2))
    True
    >>> posterior, log_z = gmm.condition(torch.tensor([[1.0, 0.0]]), torch.tensor([1.0]), 0.1)
"""

from __future__ import annotations

import math
import operator

import torch

from smcdiff import _rng
from smcdiff.checks import check_real

__all__ = ["GaussianMixture"]

Tensor = torch.Tensor
_LOG_2PI = math.log(2.0 * math.pi)


class GaussianMixture:
    """``sum_k pi_k N(mu_k, Sigma_k)`` with closed-form noised marginals, denoiser and posteriors.

    Args:
        weights: ``(C,)`` non-negative, not all zero; normalised internally.
        means: ``(C, d)``.
        covs: full ``(C, d, d)`` symmetric positive definite, diagonal ``(C, d)`` or isotropic
            ``(C,)`` variances (all positive).
        dtype: arithmetic and storage dtype (float64 by default).
    """

    def __init__(self, weights, means, covs, *, dtype: torch.dtype = torch.float64):
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype such as torch.float64, got {dtype!r}")
        try:
            means = torch.as_tensor(means, dtype=dtype).clone()  # never alias the caller's tensor
            weights = torch.as_tensor(weights, dtype=dtype, device=means.device)
            covs = torch.as_tensor(covs, dtype=dtype, device=means.device)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"weights, means and covs must be tensors or arrays of numbers ({err})") from None
        if means.ndim != 2 or means.shape[0] < 1 or means.shape[1] < 1:
            raise ValueError(f"expected means of shape (C, d), got {tuple(means.shape)}")
        C, d = means.shape
        if weights.shape != (C,):
            raise ValueError(f"expected weights of shape (C,)=({C},), got {tuple(weights.shape)}")
        if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("weights must be finite, non-negative and not all zero")
        if not torch.isfinite(means).all():
            raise ValueError("means must be finite")
        log_weights = weights.log() - weights.sum().log()
        if covs.shape == (C, d, d):
            if not torch.isfinite(covs).all():
                raise ValueError("covs must be finite")
            scale = covs.abs().amax().clamp_min(torch.finfo(dtype).tiny)
            if ((covs - covs.mT).abs() > 1e-8 * scale).any():
                raise ValueError("full covs (C, d, d) must be symmetric")
            covs = 0.5 * (covs + covs.mT)
            lam, U = torch.linalg.eigh(covs)
            # Numerically singular (condition number beyond ~1/(d eps)) counts as not SPD.
            if (lam.amin(-1) <= lam.amax(-1).clamp_min(0) * d * torch.finfo(dtype).eps).any():
                raise ValueError("full covs (C, d, d) must be symmetric positive definite")
        elif covs.shape in ((C, d), (C,)):
            if not torch.isfinite(covs).all() or (covs <= 0).any():
                raise ValueError("diagonal / isotropic covariances must be finite and positive")
            lam, U = covs.reshape(C, -1).expand(C, d).clone(), None
            covs = None
        else:
            raise ValueError(
                f"expected covs of shape (C, d, d)=({C}, {d}, {d}) (full), (C, d)=({C}, {d}) "
                f"(diagonal) or (C,)=({C},) (isotropic), got {tuple(covs.shape)}"
            )
        self._set(log_weights, means, lam, U, covs)

    def _set(self, log_weights, means, lam, U, full_covs) -> None:
        self._log_weights = log_weights  # (C,)
        self._means = means  # (C, d)
        self._lam = lam  # (C, d) eigenvalues of Sigma_k
        self._U = U  # (C, d, d) eigenvectors (columns), None for diagonal Sigma_k
        self._full_covs = full_covs  # (C, d, d) or None for diagonal Sigma_k

    @classmethod
    def _from_parts(cls, log_weights, means, lam, U, full_covs) -> GaussianMixture:
        new = cls.__new__(cls)
        new._set(log_weights, means, lam, U, full_covs)
        return new

    # ----------------------------------------------------------------------- attributes
    @property
    def weights(self) -> Tensor:
        """``(C,)`` normalised mixture weights."""
        return self._log_weights.exp()

    @property
    def means(self) -> Tensor:
        """``(C, d)`` component means."""
        return self._means

    @property
    def covs(self) -> Tensor:
        """``(C, d, d)`` component covariances as full matrices."""
        return torch.diag_embed(self._lam) if self._U is None else self._full_covs

    @property
    def dim(self) -> int:
        return self._means.shape[1]

    @property
    def num_components(self) -> int:
        return self._means.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self._means.dtype

    @property
    def device(self) -> torch.device:
        return self._means.device

    @property
    def mean(self) -> Tensor:
        """``(d,)`` mean of the whole mixture."""
        return self.weights @ self._means

    @property
    def cov(self) -> Tensor:
        """``(d, d)`` covariance of the whole mixture."""
        w, dm = self.weights, self._means - self.mean
        return torch.einsum("c,cij->ij", w, self.covs) + torch.einsum("c,ci,cj->ij", w, dm, dm)

    def __repr__(self) -> str:
        kind = "diagonal" if self._U is None else "full"
        return (
            f"GaussianMixture(num_components={self.num_components}, dim={self.dim}, "
            f"covs={kind!r}, dtype={self.dtype}, device={self.device})"
        )

    def to(self, dtype: torch.dtype | None = None, device=None) -> GaussianMixture:
        """A copy with every parameter moved to ``dtype`` / ``device``."""

        def mv(t):
            return None if t is None else t.to(dtype=dtype or self.dtype, device=device)

        parts = (self._log_weights, self._means, self._lam, self._U, self._full_covs)
        return GaussianMixture._from_parts(*(mv(t) for t in parts))

    # ----------------------------------------------------------------------- clean density
    def sample(self, n: int, generator, return_components: bool = False):
        """``n`` draws ``(n, d)`` (and their components ``(n,)`` long if asked).

        ``generator``: one ``torch.Generator`` or ``n`` of them (row ``i`` then depends on
        ``generator[i]`` alone). Each row draws its uniform component pick, then its ``d`` normals.
        """
        if isinstance(n, bool) or not hasattr(n, "__index__"):
            raise TypeError(f"n must be an int, got {type(n).__name__}")
        n = operator.index(n)
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        _rng.check_generator(generator, None if isinstance(generator, torch.Generator) else n)
        u = _rng.rand((n,), generator, self.dtype, self.device)
        z = _rng.randn((n, self.dim), generator, self.dtype, self.device)
        w = self.weights
        last = int(torch.nonzero(w > 0).max())  # never pick a zero-weight trailing component
        k = torch.searchsorted(w.cumsum(0), u, right=True).clamp_max(last)
        scaled = self._lam[k].sqrt() * z  # (n, d): Sigma_k^{1/2} = U_k diag(sqrt(lam_k))
        if self._U is not None:
            scaled = torch.einsum("nij,nj->ni", self._U[k], scaled)
        x = self._means[k] + scaled
        return (x, k) if return_components else x

    def component_log_prob(self, x: Tensor) -> Tensor:
        """``log pi_k + log N(x; mu_k, Sigma_k)``: ``x : (..., d)`` -> ``(..., C)``."""
        x = self._check_last(x)
        return self._terms(x, torch.zeros((), dtype=self.dtype, device=self.device))[0]

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)``: ``x : (..., d)`` -> ``(...)``."""
        return self.component_log_prob(x).logsumexp(-1)

    def responsibilities(self, x: Tensor) -> Tensor:
        """``p(k | x)``: ``x : (..., d)`` -> ``(..., C)``, rows sum to 1."""
        return self.component_log_prob(x).log_softmax(-1).exp()

    # ----------------------------------------------------------------------- noised density
    def noised(self, sigma: float) -> GaussianMixture:
        """The noised marginal ``p_sigma`` as a mixture (covariances ``Sigma_k + sigma^2 I``)."""
        s2 = check_real(sigma, "sigma") ** 2
        if not math.isfinite(s2):
            raise ValueError(f"sigma must be finite, got {sigma!r}")
        full = None
        if self._U is not None:
            full = self._full_covs + s2 * torch.eye(self.dim, dtype=self.dtype, device=self.device)
        return GaussianMixture._from_parts(
            self._log_weights, self._means, self._lam + s2, self._U, full
        )

    def log_prob_noised(self, x: Tensor, sigma, **cond) -> Tensor:
        """``log p_sigma(x)``: ``x : (N, *event)``, ``sigma : (N,)`` or scalar -> ``(N,)``.

        Differentiable in ``x`` and ``sigma``; ``sigma = 0`` gives the clean ``log p(x)``.
        """
        xf, s = self._flatten(x), self._sigma(sigma, x)
        return self._terms(xf, s * s)[0].logsumexp(-1)

    def log_ratio(self, other: GaussianMixture, x: Tensor, sigma, **cond) -> Tensor:
        """Perfect discriminator ``log p^self_sigma(x) - log p^other_sigma(x)`` -> ``(N,)``."""
        if not isinstance(other, GaussianMixture) or other.dim != self.dim:
            raise ValueError(f"other must be a GaussianMixture of dim {self.dim}")
        return self.log_prob_noised(x, sigma) - other.log_prob_noised(x, sigma)

    def denoise(self, x: Tensor, sigma, **cond) -> Tensor:
        """Exact ``E[x0 | x_sigma = x]``: ``x : (N, *event)``, ``sigma : (N,)`` or scalar.

        Returns ``x``'s shape and dtype; rows with ``sigma == 0`` return ``x`` exactly. ``cond`` is
        accepted and ignored (denoiser contract).
        """
        xf, s = self._flatten(x), self._sigma(sigma, x)
        s2 = s * s
        # D = x - s^2 sum_k r_k (Sigma_k + s^2 I)^{-1} (x - mu_k): exactly x at s = 0.
        out = xf - s2[:, None] * self._precision_residual(xf, s2)
        return out.to(self._out_dtype(x)).reshape(x.shape)

    __call__ = denoise

    def score(self, x: Tensor, sigma, **cond) -> Tensor:
        """``grad_x log p_sigma(x) = (D - x) / sigma^2`` in closed form; ``sigma > 0`` required.

        ``x : (N, *event)``, ``sigma : (N,)`` or scalar; returns ``x``'s shape and dtype.
        """
        xf, s = self._flatten(x), self._sigma(sigma, x, positive=True)
        out = -self._precision_residual(xf, s * s)
        return out.to(self._out_dtype(x)).reshape(x.shape)

    # ----------------------------------------------------------------------- tilting
    def condition(self, A, y, R) -> tuple[GaussianMixture, Tensor]:
        """Posterior of ``x ~ self`` given ``y = A x + e``, ``e ~ N(0, R)``, and ``log p(y)``.

        ``A : (m, d)``, ``y : (m,)``, ``R``: ``(m, m)`` SPD, ``(m,)`` variances or a scalar.
        Per component (Kalman update): ``S = A Sigma A^T + R``, ``K = Sigma A^T S^{-1}``,
        ``mu' = mu + K (y - A mu)``, ``Sigma' = (I - K A) Sigma (I - K A)^T + K R K^T`` (Joseph);
        weights ``~ pi_k N(y; A mu_k, S_k)``, whose log-sum is the evidence (0-d tensor).
        """
        kw = dict(dtype=self.dtype, device=self.device)
        A, y, R = (torch.as_tensor(t, **kw) for t in (A, y, R))
        if not (torch.isfinite(A).all() and torch.isfinite(y).all()):
            raise ValueError("A and y must be finite (they contain NaN or inf)")
        if A.ndim != 2 or A.shape[1] != self.dim:
            raise ValueError(f"expected A of shape (m, d) with d={self.dim}, got {tuple(A.shape)}")
        m = A.shape[0]
        if y.shape != (m,):
            raise ValueError(f"expected y of shape (m,)=({m},), got {tuple(y.shape)}")
        if R.ndim == 0 or R.shape == (m,):
            if not torch.isfinite(R).all() or (R <= 0).any():
                raise ValueError("noise variances R must be finite and positive")
            R = torch.diag_embed(R.expand(m))
        elif R.shape != (m, m) or not torch.isfinite(R).all():
            raise ValueError(
                f"expected R of shape (m, m)=({m}, {m}), (m,) or (), got {tuple(R.shape)}"
            )
        elif ((R - R.mT).abs() > 1e-8 * R.abs().amax()).any():
            raise ValueError("R (m, m) must be symmetric")
        Sigma = self.covs  # (C, d, d)
        S = A @ Sigma @ A.mT + R  # (C, m, m)
        L, info = torch.linalg.cholesky_ex(0.5 * (S + S.mT))
        if (info != 0).any():
            raise ValueError("A Sigma_k A^T + R is not positive definite: R must be SPD")
        resid = y - self._means @ A.mT  # (C, m)
        white = torch.linalg.solve_triangular(L, resid[..., None], upper=False)[..., 0]
        half_logdet = L.diagonal(0, -2, -1).log().sum(-1)
        log_lik = -0.5 * (m * _LOG_2PI + (white * white).sum(-1)) - half_logdet
        joint = self._log_weights + log_lik  # (C,)
        log_evidence = joint.logsumexp(0)
        K = torch.cholesky_solve(A @ Sigma, L).mT  # (C, d, m) = Sigma A^T S^{-1}
        means = self._means + (K @ resid[..., None])[..., 0]
        IKA = torch.eye(self.dim, **kw) - K @ A
        covs = IKA @ Sigma @ IKA.mT + K @ R @ K.mT
        posterior = GaussianMixture(
            (joint - log_evidence).exp(), means, 0.5 * (covs + covs.mT), dtype=self.dtype
        )
        return posterior, log_evidence

    # ----------------------------------------------------------------------- helpers
    def _terms(self, xf: Tensor, s2: Tensor):
        """``xf : (..., d)``, ``s2`` broadcastable to ``(...)`` -> component log-densities of
        ``p_{s}`` ``(..., C)`` and ``w = diag(1/(lam + s^2)) U^T (x - mu)`` ``(..., C, d)``."""
        diff = xf.unsqueeze(-2) - self._means  # (..., C, d)
        z = diff if self._U is None else torch.einsum("...cd,cde->...ce", diff, self._U)
        lam_s = self._lam + s2[..., None, None]  # (..., C, d)
        w = z / lam_s
        maha, logdet = (z * w).sum(-1), lam_s.log().sum(-1)
        comp = self._log_weights - 0.5 * (self.dim * _LOG_2PI + logdet + maha)
        return comp, w

    def _precision_residual(self, xf: Tensor, s2: Tensor) -> Tensor:
        """``sum_k r_k (Sigma_k + s^2 I)^{-1} (x - mu_k)`` for ``xf : (N, d)``, ``s2 : (N,)``."""
        comp, w = self._terms(xf, s2)
        rw = comp.log_softmax(-1).exp()[..., None] * w  # (N, C, d)
        return rw.sum(-2) if self._U is None else torch.einsum("nce,cde->nd", rw, self._U)

    def _check_last(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim < 1 or x.shape[-1] != self.dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"expected x of shape (..., d) with d={self.dim}, got {shape}")
        return x.to(self.dtype)

    def _flatten(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim < 1 or math.prod(x.shape[1:]) != self.dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"expected x of shape (N, ...) with d={self.dim} elements per sample, got {shape}"
            )
        return x.to(self.dtype).reshape(x.shape[0], self.dim)

    def _sigma(self, sigma, x: Tensor, positive: bool = False) -> Tensor:
        """``sigma`` as an ``(N,)`` tensor; a scalar, ``(N,)`` or ``(N, 1, ...)`` is accepted."""
        n = x.shape[0]
        s = torch.as_tensor(sigma, dtype=self.dtype, device=self.device)
        if s.numel() == 1 and (s.ndim == 0 or s.shape[0] in (1, n)):
            s = s.reshape(()).expand(n)
        elif s.ndim >= 1 and s.shape[0] == n and s.numel() == n:
            s = s.reshape(n)
        else:
            raise ValueError(
                f"expected sigma of shape (N,)=({n},) or a scalar, got {tuple(s.shape)}"
            )
        if not torch.isfinite(s).all() or (s < 0).any() or (positive and (s <= 0).any()):
            need = "> 0" if positive else ">= 0"
            raise ValueError(f"sigma must be finite and {need}")
        return s

    def _out_dtype(self, x: Tensor) -> torch.dtype:
        return x.dtype if x.is_floating_point() else self.dtype
