"""The shipped digits models: a denoiser, a DG discriminator and the FD-digits classifier.

:func:`load_digits_models` reads the three small networks shipped in ``smcdiff/assets/digits``
(state dict + config files, under 2 MB together, read with ``torch.load(weights_only=True)``) so
the digits table (:mod:`smcdiff.table`) re-runs without training. :func:`train_digits_models`
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

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["DIGITS_ASSETS", "DIGITS_RECIPE", "DigitsModels", "load_digits_models", "train_digits_models"]

#: The folder of the shipped weights.
DIGITS_ASSETS = Path(__file__).resolve().parent.parent / "assets" / "digits"
FILES = {"denoiser": "denoiser.pt", "discriminator": "discriminator.pt", "classifier": "classifier.pt"}

#: The recipe of the shipped weights (:func:`train_digits_models` defaults).
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


def _merge(recipe: dict, overrides: dict | None) -> dict:
    out = copy.deepcopy(recipe)
    if overrides is not None and not isinstance(overrides, dict):
        raise ValueError(f"a recipe override is a dict like {{'denoiser': {{'steps': 6000}}}}, got {overrides!r}")
    for part, values in (overrides or {}).items():
        if part not in out:
            raise ValueError(f"unknown recipe part {part!r}; expected one of {sorted(out)}")
        if isinstance(out[part], dict) != isinstance(values, dict) or (
                not isinstance(values, dict) and not isinstance(values, type(out[part]))):
            raise ValueError(f"recipe part {part!r} must be a {type(out[part]).__name__}, got {values!r}")
        if isinstance(values, dict):
            unknown = set(values) - set(out[part])
            if unknown:
                raise ValueError(f"unknown {part} settings {sorted(unknown)}; expected {sorted(out[part])}")
            out[part].update(values)
        else:
            out[part] = values
    return out


@torch.no_grad()
def _disc_accuracy(disc, real: torch.Tensor, fake: torch.Tensor, sigma: float) -> float:
    s = torch.full((1,), sigma)
    right = torch.cat([disc(real, s) > 0, disc(fake, s) <= 0])
    return float(right.float().mean())


def train_digits_models(out, *, recipe: dict | None = None, progress: bool = False) -> DigitsModels:
    """Train the three digits networks by :data:`DIGITS_RECIPE` (``recipe`` overrides parts of it,
    e.g. ``{"denoiser": {"steps": 50}}``), save them and a manifest to ``out``; return them."""
    from smcdiff.data import load_digits
    from smcdiff.models.small_nets import ConvDenoiser, ConvTimeDiscriminator, DigitsClassifier, save
    from smcdiff.models.training import model_samples, train_classifier, train_denoiser, train_discriminator

    r = _merge(DIGITS_RECIPE, recipe)
    seed = int(r["seed"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    x, y = load_digits("train")
    x_test, y_test = load_digits("test")
    command = f"smcdiff train digits-models --out {out}"
    if recipe:
        command += f" --recipe '{json.dumps(recipe)}'"
    manifest: dict[str, Any] = {"recipe": r, "torch": torch.__version__, "command": command}
    start = time.perf_counter()

    d = r["denoiser"]
    den = ConvDenoiser(width=d["width"], generator=torch.Generator().manual_seed(seed))
    den, losses = train_denoiser(den, x, steps=d["steps"], batch_size=d["batch_size"], lr=d["lr"], ema=d["ema"],
                                 generator=torch.Generator().manual_seed(seed + 1), progress=progress)
    manifest["denoiser_loss_last_10pct"] = float(losses[-max(1, len(losses) // 10):].mean()) if len(losses) else None

    c = r["classifier"]
    clf = DigitsClassifier(width=c["width"], feature_dim=c["feature_dim"], generator=torch.Generator().manual_seed(seed + 2))
    clf, closs = train_classifier(clf, x, y, steps=c["steps"], batch_size=c["batch_size"], lr=c["lr"],
                                  generator=torch.Generator().manual_seed(seed + 3), progress=progress)
    with torch.no_grad():
        manifest["classifier_test_accuracy"] = float((clf(x_test).argmax(1) == y_test).float().mean())

    s = r["discriminator"]
    fake = model_samples(den, s["num_fake"], steps=s["sample_steps"], generator=torch.Generator().manual_seed(seed + 4))
    disc = ConvTimeDiscriminator(width=s["width"], generator=torch.Generator().manual_seed(seed + 5))
    disc, dloss = train_discriminator(disc, x, fake, steps=s["steps"], batch_size=s["batch_size"], lr=s["lr"],
                                      generator=torch.Generator().manual_seed(seed + 6), progress=progress)
    manifest["discriminator_bce_last_10pct"] = float(dloss[-max(1, len(dloss) // 10):].mean()) if len(dloss) else None
    fresh = model_samples(den, x_test.shape[0], steps=s["sample_steps"],
                          generator=torch.Generator().manual_seed(seed + 7))
    n = x_test.shape[0]
    manifest["discriminator_heldout_accuracy"] = {str(sig): _disc_accuracy(disc, x_test, fresh, sig) for sig in SIGMAS}
    manifest["discriminator_train_accuracy"] = {str(sig): _disc_accuracy(disc, x[:n], fake[:n], sig) for sig in SIGMAS}
    manifest["seconds"] = round(time.perf_counter() - start, 1)

    for key, net in (("denoiser", den), ("discriminator", disc), ("classifier", clf)):
        save(net, out / FILES[key])
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return DigitsModels(den.requires_grad_(False), disc.requires_grad_(False), clf.requires_grad_(False), manifest)
