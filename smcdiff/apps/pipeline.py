"""Text-to-image generation from a local diffusers pipeline folder, with any method.

``generate_from_pipeline(pipeline_dir, prompts, outdir, method=..., cfg=7.5, seeds=...)`` loads the
folder (:func:`smcdiff.models.pipeline_folder.load_pipeline`: unet, scheduler, VAE, text encoder if
present; nothing is downloaded), encodes the prompts once, and writes one PNG per (prompt, seed):
``outdir/{seed:06d}.png`` for one prompt, ``outdir/{prompt index:05d}/{seed:06d}.png`` for several
(``subdirs=True`` adds EDM's ``{seed//1000*1000:06d}/`` level), plus ``prompts.txt`` (one prompt per
line, line i = prompt index i) and ``generation.json`` (the settings and the honest costs).

Seeds follow EDM (:mod:`smcdiff.apps.generate`): each seed has its own generator, from which come its
latents (K of them for particle methods), then its sampler noise, so an image depends on its seed
and prompt only; under ``torchrun`` the batches of seeds are dealt round-robin over the ranks.

Methods: every method of :data:`smcdiff.methods.registry.METHODS` plus the text-to-image ones of
:mod:`smcdiff.methods.text_to_image` (:data:`TEXT_TO_IMAGE_METHODS`: ``pf-hybrid``, ``pf-detector``,
``pf-discriminator``, ``object-select``). What a method needs is loaded from local files:
``detector`` (a DETR folder or a torchvision checkpoint, :func:`~smcdiff.models.detectors.load_detector`;
the objects come from each prompt), ``discriminator`` (a latent discriminator,
:mod:`smcdiff.models.latent_discriminator`; the prompt's context for ``pf-discriminator``, the empty
prompt's otherwise), ``reward`` (``"color:R,G,B"`` or ``"clip:FOLDER"``, on the decoded x̂0; also the
score of ``best-of-n``).

A rerun into the same folder resumes: batches whose PNGs all decode are skipped (counted as
``skipped_existing`` in ``generation.json``), and images are written atomically (a temporary file,
then a rename), so a killed run leaves no partial PNG. Unlike ``smcdiff generate`` on a network
file, no settings file guards the folder: resuming with other settings is the user's business.

Classifier-free guidance (``cfg`` w ≠ 1, with a text encoder or given embeddings) wraps the denoiser
with the negative prompt's embedding as the unconditional input. **NFE** in ``generation.json``
counts network evaluations at the network (2 per guided evaluation) divided by the images written;
VAE decodes, detector and discriminator/reward calls are counted apart.

    smcdiff generate --pipeline sd21 --prompts prompts.txt --outdir out --seeds 0-3 --method pf-hybrid \\
        --detector detr-resnet-50 --discriminator latent_disc.pt --cfg 7.5 --particles 10
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from smcdiff.apps.generate import (
    dist_info,
    image_ok,
    image_path,
    parse_seeds,
    rank_batches,
    save_png,
)
from smcdiff.kernels.cfg import ClassifierFreeGuidance
from smcdiff.kernels.counting import CallCounter
from smcdiff.kernels.schedules import check_sigmas, karras_sigmas
from smcdiff.methods import registry
from smcdiff.methods.registry import MethodSpec

__all__ = [
    "TEXT_TO_IMAGE_METHODS",
    "add_pipeline_options",
    "generate_from_pipeline",
    "load_reward",
    "method_spec",
    "pipeline_kwargs",
    "read_prompts",
]


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


#: The text-to-image methods of the registry (kept for code that reads this name).
TEXT_TO_IMAGE_METHODS = {name: spec for name, spec in registry.METHODS.items() if spec.pipeline_only}


def method_spec(name: str) -> MethodSpec:
    """The registered method ``name`` (:func:`smcdiff.methods.registry.method`)."""
    return registry.method(name)


def read_prompts(prompt: str | Sequence[str] | None = None, prompts_file=None) -> list[str]:
    """Prompts from ``prompt`` (a string or a list) and/or a text file with one prompt per line
    (blank lines skipped)."""
    out = [prompt] if isinstance(prompt, str) else list(prompt or [])
    if prompts_file is not None:
        path = Path(prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"--prompts {path}: no such file (one prompt per line)")
        out += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not out or not all(isinstance(p, str) for p in out):
        raise ValueError("no prompts given: pass --prompt TEXT or --prompts FILE (one prompt per line)")
    return out


def load_reward(spec, prompts: Sequence[str], *, device=None):
    """An image reward from ``"color:R,G,B"`` (a :class:`~smcdiff.weights.image_rewards.ColorReward`) or
    ``"clip:FOLDER"`` (a :class:`~smcdiff.weights.image_rewards.CLIPScore` of a local CLIP folder);
    a callable is returned as it is."""
    from smcdiff.weights.image_rewards import CLIPScore, ColorReward

    if callable(spec):
        return spec
    kind, _, arg = str(spec).partition(":")
    if kind == "color":
        try:
            return ColorReward(tuple(float(v) for v in arg.split(",")))
        except ValueError as err:
            raise ValueError(f"--reward color:R,G,B expects three numbers in [0, 1], got {arg!r}") from err
    if kind == "clip":
        return CLIPScore.from_pretrained(arg, prompts, device=device)
    raise ValueError(f"--reward must be color:R,G,B or clip:FOLDER, got {spec!r}")


def _needs(spec: MethodSpec) -> set[str]:
    return set((spec.needs or "").split("+")) - {""}


def _embeddings(model, prompts, negative_prompt, prompt_embeds, negative_prompt_embeds):
    """(P, L, E) prompt embeddings and (L, E) unconditional ones, or (None, None) for an unconditional model."""
    if prompt_embeds is not None:
        emb = torch.as_tensor(prompt_embeds)
        if emb.dim() != 3 or emb.shape[0] != len(prompts):
            raise ValueError(f"prompt_embeds must be (prompts, L, E) = ({len(prompts)}, L, E), got {tuple(emb.shape)}")
        neg = None if negative_prompt_embeds is None else torch.as_tensor(negative_prompt_embeds).reshape(emb.shape[1:])
        return emb, neg
    if model.prompt_encoder is None:
        net = getattr(model.denoiser, "model", None)
        try:
            needed = inspect.signature(net.forward).parameters["encoder_hidden_states"].default is inspect.Parameter.empty
        except (AttributeError, KeyError, TypeError, ValueError):
            needed = False
        if needed:
            raise ValueError("the pipeline's network is text-conditioned but the folder has no text_encoder/ and "
                             "tokenizer/: pass prompt_embeds (and negative_prompt_embeds for CFG)")
        return None, None
    emb = model.prompt_encoder(list(prompts) + [negative_prompt])
    return emb[:-1], emb[-1]


def generate_from_pipeline(pipeline_dir, prompts, outdir, *, method: str = "edm", cfg: float | None = 7.5,
                           seeds: Sequence[int] | str = (0,), batch: int = 4, steps: int = 29, rho: float = 7.0,
                           negative_prompt: str = "", detector=None, detector_arch: str | None = None,
                           detector_resize: int | None = 800, discriminator=None, reward=None, reward_scale: float = 1.0,
                           method_params: dict | None = None, dtype=None, device="cpu", max_batch: int | None = None,
                           subdirs: bool = False, sigmas=None, prompt_embeds=None, negative_prompt_embeds=None,
                           rank: int | None = None, world: int | None = None, progress: bool = False) -> list[Path]:
    """Write one PNG per (prompt, seed) of this rank (see the module doc); returns the paths written.

    ``prompts`` a list of strings (or one string); ``cfg`` the guidance weight (None or 1: none);
    ``steps`` main-grid steps of EDM's ρ schedule on the model's [σ_min, σ_max] (``sigmas`` a
    schedule of your own instead, e.g. :func:`~smcdiff.methods.text_to_image.sd21_sigmas`); ``detector``,
    ``discriminator``, ``reward`` local paths (or ready callables) for the methods that need them
    (``reward_scale`` λ multiplies the reward: FK steering's log-tilt is λ·r);
    ``method_params`` the method's own keywords (``num_particles``, ``S_churn``, ...);
    ``prompt_embeds (P, L, E)`` / ``negative_prompt_embeds (L, E)`` replace the text encoder.
    """
    from smcdiff.models.detectors import load_detector, prompt_objects
    from smcdiff.models.latent_discriminator import (
        LatentLogRatio,
        load_latent_discriminator,
    )
    from smcdiff.models.pipeline_folder import load_pipeline

    spec, prompts = method_spec(method), read_prompts(prompts)
    needs = _needs(spec)
    seeds = parse_seeds(seeds) if isinstance(seeds, str) else [int(s) for s in seeds]
    if rank is None or world is None:
        rank, world = dist_info()
    for need, given, option in (("detector", detector, "--detector"), ("log_ratio", discriminator, "--discriminator"),
                                ("reward", reward, "--reward")):
        if need in needs and given is None:
            raise ValueError(f"method {method!r} needs {option}")
    if "score" in needs and reward is None:
        raise ValueError(f"method {method!r} scores its particles: pass --reward (the score of the final image)")
    outdir = Path(outdir)
    model = load_pipeline(pipeline_dir, dtype=dtype, device=device, max_batch=max_batch)
    emb, neg = _embeddings(model, prompts, negative_prompt, prompt_embeds, negative_prompt_embeds)
    guided = emb is not None and cfg is not None and float(cfg) != 1.0
    # The network's calls are counted inside CFG: 2 per guided evaluation.
    net = CallCounter(model.denoiser)
    denoiser = ClassifierFreeGuidance(float(cfg)).bind(net, None, 0) if guided else net
    if sigmas is None:
        sigmas = karras_sigmas(steps, model.denoiser.sigma_min, model.denoiser.sigma_max, rho)
    else:
        sigmas = check_sigmas(sigmas)
        steps = len(sigmas) - 1
    extra, counters = {}, {}
    if needs & {"detector"}:
        det = load_detector(detector, arch=detector_arch, device=device, resize=detector_resize,
                            max_batch=max_batch) if not callable(detector) else detector
        extra.update(detector=det, decoder=model.decoder)
        counters["detector_calls"] = det
    if "log_ratio" in needs:
        disc = load_latent_discriminator(discriminator, device=device, dtype=dtype) if not callable(discriminator) \
            else discriminator
        context = "prompt" if method == "pf-discriminator" else "empty"
        extra["log_ratio"] = CallCounter(LatentLogRatio(disc, model.denoiser, context=context, max_batch=max_batch)
                                         if not isinstance(disc, LatentLogRatio) else disc)
        counters["disc_calls"] = extra["log_ratio"]
    if needs & {"reward", "score"}:
        r = CallCounter(model.decoded(load_reward(reward, prompts, device=device)))
        if not math.isfinite(float(reward_scale)):
            raise ValueError(f"reward_scale must be finite, got {reward_scale}")
        if "reward" in needs:
            extra["reward"] = lambda x0, **cond: float(reward_scale) * r(x0, **cond)
        else:
            extra["score"] = lambda x, **cond: r(x, **cond)
        counters["reward_calls"] = r
    params = dict(method_params or {})
    K = int(params.get("num_particles", 10 if method in TEXT_TO_IMAGE_METHODS else 4)) if spec.particles else 1
    written, images_done = [], 0
    decodes0 = model.decoder.decodes if model.decoder is not None else 0
    if rank == 0:
        outdir.mkdir(parents=True, exist_ok=True)
        (outdir / "prompts.txt").write_text("".join(p.replace("\n", " ") + "\n" for p in prompts), encoding="utf-8")
    jobs = [(i, b) for i in range(len(prompts)) for b in rank_batches(seeds, batch, rank, world)]
    if progress and rank == 0:
        from tqdm.auto import tqdm

        jobs = tqdm(jobs, desc=f"generate ({method})", unit="batch")
    skipped = 0
    for i, batch_seeds in jobs:
        paths = [image_path(outdir / f"{i:05d}" if len(prompts) > 1 else outdir, seed, subdirs) for seed in batch_seeds]
        if all(image_ok(p, None) for p in paths):  # resume: this batch is done (its PNGs decode)
            skipped += len(paths)
            continue
        gens = [torch.Generator(device=device).manual_seed(s % (1 << 32)) for s in batch_seeds]
        lead = (K,) if spec.particles else ()
        z = torch.stack([torch.randn(lead + model.shape, generator=g, device=device) for g in gens]).to(torch.float64)
        cond = {}
        if emb is not None:
            n = len(batch_seeds)
            c = emb[i].to(device)
            cond["encoder_hidden_states"] = c.expand(n, *lead, *c.shape)
            if neg is not None:
                cond["uncond.encoder_hidden_states"] = neg.to(device).expand(n, *lead, *c.shape)
            elif guided:
                raise ValueError("classifier-free guidance needs an unconditional embedding (negative_prompt_embeds)")
        if needs & {"reward", "score"}:  # which prompt a particle's reward scores (CLIPScore reads it)
            cond["prompt_index"] = torch.full((len(batch_seeds), *lead), i, dtype=torch.long, device=device)
        kwargs = dict(extra)
        if "detector" in needs:
            kwargs["objects"] = prompt_objects(prompts[i])
        out = spec(denoiser, sigmas, num_samples=len(batch_seeds), shape=model.shape,
                   generator=gens[0] if spec.one_generator else gens, x_init=z, cond=cond or None, **kwargs, **params)
        x = out.x if out.x.dim() == len(model.shape) + 1 else out.x[:, 0]  # one image per seed
        pixels = (model.images(x).float() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()
        for path, img in zip(paths, pixels.numpy()):
            path.parent.mkdir(parents=True, exist_ok=True)
            save_png(np.ascontiguousarray(img), path)  # atomic: a killed run leaves no partial PNG
            written.append(path)
        images_done += len(batch_seeds)
    _write_record(outdir / ("generation.json" if world == 1 else f"generation-rank{rank}.json"), {
        "pipeline": str(pipeline_dir), "method": method, "cfg": float(cfg) if guided else None, "steps": steps,
        "seeds": seeds, "num_prompts": len(prompts), "images": images_done, "skipped_existing": skipped,
        "method_params": _plain(params),
        "nfe": net.count / max(images_done, 1),
        "decodes": ((model.decoder.decodes - decodes0) / max(images_done, 1)) if model.decoder is not None else 0.0,
        **{k: getattr(v, "count", getattr(v, "calls", 0)) / max(images_done, 1) for k, v in counters.items()},
    })
    return written


def _plain(value):
    return json.loads(json.dumps(value, default=str))


def _write_record(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _dtype(text: str):
    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
             "bf16": torch.bfloat16, "fp32": torch.float32}
    if text not in names:
        raise argparse.ArgumentTypeError(f"expected one of {sorted(names)}, got {text!r}")
    return names[text]


def _cfg(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``smcdiff generate --pipeline DIR`` (``--seeds``, ``--outdir``, ``--batch``,
    ``--steps``, ``--method``, ``--discriminator`` and ``--device`` are generate's own)."""
    g = parser.add_argument_group("text-to-image (a local diffusers pipeline folder)")
    g.add_argument("--pipeline", metavar="DIR", help="local diffusers pipeline folder (unet, scheduler, vae, "
                   "text_encoder if present); nothing is downloaded")
    g.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt (repeatable)")
    g.add_argument("--prompts", metavar="FILE", help="a text file with one prompt per line")
    g.add_argument("--negative-prompt", default="", metavar="TEXT", help="the unconditional prompt of CFG (default: empty)")
    g.add_argument("--cfg", type=_cfg, default=7.5, metavar="W", help="classifier-free guidance weight; 1 = none "
                   "(default: %(default)s)")
    g.add_argument("--detector", metavar="PATH", help="object detector: a transformers DETR folder or a torchvision "
                   "checkpoint (with --detector-arch)")
    g.add_argument("--detector-arch", metavar="NAME", help="torchvision detection model of a checkpoint, e.g. "
                   "fasterrcnn_resnet50_fpn")
    g.add_argument("--detector-resize", type=int, default=800, metavar="N", help="DETR input short side (default: %(default)s)")
    g.add_argument("--reward", metavar="SPEC", help="image reward: color:R,G,B or clip:FOLDER (FK steering, best-of-n)")
    g.add_argument("--reward-scale", type=_cfg, default=1.0, metavar="L", help="lambda: the log-tilt is L * reward "
                   "(default: %(default)s)")
    g.add_argument("--dtype", type=_dtype, default=None, metavar="T", help="network dtype: float32, float16, bfloat16")
    g.add_argument("--max-batch", type=int, default=None, metavar="N", help="largest batch per network/VAE call")


def pipeline_kwargs(args: argparse.Namespace, method_params: dict | None = None) -> dict:
    """The keywords of :func:`generate_from_pipeline` from parsed ``generate`` arguments."""
    prompts = read_prompts(args.prompt, args.prompts)
    return dict(pipeline_dir=args.pipeline, prompts=prompts, outdir=args.outdir, method=args.method, cfg=args.cfg,
                seeds=args.seeds, batch=args.batch, steps=args.steps, negative_prompt=args.negative_prompt,
                detector=args.detector, detector_arch=args.detector_arch, detector_resize=args.detector_resize,
                discriminator=getattr(args, "discriminator", None), reward=args.reward,
                reward_scale=args.reward_scale, method_params=method_params,
                dtype=args.dtype, device=getattr(args, "device", "cpu"), max_batch=args.max_batch,
                subdirs=getattr(args, "subdirs", False), progress=True)
