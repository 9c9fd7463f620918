"""``smcdiff generate``: its options come from the method registry (:mod:`smcdiff.methods.registry`)."""

from __future__ import annotations

from smcdiff.apps.options import positive_int as _positive_int
from smcdiff.methods import registry

__all__ = ["add_generate_parser", "run_generate"]

_GEN_EPILOG = """\
conventions (EDM's): one PNG per seed ({seed:06d}.png, in {seed//1000*1000:06d}/ with --subdirs); each
seed has its own generator (latents, label, noise); for SMC methods one seed is one SMC run.
Under torchrun the batches of seeds are dealt round-robin over ranks; only rank 0 prints.

examples:
  smcdiff generate --network edm-cifar10-32x32-uncond-vp.pkl --outdir out --seeds 0-49999 --batch 100
  smcdiff generate --network edm-cifar10-32x32-uncond-vp.pkl --outdir out --seeds 0-49999 --method dg \\
      --classifier 32x32_classifier.pt --discriminator discriminator_60.pt --w1 2.0
  torchrun --standalone --nproc_per_node=2 -m smcdiff.apps.cli generate --network NET.pkl --outdir out --seeds 0-99
"""


def add_generate_parser(sub, command) -> None:
    """Add ``smcdiff generate`` to the subparsers ``sub`` (``command`` makes a subcommand parser)."""
    from smcdiff.apps.generate import METHODS

    g = command(
        sub, "generate",
        help="sample images from an EDM network pickle with any method (EDM conventions, torchrun)",
        description="Sample one PNG per seed from a local EDM network pickle, with the EDM sampler or a "
        "discriminator-corrected method. Reads local files only.",
        epilog=_GEN_EPILOG,
        width=34,
    )
    g.add_argument("--network", required=True, metavar="PKL", help="local EDM network pickle (edm-*.pkl)")
    g.add_argument("--trust-code", action="store_true",
                   help="execute the source code embedded in the pickle (default: a safe loader that runs none)")
    g.add_argument("--outdir", required=True, metavar="DIR", help="where to write the images")
    g.add_argument("--seeds", default="0-63", metavar="LIST", help="seeds, e.g. 0-63 or 1,2,5-10 (default: %(default)s)")
    g.add_argument("--subdirs", action="store_true", help="one subdirectory per 1000 seeds")
    g.add_argument("--batch", type=_positive_int, default=64, metavar="N", help="seeds per batch (default: %(default)s)")
    g.add_argument("--class", dest="class_idx", type=int, default=None, metavar="C",
                   help="class label (default: random per seed)")
    g.add_argument("--method", choices=METHODS, default="edm",
                   help="sampling method (default: %(default)s): " + "; ".join(
                       f"{name}: {registry.method(name).summary}" for name in METHODS))
    g.add_argument("--steps", type=_positive_int, default=18, metavar="N", help="sampler steps (default: %(default)s)")
    g.add_argument("--sigma_min", type=float, default=0.002, help="lowest noise level (default: %(default)s)")
    g.add_argument("--sigma_max", type=float, default=80.0, help="highest noise level (default: %(default)s)")
    g.add_argument("--rho", type=float, default=7.0, help="schedule exponent (default: %(default)s)")
    g.add_argument("--classifier", metavar="PT", help="ADM noisy classifier state dict (32x32_classifier.pt, 64x64_classifier.pt)")
    g.add_argument("--discriminator", metavar="PT", help="DG discriminator head state dict (discriminator_60.pt, ...)")
    _add_method_options(g, METHODS)
    g.add_argument("--device", default="cuda" if _cuda() else "cpu", help="torch device (default: %(default)s)")
    g.add_argument("--manifest", action="store_true", help="also write manifest-rank{r}.txt listing this rank's seeds")
    g.set_defaults(func=run_generate)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _add_method_options(parser, names) -> None:
    """One option per parameter of the registered methods ``names`` (each once; default: the method's)."""
    seen = {}
    for name in names:
        for p in registry.method(name).params:
            seen.setdefault(p.name, (p, []))[1].append(name)
    for p, users in seen.values():
        who = f" ({', '.join(users)})"
        if p.type is bool:
            parser.add_argument(p.option, dest=p.name, action="store_true", default=None, help=p.help + who)
        else:
            parser.add_argument(p.option, dest=p.name, type=p.type, default=None,
                                help=f"{p.help}{who}; default: the method's own")


def _method_params(args) -> dict:
    return registry.method_params(args.method, vars(args))


def run_generate(args) -> int:
    """Run ``smcdiff generate`` (parsed ``args``)."""
    import torch

    from smcdiff.apps.generate import dist_info, generate, parse_seeds
    from smcdiff.models.pickle_loader import load_edm

    rank, world = dist_info()
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
    seeds = parse_seeds(args.seeds)
    net = load_edm(args.network, trust_code=args.trust_code).to(args.device)
    log_ratio = None
    if registry.method(args.method).needs == "log_ratio" or args.method == "sedm":
        if not (args.classifier or args.discriminator) and args.method != "sedm":
            raise ValueError(f"method {args.method!r} needs a discriminator: pass --classifier and --discriminator")
    if args.classifier or args.discriminator:
        if not (args.classifier and args.discriminator):
            raise ValueError("--classifier and --discriminator go together")
        from smcdiff.models.discriminator import DGDiscriminator

        clip = 1e-6 if args.method == "pf" else 1e-5  # PF clips d to [1e-6, 1-1e-6], DG to [1e-5, 1-1e-5]
        log_ratio = DGDiscriminator.load(args.classifier, args.discriminator, img_resolution=net.img_resolution,
                                         clip=clip).to(args.device)
        if args.method == "diffrs":
            log_ratio = log_ratio.logit  # DiffRS tests the raw logit (no sigmoid, no clipping)
    if rank == 0:
        print(f"smcdiff generate: {len(seeds)} seeds, method {args.method}, {world} process(es), device {args.device}")
    paths = generate(net, seeds, args.outdir, method=args.method, batch=args.batch, subdirs=args.subdirs,
                     steps=args.steps, sigma_min=args.sigma_min, sigma_max=args.sigma_max, rho=args.rho,
                     class_idx=args.class_idx, log_ratio=log_ratio, method_params=_method_params(args),
                     rank=rank, world=world, device=args.device, progress=rank == 0)
    if args.manifest:
        from pathlib import Path

        names = "\n".join(p.stem for p in paths)
        (Path(args.outdir) / f"manifest-rank{rank}.txt").write_text(names + ("\n" if names else ""))
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    if rank == 0:
        print(f"done: images in {args.outdir}")
    return 0


