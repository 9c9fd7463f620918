"""Image generation with EDM's conventions: one PNG per seed, seeds split over ``torchrun`` ranks,
resumable after an interruption.

``generate(net, seeds, outdir, method="edm", ...)`` samples one image per seed with any method of
:mod:`smcdiff.methods` (for SMC methods one seed is one SMC run, i.e. one group of particles) and
writes ``{seed:06d}.png`` (under ``{seed // 1000 * 1000:06d}/`` with ``subdirs=True``), uint8 from
``x·127.5 + 128`` clipped, as EDM does.

Randomness follows EDM: each seed has its own ``torch.Generator`` seeded with ``seed`` (seeds are
below 2³²); a seed's latents, then its class label (``randint(label_dim)`` when no class is
fixed), then its sampler noise come from that generator alone, so an image depends on its seed,
never on the batch or the number of processes. **DiffRS is the exception**: it batches slots
across seeds (continuous batching), so it draws from one generator per batch, seeded by the
batch's first seed, and its images depend on the batch they ran in (``batch`` is then one of the
run's settings).

Interruption: every image is written to a temporary file in its folder and renamed into place
(``os.replace``), so a killed run never leaves a partial PNG. The run's settings (method and its
parameters, steps, σ range, ρ, class, the network's and discriminator's identity: class and
SHA-256 of their tensors) are stored in ``outdir/generate-settings.json``. A rerun *resumes*: a
seed whose image exists and decodes is skipped; a batch with some images missing is run again
whole (only the missing images are written), so every image equals the one an uninterrupted run
makes, bit for bit. A rerun with other settings is refused (``ValueError``); ``resume=False``
starts over (every image is made again and the settings file rewritten). The output folder is
checked for writability before any sampling.

Processes: under ``torchrun`` (``WORLD_SIZE`` > 1) the batches of seeds are dealt round-robin,
rank r taking batches r, r + world, …; only rank 0 prints.

    >>> import tempfile, torch
    >>> class Toy(torch.nn.Module):           # any EDM-style denoiser with img_* attributes
    ...     img_resolution, img_channels, label_dim, sigma_min, sigma_max = 4, 3, 0, 0.0, float("inf")
    ...     def forward(self, x, sigma, class_labels=None):
    ...         return x * 0.25 / (0.25 + sigma.reshape(-1, 1, 1, 1) ** 2)
    >>> folder = tempfile.mkdtemp()
    >>> out = generate(Toy(), [0, 1, 2], folder, steps=4, batch=2)
    >>> [p.name for p in out], out.written, out.skipped
    (['000000.png', '000001.png', '000002.png'], 3, 0)
    >>> again = generate(Toy(), [0, 1, 2, 3], folder, steps=4, batch=2)   # resumes
    >>> again.written, again.skipped
    (1, 3)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from smcdiff.apps.options import check_output_folder
from smcdiff.checks import check_real
from smcdiff.kernels.schedules import karras_sigmas
from smcdiff.methods import registry

__all__ = [
    "MAX_SEEDS",
    "METHODS",
    "SETTINGS_FILE",
    "GeneratedImages",
    "dist_info",
    "generate",
    "image_ok",
    "image_path",
    "image_shape",
    "parse_seeds",
    "rank_batches",
    "run_settings",
    "to_uint8",
]

#: ``--method`` names: the registered methods that need nothing but a discriminator (no Python callable).
METHODS = tuple(name for name, spec in registry.METHODS.items()
                if spec.needs in (None, "log_ratio") and not spec.pipeline_only)
#: The file beside the images that records how they were made.
SETTINGS_FILE = "generate-settings.json"
#: The most seeds one call takes (a typo like ``0-99999999999`` is refused instead of filling memory).
MAX_SEEDS = 10_000_000


class GeneratedImages(list):
    """The paths of this rank's images in seed order (made now or found from an earlier run);
    ``written``: how many were made now, ``skipped``: how many existed already."""

    written: int = 0
    skipped: int = 0


def parse_seeds(text: str) -> list[int]:
    """EDM's seed syntax: ``"0-63"``, ``"1,2,5-10"`` → a list of ints (ranges inclusive).

    ``ValueError`` for text that does not parse, backwards ranges, a seed of 2³² or more (EDM
    reduces seeds mod 2³², so it would repeat a smaller seed's image), a seed listed twice and more
    than :data:`MAX_SEEDS` seeds.
    """
    parts, total = [], 0
    for part in str(text).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)-(\d+)", part) or re.fullmatch(r"(\d+)()", part)
        if not m:
            raise ValueError(f"cannot parse seeds {text!r}: expected e.g. '0-63' or '1,2,5-10'")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        if hi < lo:
            raise ValueError(f"seed range {part!r} runs backwards")
        if hi >= 1 << 32:
            raise ValueError(f"seeds must be below 2**32 = {1 << 32}, got {hi} (larger seeds would repeat the images "
                             "of smaller ones)")
        total += hi - lo + 1
        if total > MAX_SEEDS:
            raise ValueError(f"too many seeds in {text!r}: at most {MAX_SEEDS:,} per run")
        parts.append(range(lo, hi + 1))
    out, seen = [s for r in parts for s in r], set()
    for s in out:
        if s in seen:
            raise ValueError(f"seed {s} is listed twice in {text!r}")
        seen.add(s)
    return out


def rank_batches(seeds: Sequence[int], batch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """The batches of ``seeds`` that rank ``rank`` of ``world`` processes runs (round-robin)."""
    if batch < 1 or world < 1 or not 0 <= rank < world:
        raise ValueError(f"expected batch >= 1 and 0 <= rank < world, got batch={batch}, rank={rank}, world={world}")
    batches = [list(seeds[i:i + batch]) for i in range(0, len(seeds), batch)]
    return batches[rank::world]


def dist_info() -> tuple[int, int]:
    """(rank, world size) from the torchrun environment, (0, 1) outside it."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] → (N, H, W, C) uint8, as EDM: clip(x·127.5 + 128, 0, 255), truncated."""
    return (x * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def image_path(outdir, seed: int, subdirs: bool = False) -> Path:
    """``outdir/{seed:06d}.png``, or ``outdir/{seed//1000*1000:06d}/{seed:06d}.png`` with ``subdirs``."""
    outdir = Path(outdir)
    if subdirs:
        outdir = outdir / f"{seed - seed % 1000:06d}"
    return outdir / f"{seed:06d}.png"


def image_ok(path: Path, shape: tuple[int, int, int] | None) -> bool:
    """Whether ``path`` is a PNG that decodes fully (to an image of ``shape`` = (C, H, W) when given)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            if shape is None:
                return img.format == "PNG"
            return img.format == "PNG" and img.size == (shape[2], shape[1]) and img.mode == _mode(shape[0])
    except (OSError, ValueError, SyntaxError):  # missing, truncated, not a PNG
        return False


def image_shape(net) -> tuple[int, int, int]:
    """(C, H, W) of the images ``net`` makes: EDM's ``img_channels``/``img_resolution``, or a smcdiff
    network's square ``event_shape``; ``ValueError`` for anything else."""
    if hasattr(net, "img_channels") and hasattr(net, "img_resolution"):
        return int(net.img_channels), int(net.img_resolution), int(net.img_resolution)
    shape = tuple(getattr(net, "event_shape", ()))
    if len(shape) == 3 and shape[1] == shape[2]:
        return tuple(int(v) for v in shape)
    raise ValueError(f"generate needs a denoiser of square images: img_channels and img_resolution (EDM), or an "
                     f"event_shape (C, H, H); {type(net).__name__} has neither (event_shape {shape or None})")


def _mode(channels: int) -> str:
    return "L" if channels == 1 else "RGB"


def _schedule(net, steps, sigma_min, sigma_max, rho):
    # Clamp the range to the network's, then snap to its grid (identity except iDDPM).
    sigma_min = check_real(sigma_min, "sigma_min", low=0, low_open=True)
    sigma_max = check_real(sigma_max, "sigma_max", low=0, low_open=True)
    check_real(rho, "rho", low=0, low_open=True)
    if sigma_min >= sigma_max:
        raise ValueError(f"expected sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    sigma_min = max(sigma_min, float(getattr(net, "sigma_min", 0.0)))
    sigma_max = min(sigma_max, float(getattr(net, "sigma_max", math.inf)))
    if sigma_min >= sigma_max:
        raise ValueError(f"the σ range [{sigma_min}, {sigma_max}] is empty after clamping to the network's "
                         f"[{getattr(net, 'sigma_min', 0.0)}, {getattr(net, 'sigma_max', math.inf)}]")
    sigmas = karras_sigmas(steps, sigma_min, sigma_max, rho)
    round_sigma = getattr(net, "round_sigma", None)
    if round_sigma is not None:
        sigmas = torch.cat([torch.as_tensor(round_sigma(sigmas[:-1])).to(torch.float64), sigmas[-1:]])
    return sigmas


def _labels(net, gens, class_idx, device):
    label_dim = int(getattr(net, "label_dim", 0) or 0)
    if not label_dim:
        if class_idx is not None:
            raise ValueError(f"class {class_idx} given, but the network is unconditional (label_dim 0)")
        return None
    if class_idx is not None:
        if not 0 <= class_idx < label_dim:
            raise ValueError(f"class {class_idx} out of range for a network with {label_dim} classes")
        idx = [class_idx] * len(gens)
    else:
        idx = [int(torch.randint(label_dim, (1,), generator=g, device=g.device)) for g in gens]
    return torch.eye(label_dim, device=device)[idx]


def _identity(obj) -> dict | str | None:
    """What ``obj`` (network, discriminator) is: its class and the SHA-256 of its tensors."""
    if obj is None:
        return None
    if isinstance(getattr(obj, "__self__", None), torch.nn.Module):  # a bound method such as disc.logit
        return {"method": obj.__name__, "of": _identity(obj.__self__)}
    if isinstance(obj, torch.nn.Module):
        h = hashlib.sha256()
        for name, t in obj.state_dict().items():
            if not isinstance(t, torch.Tensor):
                h.update(f"{name}:{t!r};".encode())
                continue
            t = t.detach().cpu().contiguous().reshape(-1)
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        return {"class": type(obj).__name__, "sha256": h.hexdigest()}
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def run_settings(net, *, method: str, steps: int, sigmas: torch.Tensor, sigma_min: float, sigma_max: float,
                 rho: float, class_idx: int | None, method_params: dict, log_ratio=None, batch: int | None = None) -> dict:
    """The settings that decide a run's images (what ``generate-settings.json`` stores and compares)."""
    return json.loads(json.dumps({
        "method": method, "method_params": method_params, "steps": steps, "sigma_min": sigma_min,
        "sigma_max": sigma_max, "rho": rho, "sigmas": sigmas.tolist(), "class": class_idx,
        "image_shape": list(image_shape(net)),
        "network": _identity(net), "discriminator": _identity(log_ratio),
        "batch": batch if registry.method(method).one_generator else None,
    }, default=repr))


def _short(value) -> str:
    if isinstance(value, dict) and "sha256" in value:
        return f"{value.get('class')} {value['sha256'][:12]}"
    if isinstance(value, dict) and "of" in value:
        return f"{_short(value['of'])}.{value.get('method')}"
    return "none" if value is None else repr(value)


def _differences(old: dict, new: dict) -> str:
    """``key: before, now`` for the settings that changed (the σ grid only when nothing else explains it)."""
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if len(keys) > 1 and "sigmas" in keys:
        keys.remove("sigmas")
    return "; ".join("sigmas: another noise schedule (the network's σ range changed)" if k == "sigmas" else
                     f"{k}: {_short(old.get(k))} before, {_short(new.get(k))} now" for k in keys)


def _any_png(outdir: Path) -> Path | None:
    return next(outdir.glob("*.png"), None) or next(outdir.glob("*/*.png"), None)


def _check_resume(outdir: Path, settings: dict) -> None:
    """Refuse to add images to a folder whose images were made with other (or unknown) settings."""
    path, found = outdir / SETTINGS_FILE, _any_png(outdir)
    if found is None:
        return  # nothing to mix with: a settings file left by a run that wrote no image is replaced
    if not path.exists():
        raise ValueError(f"{outdir} holds images ({found.relative_to(outdir)}, ...) but no {SETTINGS_FILE}, so it "
                         "cannot tell how they were made; choose another output folder, or start over with "
                         "--overwrite (resume=False)")
    try:
        stored = json.loads(path.read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} cannot be read ({type(err).__name__}: {err}); choose another output folder, or "
                         "start over with --overwrite (resume=False)") from None
    if stored != settings:
        raise ValueError(f"{outdir} holds images made with other settings ({_differences(stored, settings)}); "
                         "rerun with the same settings to resume, choose another output folder, or start over "
                         "with --overwrite (resume=False)")


def _write_atomic(path: Path, write: Callable) -> None:
    """``write(file)`` into a temporary file beside ``path``, then rename it onto ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def generate(net, seeds: Sequence[int], outdir, *, method: str = "edm", batch: int = 64, subdirs: bool = False,
             steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
             class_idx: int | None = None, log_ratio=None, method_params: dict | None = None,
             rank: int | None = None, world: int | None = None, device="cpu", progress: bool = False,
             resume: bool = True, log: Callable[[str], None] | None = None) -> GeneratedImages:
    """Write one PNG per seed of this rank; returns the paths of this rank's images (in seed order).

    ``net`` an EDM-style denoiser ``net(x, sigma, class_labels=None)`` with ``img_resolution``,
    ``img_channels``, ``label_dim`` (and optionally ``sigma_min``, ``sigma_max``, ``round_sigma``),
    or a smcdiff network with a square ``event_shape`` (C, H, H);
    ``method`` one of :data:`METHODS`; ``log_ratio`` the discriminator for dg/sedm/diffrs/pf;
    ``method_params`` extra keywords for the method (churn knobs, w1, num_particles, ...);
    ``resume`` skip the seeds whose image exists (see the module docstring); ``log`` receives one
    line on what is skipped (e.g. ``print``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    spec = registry.method(method)
    if spec.needs == "log_ratio" and log_ratio is None:
        raise ValueError(f"method {method!r} needs a discriminator (log_ratio / --discriminator)")
    if rank is None or world is None:
        rank, world = dist_info()
    seeds = list(seeds)
    if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= s < 1 << 32 for s in seeds):
        raise ValueError(f"seeds must be integers in [0, 2**32), got {seeds[:10]}")
    if len(set(seeds)) != len(seeds):
        raise ValueError("a seed is listed twice")
    params = dict(method_params or {})
    my_batches = rank_batches(seeds, batch, rank, world)
    shape = image_shape(net)
    if shape[0] not in (1, 3):
        raise ValueError(f"generate writes 1- or 3-channel PNGs; the network makes {shape[0]} channels")
    sigmas = _schedule(net, steps, sigma_min, sigma_max, rho)
    _labels(net, [], class_idx, device)  # checks the class before anything is written
    outdir = check_output_folder(outdir, "outdir")
    settings = run_settings(net, method=method, steps=steps, sigmas=sigmas, sigma_min=sigma_min, sigma_max=sigma_max,
                            rho=rho, class_idx=class_idx, method_params=params, log_ratio=log_ratio, batch=batch)
    if resume:
        _check_resume(outdir, settings)
    if rank == 0:
        record = {"settings": settings, "info": {"written by": "smcdiff generate", "torch": torch.__version__}}
        _write_atomic(outdir / SETTINGS_FILE, lambda f: f.write((json.dumps(record, indent=1) + "\n").encode()))
    result = GeneratedImages(image_path(outdir, s, subdirs) for b in my_batches for s in b)
    done = {p for p in result if resume and image_ok(p, shape)}
    todo = [b for b in my_batches if any(image_path(outdir, s, subdirs) not in done for s in b)]
    result.skipped = len(done)
    if log is not None and (done or not resume):
        log(f"{outdir}: {len(done)} of {len(result)} images already there (skipped); {len(todo)} batches to run"
            if resume else f"{outdir}: starting over (--overwrite): every image is made again")
    if progress and rank == 0 and todo:
        from tqdm.auto import tqdm

        todo = tqdm(todo, desc=f"generate ({method})", unit="batch")
    for batch_seeds in todo:
        out = _sample_batch(spec, net, batch_seeds, shape, sigmas, class_idx, log_ratio, params, device)
        for seed, img in zip(batch_seeds, to_uint8(out.to(torch.float32))):
            path = image_path(outdir, seed, subdirs)
            if path in done:  # a batch is rerun whole; its finished images are kept as they are
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            save_png(img, path)
            result.written += 1
    return result


def _sample_batch(spec, net, batch_seeds, shape, sigmas, class_idx, log_ratio, params, device) -> torch.Tensor:
    """One batch of seeds → the method's outputs ``(n, C, H, W)``."""
    gens = [torch.Generator(device=device).manual_seed(s) for s in batch_seeds]
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
    return out.x


def save_png(img: np.ndarray, path: Path) -> None:
    """Write ``img : (H, W, C)`` uint8 as a PNG, atomically (a temporary file, then a rename)."""
    from PIL import Image

    channels = img.shape[2]
    picture = Image.fromarray(img[:, :, 0] if channels == 1 else img, _mode(channels))
    _write_atomic(path, lambda f: picture.save(f, format="PNG"))
