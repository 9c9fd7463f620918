"""``smcdiff train``: a denoiser by the EDM loss, then a DG-style discriminator against its samples.

Data sets that need no download: ``moons``, ``checkerboard``, ``mixture`` (2-D, :mod:`smcdiff.data.toy2d`)
and ``digits`` (scikit-learn's 8×8 digits, training split, :mod:`smcdiff.data.digits`).

    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> den = train_denoiser_on("moons", os.path.join(folder, "den.pt"), steps=5, batch_size=32, num_data=256)
    >>> disc = train_discriminator_on("moons", os.path.join(folder, "den.pt"), os.path.join(folder, "disc.pt"),
    ...                               steps=5, batch_size=32, num_data=256, num_fake=64, sample_steps=4)
    >>> sorted(os.listdir(folder))
    ['den.pt', 'disc.pt']
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

from smcdiff.models.pretrained import DIGITS_RECIPE, FILES, SIGMAS, DigitsModels

__all__ = ["DATASETS", "load_data", "train_classifier_on", "train_denoiser_on", "train_discriminator_on",
           "train_digits_models"]

DATASETS = ("moons", "checkerboard", "mixture", "digits")


def load_data(name: str, num: int, seed: int = 0) -> torch.Tensor:
    """Training data of data set ``name``: (num, 2) float64 for 2-D sets, (N, 1, 8, 8) for digits."""
    g = torch.Generator().manual_seed(seed)
    if name == "moons":
        from smcdiff.data.toy2d import two_moons

        return two_moons(num, g)
    if name == "checkerboard":
        from smcdiff.data.toy2d import checkerboard

        return checkerboard(num, g)
    if name == "mixture":
        from smcdiff.data.toy2d import known_mixture

        return known_mixture().sample(num, g)
    if name == "digits":
        from smcdiff.data.digits import load_digits

        return load_digits("train")[0].to(torch.float64)
    raise ValueError(f"unknown data set {name!r}; expected one of {DATASETS}")


def _denoiser_for(data: torch.Tensor, seed: int):
    from smcdiff.models.small_nets import ConvDenoiser, MLPDenoiser

    g = torch.Generator().manual_seed(seed)
    if data.dim() == 2:
        return MLPDenoiser(data.shape[1], generator=g)
    return ConvDenoiser(channels=data.shape[1], resolution=data.shape[-1], generator=g)


def train_denoiser_on(name: str, out, *, steps: int = 2000, batch_size: int = 256, lr: float = 1e-3, seed: int = 0,
                      num_data: int = 20000, progress: bool = False):
    """Train a small EDM-preconditioned denoiser on data set ``name``; save it to ``out``; return it."""
    from smcdiff.models.small_nets import save
    from smcdiff.models.training import train_denoiser

    data = load_data(name, num_data, seed)
    net = _denoiser_for(data, seed)
    net, _ = train_denoiser(net, data.to(torch.float32), steps=steps, batch_size=batch_size, lr=lr,
                            generator=torch.Generator().manual_seed(seed + 1), progress=progress)
    save(net, out)
    return net


def train_discriminator_on(name: str, denoiser_path, out, *, steps: int = 2000, batch_size: int = 256,
                           lr: float = 3e-4, seed: int = 0, num_data: int = 20000, num_fake: int = 5000,
                           sample_steps: int = 18, progress: bool = False):
    """DG's recipe: real data against samples of the trained denoiser (EDM Heun, ``sample_steps``);
    saves the discriminator to ``out`` and returns it."""
    from smcdiff.models.small_nets import TimeDiscriminator, load, save
    from smcdiff.models.training import model_samples, train_discriminator

    real = load_data(name, num_data, seed)
    fake = model_samples(load(denoiser_path), num_fake, steps=sample_steps,
                         generator=torch.Generator().manual_seed(seed + 2))
    disc = TimeDiscriminator(tuple(real.shape[1:]), generator=torch.Generator().manual_seed(seed + 3))
    disc, _ = train_discriminator(disc, real.to(torch.float32), fake, steps=steps,
                                  batch_size=batch_size, lr=lr, generator=torch.Generator().manual_seed(seed + 4),
                                  progress=progress)
    save(disc, out)
    return disc


def train_classifier_on(out, *, steps: int = 1500, batch_size: int = 128, lr: float = 1e-3, seed: int = 0,
                        progress: bool = False):
    """Train the FD-digits :class:`~smcdiff.models.small_nets.DigitsClassifier` on the digits training
    split (cross-entropy); save it to ``out`` and return it."""
    from smcdiff.data.digits import load_digits
    from smcdiff.models.small_nets import DigitsClassifier, save
    from smcdiff.models.training import train_classifier

    x, y = load_digits("train")
    clf = DigitsClassifier(generator=torch.Generator().manual_seed(seed))
    clf, _ = train_classifier(clf, x, y, steps=steps, batch_size=batch_size, lr=lr,
                              generator=torch.Generator().manual_seed(seed + 1), progress=progress)
    save(clf, out)
    return clf


# ----------------------------------------------------------------------------- the shipped digits models


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
    from smcdiff.models.small_nets import (
        ConvDenoiser,
        ConvTimeDiscriminator,
        DigitsClassifier,
        save,
    )
    from smcdiff.models.training import (
        model_samples,
        train_classifier,
        train_denoiser,
        train_discriminator,
    )

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
