"""``smcdiff generate``: its options come from the method registry (:mod:`smcdiff.methods.registry`).

``--network`` takes an EDM network pickle (``edm-*.pkl``, :func:`smcdiff.models.load_edm`), a
network saved by smcdiff (:func:`smcdiff.models.small_nets.save`: ``smcdiff train``, the shipped
digits weights) or the word ``digits`` for the shipped 8×8 digits denoiser;
:func:`load_network` gives the net the attributes :func:`smcdiff.apps.generate.generate` reads.

    >>> net, info = load_network("digits")
    >>> net.img_channels, net.img_resolution, net.label_dim, info["class"]
    (1, 8, 0, 'ConvDenoiser')
"""

from __future__ import annotations

import argparse
import math

from smcdiff.apps.options import check_output_folder
from smcdiff.apps.options import positive_int as _positive_int
from smcdiff.methods import registry

__all__ = ["SHORTCUTS", "add_generate_parser", "load_discriminator", "load_network", "run_generate"]

_GEN_EPILOG = """\
conventions (EDM's): one PNG per seed ({seed:06d}.png, in {seed//1000*1000:06d}/ with --subdirs); each
seed has its own generator (latents, label, noise), so an image depends on its seed alone; for SMC
methods one seed is one SMC run. Exception: DiffRS draws from ONE generator per batch (seeded by the
batch's first seed), so its images depend on the batch they ran in (--batch is one of its settings).
Under torchrun the batches of seeds are dealt round-robin over ranks; only rank 0 prints.

interruption: images are written to a temporary file and renamed, so a killed run leaves no partial
PNG. The settings are stored in OUTDIR/generate-settings.json; rerunning the same command resumes
(seeds whose image exists and decodes are skipped) and a rerun with other settings is refused.
--overwrite starts over. OUTDIR is checked for writability before anything is sampled.

examples:
  smcdiff generate --network digits --outdir out --seeds 0-63 --steps 18
  smcdiff generate --network digits --discriminator digits --method dg --outdir out_dg --seeds 0-63
  smcdiff generate --network edm-cifar10-32x32-uncond-vp.pkl --outdir out --seeds 0-49999 --batch 100
  smcdiff generate --network edm-cifar10-32x32-uncond-vp.pkl --outdir out --seeds 0-49999 --method dg \\
      --classifier 32x32_classifier.pt --discriminator discriminator_60.pt --w1 2.0
  torchrun --standalone --nproc_per_node=2 -m smcdiff.apps.cli generate --network NET.pkl --outdir out --seeds 0-99
"""

#: ``--network`` / ``--discriminator`` words for the shipped digits weights.
SHORTCUTS = {"digits": ("denoiser.pt", "discriminator.pt")}


def add_generate_parser(sub, command) -> None:
    """Add ``smcdiff generate`` to the subparsers ``sub`` (``command`` makes a subcommand parser)."""
    from smcdiff.apps.generate import METHODS
    from smcdiff.apps.pipeline import (
        TEXT_TO_IMAGE_METHODS,
        add_pipeline_options,
        method_spec,
    )

    names = tuple(dict.fromkeys((*METHODS, *registry.METHODS, *TEXT_TO_IMAGE_METHODS)))  # generate's own first

    g = command(
        sub, "generate",
        help="sample images from an EDM network pickle or a smcdiff network with any method (EDM conventions, "
        "torchrun, resumable)",
        description="Sample one PNG per seed from a local network (an EDM pickle, a smcdiff network file, or "
        "'digits'), with the EDM sampler or a discriminator-corrected method. Reads local files only.",
        epilog=_GEN_EPILOG,
        width=34,
    )
    g.add_argument("--network", metavar="FILE",
                   help="local EDM network pickle (edm-*.pkl), a network saved by smcdiff (smcdiff train), or "
                   "'digits' (the shipped 8x8 digits denoiser); required unless --pipeline")
    g.add_argument("--trust-code", action="store_true",
                   help="execute the source code embedded in an EDM pickle (default: a safe loader that runs none)")
    g.add_argument("--outdir", required=True, metavar="DIR", help="where to write the images")
    g.add_argument("--seeds", default="0-63", metavar="LIST", help="seeds, e.g. 0-63 or 1,2,5-10 (default: %(default)s)")
    g.add_argument("--subdirs", action="store_true", help="one subdirectory per 1000 seeds")
    g.add_argument("--batch", type=_positive_int, default=64, metavar="N", help="seeds per batch (default: %(default)s)")
    g.add_argument("--class", dest="class_idx", type=int, default=None, metavar="C",
                   help="class label of a conditional network (default: random per seed)")
    g.add_argument("--method", choices=names, default="edm",
                   help="sampling method (default: %(default)s): " + "; ".join(
                       f"{name}: {method_spec(name).summary}"
                       + (" -- one generator per batch, so images depend on the batch" if
                          method_spec(name).one_generator else "")
                       + ("" if name in METHODS else " (with --pipeline)") for name in names))
    g.add_argument("--steps", type=_positive_int, default=18, metavar="N", help="sampler steps (default: %(default)s)")
    g.add_argument("--sigma_min", type=_real, default=0.002, help="lowest noise level (default: %(default)s)")
    g.add_argument("--sigma_max", type=_real, default=80.0, help="highest noise level (default: %(default)s)")
    g.add_argument("--rho", type=_real, default=7.0, help="schedule exponent (default: %(default)s)")
    g.add_argument("--classifier", metavar="PT", help="ADM noisy classifier state dict (32x32_classifier.pt, 64x64_classifier.pt)")
    g.add_argument("--discriminator", metavar="PT",
                   help="DG discriminator head state dict (discriminator_60.pt, ...; with --classifier), or alone: a "
                   "discriminator saved by smcdiff, or 'digits' (the shipped digits discriminator)")
    _add_method_options(g, names)
    g.add_argument("--device", default="cuda" if _cuda() else "cpu", help="torch device (default: %(default)s)")
    g.add_argument("--manifest", action="store_true", help="also write manifest-rank{r}.txt listing this rank's seeds")
    g.add_argument("--overwrite", action="store_true",
                   help="start over: make every image again, even those already in --outdir, and record the new "
                   "settings (default: resume)")
    add_pipeline_options(g)
    g.set_defaults(func=run_generate)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _real(text: str) -> float:
    """A command-line float that is not NaN (inf is left to the method's own checks)."""
    value = float(text)
    if math.isnan(value):
        raise argparse.ArgumentTypeError(f"expected a number, got {text}")
    return value


def _option_type(p):
    """``p.type`` with argparse's message for a bad value naming what was expected."""
    def parse(text: str):
        try:
            value = p.type(text)
        except (TypeError, ValueError) as err:
            raise argparse.ArgumentTypeError(f"{err}" if p.type not in (int, float) else
                                             f"expected {'an integer' if p.type is int else 'a number'}, got {text!r}")
        if isinstance(value, float) and math.isnan(value):
            raise argparse.ArgumentTypeError(f"expected a number, got {text}")
        return value

    parse.__name__ = p.name
    return parse


def _add_method_options(parser, names) -> None:
    """One option per parameter of the registered methods ``names`` (each once; default: the method's)."""
    from smcdiff.apps.pipeline import method_spec

    seen = {}
    for name in names:
        for p in method_spec(name).params:
            seen.setdefault(p.name, (p, []))[1].append(name)
    for p, users in seen.values():
        who = f" ({', '.join(users)})"
        if p.type is bool:
            parser.add_argument(p.option, dest=p.name, action="store_true", default=None, help=p.help + who)
        else:
            parser.add_argument(p.option, dest=p.name, type=_option_type(p), default=None,
                                help=f"{p.help}{who}; default: the method's own")


def _method_params(args) -> dict:
    from smcdiff.apps.pipeline import method_spec

    values = vars(args)
    return {p.name: values[p.name] for p in method_spec(args.method).params if values.get(p.name) is not None}


def _shortcut(spec: str, which: int):
    from smcdiff.models.pretrained import DIGITS_ASSETS

    return DIGITS_ASSETS / SHORTCUTS[spec][which] if spec in SHORTCUTS else spec


def _small_net(path, what: str):
    """A network saved by smcdiff (small_nets.save, or the conditional digits denoiser)."""
    from smcdiff.models import small_nets
    from smcdiff.models.file_formats import torch_load_file

    blob = torch_load_file(path, f"{what}: an EDM network pickle or a network saved by smcdiff.models.small_nets.save")
    name = blob.get("config", {}).get("class") if isinstance(blob, dict) and isinstance(blob.get("config"), dict) else None
    if name == "ConditionalConvDenoiser":
        from smcdiff.models.conditional_digits import load_conditional_digits

        return load_conditional_digits(path)
    return small_nets.load(path)


def _is_zip(path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"  # torch.save writes a zip archive; EDM pickles are plain pickles


def load_network(spec: str, *, trust_code: bool = False, device="cpu"):
    """``(net, info)`` for ``--network spec``: an EDM pickle, a smcdiff network file or ``"digits"``.

    The net is in eval mode without gradients and has ``img_channels``, ``img_resolution``,
    ``label_dim``, ``sigma_min`` and ``sigma_max``; ``info`` = ``{"file", "class"}``. A smcdiff
    network that is not an image denoiser ``(C, H, W)`` with H = W raises ``ValueError``.
    """
    import os

    from smcdiff.models.pickle_loader import load_edm

    path = _shortcut(spec, 0)
    if str(path) == "":
        raise ValueError("--network: expected a file, got an empty path")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--network {path}: no such file (smcdiff never downloads; pass a local file or "
                                f"one of {sorted(SHORTCUTS)})")
    if not _is_zip(path):
        net = load_edm(path, trust_code=trust_code)
    else:
        net = _small_net(path, "--network")
        shape = tuple(getattr(net, "event_shape", ()))
        kind = type(net).__name__
        if "Denoiser" not in kind or len(shape) != 3 or shape[1] != shape[2]:
            raise ValueError(f"--network {path} holds a {kind} for inputs of shape {shape}; generate needs an image "
                             "denoiser of square (C, H, W) images")
        net.img_channels, net.img_resolution = shape[0], shape[1]
        net.label_dim = int(getattr(net, "label_dim", 0) or 0)
        net.sigma_min, net.sigma_max = 0.0, math.inf  # no range of its own: the schedule's is used
    return net.eval().requires_grad_(False).to(device), {"file": str(path), "class": type(net).__name__}


def load_discriminator(args, net):
    """The ``log_ratio`` of ``--classifier``/``--discriminator`` (None without them)."""
    if not (args.classifier or args.discriminator):
        return None
    if args.discriminator and not args.classifier:  # a smcdiff discriminator (or "digits")
        path = _shortcut(args.discriminator, 1)
        disc = _small_net(path, "--discriminator")
        if "Discriminator" not in type(disc).__name__:
            raise ValueError(f"--discriminator {path} holds a {type(disc).__name__}, not a discriminator")
        return disc.eval().requires_grad_(False).to(args.device)  # ℓ = its logit, for every method
    if not args.discriminator:
        raise ValueError("--classifier needs --discriminator (the DG head that goes with it)")
    from smcdiff.models.discriminator import DGDiscriminator

    clip = 1e-6 if args.method == "pf" else 1e-5  # PF clips d to [1e-6, 1-1e-6], DG to [1e-5, 1-1e-5]
    disc = DGDiscriminator.load(args.classifier, args.discriminator, img_resolution=net.img_resolution,
                                clip=clip).to(args.device)
    return disc.logit if args.method == "diffrs" else disc  # DiffRS tests the raw logit (no sigmoid, no clipping)


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here; use --device cpu")


def _run_pipeline(args) -> int:
    """``generate --pipeline DIR``: text-to-image from a local diffusers folder (:mod:`smcdiff.apps.pipeline`)."""
    from smcdiff.apps.pipeline import generate_from_pipeline, pipeline_kwargs

    if args.network is not None:
        raise ValueError("--network and --pipeline exclude each other (the pipeline folder holds the network)")
    written = generate_from_pipeline(**pipeline_kwargs(args, _method_params(args)))
    print(f"done: {len(written)} images in {args.outdir}")
    return 0


def run_generate(args) -> int:
    """Run ``smcdiff generate`` (parsed ``args``)."""
    import torch

    from smcdiff.apps.generate import dist_info, generate, parse_seeds

    rank, world = dist_info()
    seeds = parse_seeds(args.seeds)
    _check_device(args.device)
    check_output_folder(args.outdir, "--outdir")  # before loading anything
    if args.pipeline is not None:
        return _run_pipeline(args)
    if args.network is None:
        raise ValueError("generate needs --network (a network file or 'digits'), or --pipeline DIR for text-to-image")
    if args.method not in registry.METHODS or registry.method(args.method).needs not in (None, "log_ratio"):
        raise ValueError(f"method {args.method!r} needs --pipeline (a text-to-image pipeline folder)")
    needs = registry.method(args.method).needs == "log_ratio"
    if needs and not args.discriminator:
        raise ValueError(f"method {args.method!r} needs a discriminator: --discriminator (with --classifier for "
                         "DG's published files, alone for a smcdiff one such as 'digits')")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
    net, _ = load_network(args.network, trust_code=args.trust_code, device=args.device)
    log_ratio = load_discriminator(args, net)
    if rank == 0:
        print(f"smcdiff generate: {len(seeds)} seeds, method {args.method}, {world} process(es), device {args.device}")
    paths = generate(net, seeds, args.outdir, method=args.method, batch=args.batch, subdirs=args.subdirs,
                     steps=args.steps, sigma_min=args.sigma_min, sigma_max=args.sigma_max, rho=args.rho,
                     class_idx=args.class_idx, log_ratio=log_ratio, method_params=_method_params(args),
                     rank=rank, world=world, device=args.device, progress=rank == 0, resume=not args.overwrite,
                     log=print if rank == 0 else None)
    if args.manifest:
        from pathlib import Path

        names = "\n".join(p.stem for p in paths)
        (Path(args.outdir) / f"manifest-rank{rank}.txt").write_text(names + ("\n" if names else ""))
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    if rank == 0:
        print(f"done: {paths.written} images written, {paths.skipped} already there (skipped); images in {args.outdir}")
    return 0
