"""Object occurrence: how often the objects a prompt asks for are in its image (Liu et al.'s metric).

For each image and the COCO objects its prompt mentions (:func:`~smcdiff.models.detectors.prompt_objects`),
a detector — a *different* one from any detector used to steer the sampler (the paper steers with
DETR-ResNet50 and scores with DETR-ResNet101) — gives p_c; object c counts as present when
p_c > ``threshold`` (0.5). The score is the mean over prompts of (#present / #mentioned); prompts
that mention no COCO object are left out (and counted in ``skipped``). FID, the paper's other
metric, is :func:`smcdiff.metrics.fid.fid` on the same folder.

:func:`object_occurrence` takes images and their prompts; :func:`object_occurrence_folder` reads a
folder written by :func:`smcdiff.apps.pipeline.generate_from_pipeline` (``prompts.txt``, then
``{seed:06d}.png`` for one prompt or ``{prompt index:05d}/…/{seed:06d}.png`` for several).

    >>> import torch
    >>> def detector(images):                      # toy: "sees" a dog (18) in bright images, a cat (17) never
    ...     p = torch.zeros(images.shape[0], 91)
    ...     p[:, 18] = images.mean((1, 2, 3))
    ...     return p
    >>> images = torch.stack([torch.ones(3, 4, 4), torch.zeros(3, 4, 4)])
    >>> res = object_occurrence(images, ["a dog and a cat", "a dog"], detector)
    >>> res["score"], res["per_prompt"]            # (1/2 + 0/1) / 2
    (0.25, [0.5, 0.0])
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from smcdiff.models.detectors import prompt_objects

__all__ = ["object_occurrence", "object_occurrence_folder"]


def _as_float_images(images) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    if x.dim() != 4:
        raise ValueError(f"images must be (N, 3, H, W) or (N, H, W, 3), got {tuple(x.shape)}")
    if x.shape[1] != 3 and x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] != 3:
        raise ValueError(f"images must have 3 colour channels, got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float() / 255
    if not x.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point in [0, 1], got {x.dtype}")
    return x.float()


def object_occurrence(images, prompts: Sequence[str], detector: Callable, *, threshold: float = 0.5,
                      batch_size: int = 16) -> dict:
    """``{"score", "per_prompt", "present", "mentioned", "skipped"}`` for ``images`` (``(N, 3, H, W)``
    in [0, 1], or uint8, or ``(N, H, W, 3)``) and one prompt per image; ``detector(images) -> (N, 91)``."""
    x = _as_float_images(images)
    prompts = list(prompts)
    if len(prompts) != x.shape[0]:
        raise ValueError(f"need one prompt per image: {x.shape[0]} images, {len(prompts)} prompts")
    if not 0 < float(threshold) < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    per_prompt, present, mentioned, skipped = [], [], [], 0
    for start in range(0, x.shape[0], batch_size):
        chunk = x[start:start + batch_size]
        probs = detector(chunk)
        if not isinstance(probs, torch.Tensor) or probs.dim() != 2 or probs.shape[0] != chunk.shape[0]:
            raise ValueError(f"detector must return (N, C) probabilities, got {getattr(probs, 'shape', probs)}")
        for row, prompt in zip(probs, prompts[start:start + batch_size]):
            objects = prompt_objects(prompt)
            if not objects:
                skipped += 1
                continue
            hits = int((row[torch.tensor(objects, device=row.device)] > threshold).sum())
            present.append(hits)
            mentioned.append(len(objects))
            per_prompt.append(hits / len(objects))
    score = float(np.mean(per_prompt)) if per_prompt else float("nan")
    return {"score": score, "per_prompt": per_prompt, "present": present, "mentioned": mentioned, "skipped": skipped}


def object_occurrence_folder(folder: str | os.PathLike, detector: Callable, **options) -> dict:
    """:func:`object_occurrence` of a folder written by ``generate_from_pipeline`` (see the module doc)."""
    from PIL import Image

    folder = Path(folder)
    prompts_file = folder / "prompts.txt"
    if not prompts_file.is_file():
        raise FileNotFoundError(f"{folder}: no prompts.txt (expected a folder written by generate_from_pipeline)")
    prompts = [line for line in prompts_file.read_text(encoding="utf-8").splitlines()]
    files, owners = [], []
    for i, prompt in enumerate(prompts):
        where = folder / f"{i:05d}" if len(prompts) > 1 else folder
        for f in sorted(where.rglob("*.png")):
            files.append(f)
            owners.append(prompt)
    if not files:
        raise FileNotFoundError(f"{folder}: no PNG images found")
    arrays = []
    for f in files:
        with Image.open(f) as im:
            arrays.append(np.asarray(im.convert("RGB")))
    images = np.stack(arrays)
    return object_occurrence(images, owners, detector, **options)
