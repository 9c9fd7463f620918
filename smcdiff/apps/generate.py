"""Image generation with EDM's conventions: one PNG per seed, seeds split over ``torchrun`` ranks.

``generate(net, seeds, outdir, method="edm", ...)`` samples one image per seed with any method of
:mod:`smcdiff.methods` (for SMC methods one seed is one SMC run, i.e. one group of particles) and
writes ``{seed:06d}.png`` (under ``{seed // 1000 * 1000:06d}/`` with ``subdirs=True``), uint8 from
``x·127.5 + 128`` clipped, as EDM does.

Randomness follows EDM: each seed has its own ``torch.Generator`` seeded with ``seed mod 2³²``;
a seed's latents, then its class label (``randint(label_dim)`` when no class is fixed), then its
sampler noise come from that generator alone, so an image depends on its seed, never on the batch
or the number of processes. DiffRS batches slots across seeds (continuous batching), so it draws
from one generator per batch, seeded by the batch's first seed.

Processes: under ``torchrun`` (``WORLD_SIZE`` > 1) the batches of seeds are dealt round-robin,
rank r taking batches r, r + world, …; only rank 0 prints.

    >>> import tempfile, torch
    >>> from smcdiff.models.pairs import mixture_pair_2d
    >>> class Toy(torch.nn.Module):           # any EDM-style denoiser with img_* attributes
    ...     img_resolution, img_channels, label_dim, sigma_min, sigma_max = 4, 3, 0, 0.0, float("inf")
    ...     def forward(self, x, sigma, class_labels=None):
    ...         return x * 0.25 / (0.25 + sigma.reshape(-1, 1, 1, 1) ** 2)
    >>> out = generate(Toy(), [0, 1, 2], tempfile.mkdtemp(), steps=4, batch=2)
    >>> [p.name for p in out]
    ['000000.png', '000001.png', '000002.png']
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from smcdiff.kernels.schedules import karras_sigmas
from smcdiff.methods import registry

__all__ = ["METHODS", "parse_seeds", "rank_batches", "generate", "to_uint8", "image_path", "dist_info"]

#: ``--method`` names: the registered methods that need nothing but a discriminator (no Python callable).
METHODS = tuple(name for name, spec in registry.METHODS.items() if spec.needs in (None, "log_ratio"))


def parse_seeds(text: str) -> list[int]:
    """EDM's seed syntax: ``"0-63"``, ``"1,2,5-10"`` → a list of ints (ranges inclusive)."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise ValueError(f"seed range {part!r} runs backwards")
            out.extend(range(lo, hi + 1))
        elif re.fullmatch(r"\d+", part):
            out.append(int(part))
        else:
            raise ValueError(f"cannot parse seeds {text!r}: expected e.g. '0-63' or '1,2,5-10'")
    if not out:
        raise ValueError("no seeds given")
    return out


def rank_batches(seeds: Sequence[int], batch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """The batches of ``seeds`` that rank ``rank`` of ``world`` processes runs (round-robin)."""
    if batch < 1 or world < 1 or not 0 <= rank < world:
        raise ValueError(f"expected batch >= 1 and 0 <= rank < world, got batch={batch}, rank={rank}, world={world}")
    batches = [list(seeds[i:i + batch]) for i in range(0, len(seeds), batch)]
    return batches[rank::world]


def dist_info() -> tuple[int, int]:
    """(rank, world size) from the torchrun environment, (0, 1) outside it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] → (N, H, W, C) uint8, as EDM: clip(x·127.5 + 128, 0, 255), truncated."""
    return (x * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def image_path(outdir, seed: int, subdirs: bool = False) -> Path:
    """``outdir/{seed:06d}.png``, or ``outdir/{seed//1000*1000:06d}/{seed:06d}.png`` with ``subdirs``."""
    outdir = Path(outdir)
    if subdirs:
        outdir = outdir / f"{seed - seed % 1000:06d}"
    return outdir / f"{seed:06d}.png"


def _schedule(net, steps, sigma_min, sigma_max, rho):
    # Clamp the range to the network's, then snap to its grid (identity except iDDPM).
    sigma_min = max(sigma_min, float(getattr(net, "sigma_min", 0.0)))
    sigma_max = min(sigma_max, float(getattr(net, "sigma_max", math.inf)))
    sigmas = karras_sigmas(steps, sigma_min, sigma_max, rho)
    round_sigma = getattr(net, "round_sigma", None)
    if round_sigma is not None:
        sigmas = torch.cat([round_sigma(sigmas[:-1]).to(torch.float64), sigmas[-1:]])
    return sigmas


def _labels(net, gens, class_idx, device):
    label_dim = int(getattr(net, "label_dim", 0))
    if not label_dim:
        return None
    if class_idx is not None:
        if not 0 <= class_idx < label_dim:
            raise ValueError(f"class {class_idx} out of range for a network with {label_dim} classes")
        idx = [class_idx] * len(gens)
    else:
        idx = [int(torch.randint(label_dim, (1,), generator=g, device=g.device)) for g in gens]
    return torch.eye(label_dim, device=device)[idx]


def generate(net, seeds: Sequence[int], outdir, *, method: str = "edm", batch: int = 64, subdirs: bool = False,
             steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
             class_idx: int | None = None, log_ratio=None, method_params: dict | None = None,
             rank: int | None = None, world: int | None = None, device="cpu", progress: bool = False) -> list[Path]:
    """Write one PNG per seed of this rank; returns the paths written (in seed order).

    ``net`` an EDM-style denoiser ``net(x, sigma, class_labels=None)`` with ``img_resolution``,
    ``img_channels``, ``label_dim`` (and optionally ``sigma_min``, ``sigma_max``, ``round_sigma``);
    ``method`` one of :data:`METHODS`; ``log_ratio`` the discriminator for dg/sedm/diffrs/pf;
    ``method_params`` extra keywords for the method (churn knobs, w1, num_particles, ...).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    spec = registry.method(method)
    if spec.needs == "log_ratio" and log_ratio is None:
        raise ValueError(f"method {method!r} needs a discriminator (log_ratio / --discriminator)")
    if rank is None or world is None:
        rank, world = dist_info()
    params = dict(method_params or {})
    shape = (int(net.img_channels), int(net.img_resolution), int(net.img_resolution))
    sigmas = _schedule(net, steps, sigma_min, sigma_max, rho)
    my_batches = rank_batches(list(seeds), batch, rank, world)
    if progress and rank == 0:
        from tqdm.auto import tqdm

        my_batches = tqdm(my_batches, desc=f"generate ({method})", unit="batch")
    written = []
    for batch_seeds in my_batches:
        gens = [torch.Generator(device=device).manual_seed(s % (1 << 32)) for s in batch_seeds]
        n = len(batch_seeds)
        if spec.particles:
            K = int(params.get("num_particles", 4))
            z = torch.stack([torch.randn((K,) + shape, generator=g, device=device) for g in gens])
        else:  # float32 latents widened to float64, as EDM draws them
            z = torch.stack([torch.randn(shape, generator=g, device=device) for g in gens])
        z = z.to(torch.float64)
        labels = _labels(net, gens, class_idx, device)
        cond = {}
        if labels is not None:
            cond["class_labels"] = labels[:, None].expand(n, z.shape[1], -1) if spec.particles else labels
        generator = gens[0] if spec.one_generator else gens
        out = spec(net, sigmas, log_ratio=log_ratio, num_samples=n, shape=shape, generator=generator, x_init=z,
                   cond=cond or None, **params)
        for seed, img in zip(batch_seeds, to_uint8(out.x.to(torch.float32))):
            path = image_path(outdir, seed, subdirs)
            path.parent.mkdir(parents=True, exist_ok=True)
            _save_png(img, path)
            written.append(path)
    return written


def _save_png(img: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img, "L" if img.shape[2] == 1 else "RGB").save(path)
