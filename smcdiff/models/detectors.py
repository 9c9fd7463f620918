"""Object detectors on images, for the text-to-image particle filter (Liu et al., REFERENCE §5b).

A *detector* here is any callable ``detector(images) -> (N, C)`` giving, for images ``(N, 3, H, W)``
in [0, 1], the probability p_c that object class c is in each image. Two families load from local
files (nothing is downloaded):

* :class:`DETRDetector` — DETR-style set predictors (the paper's detectors: DETR-ResNet50 for the
  weights, DETR-ResNet101 for the evaluation). p_c = max over the queries of softmax(class
  logits)_c, the last logit being "no object". The images are rounded to 8 bits (what a PNG
  holds), resized so the short side is ``resize`` (800 as in the paper) and normalised with the
  ImageNet mean/std. Any model returning ``pred_logits`` (torch hub DETR), ``.logits``
  (transformers' ``DetrForObjectDetection``) or a ``(N, Q, C + 1)`` tensor works.
* :class:`TorchvisionDetector` — torchvision's detection models (Faster R-CNN, RetinaNet, FCOS,
  SSD, ...), which return boxes, labels and scores after non-maximum suppression: p_c = the highest
  score of a detection labelled c, 0 if none.

:func:`load_detector` reads either: a transformers folder (``config.json`` + weights) gives a
:class:`DETRDetector`; a checkpoint file gives a torchvision model ``arch`` built with
``weights=None, weights_backbone=None`` and loaded with the file's state dict.

Class indices are COCO category ids (:data:`COCO_CLASSES`, 91 entries with "N/A" gaps, the layout
of DETR and torchvision); :func:`prompt_objects` finds the classes a prompt mentions (whole words,
plurals and a few synonyms; the longest name wins, so "hot dog" is not a dog).
:func:`detector_likelihood` makes the paper's weight, :class:`~smcdiff.weights.DetectorLikelihood`,
on the decoded x̂0 of a latent model.

    >>> [COCO_CLASSES[c] for c in prompt_objects("Two dogs and a teddy bear on a sofa, eating a hot dog")]
    ['dog', 'hot dog', 'couch', 'teddy bear']
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from smcdiff.models.diffusers_adapter import model_device, network_dtype
from smcdiff.models.file_formats import FileFormatError, torch_load_file
from smcdiff.models.latent import Decoded, quantize
from smcdiff.types import Tensor

__all__ = [
    "COCO_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SYNONYMS",
    "DETRDetector",
    "TorchvisionDetector",
    "detector_likelihood",
    "load_detector",
    "prompt_objects",
]

_NA = "N/A"
#: COCO category names by category id (0–90; "N/A" where COCO has no category), as DETR and torchvision index them.
COCO_CLASSES = (
    _NA, "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", _NA, "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", _NA, "backpack", "umbrella", _NA, _NA, "handbag", "tie", "suitcase",
    "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard",
    "surfboard", "tennis racket", "bottle", _NA, "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana",
    "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", _NA, "dining table", _NA, _NA, "toilet", _NA, "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", _NA, "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)
#: Other words for COCO classes (irregular plurals included); regular plurals (+s/+es) are automatic.
SYNONYMS = {
    "person": ("people", "man", "men", "woman", "women", "boy", "girl", "child", "children", "kid", "persons"),
    "airplane": ("plane", "aeroplane", "jet"), "motorcycle": ("motorbike",), "bicycle": ("bike",),
    "couch": ("sofa",), "tv": ("television",), "cell phone": ("phone", "cellphone", "smartphone"),
    "dining table": ("table",), "donut": ("doughnut",), "sports ball": ("ball", "football", "soccer ball"),
    "potted plant": ("plant", "houseplant"), "hair drier": ("hair dryer",), "knife": ("knives",),
    "mouse": ("mice",), "skis": ("ski",), "refrigerator": ("fridge",), "laptop": ("notebook computer",),
    "teddy bear": ("teddy",), "wine glass": ("wineglass",),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _patterns() -> list[tuple[str, int]]:
    words = []
    for idx, name in enumerate(COCO_CLASSES):
        if name == _NA:
            continue
        for w in (name, name + "s", name + "es", *SYNONYMS.get(name, ())):
            words.append((w, idx))
    return sorted(words, key=lambda w: -len(w[0]))  # longest first: "hot dog" before "dog"


_WORDS = _patterns()


def prompt_objects(prompt: str) -> list[int]:
    """The COCO category ids a prompt mentions (sorted): whole-word, case-insensitive matches of
    the class names, their plurals and :data:`SYNONYMS`; a matched span is not matched again by a
    shorter name."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    text, found = " " + prompt.lower() + " ", set()
    for word, idx in _WORDS:
        pattern = r"(?<![a-z0-9])" + re.escape(word) + r"(?![a-z0-9])"
        if re.search(pattern, text):
            found.add(idx)
            text = re.sub(pattern, " ", text)
    return sorted(found)


def _batches(images: Tensor, max_batch: int | None):
    step = max_batch or max(images.shape[0], 1)
    return [images[i:i + step] for i in range(0, images.shape[0], step)]


def _check_images(images, who: str) -> Tensor:
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{who} expects float images (N, 3, H, W) in [0, 1], got {got}")
    return images


class DETRDetector:
    """Per-class probabilities of a DETR-style model (see the module doc).

    ``DETRDetector(model, *, resize=800, max_batch=None, dtype=None, quantized=True)``;
    ``model(pixel_values)`` returns class logits ``(N, Q, C + 1)`` (last = no object), as
    ``pred_logits``, ``.logits`` or a tensor. Call: ``images (N, 3, H, W)`` in [0, 1] → ``(N, C)``
    float32 (on the images' device).
    """

    def __init__(self, model: Callable, *, resize: int | None = 800, max_batch: int | None = None, dtype=None,
                 quantized: bool = True):
        if not callable(model):
            raise TypeError(f"model must be callable as model(pixel_values) -> class logits, got {model!r}")
        if resize is not None and (isinstance(resize, bool) or not isinstance(resize, int) or resize < 1):
            raise ValueError(f"resize must be None or an int >= 1 (the short side in pixels), got {resize!r}")
        self.model, self.resize, self.max_batch, self.quantized = model, resize, max_batch, quantized
        self.dtype = network_dtype(model, dtype)
        self.calls = 0
        self.name = "detr"

    def preprocess(self, images: Tensor) -> Tensor:
        """8-bit rounding, short side to ``resize`` (bilinear, antialiased), ImageNet normalisation."""
        x = quantize(images.float()) if self.quantized else images.float()
        if self.resize is not None:
            h, w = x.shape[-2:]
            scale = self.resize / min(h, w)
            x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True,
                              align_corners=False)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).reshape(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).reshape(1, 3, 1, 1)
        return (x - mean) / std

    def __call__(self, images: Tensor, **cond) -> Tensor:
        images = _check_images(images, "DETRDetector")
        device = model_device(self.model, images.device)
        outs = []
        with torch.no_grad():
            for chunk in _batches(images, self.max_batch):
                out = self.model(self.preprocess(chunk).to(device=device, dtype=self.dtype))
                logits = getattr(out, "logits", None)
                if logits is None:
                    logits = out["pred_logits"] if isinstance(out, dict) and "pred_logits" in out else out
                if not isinstance(logits, Tensor) or logits.dim() != 3:
                    raise ValueError("the DETR model must return class logits (N, queries, classes + 1), got "
                                     f"{getattr(logits, 'shape', type(logits).__name__)}")
                outs.append(logits.float().softmax(-1)[..., :-1].amax(1))
        self.calls += int(images.shape[0])
        return torch.cat(outs).to(images.device)

    def __repr__(self) -> str:
        return f"DETRDetector({type(self.model).__name__}, resize={self.resize})"


class TorchvisionDetector:
    """Per-class probabilities of a torchvision detection model: p_c = the best score of a
    detection labelled c (0 if none). ``model(list of (3, H, W) images in [0, 1])`` returns one dict
    with ``labels`` and ``scores`` per image (torchvision resizes and normalises inside).
    ``num_classes`` C of the output (default: read from the model's box predictor, else 91)."""

    def __init__(self, model: Callable, *, num_classes: int | None = None, max_batch: int | None = None,
                 quantized: bool = True):
        if not callable(model):
            raise TypeError(f"model must be a torchvision detection model, got {model!r}")
        if num_classes is None:
            predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
            num_classes = getattr(getattr(predictor, "cls_score", None), "out_features", 91)
        self.model, self.num_classes, self.max_batch, self.quantized = model, int(num_classes), max_batch, quantized
        self.calls = 0
        self.name = "torchvision-detector"

    def __call__(self, images: Tensor, **cond) -> Tensor:
        images = _check_images(images, "TorchvisionDetector")
        device = model_device(self.model, images.device)
        rows = []
        with torch.no_grad():
            for chunk in _batches(quantize(images.float()) if self.quantized else images.float(), self.max_batch):
                for det in self.model([img.to(device) for img in chunk]):
                    labels, scores = det["labels"].long(), det["scores"].float()
                    if bool((labels >= self.num_classes).any()) if labels.numel() else False:
                        raise ValueError(f"the detector returned a label >= num_classes = {self.num_classes}")
                    p = torch.zeros(self.num_classes, device=scores.device)
                    rows.append(p.scatter_reduce(0, labels, scores, reduce="amax", include_self=True))
        self.calls += int(images.shape[0])
        return torch.stack(rows).to(images.device)

    def __repr__(self) -> str:
        return f"TorchvisionDetector({type(self.model).__name__}, num_classes={self.num_classes})"


def _state_dict(checkpoint):
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


def load_detector(path: str | os.PathLike, *, arch: str | None = None, num_classes: int = 91, device=None,
                  dtype=None, resize: int | None = 800, max_batch: int | None = None, **build_options):
    """A detector from local files: a transformers folder (``config.json`` + weights, e.g. a saved
    ``DetrForObjectDetection``) → :class:`DETRDetector`; a checkpoint file (a state dict, or a dict
    with ``"model"``/``"state_dict"``) → :class:`TorchvisionDetector` of torchvision's ``arch``
    (e.g. ``"fasterrcnn_resnet50_fpn"``) with ``num_classes`` and ``build_options``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such detector: {path} (smcdiff never downloads; pass a local folder or file)")
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path}: a detector folder needs config.json (a transformers model folder)")
        try:
            from transformers import AutoModelForObjectDetection
        except ImportError as err:
            raise ImportError(f"{path}: loading a detector folder needs transformers (pip install transformers)") from err
        try:
            model = AutoModelForObjectDetection.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            raise FileFormatError(f"{path}: not a loadable transformers object-detection model "
                                  f"({type(err).__name__}: {' '.join(str(err).split())[:300]})") from err
        model = model.eval().to(device=device, dtype=dtype)
        return DETRDetector(model, resize=resize, max_batch=max_batch)
    if arch is None:
        raise ValueError(f"{path} is a checkpoint file: pass arch= the torchvision detection model it holds "
                         "(e.g. 'fasterrcnn_resnet50_fpn', 'retinanet_resnet50_fpn')")
    try:
        from torchvision.models import detection
    except ImportError as err:
        raise ImportError(f"{path}: torchvision detection models need torchvision (pip install torchvision)") from err
    builder = getattr(detection, arch, None)
    if not callable(builder):
        raise ValueError(f"unknown torchvision detection model {arch!r}")
    model = builder(weights=None, weights_backbone=None, num_classes=num_classes, **build_options)
    state = _state_dict(torch_load_file(path, f"a torchvision {arch} checkpoint (a state dict)"))
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: the state dict does not fit torchvision's {arch} with num_classes={num_classes} "
                         f"({' '.join(str(err).split())[:300]})") from err
    return TorchvisionDetector(model.eval().to(device=device, dtype=dtype), num_classes=num_classes,
                               max_batch=max_batch)


def detector_likelihood(detector: Callable, objects: Sequence[int], *, decoder=None, occurrence=None,
                        prior: float = 0.2, group_size: int | None = None, name: str = "detector"):
    """The paper's object likelihood ratio (:class:`~smcdiff.weights.DetectorLikelihood`) with
    ``detector`` on the decoded images of x̂0 (``decoder`` a :class:`~smcdiff.models.latent.VAEDecoder`,
    None for a pixel model whose x̂0 is in [−1, 1])."""
    from smcdiff.weights import DetectorLikelihood

    return DetectorLikelihood(Decoded(detector, decoder), objects, occurrence, prior, group_size=group_size, name=name)
