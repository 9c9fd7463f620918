"""Small trainable classifiers: DG's time-dependent discriminators and a digits classifier.

* :class:`TimeDiscriminator` (an MLP, optionally on frozen features) and
  :class:`ConvTimeDiscriminator` (a small CNN) are DG's d(x_vp, τ) (REFERENCE §2a) on the
  VP-scaled input; called as ``disc(x, sigma, **cond)`` they give the log ratio ℓ = logit in the
  EDM scale, so they plug into ``smcdiff.methods.dg(..., log_ratio=disc)``.
* :class:`DigitsClassifier` is the feature space of the FD-digits metric.

    >>> import torch
    >>> disc = TimeDiscriminator((2,), hidden=16)
    >>> disc(torch.zeros(3, 2, dtype=torch.float64), torch.full((3,), 0.5, dtype=torch.float64)).shape
    torch.Size([3])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from smcdiff.checks import check_int
from smcdiff.kernels.schedules import vp_alpha, vp_time
from smcdiff.models.net_blocks import (
    ResBlock,
    build_seeded,
    check_sizes,
    fourier_embedding,
    norm_groups,
    sigma_vector,
)
from smcdiff.types import Tensor

__all__ = ["ConvTimeDiscriminator", "DigitsClassifier", "TAU_MIN", "TimeDiscriminator"]

#: τ below this is clamped before the discriminator's log-time embedding (DG's t_min).
TAU_MIN = 1e-5

class _VPDiscriminator(nn.Module):
    """The EDM-scale face of a VP-time discriminator: subclasses define ``logit(x_vp, tau)``."""

    event_shape: tuple[int, ...]
    emb_dim = 32

    def logit(self, x_vp: Tensor, tau: Tensor) -> Tensor:
        raise NotImplementedError

    def _inputs(self, x_vp: Tensor, tau) -> tuple[Tensor, Tensor, Tensor]:
        """Checked float32 ``x_vp``, ``tau : (N,)`` and the Fourier embedding of ln(max(τ, 1e−5))/4."""
        if tuple(x_vp.shape[1:]) != self.event_shape:
            raise ValueError(f"{type(self).__name__}: expected x of shape (N, *{self.event_shape}), got {tuple(x_vp.shape)}")
        x_vp = x_vp.to(torch.float32)
        tau = sigma_vector(tau, x_vp).to(torch.float32)
        return x_vp, tau, fourier_embedding(torch.log(tau.clamp_min(TAU_MIN)) / 4, self.emb_dim)

    def log_ratio(self, x: Tensor, sigma, **cond) -> Tensor:
        """ℓ(x, σ) = logit d(α(τ(σ))·x, τ(σ)) in the EDM scale: ``x : (N, *event)`` → ``(N,)``."""
        dtype = x.dtype if x.is_floating_point() else torch.float32
        sigma = sigma_vector(sigma, x.to(dtype))
        tau = vp_time(sigma)
        x_vp = vp_alpha(tau).reshape(-1, *([1] * (x.dim() - 1))) * x
        return self.logit(x_vp, tau).to(dtype)

    def forward(self, x: Tensor, sigma, **cond) -> Tensor:
        return self.log_ratio(x, sigma, **cond)


class TimeDiscriminator(_VPDiscriminator):
    """DG's time-dependent discriminator d(x_vp, τ) = sigmoid(logit), as an MLP.

    ``logit(x_vp, tau)`` works in the VP convention (``x_vp : (N, *event_shape)``, τ ∈ [0, 1], used
    by training); ``log_ratio(x, sigma, **cond)`` (also ``disc(x, sigma, **cond)``) maps an EDM-scale
    input: τ = τ(σ), x_vp = α(τ)·x (REFERENCE §0.3), ℓ = log(d/(1−d)) = the logit, unclipped,
    differentiable in ``x``, returned as ``(N,)`` in ``x``'s dtype. ``cond`` is ignored.

    ``features``: an optional frozen extractor ``features(x_vp, tau) -> (N, ...)`` (DG uses a noisy
    classifier's middle block) whose flattened output, of size ``feature_dim``, replaces x_vp as
    the MLP input. It is held outside the module: not trained, not saved, not moved by ``.to``;
    gradients flow through it only when ``x_vp`` requires them (guidance), not in training.
    The time input is a Fourier embedding of ln(max(τ, 1e−5))/4.
    """

    def __init__(self, event_shape: Sequence[int] | int, hidden: int = 128, depth: int = 2, *,
                 features: Callable[[Tensor, Tensor], Tensor] | None = None, feature_dim: int | None = None,
                 generator: torch.Generator | None = None):
        dims = list(event_shape) if isinstance(event_shape, Sequence) else [event_shape]
        if not dims:
            raise ValueError("TimeDiscriminator: need a non-empty event_shape, got ()")
        event_shape = tuple(check_int(d, "TimeDiscriminator: event_shape entries", minimum=1) for d in dims)
        hidden, depth = check_sizes("TimeDiscriminator", hidden=hidden, depth=depth)
        if (features is None) != (feature_dim is None):
            raise ValueError("TimeDiscriminator: pass features and feature_dim together")
        if feature_dim is not None:
            feature_dim = check_int(feature_dim, "TimeDiscriminator: feature_dim", minimum=1)
        super().__init__()
        self.event_shape = event_shape
        self._features = (features,)  # a tuple keeps a module out of parameters() and state_dict()
        self.config = {"class": "TimeDiscriminator",
                       "kwargs": {"event_shape": list(event_shape), "hidden": int(hidden), "depth": int(depth),
                                  "feature_dim": None if feature_dim is None else int(feature_dim)}}
        in_dim = math.prod(event_shape) if feature_dim is None else int(feature_dim)

        def make():
            self.embed = nn.Sequential(nn.Linear(self.emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            self.inp = nn.Linear(in_dim, hidden)
            self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 1))
            self.out = nn.Linear(hidden, 1)

        build_seeded(self, make, generator)

    @property
    def features(self):
        return self._features[0]

    def logit(self, x_vp: Tensor, tau: Tensor) -> Tensor:
        """The logit of d(x_vp, τ): ``x_vp : (N, *event_shape)``, ``tau : (N,)`` → ``(N,)`` float32."""
        x_vp, tau, emb = self._inputs(x_vp, tau)
        h = x_vp
        if self.features is not None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and x_vp.requires_grad):
                h = self.features(x_vp, tau)
        h = h.reshape(h.shape[0], -1).to(torch.float32)
        e = self.embed(emb)
        h = self.inp(h) + e
        for layer in self.layers:
            h = layer(F.silu(h)) + e
        return self.out(F.silu(h)).reshape(-1)


class ConvTimeDiscriminator(_VPDiscriminator):
    """DG's time-dependent discriminator as a small CNN for images ``(N, C, H, W)`` (the role of
    DG's noisy-classifier encoder, trained end to end).

    conv(w) → ResBlock(w) → avg-pool → ResBlock(2w) → ResBlock(2w) → global average pool → SiLU →
    Linear(1); the time embedding shifts the channels of every block. Same interface as
    :class:`TimeDiscriminator`: ``logit(x_vp, tau)`` (VP convention) and ``log_ratio(x, sigma)`` /
    ``disc(x, sigma)`` (EDM scale, ℓ = the logit).
    """

    def __init__(self, channels: int = 1, resolution: int = 8, width: int = 32, *,
                 generator: torch.Generator | None = None):
        channels, resolution, width = check_sizes("ConvTimeDiscriminator", ("resolution",), channels=channels,
                                                  resolution=resolution, width=width)
        super().__init__()
        self.event_shape = (int(channels), int(resolution), int(resolution))
        self.config = {"class": "ConvTimeDiscriminator",
                       "kwargs": {"channels": int(channels), "resolution": int(resolution), "width": int(width)}}
        w, e = width, 2 * width

        def make():
            self.embed = nn.Sequential(nn.Linear(self.emb_dim, e), nn.SiLU(), nn.Linear(e, e))
            self.conv_in = nn.Conv2d(channels, w, 3, padding=1)
            self.block1, self.block2, self.block3 = ResBlock(w, w, e), ResBlock(w, 2 * w, e), ResBlock(2 * w, 2 * w, e)
            self.norm_out, self.out = nn.GroupNorm(norm_groups(2 * w), 2 * w), nn.Linear(2 * w, 1)

        build_seeded(self, make, generator)

    def logit(self, x_vp: Tensor, tau: Tensor) -> Tensor:
        """The logit of d(x_vp, τ): ``x_vp : (N, *event_shape)``, ``tau : (N,)`` → ``(N,)`` float32."""
        x_vp, tau, emb = self._inputs(x_vp, tau)
        e = F.silu(self.embed(emb))
        h = self.block1(self.conv_in(x_vp), e)
        h = self.block3(self.block2(F.avg_pool2d(h, 2), e), e)
        h = F.silu(self.norm_out(h)).mean(dim=(2, 3))
        return self.out(h).reshape(-1)


class DigitsClassifier(nn.Module):
    """A small CNN classifier for ``(N, channels, resolution, resolution)`` images in ``[-1, 1]``.

    conv(w) → ResBlock(w) → avg-pool → ResBlock(2w) → global average pool → Linear(``feature_dim``)
    → SiLU → Linear(``num_classes``). :meth:`features` returns the ``(N, feature_dim)`` activations
    before the last layer (the space of the FD-digits metric, :mod:`smcdiff.metrics.fd_digits`);
    ``forward`` returns the ``(N, num_classes)`` logits. Runs in float32 whatever the input dtype.
    """

    def __init__(self, channels: int = 1, resolution: int = 8, width: int = 32, feature_dim: int = 32,
                 num_classes: int = 10, *, generator: torch.Generator | None = None):
        channels, resolution, width, feature_dim = check_sizes(
            "DigitsClassifier", ("resolution",), channels=channels, resolution=resolution, width=width,
            feature_dim=feature_dim)
        num_classes = check_int(num_classes, "DigitsClassifier: num_classes", minimum=2)
        super().__init__()
        self.event_shape = (int(channels), int(resolution), int(resolution))
        self.config = {"class": "DigitsClassifier",
                       "kwargs": {"channels": int(channels), "resolution": int(resolution), "width": int(width),
                                  "feature_dim": int(feature_dim), "num_classes": int(num_classes)}}
        w = width

        def make():
            self.conv_in = nn.Conv2d(channels, w, 3, padding=1)
            self.block1, self.block2 = ResBlock(w, w, None), ResBlock(w, 2 * w, None)
            self.feature = nn.Linear(2 * w, feature_dim)
            self.head = nn.Linear(feature_dim, num_classes)

        build_seeded(self, make, generator)

    def features(self, x: Tensor) -> Tensor:
        """``x : (N, *event_shape)`` → ``(N, feature_dim)`` float32 features."""
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"DigitsClassifier: expected x of shape (N, *{self.event_shape}), got {tuple(x.shape)}")
        h = self.block1(self.conv_in(x.to(torch.float32)))
        h = self.block2(F.avg_pool2d(h, 2))
        return F.silu(self.feature(h.mean(dim=(2, 3))))

    def forward(self, x: Tensor) -> Tensor:
        """``x : (N, *event_shape)`` → logits ``(N, num_classes)`` float32."""
        return self.head(self.features(x))
