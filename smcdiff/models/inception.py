"""Inception-v3 pool features for FID, in the layout of the PyTorch FID-Inception weights.

FID compares 2048-d activations of the last average pool ("pool3") of the Inception-v3 graph that
TensorFlow released on 2015-12-05. That graph differs from the ImageNet Inception-v3 of common
model zoos in three places, all reproduced here:

* the average-pool branches of the 35x35 (``Mixed_5b-d``), 17x17 (``Mixed_6b-e``) and first
  8x8 (``Mixed_7b``) blocks ignore the padding when averaging (``count_include_pad=False``);
* the pooling branch of the last block (``Mixed_7c``) takes a 3x3 **max** pool, not an average;
* the classifier has 1008 outputs (unused for FID, kept so the weight file loads strictly).

:class:`InceptionFeatures` builds that network with the parameter names of the widely used PyTorch
port of those weights (pytorch-fid's ``pt_inception-2015-12-05-*.pth``: ``Conv2d_1a_3x3.conv.weight``,
``Mixed_5b.branch1x1.bn.running_mean``, ..., ``fc.weight``; no auxiliary classifier). smcdiff never
downloads anything: the weights come from a local file, and a missing path is an error::

    import torch
    from smcdiff.models.inception import InceptionFeatures

    extractor = InceptionFeatures("pt_inception-2015-12-05-6726825d.pth")   # local file
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)      # EDM: uint8 NCHW
    feats = extractor(images)                                              # (4, 2048) float32

**Input convention** (EDM's): ``uint8`` images ``(N, 3, H, W)``, RGB, 0..255. They are scaled to
[0, 1], resized to 299x299 with bilinear interpolation (``align_corners=False``, no antialiasing,
as pytorch-fid does) and mapped to [-1, 1] before the network. NVIDIA's TorchScript
``inception-2015-12-05.pkl`` (EDM, StyleGAN) holds the same weights but resizes inside its own
graph, so FIDs computed here can differ slightly from EDM's published numbers, most for small
images; compare only statistics made by the same extractor.

:meth:`InceptionFeatures.random` (generator-seeded weights) and
:meth:`InceptionFeatures.from_state_dict` exist for tests and for weights already in memory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["InceptionFeatures", "FEATURE_DIM", "TOP_LEVEL_MODULES"]

Tensor = torch.Tensor

FEATURE_DIM = 2048
NUM_CLASSES = 1008  # the 2015-12-05 graph's classifier width
_INPUT_SIZE = 299
_MIN_SIZE = 75      # smallest input the stride-2 stages accept (used only with resize_input=False)

#: Top-level module names of the FID-Inception state dict, in forward order.
TOP_LEVEL_MODULES = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    "Mixed_7a", "Mixed_7b", "Mixed_7c", "fc",
)

_NO_WEIGHTS = (
    "FID needs Inception-v3 weights from a local file: pass weights_path=...; smcdiff never "
    "downloads (use the PyTorch FID-Inception state dict, e.g. pytorch-fid's "
    "pt_inception-2015-12-05-*.pth)"
)


class _ConvBN(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3), ReLU: the unit every branch is made of."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _pool3x3(x: Tensor, kind: str) -> Tensor:
    """Stride-1, size-preserving 3x3 pool of the pooling branches (FID variant: pads not counted)."""
    if kind == "max":
        return F.max_pool2d(x, 3, stride=1, padding=1)
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _Block35(nn.Module):
    """35x35 block (``Mixed_5b-d``): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1; 224 + pool_ch out."""

    def __init__(self, cin: int, pool_ch: int):
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 64, 1)
        self.branch5x5_1 = _ConvBN(cin, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(cin, pool_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_pool3x3(x, "avg"))
        return torch.cat([a, b, c, d], 1)


class _Reduce35to17(nn.Module):
    """Grid reduction ``Mixed_6a``: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2; 288 -> 768 channels."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class _Block17(nn.Module):
    """17x17 block (``Mixed_6b-e``) with factorised 7x7 convolutions of width ``mid``; 768 out."""

    def __init__(self, cin: int, mid: int):
        super().__init__()
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding) of the 1x7 and 7x1 convs
        self.branch1x1 = _ConvBN(cin, 192, 1)
        self.branch7x7_1 = _ConvBN(cin, mid, 1)
        self.branch7x7_2 = _ConvBN(mid, mid, row[0], padding=row[1])
        self.branch7x7_3 = _ConvBN(mid, 192, col[0], padding=col[1])
        self.branch7x7dbl_1 = _ConvBN(cin, mid, 1)
        self.branch7x7dbl_2 = _ConvBN(mid, mid, col[0], padding=col[1])
        self.branch7x7dbl_3 = _ConvBN(mid, mid, row[0], padding=row[1])
        self.branch7x7dbl_4 = _ConvBN(mid, mid, col[0], padding=col[1])
        self.branch7x7dbl_5 = _ConvBN(mid, 192, row[0], padding=row[1])
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            c = conv(c)
        d = self.branch_pool(_pool3x3(x, "avg"))
        return torch.cat([a, b, c, d], 1)


class _Reduce17to8(nn.Module):
    """Grid reduction ``Mixed_7a``: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2; 768 -> 1280."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = _ConvBN(cin, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b = conv(b)
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class _Block8(nn.Module):
    """8x8 block (``Mixed_7b``: avg-pool branch; ``Mixed_7c``: max-pool branch); 2048 out."""

    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = _ConvBN(cin, 320, 1)
        self.branch3x3_1 = _ConvBN(cin, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], 1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], 1)
        d = self.branch_pool(_pool3x3(x, self.pool))
        return torch.cat([a, b, c, d], 1)


class InceptionFeatures(nn.Module):
    """The FID Inception-v3 as a frozen feature extractor: ``uint8 (N, 3, H, W) -> (N, 2048)``.

    Args:
        weights_path: local file holding the FID-Inception state dict (pytorch-fid layout, see the
            module docstring); loaded with ``torch.load(..., weights_only=True)`` and strictly
            (``num_batches_tracked`` counters, unused at inference, are filled in when absent).
            ``None`` raises ``ValueError``: nothing is ever downloaded.
        resize_input: resize every input to 299x299 (standard FID). ``False`` feeds the images at
            their own size (at least 75x75): cheaper, but the features are not FID features.

    The module stays in eval mode (``train()`` is a no-op) with gradients off; move it with
    ``.to(device)``, inputs follow it. Call it under ``torch.inference_mode()`` for speed.
    """

    def __init__(self, weights_path: str | os.PathLike | None = None, *, resize_input: bool = True):
        if weights_path is None:
            raise ValueError(_NO_WEIGHTS)
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        self._init_empty(resize_input)
        self._load(state, source=os.fspath(weights_path))

    # -- construction -------------------------------------------------------------------------

    def _init_empty(self, resize_input: bool) -> None:
        """Build the layers without initialising them (meta device: no global RNG is touched)."""
        super().__init__()
        self.resize_input = bool(resize_input)
        with torch.device("meta"):
            self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
            self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
            self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
            self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
            self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
            self.Mixed_5b = _Block35(192, pool_ch=32)
            self.Mixed_5c = _Block35(256, pool_ch=64)
            self.Mixed_5d = _Block35(288, pool_ch=64)
            self.Mixed_6a = _Reduce35to17(288)
            self.Mixed_6b = _Block17(768, mid=128)
            self.Mixed_6c = _Block17(768, mid=160)
            self.Mixed_6d = _Block17(768, mid=160)
            self.Mixed_6e = _Block17(768, mid=192)
            self.Mixed_7a = _Reduce17to8(768)
            self.Mixed_7b = _Block8(1280, pool="avg")
            self.Mixed_7c = _Block8(2048, pool="max")
            self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)
        self.to_empty(device="cpu")
        self.requires_grad_(False)
        super().train(False)

    @classmethod
    def _empty(cls, resize_input: bool) -> InceptionFeatures:
        self = cls.__new__(cls)
        self._init_empty(resize_input)
        return self

    def _load(self, state, source: str) -> None:
        if not isinstance(state, Mapping):
            raise TypeError(f"{source}: expected a state dict (mapping of tensors), got {type(state).__name__}")
        state = dict(state)
        for name, module in self.named_modules():
            if isinstance(module, nn.BatchNorm2d):
                state.setdefault(f"{name}.num_batches_tracked", torch.zeros((), dtype=torch.long))
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(
                f"{source} is not an FID-Inception state dict in the PyTorch (pytorch-fid) layout; "
                f"NVIDIA's TorchScript .pkl is not supported. {err}"
            ) from err

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Tensor], *, resize_input: bool = True) -> InceptionFeatures:
        """An extractor from a state dict already in memory (same strict rules as a file)."""
        self = cls._empty(resize_input)
        self._load(state_dict, source="state_dict")
        return self

    @classmethod
    def random(cls, generator: torch.Generator, *, resize_input: bool = True) -> InceptionFeatures:
        """Random weights drawn from ``generator`` (He-normal convs, identity batch norms), for tests.

        Deterministic given the generator's seed; the features are meaningless for FID.
        """
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self = cls._empty(resize_input)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.fill_(1.0)
                module.bias.zero_()
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
                module.num_batches_tracked.zero_()
        self.fc.weight.copy_(0.01 * torch.randn(self.fc.weight.shape, generator=generator))
        self.fc.bias.zero_()
        return self

    def train(self, mode: bool = True) -> InceptionFeatures:
        """Frozen network: always stays in eval mode (batch norm uses its running statistics)."""
        return super().train(False)

    # -- forward ------------------------------------------------------------------------------

    def preprocess(self, images: Tensor) -> Tensor:
        """``uint8 (N, 3, H, W)`` -> float32 ``(N, 3, 299, 299)`` in [-1, 1] on the model's device."""
        if not isinstance(images, Tensor) or images.dtype != torch.uint8:
            raise TypeError(
                "InceptionFeatures takes uint8 images (N, 3, H, W) in 0..255 (EDM convention; from "
                "x in [-1, 1] use (x * 127.5 + 128).clip(0, 255).to(torch.uint8)), got "
                f"{getattr(images, 'dtype', type(images).__name__)}"
            )
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
        x = images.to(self.fc.weight.device, torch.float32) / 255.0
        if self.resize_input:
            if x.shape[-2:] != (_INPUT_SIZE, _INPUT_SIZE):
                x = F.interpolate(x, size=(_INPUT_SIZE, _INPUT_SIZE), mode="bilinear", align_corners=False)
        elif min(x.shape[-2:]) < _MIN_SIZE:
            raise ValueError(f"resize_input=False needs images of at least {_MIN_SIZE}x{_MIN_SIZE}, "
                             f"got {tuple(x.shape[-2:])}")
        return 2.0 * x - 1.0

    def forward(self, images: Tensor) -> Tensor:
        """Pool features ``(N, 2048)`` float32 of uint8 images ``(N, 3, H, W)``."""
        x = self.preprocess(images)
        # Stem: 299 -> 35x35x192.
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        # Inception blocks: 35x35 -> 17x17 -> 8x8x2048.
        for name in TOP_LEVEL_MODULES[5:-1]:
            x = getattr(self, name)(x)
        # Global average pool ("pool3").
        return x.mean(dim=(2, 3))
