"""A class-conditional denoiser for the 8x8 digits, its training recipe and the shipped weights.

:class:`ConditionalConvDenoiser` is the tiny U-Net of
:class:`~smcdiff.models.small_nets.ConvDenoiser` (same blocks, same EDM preconditioning) whose
noise embedding also receives the class: ``D(x, sigma, class_labels=onehot)`` with
``onehot : (N, 10)`` float, EDM style (a linear map of the one-hot row is added to the noise
features before they shift every block). It is what the Diffusion Classifier
(:mod:`smcdiff.methods.zero_shot_classifier`) needs. Calling it without ``class_labels`` is an
error (it was trained with labels only).

:func:`smcdiff.apps.train_conditional.train_conditional_digits` is the recipe of the shipped weights
(:data:`CONDITIONAL_DIGITS_RECIPE`): EDM's loss (:func:`smcdiff.models.training.edm_loss`) on the
training split of :func:`smcdiff.data.load_digits` with each image's own label, Adam, an EMA of
the weights; seeded end to end (the same seed and thread count give the same weights). It writes
``conditional_denoiser.pt`` (config + state dict, read back with ``torch.load(weights_only=True)``)
and ``conditional_denoiser.json`` (the recipe, losses, time). Re-make the shipped files with::

    python -m smcdiff.apps.train_conditional --out smcdiff/assets/digits

    >>> import torch
    >>> net = load_conditional_digits()                       # the shipped weights
    >>> x = torch.zeros(2, 1, 8, 8)
    >>> labels = torch.nn.functional.one_hot(torch.tensor([3, 7]), 10).float()
    >>> net(x, torch.full((2,), 0.5), class_labels=labels).shape
    torch.Size([2, 1, 8, 8])
    >>> net.label_dim
    10
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from smcdiff.models.precond import edm_preconditioning
from smcdiff.models.small_nets import ConvDenoiser, fourier_embedding, init_parameters_
from smcdiff.types import Tensor

__all__ = ["CONDITIONAL_DIGITS_RECIPE", "CONDITIONAL_FILES", "ConditionalConvDenoiser", "LabelledEmbedding",
           "load_conditional_digits", "save_conditional"]

#: The recipe of the shipped weights (:func:`smcdiff.apps.train_conditional.train_conditional_digits` defaults).
CONDITIONAL_DIGITS_RECIPE: dict[str, Any] = {
    "seed": 0, "width": 32, "label_dim": 10, "steps": 4000, "batch_size": 128, "lr": 2e-3, "ema": 0.999,
}
#: The shipped files, in ``smcdiff/assets/digits``.
CONDITIONAL_FILES = {"weights": "conditional_denoiser.pt", "manifest": "conditional_denoiser.json"}
_ASSETS = Path(__file__).resolve().parent.parent / "assets" / "digits"


class LabelledEmbedding(nn.Module):
    """``[noise features (emb_dim), one-hot (label_dim)] -> base(noise) + label(one-hot)``."""

    def __init__(self, base: nn.Module, label: nn.Module, emb_dim: int):
        super().__init__()
        self.base, self.label, self.emb_dim = base, label, emb_dim

    def forward(self, emb: Tensor) -> Tensor:
        return self.base(emb[:, :self.emb_dim]) + self.label(emb[:, self.emb_dim:])


class ConditionalConvDenoiser(ConvDenoiser):
    """:class:`ConvDenoiser` conditioned on a one-hot class: ``D(x, sigma, class_labels=onehot)``.

    ``x : (N, channels, resolution, resolution)``, ``sigma : (N,)`` or scalar,
    ``class_labels : (N, label_dim)`` float -> x0_hat in ``x``'s dtype.
    """

    def __init__(self, channels: int = 1, resolution: int = 8, width: int = 32, sigma_data: float = 0.5,
                 label_dim: int = 10, *, generator: torch.Generator | None = None):
        if label_dim < 1:
            raise ValueError(f"ConditionalConvDenoiser: label_dim must be >= 1, got {label_dim}")
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        super().__init__(channels, resolution, width, sigma_data, generator=g)
        with torch.device("meta"):  # no global-RNG draws; seeded below from g
            label = nn.Linear(label_dim, 2 * width, bias=False)
        label.to_empty(device="cpu")
        init_parameters_(label, g)
        self.embed = LabelledEmbedding(self.embed, label, self.emb_dim)
        self.label_dim = int(label_dim)
        self.config = {"class": "ConditionalConvDenoiser", "kwargs": {**self.config["kwargs"], "label_dim": int(label_dim)}}

    def forward(self, x: Tensor, sigma, class_labels: Tensor | None = None, **cond) -> Tensor:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"ConditionalConvDenoiser: expected x of shape (N, *{self.event_shape}), got {tuple(x.shape)}")
        if class_labels is None:
            raise ValueError(f"ConditionalConvDenoiser needs class_labels: one-hot rows (N, {self.label_dim})")
        labels = torch.as_tensor(class_labels, device=x.device).to(torch.float32)
        if labels.shape != (x.shape[0], self.label_dim):
            raise ValueError(f"class_labels must have shape (N, {self.label_dim}) = ({x.shape[0]}, {self.label_dim}), "
                             f"got {tuple(labels.shape)}")
        dtype = x.dtype if x.is_floating_point() else torch.float32
        x = x.to(dtype)
        sigma = torch.as_tensor(sigma, device=x.device, dtype=dtype).reshape(-1).expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = (c.reshape(-1, 1, 1, 1) for c in edm_preconditioning(sigma, self.sigma_data))
        emb = torch.cat([fourier_embedding(c_noise.reshape(-1).to(torch.float32), self.emb_dim), labels], dim=1)
        F_x = self.raw((c_in * x).to(torch.float32), emb)
        return c_skip * x + c_out * F_x.to(dtype)


def save_conditional(net: ConditionalConvDenoiser, path) -> None:
    """Write ``{"config": net.config, "state_dict": ...}`` to ``path``."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    torch.save({"config": net.config, "state_dict": state}, path)


def load_conditional_digits(path=None) -> ConditionalConvDenoiser:
    """The network saved by :func:`save_conditional` (default: the shipped weights), in eval mode,
    frozen; ``torch.load(weights_only=True)``, no code runs."""
    path = _ASSETS / CONDITIONAL_FILES["weights"] if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; make it with: python -m smcdiff.apps.train_conditional "
                                f"--out {path.parent}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    config = blob.get("config") if isinstance(blob, dict) else None
    if not isinstance(config, dict) or config.get("class") != "ConditionalConvDenoiser" or "state_dict" not in blob:
        raise ValueError(f"{path} is not a ConditionalConvDenoiser written by save_conditional")
    net = ConditionalConvDenoiser(**config["kwargs"])
    net.load_state_dict(blob["state_dict"])
    return net.eval().requires_grad_(False)
