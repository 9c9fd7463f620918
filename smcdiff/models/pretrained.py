"""The shipped digits models: a denoiser, a DG discriminator and the FD-digits classifier.

:func:`load_digits_models` reads the three small networks shipped in ``smcdiff/assets/digits``
(state dict + config files, under 2 MB together, read with ``torch.load(weights_only=True)``) so
the digits table (:mod:`smcdiff.apps.table`) re-runs without training. :func:`smcdiff.apps.train.train_digits_models`
is the recipe that made them (``smcdiff train digits-models --out DIR``), seeded end to end:

1. a :class:`~smcdiff.models.small_nets.ConvDenoiser` by the EDM loss on the training split, with
   an EMA of its weights;
2. the :class:`~smcdiff.models.small_nets.DigitsClassifier` of the FD-digits metric, by
   cross-entropy on the training split;
3. a :class:`~smcdiff.models.small_nets.ConvTimeDiscriminator` by DG's recipe: the training
   split (real) against ``num_fake`` samples of the denoiser (EDM Heun, ``sample_steps`` steps),
   VP time importance-sampled, binary cross-entropy.

``manifest.json`` records the recipe, the final losses and checks: the classifier's test
accuracy, and the discriminator's accuracy on the test split against fresh samples (held out)
and on the first 359 training images against the first 359 of its fakes (seen in training); the
gap between the two measures its over-fitting.

    >>> models = load_digits_models()
    >>> type(models.denoiser).__name__, type(models.discriminator).__name__, type(models.classifier).__name__
    ('ConvDenoiser', 'ConvTimeDiscriminator', 'DigitsClassifier')
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["DIGITS_ASSETS", "DIGITS_RECIPE", "DigitsModels", "load_digits_models"]

#: The folder of the shipped weights.
DIGITS_ASSETS = Path(__file__).resolve().parent.parent / "assets" / "digits"
FILES = {"denoiser": "denoiser.pt", "discriminator": "discriminator.pt", "classifier": "classifier.pt"}

#: The recipe of the shipped weights (:func:`smcdiff.apps.train.train_digits_models` defaults).
DIGITS_RECIPE: dict[str, Any] = {
    "seed": 0,
    "denoiser": {"width": 32, "steps": 1500, "batch_size": 128, "lr": 2e-3, "ema": 0.999},
    "classifier": {"width": 32, "feature_dim": 32, "steps": 1500, "batch_size": 128, "lr": 1e-3},
    "discriminator": {"width": 16, "num_fake": 5000, "sample_steps": 18, "steps": 3000, "batch_size": 128,
                      "lr": 3e-4},
}


#: Noise levels of the discriminator accuracy checks in ``manifest.json``.
SIGMAS = (0.002, 0.1, 0.5, 2.0)


@dataclass(frozen=True)
class DigitsModels:
    """The three networks and the manifest they were saved with."""

    denoiser: nn.Module
    discriminator: nn.Module
    classifier: nn.Module
    manifest: dict


def load_digits_models(folder=None) -> DigitsModels:
    """Load ``denoiser.pt``, ``discriminator.pt``, ``classifier.pt`` and ``manifest.json`` from
    ``folder`` (default: the shipped :data:`DIGITS_ASSETS`), all in eval mode on the CPU."""
    from smcdiff.models.small_nets import load

    folder = DIGITS_ASSETS if folder is None else Path(folder)
    missing = [f for f in (*FILES.values(), "manifest.json") if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {missing}; make them with: smcdiff train digits-models --out {folder}")
    nets = {k: load(folder / f).eval().requires_grad_(False) for k, f in FILES.items()}
    manifest = json.loads((folder / "manifest.json").read_text())
    return DigitsModels(nets["denoiser"], nets["discriminator"], nets["classifier"], manifest)
