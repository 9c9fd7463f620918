"""A class-conditional denoiser for the 8x8 digits, its training recipe and the shipped weights.

:class:`ConditionalConvDenoiser` is the tiny U-Net of
:class:`~smcdiff.models.small_nets.ConvDenoiser` (same blocks, same EDM preconditioning) whose
noise embedding also receives the class: ``D(x, sigma, class_labels=onehot)`` with
``onehot : (N, 10)`` float, EDM style (a linear map of the one-hot row is added to the noise
features before they shift every block). It is what the Diffusion Classifier
(:mod:`smcdiff.methods.diffusion_classifier`) needs. Calling it without ``class_labels`` is an
error (it was trained with labels only).

:func:`train_conditional_digits` is the recipe of the shipped weights
(:data:`CONDITIONAL_DIGITS_RECIPE`): EDM's loss (:func:`smcdiff.models.training.edm_loss`) on the
training split of :func:`smcdiff.data.load_digits` with each image's own label, Adam, an EMA of
the weights; seeded end to end (the same seed and thread count give the same weights). It writes
``conditional_denoiser.pt`` (config + state dict, read back with ``torch.load(weights_only=True)``)
and ``conditional_denoiser.json`` (the recipe, losses, time). Re-make the shipped files with::

    python -m smcdiff.models.conditional_digits --out smcdiff/assets/digits

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

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from smcdiff.models.precond import edm_preconditioning
from smcdiff.models.small_nets import ConvDenoiser, fourier_embedding, init_parameters_
from smcdiff.types import Tensor

__all__ = ["CONDITIONAL_DIGITS_RECIPE", "CONDITIONAL_FILES", "ConditionalConvDenoiser", "LabelledEmbedding",
           "load_conditional_digits", "save_conditional", "train_conditional_digits"]

#: The recipe of the shipped weights (:func:`train_conditional_digits` defaults).
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
        raise FileNotFoundError(f"{path} does not exist; make it with: python -m smcdiff.models.conditional_digits "
                                f"--out {path.parent}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    config = blob.get("config") if isinstance(blob, dict) else None
    if not isinstance(config, dict) or config.get("class") != "ConditionalConvDenoiser" or "state_dict" not in blob:
        raise ValueError(f"{path} is not a ConditionalConvDenoiser written by save_conditional")
    net = ConditionalConvDenoiser(**config["kwargs"])
    net.load_state_dict(blob["state_dict"])
    return net.eval().requires_grad_(False)


def train_conditional_digits(out=None, *, recipe: dict | None = None, progress: bool = False) -> tuple[ConditionalConvDenoiser, dict]:
    """Train by :data:`CONDITIONAL_DIGITS_RECIPE` (``recipe`` overrides keys, e.g. ``{"steps": 50}``);
    write the two files to ``out`` when given; return ``(EMA network, manifest)``."""
    from smcdiff.data import load_digits
    from smcdiff.models.training import edm_loss

    r = dict(CONDITIONAL_DIGITS_RECIPE)
    unknown = set(recipe or {}) - set(r)
    if unknown:
        raise ValueError(f"unknown recipe keys {sorted(unknown)}; expected {sorted(r)}")
    r.update(recipe or {})
    x, y = load_digits("train")
    x_test, y_test = load_digits("test")
    onehot, onehot_test = (F.one_hot(t, r["label_dim"]).to(torch.float32) for t in (y, y_test))
    net = ConditionalConvDenoiser(width=r["width"], label_dim=r["label_dim"],
                                  generator=torch.Generator().manual_seed(r["seed"]))
    g = torch.Generator().manual_seed(r["seed"] + 1)
    opt = torch.optim.Adam(net.parameters(), lr=r["lr"])
    ema = copy.deepcopy(net).requires_grad_(False)
    losses = torch.empty(r["steps"], dtype=torch.float64)
    steps = range(r["steps"])
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="conditional denoiser", leave=False)
    start = time.perf_counter()
    net.train()
    for k in steps:
        # Minibatch with its labels, then EDM's σ and noise (edm_loss), Adam, EMA.
        idx = torch.randint(0, x.shape[0], (r["batch_size"],), generator=g)
        labels = onehot[idx]
        loss = edm_loss(lambda z, s, labels=labels: net(z, s, class_labels=labels), x[idx], g, sigma_data=net.sigma_data)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses[k] = float(loss.detach())
        beta = min(r["ema"], (1 + k) / (10 + k))
        with torch.no_grad():
            for p_avg, p in zip(ema.parameters(), net.parameters()):
                p_avg.lerp_(p.detach(), 1 - beta)
    ema.eval()
    seconds = time.perf_counter() - start
    with torch.no_grad():  # held-out EDM loss with the right labels and with shifted (wrong) labels
        gt = torch.Generator().manual_seed(r["seed"] + 2)
        right = edm_loss(lambda z, s: ema(z, s, class_labels=onehot_test), x_test, gt, sigma_data=ema.sigma_data)
        gt = torch.Generator().manual_seed(r["seed"] + 2)
        wrong = edm_loss(lambda z, s: ema(z, s, class_labels=onehot_test.roll(1, dims=1)), x_test, gt,
                         sigma_data=ema.sigma_data)
    manifest = {
        "recipe": r, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "command": f"python -m smcdiff.models.conditional_digits --out {out if out is not None else 'DIR'}"
                   + (f" --recipe '{json.dumps(recipe)}'" if recipe else ""),
        "train_loss_last_10pct": float(losses[-max(1, len(losses) // 10):].mean()) if len(losses) else None,
        "test_loss_right_label": float(right), "test_loss_wrong_label": float(wrong),
        "seconds": round(seconds, 1),
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_conditional(ema, out / CONDITIONAL_FILES["weights"])
        (out / CONDITIONAL_FILES["manifest"]).write_text(json.dumps(manifest, indent=2) + "\n")
    return ema.requires_grad_(False), manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smcdiff.models.conditional_digits",
                                     description="Train the class-conditional digits denoiser (shipped recipe).")
    parser.add_argument("--out", required=True, help="folder for conditional_denoiser.pt / .json")
    parser.add_argument("--recipe", type=json.loads, default=None, help='overrides as JSON, e.g. \'{"steps": 50}\'')
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    _, manifest = train_conditional_digits(args.out, recipe=args.recipe, progress=True)
    print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
