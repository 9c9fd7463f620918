"""The ADM encoder ("EncoderUNetModel"): the noisy-image classifier behind every discriminator.

A clean-room implementation from the description in REFERENCE §0.4 / §2d, with the state-dict
layout (key names, shapes and registration order) of the published guided-diffusion classifier
checkpoints, so ``model.load_state_dict(torch.load(path, weights_only=True))`` works strictly for

* ``32x32_classifier.pt`` (DG): ``create_classifier(32, 128, 4, "32,16,8")`` — 255 tensors;
* ``64x64_classifier.pt`` (OpenAI, PF / DiffRS): ``create_classifier(64, 128, 4, "32,16,8")`` — 307;
* the DG discriminator heads ``discriminator_60.pt`` / ``discriminator_250.pt``:
  ``create_classifier(8, 128, 2, "32,16,8", in_channels=512, out_channels=1, condition=...)``.

::

    import torch
    from smcdiff.models.adm import create_classifier

    net = create_classifier(32, 32, 1, "16,8", out_channels=10).eval()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([0.1, 0.9])   # t: continuous time in [0, 1]
    net(x, t).shape                  # (2, 10) logits
    net(x, t, feature=True).shape    # (2, 128, 8, 8): middle-block output, before the head

Architecture in one paragraph: the time t ∈ [0, 1] is multiplied by 999, embedded sinusoidally
([cos, sin] with frequencies exp(−ln(10⁴)·i/half)) and mapped by Linear–SiLU–Linear to 4C
channels (C = width), plus a 1000-row class embedding when ``condition``. A 3×3 conv, then per
level ``depth`` residual blocks (GroupNorm(32)–SiLU–conv, timestep scale-shift
GN(h)·(1 + scale) + shift, SiLU–conv, 1×1-conv skip where the width changes) each followed by
self-attention at the listed downsample factors, and a residual down block (2×2 average pooling
on both paths) between levels; a middle ResBlock–attention–ResBlock; and a head
GroupNorm–SiLU–attention pooling (the spatial mean as an extra query token, learned positional
embedding). Self-attention blocks split q/k/v *after* the heads ("legacy" order), the pooling head
*before* them ("new" order); both scale q and k by (head width)^(−1/4) and take the softmax in float32 (or wider).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from smcdiff.checks import check_int
from smcdiff.types import Tensor

__all__ = [
    "EncoderUNetModel", "create_classifier", "classifier_channel_mult", "timestep_embedding",
    "ResBlock", "AttentionBlock", "AttentionPool2d", "TIME_SCALE",
]

#: The encoder's time input t ∈ [0, 1] is multiplied by this before the sinusoidal embedding.
TIME_SCALE = 999

_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4), 32: (1, 2, 4), 16: (1, 2), 8: (1,),
}


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``t : (N,) -> (N, dim)`` float32: [cos(t·f_i), sin(t·f_i)], f_i = exp(−ln(max_period)·i/half).

    ``t`` is used as given (the encoder passes 999·t). An odd ``dim`` gets a trailing zero column.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups, computed in its parameters' dtype (float32 also in float16 blocks), cast back."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.to(self.weight.dtype)).type(x.dtype)


class ResBlock(nn.Module):
    """Residual block with timestep conditioning; ``down=True`` average-pools both paths by 2.

    Keys: ``in_layers.{0,2}``, ``emb_layers.1``, ``out_layers.{0,3}``, ``skip_connection`` (1×1 conv,
    only when the width changes). ``forward(x : (N, C, H, W), emb : (N, E))``.
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None, *, dropout: float = 0.0,
                 use_scale_shift_norm: bool = True, down: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm, self.down = use_scale_shift_norm, down
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.down:
            h = self.in_layers[1](self.in_layers[0](x))
            h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
            h = self.in_layers[2](h)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


def _attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Scaled dot-product attention on ``(B·heads, ch, T)`` tensors; q, k scaled by ch^(−1/4), softmax in ≥ float32."""
    scale = 1.0 / math.sqrt(math.sqrt(q.shape[1]))
    w = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    w = torch.softmax(w.float() if w.dtype in (torch.float16, torch.bfloat16) else w, dim=-1).type(w.dtype)
    return torch.einsum("bts,bcs->bct", w, v)


def _attention_legacy(qkv: Tensor, heads: int) -> Tensor:
    """Legacy split: ``(B, 3·H·ch, T)`` viewed as (B·H, 3·ch, T), then q | k | v."""
    B, width, T = qkv.shape
    ch = width // (3 * heads)
    q, k, v = qkv.reshape(B * heads, 3 * ch, T).split(ch, dim=1)
    return _attention(q, k, v).reshape(B, -1, T)


def _attention_new(qkv: Tensor, heads: int) -> Tensor:
    """New split: q | k | v first, then each viewed as (B·H, ch, T)."""
    B, width, T = qkv.shape
    ch = width // (3 * heads)
    q, k, v = (z.reshape(B * heads, ch, T) for z in qkv.chunk(3, dim=1))
    return _attention(q, k, v).reshape(B, -1, T)


class AttentionBlock(nn.Module):
    """Spatial self-attention with a residual, ``channels // head_channels`` heads (legacy q/k/v split).

    Keys: ``norm``, ``qkv`` (Conv1d C → 3C), ``proj_out`` (Conv1d C → C).
    """

    def __init__(self, channels: int, num_head_channels: int = 64, num_heads: int = 1):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"attention width {channels} is not a multiple of the head width {num_head_channels}")
            self.num_heads = channels // num_head_channels
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        B, C = x.shape[:2]
        h = x.reshape(B, C, -1)
        out = self.proj_out(_attention_legacy(self.qkv(self.norm(h)), self.num_heads))
        return (h + out).reshape(x.shape)


class AttentionPool2d(nn.Module):
    """Attention pooling (new q/k/v split): the spatial mean is prepended as token 0, which is returned.

    Keys: ``positional_embedding`` (C, HW + 1), ``qkv_proj`` (Conv1d C → 3C), ``c_proj`` (Conv1d C → out).
    ``forward(x : (N, C, H, W)) -> (N, out)``.
    """

    def __init__(self, spatial_dim: int, embed_dim: int, num_head_channels: int, output_dim: int | None = None):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spatial_dim**2 + 1) / embed_dim**0.5)
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, output_dim or embed_dim, 1)
        if embed_dim % num_head_channels:
            raise ValueError(f"attention width {embed_dim} is not a multiple of the head width {num_head_channels}")
        self.num_heads = embed_dim // num_head_channels

    def forward(self, x: Tensor) -> Tensor:
        B, C = x.shape[:2]
        x = x.reshape(B, C, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        x = x + self.positional_embedding[None].to(x.dtype)
        x = self.c_proj(_attention_new(self.qkv_proj(x), self.num_heads))
        return x[:, :, 0]


class _Seq(nn.ModuleList):
    """A sequence of layers; ResBlocks and attention blocks also get the embedding."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, (ResBlock, AttentionBlock)) else layer(x)
        return x


class EncoderUNetModel(nn.Module):
    """The ADM encoder: UNet downsampling half + middle block + attention-pooling head.

    Args:
        image_size: input resolution (sets the pooling head's positional embedding).
        in_channels, model_channels, out_channels: input channels, base width C, head outputs.
        num_res_blocks: ResBlocks per level.
        attention_resolutions: downsample factors ``ds`` (1, 2, 4, …) whose levels get attention.
        channel_mult: per-level width multipliers (level width = int(mult·C)).
        num_head_channels: attention head width (heads = width // it); ``-1`` uses ``num_heads``.
        use_scale_shift_norm, resblock_updown: as published (True); ``resblock_updown=False`` (conv
            or pooling downsample layers) is not implemented.
        pool: only ``"attention"`` is implemented.
        condition: add a ``num_class``-row label embedding to the time embedding.
        use_fp16: run the input and middle blocks in float16 (:meth:`convert_to_fp16`).

    ``forward(x : (N, in, R, R), timesteps : (N,), feature=False, sigmoid=False, condition=None)``:
    ``timesteps`` continuous in [0, 1] (×999 inside); ``condition`` a one-hot/score matrix
    ``(N, classes)`` (argmax is taken) or ``(N,)`` class indices. Returns the middle-block
    features ``(N, C_last, R/ds, R/ds)`` if ``feature`` else the head output ``(N, out)``
    (through a sigmoid if ``sigmoid``).
    """

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int, num_res_blocks: int,
                 attention_resolutions, dropout: float = 0.0, channel_mult=(1, 2, 4, 8), use_fp16: bool = False,
                 num_heads: int = 1, num_head_channels: int = 64, use_scale_shift_norm: bool = True,
                 resblock_updown: bool = True, pool: str = "attention", condition: bool = False, num_class: int = 1000):
        super().__init__()
        if pool != "attention":
            raise NotImplementedError(f"only pool='attention' (the published classifiers) is implemented, got {pool!r}")
        if not resblock_updown:
            raise NotImplementedError("only resblock_updown=True (the published classifiers) is implemented")
        self.image_size, self.in_channels, self.model_channels = image_size, in_channels, model_channels
        self.out_channels, self.condition, self.num_class = out_channels, bool(condition), num_class
        self.channel_mult = tuple(channel_mult)
        self._fp16 = False
        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if self.condition:
            self.label_emb = nn.Embedding(num_class, emb_dim)

        def res(c_in, c_out, down=False):
            return ResBlock(c_in, emb_dim, c_out, dropout=dropout, use_scale_shift_norm=use_scale_shift_norm, down=down)

        def attn(c):
            return AttentionBlock(c, num_head_channels=num_head_channels, num_heads=num_heads)

        ch = int(self.channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([_Seq([nn.Conv2d(in_channels, ch, 3, padding=1)])])
        ds = 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(_Seq(layers))
            if level != len(self.channel_mult) - 1:
                self.input_blocks.append(_Seq([res(ch, ch, down=True)]))
                ds *= 2
        self.middle_block = _Seq([res(ch, ch), attn(ch), res(ch, ch)])
        self.feature_channels, self.feature_ds = ch, ds
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), AttentionPool2d(image_size // ds, ch, num_head_channels, out_channels))
        if use_fp16:
            self.convert_to_fp16()

    def feature_shape(self) -> tuple[int, int, int]:
        """Per-sample shape of the ``feature=True`` output: (C_last, R/ds, R/ds)."""
        r = self.image_size // self.feature_ds
        return (self.feature_channels, r, r)

    def convert_to_fp16(self) -> None:
        """Store the input and middle blocks' convolutions in float16 and run those blocks in float16
        (embeddings and GroupNorm stay float32; the features are returned in the input's dtype)."""
        for m in [*self.input_blocks.modules(), *self.middle_block.modules()]:
            if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                m.half()
        self._fp16 = True

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the input and middle blocks: float16 after :meth:`convert_to_fp16`, else the parameters'."""
        return torch.float16 if self._fp16 else self.time_embed[0].weight.dtype

    def embed(self, timesteps: Tensor, condition: Tensor | None = None) -> Tensor:
        """The conditioning vector (N, 4C): time embedding of 999·t (+ label embedding)."""
        w = self.time_embed[0].weight
        t = torch.as_tensor(timesteps, device=w.device)
        emb = self.time_embed(timestep_embedding(TIME_SCALE * t.reshape(-1), self.model_channels).to(w.dtype))
        if self.condition:
            if condition is None:
                raise ValueError("this encoder is class-conditional: pass condition=(N, classes) one-hot or (N,) indices")
            idx = condition.argmax(dim=1) if condition.dim() == 2 else condition.long()
            emb = emb + self.label_emb(idx.to(emb.device))
        return emb

    def forward(self, x: Tensor, timesteps: Tensor, feature: bool = False, sigmoid: bool = False,
                condition: Tensor | None = None) -> Tensor:
        emb = self.embed(timesteps, condition)
        h = x.type(self.dtype)
        for block in self.input_blocks:
            h = block(h, emb)
        h = self.middle_block(h, emb).type(x.dtype)
        if feature:
            return h
        out = self.out(h)
        return torch.sigmoid(out) if sigmoid else out


def classifier_channel_mult(image_size: int) -> tuple:
    """The published per-level width multipliers for a classifier of this input resolution."""
    if image_size not in _CHANNEL_MULT:
        raise ValueError(f"no published channel_mult for image_size {image_size}; expected one of {sorted(_CHANNEL_MULT)}")
    return _CHANNEL_MULT[image_size]


def create_classifier(image_size: int, classifier_width: int, classifier_depth: int,
                      classifier_attention_resolutions: str = "32,16,8", classifier_use_scale_shift_norm: bool = True,
                      classifier_resblock_updown: bool = True, classifier_pool: str = "attention",
                      out_channels: int = 1000, in_channels: int = 3, condition: bool = False,
                      classifier_use_fp16: bool = False, *, channel_mult=None) -> EncoderUNetModel:
    """The encoder as the published training scripts build it (64-channel heads, 1000-row label table).

    ``classifier_attention_resolutions`` lists *resolutions* ("32,16,8"), converted to downsample
    factors image_size // r (so an 8×8 head gets attention at ds 1 only). ``channel_mult``
    defaults to :func:`classifier_channel_mult` (32 → (1, 2, 4); pass (1, 2, 3) for DG-ImageNet).
    """
    image_size = check_int(image_size, "image_size", minimum=1)
    classifier_width = check_int(classifier_width, "classifier_width", minimum=1)
    classifier_depth = check_int(classifier_depth, "classifier_depth", minimum=1)
    mult = tuple(channel_mult) if channel_mult is not None else classifier_channel_mult(image_size)
    try:
        resolutions = [int(r) for r in str(classifier_attention_resolutions).split(",") if r.strip()]
    except ValueError:
        resolutions = [0]
    if any(r < 1 for r in resolutions):
        raise ValueError("classifier_attention_resolutions must be comma-separated positive ints such as "
                         f"'32,16,8', got {classifier_attention_resolutions!r}")
    attention_ds = [image_size // r for r in resolutions]
    return EncoderUNetModel(
        image_size=image_size, in_channels=in_channels, model_channels=classifier_width, out_channels=out_channels,
        num_res_blocks=classifier_depth, attention_resolutions=tuple(attention_ds), channel_mult=mult,
        use_fp16=classifier_use_fp16, num_head_channels=64, use_scale_shift_norm=classifier_use_scale_shift_norm,
        resblock_updown=classifier_resblock_updown, pool=classifier_pool, condition=condition, num_class=1000)
