"""FD-digits: the Fréchet distance of FID, in the feature space of a digits classifier trained here.

FID cannot be computed on 8×8 digits (Inception sees 299×299 photographs), so the digits table
measures sample quality the same way in a space made for the data: the ``feature_dim``-wide
penultimate layer of :class:`~smcdiff.models.small_nets.DigitsClassifier` (98.3 % test accuracy;
the shipped weights, :func:`smcdiff.models.pretrained.load_digits_models`). Statistics are the
FID ones (float64 ``mu (D,)``, unbiased ``sigma (D, D)``), compared by
:func:`~smcdiff.metrics.fid.frechet_distance`; the reference is the held-out test split
(359 images) by default. Precision and recall (k-NN manifolds, :func:`~smcdiff.metrics.precision_recall`)
use the same features.

Like FID, FD-digits is biased upward at small sample sizes: compare only scores computed with the
same number of samples, against the same reference. The floor is the score of real images:
``fd_digits(load_digits("train")[0][:n])``.

    >>> import torch
    >>> from smcdiff.data import load_digits
    >>> from smcdiff.metrics.fd_digits import DigitsFeatures, fd_digits
    >>> features = DigitsFeatures()                           # the shipped classifier
    >>> test, _ = load_digits("test")
    >>> round(fd_digits(test, features=features), 6)          # the reference itself
    0.0
    >>> train, _ = load_digits("train")
    >>> noise = torch.rand(1000, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    >>> fd_digits(train, features=features) < fd_digits(noise, features=features)
    True
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from smcdiff.checks import check_int
from smcdiff.metrics.fid import Statistics, feature_statistics, frechet_distance
from smcdiff.metrics.samples import PrecisionRecall, precision_recall
from smcdiff.types import Tensor

__all__ = ["DigitsFeatures", "digits_scores", "fd_digits", "reference_features", "reference_statistics"]


class DigitsFeatures:
    """Images ``(N, 1, 8, 8)`` in ``[-1, 1]`` → classifier features ``(N, D)`` float64 (no gradients).

    ``classifier``: a :class:`~smcdiff.models.small_nets.DigitsClassifier` (default: the shipped one).
    Values are clipped to ``[-1, 1]`` first, as saving the images to PNG would.
    """

    def __init__(self, classifier: nn.Module | None = None, batch_size: int = 1024):
        if classifier is None:
            from smcdiff.models.pretrained import load_digits_models

            classifier = load_digits_models().classifier
        if not isinstance(classifier, nn.Module) or not hasattr(classifier, "features"):
            raise TypeError(f"classifier must be a DigitsClassifier (an nn.Module with .features), got "
                            f"{type(classifier).__name__}")
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.classifier = classifier.eval()

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        images = torch.as_tensor(images)
        if images.dim() != 4 or tuple(images.shape[1:]) != tuple(self.classifier.event_shape):
            raise ValueError(f"DigitsFeatures: expected images (N, *{tuple(self.classifier.event_shape)}), "
                             f"got {tuple(images.shape)}")
        if not torch.isfinite(images).all():
            raise ValueError("DigitsFeatures: images contain NaN or infinite values")
        images = images.to(torch.float32).clamp(-1, 1)
        device = next(self.classifier.parameters()).device
        out = [self.classifier.features(b.to(device)).cpu() for b in images.split(self.batch_size)]
        return torch.cat(out).to(torch.float64)

    @torch.no_grad()
    def classes_of(self, features: Tensor) -> Tensor:
        """Predicted classes ``(N,)`` long from features ``(N, D)`` made by this extractor."""
        device = next(self.classifier.parameters()).device
        feats = torch.as_tensor(features).to(device, torch.float32)
        return torch.cat([self.classifier.head(b).argmax(1).cpu() for b in feats.split(self.batch_size)])

    def predict(self, images: Tensor) -> Tensor:
        """Class predictions ``(N,)`` long (inputs checked as by ``__call__``)."""
        return self.classes_of(self(images))


def reference_features(features: DigitsFeatures, split: str = "test") -> Tensor:
    """Features ``(N, D)`` of a split of :func:`smcdiff.data.load_digits` (``"test"``, ``"train"``, ``"all"``)."""
    from smcdiff.data import load_digits

    return features(load_digits(split)[0])


def reference_statistics(features: DigitsFeatures, split: str = "test") -> Statistics:
    """``(mu, sigma)`` of a split's features (see :func:`reference_features`)."""
    return feature_statistics(reference_features(features, split).numpy())


def fd_digits(samples: Tensor, reference: str | Statistics = "test", *, features: DigitsFeatures | None = None) -> float:
    """FD-digits of ``samples : (N, 1, 8, 8)`` (N ≥ 2) against ``reference`` (a split name or ``(mu, sigma)``)."""
    features = DigitsFeatures() if features is None else features
    if not isinstance(reference, str) and not (isinstance(reference, (tuple, list)) and len(reference) == 2):
        raise TypeError(f"reference must be a split name ('test', 'train', 'all') or a (mu, sigma) pair, got "
                        f"{type(reference).__name__}")
    mu_ref, sigma_ref = reference_statistics(features, reference) if isinstance(reference, str) else reference
    feats = features(samples).numpy()
    if feats.shape[0] < 2:
        raise ValueError(f"fd_digits needs at least 2 samples, got {feats.shape[0]}")
    mu, sigma = feature_statistics(feats)
    return max(frechet_distance(mu, sigma, np.asarray(mu_ref), np.asarray(sigma_ref)), 0.0)


def digits_scores(samples: Tensor, *, features: DigitsFeatures | None = None, split: str = "test",
                  k: int = 3, ref_features: Tensor | None = None) -> dict[str, float]:
    """FD-digits, precision and recall (k-NN, features), and the fraction of each predicted class.

    Returns ``{"fd": ..., "precision": ..., "recall": ..., "class_tv": ...}``; ``class_tv`` is the
    total-variation distance between the predicted-class histograms of ``samples`` and of the
    reference (0 when the model draws the classes in the data's proportions). The reference is
    ``ref_features`` (``(M, D)``, made by ``features``) if given, else the features of ``split``;
    every score, the class histogram included, uses that one reference.
    """
    features = DigitsFeatures() if features is None else features
    k = check_int(k, "k", minimum=1)
    ref = reference_features(features, split) if ref_features is None else torch.as_tensor(ref_features)
    feats = features(samples)
    if feats.shape[0] < max(2, k + 1):
        raise ValueError(f"digits_scores needs at least {max(2, k + 1)} samples, got {feats.shape[0]}")
    mu, sigma = feature_statistics(feats.numpy())
    mu_ref, sigma_ref = feature_statistics(ref.numpy())
    pr: PrecisionRecall = precision_recall(ref, feats, k=k)
    n_classes = int(features.classifier.config["kwargs"]["num_classes"])
    hist = torch.bincount(features.classes_of(feats), minlength=n_classes).double() / feats.shape[0]
    ref_hist = torch.bincount(features.classes_of(ref), minlength=n_classes).double() / ref.shape[0]
    return {"fd": max(frechet_distance(mu, sigma, mu_ref, sigma_ref), 0.0), "precision": float(pr.precision),
            "recall": float(pr.recall), "class_tv": float(0.5 * (hist - ref_hist).abs().sum())}
