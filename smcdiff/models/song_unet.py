"""SongUNet: the DDPM++ / NCSN++ UNets of Song et al. as used by EDM (clean-room reimplementation).

The two published variants differ only in their options:

* DDPM++ ("vp" EDM pickles): ``embedding_type='positional'``, ``channel_mult_noise=1``,
  ``encoder_type='standard'``, ``resample_filter=[1, 1]``;
* NCSN++ ("ve" EDM pickles): ``embedding_type='fourier'``, ``channel_mult_noise=2``,
  ``encoder_type='residual'``, ``resample_filter=[1, 3, 3, 1]``.

``model(x, noise_labels, class_labels, augment_labels=None)`` maps ``x : (B, in_channels, R, R)``,
``noise_labels : (B,)`` (or ``(1,)``) and ``class_labels : (B or 1, label_dim)`` (or None) to
``(B, out_channels, R, R)``. It is normally wrapped by a preconditioner
(:mod:`smcdiff.models.precond`), which supplies ``noise_labels = c_noise(sigma)``.

    >>> import torch
    >>> from smcdiff.models.song_unet import SongUNet
    >>> net = SongUNet(img_resolution=8, in_channels=3, out_channels=3, model_channels=16,
    ...                channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
    >>> net(torch.randn(2, 3, 8, 8), torch.zeros(2), None).shape
    torch.Size([2, 3, 8, 8])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from smcdiff.models.edm_layers import (
    Conv2d,
    FourierEmbedding,
    GroupNorm,
    Linear,
    PositionalEmbedding,
    UNetBlock,
)

__all__ = ["SongUNet"]

Tensor = torch.Tensor


def add_decoder_level(dec: nn.ModuleDict, res: int, top: bool, num_blocks: int, cin: int, cout: int,
                      skips: list, attention: Callable[[int], bool], block_kwargs: dict) -> int:
    """Add one level of EDM's U-Net decoder to ``dec`` (the layout SongUNet and DhariwalUNet share).

    ``top`` (the lowest resolution): ``in0`` (with attention) and ``in1`` blocks, else an ``up``
    block; then ``num_blocks + 1`` blocks, each taking the next skip popped from ``skips``, with
    attention where ``attention(idx)``. ``cin`` channels come in; returns ``cout``.
    """
    if top:
        dec[f"{res}x{res}_in0"] = UNetBlock(cin, cin, attention=True, **block_kwargs)
        dec[f"{res}x{res}_in1"] = UNetBlock(cin, cin, **block_kwargs)
    else:
        dec[f"{res}x{res}_up"] = UNetBlock(cin, cin, up=True, **block_kwargs)
    for idx in range(num_blocks + 1):
        dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin + skips.pop(), cout, attention=attention(idx), **block_kwargs)
        cin = cout
    return cout


def check_resolution(img_resolution: int, num_levels: int, who: str) -> None:
    """Each of the ``num_levels`` levels halves the resolution: it must stay an integer."""
    if num_levels < 1:
        raise ValueError(f"{who}: channel_mult must have at least one entry")
    if img_resolution < 1 or img_resolution % (1 << (num_levels - 1)):
        raise ValueError(f"{who}: img_resolution {img_resolution} is not divisible by "
                         f"2**{num_levels - 1} (one halving per extra channel_mult level)")


class SongUNet(nn.Module):
    """DDPM++ / NCSN++ UNet. Parameter names follow the EDM checkpoints (``enc.16x16_block0`` ...).

    Args:
        img_resolution, in_channels, out_channels: image geometry.
        label_dim: number of class-label columns (0 = unconditional).
        augment_dim: augmentation-label width (creates ``map_augment``, unused at sampling).
        model_channels, channel_mult, channel_mult_emb, num_blocks, attn_resolutions: widths,
            per-level multipliers, embedding width factor, blocks per level, resolutions
            with self-attention.
        dropout, label_dropout: training-time dropout rates (off in eval mode).
        embedding_type: ``'positional'`` (DDPM++) or ``'fourier'`` (NCSN++).
        channel_mult_noise: noise-embedding width factor (1 for DDPM++, 2 for NCSN++).
        encoder_type: ``'standard'``, ``'skip'`` or ``'residual'`` (NCSN++).
        decoder_type: ``'standard'`` or ``'skip'``.
        resample_filter: 1-D FIR filter of the 2x resampling ([1, 1] DDPM++, [1, 3, 3, 1] NCSN++).
    """

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int,
                 label_dim: int = 0, augment_dim: int = 0, model_channels: int = 128,
                 channel_mult: Sequence[int] = (1, 2, 2, 2), channel_mult_emb: int = 4,
                 num_blocks: int = 4, attn_resolutions: Sequence[int] = (16,),
                 dropout: float = 0.10, label_dropout: float = 0.0,
                 embedding_type: str = "positional", channel_mult_noise: int = 1,
                 encoder_type: str = "standard", decoder_type: str = "standard",
                 resample_filter: Sequence[float] = (1, 1)):
        if embedding_type not in ("positional", "fourier"):
            raise ValueError(f"SongUNet: embedding_type must be 'positional' or 'fourier', "
                             f"got {embedding_type!r}")
        if encoder_type not in ("standard", "skip", "residual"):
            raise ValueError(f"SongUNet: encoder_type must be 'standard', 'skip' or 'residual', "
                             f"got {encoder_type!r}")
        if decoder_type not in ("standard", "skip"):
            raise ValueError(f"SongUNet: decoder_type must be 'standard' or 'skip', got "
                             f"{decoder_type!r}")
        check_resolution(img_resolution, len(channel_mult), "SongUNet")
        super().__init__()
        self.img_resolution = img_resolution
        self.label_dim = label_dim
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        block_kwargs = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout,
                            skip_scale=math.sqrt(0.5), eps=1e-6, resample_filter=resample_filter,
                            resample_proj=True, adaptive_scale=False, init=init,
                            init_zero=init_zero, init_attn=init_attn)

        # Mapping network: noise (+ label, + augmentation) embedding -> emb.
        self.map_noise = (PositionalEmbedding(noise_channels, endpoint=True)
                          if embedding_type == "positional" else FourierEmbedding(noise_channels))
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = (Linear(augment_dim, noise_channels, bias=False, **init)
                            if augment_dim else None)
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # Encoder.
        self.enc = nn.ModuleDict()
        cout = in_channels
        caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(
                        caux, caux, kernel=0, down=True, resample_filter=resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, kernel=1, **init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        caux, cout, kernel=3, down=True, resample_filter=resample_filter,
                        fused_resample=True, **init)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=(res in attn_resolutions), **block_kwargs)
        skips = [block.out_channels for name, block in self.enc.items() if "aux" not in name]

        # Decoder.
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            cout = add_decoder_level(self.dec, res, level == len(channel_mult) - 1, num_blocks, cout,
                                     model_channels * mult, skips,
                                     lambda idx, res=res: idx == num_blocks and res in attn_resolutions, block_kwargs)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(
                        out_channels, out_channels, kernel=0, up=True,
                        resample_filter=resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, kernel=3,
                                                           **init_zero)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None,
                augment_labels: Tensor | None = None) -> Tensor:
        # Mapping: [cos | sin] of the noise embedding is swapped to [sin | cos].
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)
        if self.map_label is not None:
            if class_labels is None:
                raise ValueError("SongUNet: this network is conditional; pass class_labels")
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand(labels.shape[0], 1, device=labels.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer0(emb))
        emb = F.silu(self.map_layer1(emb))

        # Encoder: every main-path output goes on the skip stack; aux paths update its top.
        skips = []
        aux = x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

        # Decoder: concatenate a skip whenever the block expects more channels.
        aux = None
        tmp = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                aux = block(aux)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(F.silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return aux
