"""Building blocks of the EDM network architectures (clean-room, from the written description).

These layers reproduce the parameter layout (names, shapes, registration order) of the published
EDM networks, so that their state dicts load strictly, and their arithmetic, so that the outputs
agree to float32 rounding. Every layer casts its own parameters to the input's dtype, so one set of
float32 weights serves float32 and float16 (CUDA) compute alike.

* :class:`Linear`, :class:`Conv2d` (optional 2x up/down resampling with a separable FIR filter,
  stored as the persistent buffer ``resample_filter``; ``kernel=0`` means "resample only"),
  :class:`GroupNorm` (``min(32, C // 4)`` groups);
* :class:`PositionalEmbedding` (transformer sinusoids) and :class:`FourierEmbedding` (random
  Fourier features, buffer ``freqs``), both returning ``[cos | sin]``;
* :class:`UNetBlock`: pre-activation residual block with an embedding input and optional
  multi-head self-attention, in the two flavours used by DDPM++/NCSN++ (additive embedding) and
  the ADM-style UNet (adaptive scale/shift).

    >>> import torch
    >>> from smcdiff.models.edm_layers import UNetBlock
    >>> block = UNetBlock(16, 32, emb_channels=8, down=True, attention=True, num_heads=2)
    >>> block(torch.randn(2, 16, 8, 8), torch.randn(2, 8)).shape
    torch.Size([2, 32, 4, 4])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "Conv2d",
    "FourierEmbedding",
    "GroupNorm",
    "Linear",
    "PositionalEmbedding",
    "UNetBlock",
    "weight_init",
]

Tensor = torch.Tensor
_INIT_MODES = ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal")


def weight_init(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> Tensor:
    """A fresh tensor of ``shape`` drawn with the named variance-scaling rule (global RNG)."""
    if mode == "xavier_uniform":
        return math.sqrt(6.0 / (fan_in + fan_out)) * (2.0 * torch.rand(*shape) - 1.0)
    if mode == "xavier_normal":
        return math.sqrt(2.0 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3.0 / fan_in) * (2.0 * torch.rand(*shape) - 1.0)
    if mode == "kaiming_normal":
        return math.sqrt(1.0 / fan_in) * torch.randn(*shape)
    raise ValueError(f"unknown init_mode {mode!r}; expected one of {_INIT_MODES}")


class Linear(nn.Module):
    """``y = x W^T + b`` with ``weight : (out, in)`` and optional ``bias : (out,)``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init_mode: str = "kaiming_normal", init_weight: float = 1.0, init_bias: float = 0.0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(weight_init([out_features, in_features], **fans) * init_weight)
        self.bias = nn.Parameter(weight_init([out_features], **fans) * init_bias) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        y = x @ self.weight.to(x.dtype).t()
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y


class Conv2d(nn.Module):
    """2-D convolution (odd ``kernel``, same padding) with optional 2x up- or down-sampling.

    Resampling uses the normalised outer product of ``resample_filter`` (buffer of shape
    ``(1, 1, k, k)``): down = depthwise stride-2 convolution with the filter, up = depthwise
    stride-2 transposed convolution with 4x the filter. Unfused, the resampling comes before the
    convolution; ``fused_resample`` convolves on the fine grid (before a down-sampling, after an
    up-sampling), as the NCSN++ residual encoder does. ``kernel=0`` resamples only (no weights).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True,
                 up: bool = False, down: bool = False, resample_filter: Sequence[float] = (1, 1),
                 fused_resample: bool = False, init_mode: str = "kaiming_normal",
                 init_weight: float = 1.0, init_bias: float = 0.0):
        if up and down:
            raise ValueError("Conv2d: up and down are mutually exclusive")
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel,
                    fan_out=out_channels * kernel * kernel)
        self.weight = (nn.Parameter(weight_init([out_channels, in_channels, kernel, kernel], **fans)
                                    * init_weight) if kernel else None)
        self.bias = (nn.Parameter(weight_init([out_channels], **fans) * init_bias)
                     if kernel and bias else None)
        f = torch.as_tensor(list(resample_filter), dtype=torch.float32)
        f = torch.outer(f, f)[None, None] / f.sum().square()
        self.register_buffer("resample_filter", f if (up or down) else None)

    def _resample(self, x: Tensor, f: Tensor, padding: int) -> Tensor:
        channels = x.shape[1]
        if self.up:
            return F.conv_transpose2d(x, (4 * f).tile(channels, 1, 1, 1), groups=channels,
                                      stride=2, padding=padding)
        return F.conv2d(x, f.tile(channels, 1, 1, 1), groups=channels, stride=2, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.to(x.dtype) if self.weight is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        if self.fused_resample and self.up and w is not None:
            x = self._resample(x, f, padding=max(f_pad - w_pad, 0))
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = self._resample(x, f, padding=0)
        else:
            if f is not None:
                x = self._resample(x, f, padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """Group normalisation over ``min(num_groups, C // min_channels_per_group)`` groups."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4,
                 eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        if self.num_groups < 1:
            raise ValueError(f"GroupNorm: {num_channels} channels is too few for one group of "
                             f"{min_channels_per_group}")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype),
                            self.eps)


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding ``[cos(c f_i) | sin(c f_i)]``, ``f_i = (1/max_positions)^(i/n)``.

    ``n = half`` (``endpoint=False``) or ``half - 1`` (``endpoint=True``, so the last frequency
    is exactly ``1/max_positions``); ``half = num_channels // 2``. No tensors.
    """

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x: Tensor) -> Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device)
        freqs = freqs / (half - (1 if self.endpoint else 0))
        freqs = (1.0 / self.max_positions) ** freqs
        x = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features ``[cos(c 2 pi f_i) | sin(c 2 pi f_i)]``, buffer ``freqs ~ N(0, scale^2)``."""

    def __init__(self, num_channels: int, scale: float = 16.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class UNetBlock(nn.Module):
    """Residual block ``x -> (conv1(act(norm1(conv0(act(norm0 x)) (+) emb))) + skip x) * skip_scale``.

    The embedding enters additively (``adaptive_scale=False``, DDPM++/NCSN++) or as a GroupNorm
    scale/shift (``adaptive_scale=True``, ADM). ``up``/``down`` resample inside ``conv0`` and
    ``skip``; ``skip`` exists when the shape changes and is a 1x1 convolution when the channel
    count changes or ``resample_proj`` is set (pure resampling otherwise). With ``attention`` a
    self-attention layer follows; its head count is ``num_heads`` or else
    ``out_channels // channels_per_head`` (0 heads = no attention layers at all).

    Shapes: ``x : (B, in_channels, H, W)``, ``emb : (B or 1, emb_channels)``.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False,
                 down: bool = False, attention: bool = False, num_heads: int | None = None,
                 channels_per_head: int = 64, dropout: float = 0.0, skip_scale: float = 1.0,
                 eps: float = 1e-5, resample_filter: Sequence[float] = (1, 1),
                 resample_proj: bool = False, adaptive_scale: bool = True,
                 init: dict | None = None, init_zero: dict | None = None,
                 init_attn: dict | None = None):
        super().__init__()
        init = dict(init or {})
        init_zero = dict(init_zero) if init_zero is not None else dict(init_weight=0.0)
        init_attn = dict(init_attn) if init_attn is not None else init
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down,
                            resample_filter=resample_filter, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if (resample_proj or out_channels != in_channels) else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, up=up, down=down,
                               resample_filter=resample_filter, **init)
        if self.num_heads:
            if out_channels % self.num_heads:
                raise ValueError(f"UNetBlock: {out_channels} channels do not split into "
                                 f"{self.num_heads} heads")
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1, **init_attn)
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = F.silu(self.norm1(x + params))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = x + (self.skip(orig) if self.skip is not None else orig)
        x = x * self.skip_scale
        if self.num_heads:
            x = (self.proj(self._attend(self.qkv(self.norm2(x)), x.shape)) + x) * self.skip_scale
        return x

    def _attend(self, qkv: Tensor, shape: torch.Size) -> Tensor:
        """Softmax attention over the ``H*W`` positions, computed in (at least) float32."""
        b, c, h, w = shape
        heads = self.num_heads
        q, k, v = qkv.reshape(b * heads, c // heads, 3, h * w).unbind(2)
        compute = torch.promote_types(q.dtype, torch.float32)
        logits = torch.einsum("ncq,nck->nqk", q.to(compute), k.to(compute)) / math.sqrt(c // heads)
        weights = logits.softmax(dim=2).to(v.dtype)
        return torch.einsum("nqk,nck->ncq", weights, v).reshape(b, c, h, w)
