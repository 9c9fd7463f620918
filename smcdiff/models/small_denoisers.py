"""Small EDM-preconditioned denoisers for toy problems: vectors (:class:`MLPDenoiser`) and small
images (:class:`ConvDenoiser`, a tiny U-Net).

Both are smcdiff denoisers ``D(x, sigma, **cond) -> x0_hat`` with EDM preconditioning (REFERENCE
§1c): ``D = c_skip·x + c_out·F(c_in·x, c_noise)``, ``c_noise = ln(σ)/4`` fed through a fixed
Fourier embedding. ``F`` runs in float32; the skip arithmetic runs in ``x``'s dtype, so a float64
input gives a float64 output. Parameters are drawn from the caller's generator (None: seed 0).

    >>> import torch
    >>> net = MLPDenoiser(2, hidden=16, generator=torch.Generator().manual_seed(1))
    >>> net(torch.zeros(3, 2, dtype=torch.float64), torch.ones(3, dtype=torch.float64)).dtype
    torch.float64
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from smcdiff.checks import check_real
from smcdiff.models.net_blocks import (
    ResBlock,
    build_seeded,
    check_sizes,
    fourier_embedding,
    norm_groups,
    sigma_vector,
)
from smcdiff.models.precond import edm_preconditioning
from smcdiff.types import Tensor

__all__ = ["ConvDenoiser", "MLPDenoiser"]


class _EDMDenoiser(nn.Module):
    """D(x, σ) = c_skip·x + c_out·F(c_in·x, c_noise); subclasses define ``event_shape`` and ``raw``."""

    event_shape: tuple[int, ...]
    sigma_data: float
    config: dict
    emb_dim: int = 32

    def raw(self, x: Tensor, emb: Tensor) -> Tensor:
        raise NotImplementedError

    def round_sigma(self, sigma):
        """Noise levels the network can represent: the identity (as a tensor)."""
        return torch.as_tensor(sigma)

    def forward(self, x: Tensor, sigma, **cond) -> Tensor:
        """``x : (N, *event_shape)``, ``sigma : (N,)`` (or a scalar) → x0_hat in ``x``'s dtype.

        ``cond`` is accepted for the denoiser contract and ignored (the networks are unconditional).
        """
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"{type(self).__name__}: expected x of shape (N, *{self.event_shape}), got {tuple(x.shape)}")
        dtype = x.dtype if x.is_floating_point() else torch.float32
        x = x.to(dtype)
        sigma = sigma_vector(sigma, x)
        c_skip, c_out, c_in, c_noise = (c.reshape(-1, *([1] * (x.dim() - 1))) for c in
                                        edm_preconditioning(sigma, self.sigma_data))
        emb = fourier_embedding(c_noise.reshape(-1).to(torch.float32), self.emb_dim)
        F_x = self.raw((c_in * x).to(torch.float32), emb)
        return c_skip * x + c_out * F_x.to(dtype)


class MLPDenoiser(_EDMDenoiser):
    """EDM-preconditioned MLP denoiser for vectors ``(N, dim)``.

    ``F``: [c_in·x, noise features] → ``depth`` SiLU layers of width ``hidden`` → ``dim``; the noise
    features (an MLP of the Fourier embedding of c_noise) are added to every hidden layer.
    """

    emb_dim = 32

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, sigma_data: float = 0.5, *,
                 generator: torch.Generator | None = None):
        dim, hidden, depth = check_sizes("MLPDenoiser", dim=dim, hidden=hidden, depth=depth)
        sigma_data = check_real(sigma_data, "MLPDenoiser: sigma_data", low=0.0, low_open=True)
        super().__init__()
        self.event_shape, self.sigma_data = (int(dim),), float(sigma_data)
        self.config = {"class": "MLPDenoiser",
                       "kwargs": {"dim": int(dim), "hidden": int(hidden), "depth": int(depth), "sigma_data": float(sigma_data)}}

        def make():
            self.embed = nn.Sequential(nn.Linear(self.emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            self.inp = nn.Linear(dim, hidden)
            self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 1))
            self.out = nn.Linear(hidden, dim)

        build_seeded(self, make, generator)

    def raw(self, x: Tensor, emb: Tensor) -> Tensor:
        e = self.embed(emb)
        h = self.inp(x) + e
        for layer in self.layers:
            h = layer(F.silu(h)) + e
        return self.out(F.silu(h))


class ConvDenoiser(_EDMDenoiser):
    """EDM-preconditioned tiny U-Net for images ``(N, channels, resolution, resolution)``.

    One down/up level: conv → ResBlock(w) → avg-pool → ResBlock(2w) → ResBlock(2w) → upsample →
    concat skip → ResBlock(w) → conv; noise features enter every block as a per-channel shift.
    """

    emb_dim = 32

    def __init__(self, channels: int = 1, resolution: int = 8, width: int = 32, sigma_data: float = 0.5, *,
                 generator: torch.Generator | None = None):
        channels, resolution, width = check_sizes("ConvDenoiser", ("resolution",), channels=channels,
                                                  resolution=resolution, width=width)
        sigma_data = check_real(sigma_data, "ConvDenoiser: sigma_data", low=0.0, low_open=True)
        super().__init__()
        self.event_shape, self.sigma_data = (int(channels), int(resolution), int(resolution)), float(sigma_data)
        self.config = {"class": "ConvDenoiser", "kwargs": {"channels": int(channels), "resolution": int(resolution),
                                                           "width": int(width), "sigma_data": float(sigma_data)}}
        w, e = width, 2 * width

        def make():
            self.embed = nn.Sequential(nn.Linear(self.emb_dim, e), nn.SiLU(), nn.Linear(e, e))
            self.conv_in = nn.Conv2d(channels, w, 3, padding=1)
            self.enc1, self.enc2, self.mid = ResBlock(w, w, e), ResBlock(w, 2 * w, e), ResBlock(2 * w, 2 * w, e)
            self.dec = ResBlock(3 * w, w, e)
            self.norm_out, self.conv_out = nn.GroupNorm(norm_groups(w), w), nn.Conv2d(w, channels, 3, padding=1)

        build_seeded(self, make, generator)

    def raw(self, x: Tensor, emb: Tensor) -> Tensor:
        e = F.silu(self.embed(emb))
        h1 = self.enc1(self.conv_in(x), e)
        h = self.mid(self.enc2(F.avg_pool2d(h1, 2), e), e)
        h = self.dec(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), h1], dim=1), e)
        return self.conv_out(F.silu(self.norm_out(h)))
