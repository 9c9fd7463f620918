"""DhariwalUNet: the ADM-style UNet (Dhariwal & Nichol) as used by EDM (clean-room reimplementation).

Differences from :class:`~smcdiff.models.song_unet.SongUNet`: adaptive GroupNorm scale/shift from
the embedding, residual ``skip_scale`` 1, GroupNorm ``eps`` 1e-5, 64-channel attention heads
wherever the resolution is in ``attn_resolutions`` (a level narrower than 64 channels gets no
attention layers at all), a label embedding without bias or input scaling added after the second
mapping layer, and an ``out_norm``/``out_conv`` head. The EDM ImageNet-64 network uses
``model_channels=192, channel_mult=[1, 2, 3, 4], num_blocks=3, attn_resolutions=[32, 16, 8]``.

    >>> import torch
    >>> from smcdiff.models.dhariwal_unet import DhariwalUNet
    >>> net = DhariwalUNet(img_resolution=8, in_channels=3, out_channels=6, label_dim=4,
    ...                    model_channels=16, channel_mult=[1, 4], num_blocks=1,
    ...                    attn_resolutions=[4])
    >>> net(torch.randn(2, 3, 8, 8), torch.zeros(2), torch.eye(4)[:2]).shape
    torch.Size([2, 6, 8, 8])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from smcdiff.models.edm_layers import (
    Conv2d,
    GroupNorm,
    Linear,
    PositionalEmbedding,
    UNetBlock,
)
from smcdiff.models.song_unet import add_decoder_level, check_resolution

__all__ = ["DhariwalUNet"]

Tensor = torch.Tensor


class DhariwalUNet(nn.Module):
    """ADM-style UNet; parameter names follow the EDM checkpoints (``enc.64x64_conv`` ...).

    Args:
        img_resolution, in_channels, out_channels: image geometry.
        label_dim: number of class-label columns (0 = unconditional).
        augment_dim: augmentation-label width (creates ``map_augment``, unused at sampling).
        model_channels, channel_mult, channel_mult_emb, num_blocks, attn_resolutions: widths,
            per-level multipliers, embedding width factor, blocks per level, resolutions with
            self-attention (64 channels per head).
        dropout, label_dropout: training-time dropout rates (off in eval mode).
    """

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int,
                 label_dim: int = 0, augment_dim: int = 0, model_channels: int = 192,
                 channel_mult: Sequence[int] = (1, 2, 3, 4), channel_mult_emb: int = 4,
                 num_blocks: int = 3, attn_resolutions: Sequence[int] = (32, 16, 8),
                 dropout: float = 0.10, label_dropout: float = 0.0):
        check_resolution(img_resolution, len(channel_mult), "DhariwalUNet")
        super().__init__()
        self.img_resolution = img_resolution
        self.label_dim = label_dim
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode="kaiming_uniform", init_weight=math.sqrt(1 / 3),
                    init_bias=math.sqrt(1 / 3))
        init_zero = dict(init_mode="kaiming_uniform", init_weight=0.0, init_bias=0.0)
        block_kwargs = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout,
                            init=init, init_zero=init_zero)

        # Mapping network.
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = (Linear(augment_dim, model_channels, bias=False, **init_zero)
                            if augment_dim else None)
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = (Linear(label_dim, emb_channels, bias=False, init_mode="kaiming_normal",
                                 init_weight=math.sqrt(label_dim)) if label_dim else None)

        # Encoder.
        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=(res in attn_resolutions), **block_kwargs)
        skips = [block.out_channels for block in self.enc.values()]

        # Decoder.
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            cout = add_decoder_level(self.dec, res, level == len(channel_mult) - 1, num_blocks, cout,
                                     model_channels * mult, skips, lambda idx, res=res: res in attn_resolutions,
                                     block_kwargs)
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None,
                augment_labels: Tensor | None = None) -> Tensor:
        # Mapping: SiLU(layer0(pe [+ aug])) -> layer1 [+ label] -> SiLU.
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer0(emb))
        emb = self.map_layer1(emb)
        if self.map_label is not None:
            if class_labels is None:
                raise ValueError("DhariwalUNet: this network is conditional; pass class_labels")
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand(labels.shape[0], 1, device=labels.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels)
        emb = F.silu(emb)

        # Encoder: every output goes on the skip stack.
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)

        # Decoder: concatenate a skip whenever the block expects more channels.
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))
