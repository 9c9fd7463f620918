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

import torch

__all__ = ["DATASETS", "load_data", "train_classifier_on", "train_denoiser_on", "train_discriminator_on"]

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
