"""The recipe of the shipped class-conditional digits denoiser (the network is
:class:`smcdiff.models.conditional_digits.ConditionalConvDenoiser`; the Diffusion Classifier uses it):

    python -m smcdiff.apps.train_conditional --out my_digits      # about 11 min on one idle core

The training split of the 8×8 digits with each image's label, Adam, EMA, EDM's loss; every draw from
generators seeded by the recipe, so a rerun with one torch thread reproduces the weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from smcdiff.data import load_digits
from smcdiff.models.conditional_digits import (
    CONDITIONAL_DIGITS_RECIPE,
    CONDITIONAL_FILES,
    ConditionalConvDenoiser,
    save_conditional,
)
from smcdiff.models.training import edm_loss

__all__ = ["train_conditional_digits", "main"]


def train_conditional_digits(out=None, *, recipe: dict | None = None, progress: bool = False) -> tuple[ConditionalConvDenoiser, dict]:
    """Train by :data:`CONDITIONAL_DIGITS_RECIPE` (``recipe`` overrides keys, e.g. ``{"steps": 50}``);
    write the two files to ``out`` when given; return ``(EMA network, manifest)``."""
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
        "command": f"python -m smcdiff.apps.train_conditional --out {out if out is not None else 'DIR'}"
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
    parser = argparse.ArgumentParser(prog="python -m smcdiff.apps.train_conditional",
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
