"""Rewards on images, for reward steering (FK steering, best-of-N) of image models.

An *image reward* is any callable ``reward(images, **cond) -> (N,)`` on images ``(N, 3, H, W)``
in [0, 1] (float), returning one finite float64 value per image (larger is better). On a latent
model the images are the decoded x̂0: wrap the reward with
:class:`smcdiff.models.latent.Decoded` (``model.decoded(reward)``) and it becomes a reward on
latents, ``r(x0_hat, **cond)``, which :func:`smcdiff.methods.reward_steering.fk_steering`,
:class:`~smcdiff.weights.RewardPotential` and ``best_of_n(score=...)`` take as they are. The
decode happens only where the reward is evaluated (FK steering's evaluation steps).

* :class:`ColorReward` — a synthetic reward (tests, demos): minus the mean squared distance of the
  pixels to a target colour, in [−3, 0]; 0 for an image of exactly that colour.
* :class:`CLIPScore` — the CLIP score ``scale·cos(E_image(img), E_text(prompt))`` of a CLIP model
  loaded from a local folder with transformers (``CLIPScore.from_pretrained(folder, prompts)``).
  The prompt of each particle is ``cond["prompt_index"]`` (an index into ``prompts``; it follows
  the particle through resampling), or the single prompt when there is one.

    >>> import torch
    >>> red = ColorReward((1.0, 0.0, 0.0))
    >>> images = torch.zeros(2, 3, 4, 4)
    >>> images[0, 0] = 1.0                         # image 0 is pure red, image 1 black
    >>> red(images)
    tensor([ 0., -1.], dtype=torch.float64)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from smcdiff.types import Tensor

__all__ = ["CLIP_MEAN", "CLIP_STD", "CLIPScore", "ColorReward", "check_images"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def check_images(images, who: str) -> Tensor:
    """``images`` after checking it is a float ``(N, 3, H, W)`` tensor without NaN."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{who} expects float images (N, 3, H, W) in [0, 1], got {got}")
    if bool(torch.isnan(images).any()):
        raise ValueError(f"{who}: the images contain NaN")
    return images


class ColorReward:
    """r(img) = −mean over pixels of ‖img − target‖² (``target`` an RGB triple in [0, 1])."""

    def __init__(self, target: Sequence[float] = (1.0, 0.0, 0.0), *, name: str = "color"):
        target = torch.as_tensor(target, dtype=torch.float64)
        if target.shape != (3,) or not bool(((target >= 0) & (target <= 1)).all()):
            raise ValueError(f"target must be an RGB triple in [0, 1], got {target.tolist()}")
        self.target, self.name = target, name

    def __call__(self, images: Tensor, **cond) -> Tensor:
        images = check_images(images, "ColorReward").to(torch.float64)
        diff = images - self.target.to(images.device).reshape(1, 3, 1, 1)
        return 0.0 - diff.pow(2).sum(1).mean((1, 2))  # 0.0 − d: an exact match scores +0, not −0

    def __repr__(self) -> str:
        return f"ColorReward({self.target.tolist()})"


class CLIPScore:
    """``scale·cos(image features, text features)`` of a CLIP model (see the module doc).

    ``CLIPScore(model, tokenizer, prompts, *, scale=100.0, max_batch=None)``: ``model`` has
    ``get_image_features(pixel_values)`` and ``get_text_features(input_ids)`` (transformers'
    ``CLIPModel``); images are resized (bicubic, short side) and centre-cropped to the model's
    ``image_size`` and normalised with CLIP's mean/std. Text features are computed once.
    """

    def __init__(self, model, tokenizer, prompts: Sequence[str], *, scale: float = 100.0,
                 max_batch: int | None = None):
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
        for attr in ("get_image_features", "get_text_features"):
            if not callable(getattr(model, attr, None)):
                raise TypeError(f"model must have {attr} (e.g. transformers' CLIPModel), got {type(model).__name__}")
        self.model, self.prompts, self.scale, self.max_batch = model, list(prompts), float(scale), max_batch
        config = getattr(model, "config", None)
        self.image_size = int(getattr(getattr(config, "vision_config", None), "image_size", 224))
        self.calls, self.name = 0, "clip_score"
        length = int(getattr(tokenizer, "model_max_length", 77))
        ids = tokenizer(self.prompts, padding="max_length", max_length=length, truncation=True,
                        return_tensors="pt").input_ids
        with torch.no_grad():
            text = _features(model.get_text_features(input_ids=ids.to(self._device)))
        self.text = F.normalize(text.float(), dim=-1)

    @property
    def _device(self):
        return next(iter(self.model.parameters())).device

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, prompts: Sequence[str], *, device=None, **options):
        """A CLIP model and its tokenizer from a local transformers folder (nothing is downloaded)."""
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"no such CLIP folder: {folder} (smcdiff never downloads; pass a local folder)")
        try:
            from transformers import AutoTokenizer, CLIPModel
        except ImportError as err:
            raise ImportError("CLIPScore.from_pretrained needs transformers (pip install transformers)") from err
        try:
            model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            raise ValueError(f"{folder}: not a loadable CLIP model folder with its tokenizer "
                             f"({type(err).__name__}: {' '.join(str(err).split())[:300]})") from err
        return cls(model.to(device) if device is not None else model, tokenizer, prompts, **options)

    def preprocess(self, images: Tensor) -> Tensor:
        """Bicubic resize of the short side to ``image_size``, centre crop, CLIP normalisation."""
        x = images.float()
        h, w = x.shape[-2:]
        s = self.image_size
        if (h, w) != (s, s):
            scale = s / min(h, w)
            x = F.interpolate(x, size=(max(s, round(h * scale)), max(s, round(w * scale))), mode="bicubic",
                              antialias=True, align_corners=False).clamp(0, 1)
            top, left = (x.shape[-2] - s) // 2, (x.shape[-1] - s) // 2
            x = x[..., top:top + s, left:left + s]
        mean = torch.tensor(CLIP_MEAN, device=x.device).reshape(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).reshape(1, 3, 1, 1)
        return (x - mean) / std

    def __call__(self, images: Tensor, prompt_index: Tensor | None = None, **cond) -> Tensor:
        images = check_images(images, "CLIPScore")
        N = images.shape[0]
        if prompt_index is None:
            if len(self.prompts) != 1:
                raise ValueError(f"CLIPScore has {len(self.prompts)} prompts: pass cond['prompt_index'] (one per particle)")
            index = torch.zeros(N, dtype=torch.long)
        else:
            index = torch.as_tensor(prompt_index).reshape(-1).long()
            if index.numel() != N or bool(((index < 0) | (index >= len(self.prompts))).any()):
                raise ValueError(f"prompt_index must hold {N} indices in [0, {len(self.prompts)})")
        step = self.max_batch or N
        feats = []
        with torch.no_grad():
            for i in range(0, N, step):
                pixels = self.preprocess(images[i:i + step]).to(self._device)
                feats.append(_features(self.model.get_image_features(pixel_values=pixels)).float())
        image = F.normalize(torch.cat(feats), dim=-1)
        text = self.text[index.to(self.text.device)]
        self.calls += N
        return (self.scale * (image * text).sum(-1)).to(device=images.device, dtype=torch.float64)

    def __repr__(self) -> str:
        return f"CLIPScore({type(self.model).__name__}, {len(self.prompts)} prompt(s), scale={self.scale})"


def _features(out) -> Tensor:
    """Feature tensors from transformers outputs (a tensor, or an output with ``pooler_output``)."""
    if isinstance(out, Tensor):
        return out
    for attr in ("image_embeds", "text_embeds", "pooler_output"):
        if getattr(out, attr, None) is not None:
            return getattr(out, attr)
    raise TypeError(f"cannot read features from {type(out).__name__}")
