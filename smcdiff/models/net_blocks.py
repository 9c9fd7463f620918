"""Building blocks of smcdiff's small networks: seeded initialisation, a noise embedding, a
residual block.

* :func:`init_parameters_` draws every parameter from a caller's ``torch.Generator``;
  :func:`build_seeded` creates a module's layers on the meta device first, so building a network
  never touches the global RNG.
* :func:`fourier_embedding` embeds a per-sample scalar (EDM's c_noise, or log τ).
* :class:`ResBlock` is a pre-activation residual block whose channels an embedding can shift.

    >>> import torch
    >>> from smcdiff.models.net_blocks import fourier_embedding
    >>> fourier_embedding(torch.zeros(3), 8).shape
    torch.Size([3, 8])
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from smcdiff import _rng
from smcdiff.checks import check_int
from smcdiff.types import Tensor

__all__ = ["ResBlock", "build_seeded", "check_sizes", "fourier_embedding", "init_parameters_", "norm_groups",
           "sigma_vector"]


def check_sizes(who: str, even: tuple[str, ...] = (), **sizes) -> list[int]:
    """Each size as an int >= 1 (those named in ``even``: an even int >= 2), in order; a
    ``TypeError`` / ``ValueError`` names ``who`` and the argument (``True``, ``2.5`` are refused)."""
    out = []
    for name, value in sizes.items():
        v = check_int(value, f"{who}: {name}", minimum=2 if name in even else 1)
        if name in even and v % 2:
            raise ValueError(f"{who}: {name} must be an even int >= 2, got {v}")
        out.append(v)
    return out


def fourier_embedding(c: Tensor, dim: int, max_freq: float = 16.0) -> Tensor:
    """[cos(ω_k c), sin(ω_k c)] with ω_k geometric from 1 to ``max_freq``: ``c : (N,)`` → ``(N, dim)``."""
    omega = torch.exp(torch.linspace(0.0, math.log(max_freq), dim // 2, dtype=c.dtype, device=c.device))
    angle = c[:, None] * omega
    return torch.cat([torch.cos(angle), torch.sin(angle)], dim=1)


_NORMS = (nn.GroupNorm, nn.LayerNorm)


@torch.no_grad()
def init_parameters_(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Draw every parameter of ``module`` from ``generator`` (in place; returns ``module``).

    Weights (≥ 2-D) ~ U(−1/√fan_in, 1/√fan_in) (PyTorch's default scale), biases 0, norm scales 1.
    Draws are made on the CPU in float64 in ``module.named_parameters()`` order, so the result
    depends on the seed alone (not on device or dtype).
    """
    _rng.check_generator(generator)
    if not isinstance(generator, torch.Generator):
        raise TypeError("init_parameters_ takes one torch.Generator")
    for m in module.modules():
        for name, p in m.named_parameters(recurse=False):
            if isinstance(m, _NORMS):
                p.fill_(1.0 if name == "weight" else 0.0)
            elif name == "bias" or p.dim() < 2:
                p.zero_()
            else:
                bound = 1 / math.sqrt(p[0].numel())
                u = _rng.rand(tuple(p.shape), generator)
                p.copy_((2 * u - 1) * bound)
    return module


def build_seeded(module: nn.Module, make: Callable[[], None], generator: torch.Generator | None) -> None:
    """Create ``module``'s layers (``make()``) on the meta device (no global-RNG draws), then draw
    them from ``generator`` (None means seed 0) with :func:`init_parameters_`."""
    with torch.device("meta"):
        make()
    module.to_empty(device="cpu")
    init_parameters_(module, generator if generator is not None else torch.Generator().manual_seed(0))


def sigma_vector(sigma, x: Tensor) -> Tensor:
    """``sigma`` (a scalar or one value per sample) as an ``(N,)`` tensor on ``x``'s device, in the
    wider of the two floating dtypes; ``ValueError`` for a wrong size."""
    sigma = torch.as_tensor(sigma, device=x.device)
    sigma = sigma.to(torch.promote_types(sigma.dtype, x.dtype) if sigma.is_floating_point() else x.dtype)
    sigma = sigma.reshape(-1)
    if sigma.numel() == 1:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape[0] != x.shape[0]:
        raise ValueError(f"sigma must have one value per sample ({x.shape[0]}), got shape {tuple(sigma.shape)}")
    return sigma


class ResBlock(nn.Module):
    """Pre-activation residual block ``(N, cin, H, W) -> (N, cout, H, W)``; ``emb`` features (if ``emb_dim``) shift the channels."""

    def __init__(self, cin: int, cout: int, emb_dim: int | None):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(norm_groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(emb_dim, cout) if emb_dim else None
        self.norm2, self.conv2 = nn.GroupNorm(norm_groups(cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.affine is not None:
            h = h + self.affine(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (h + self.skip(x)) / math.sqrt(2)


def norm_groups(c: int) -> int:
    """GroupNorm groups for ``c`` channels: gcd(c, 8) from 8 channels on, else 1."""
    return math.gcd(c, 8) if c >= 8 else 1
