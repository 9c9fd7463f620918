"""The ``smcdiff`` command line (a thin layer over the library; ``smcdiff COMMAND --help``)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "build_parser"]

_DEMO_EPILOG = """\
what it does:
  A 2-D data mixture (weights 0.6/0.3/0.1) and an imperfect model mixture (0.2/0.3/0.5), both
  with exact denoisers. Rows: plain EDM Heun sampling of the model; SMC with the exact density
  ratio log p_data/p_model as potential (recovers the data weights); the same weights without
  resampling (importance sampling); SMC for the data mixture tilted by y = x1 + x2 + e
  (exact posterior and evidence known). Errors are against the exact answers.

examples:
  smcdiff demo
  smcdiff demo --particles 2048 --groups 4 --steps 64 --out demo.png
  smcdiff demo --scheme multinomial --ess-threshold 1.0 --no-plot
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _command(sub, name: str, *, help: str, description: str, epilog: str, width: int = 32):
    """A subcommand whose description and epilog keep their line breaks."""
    return sub.add_parser(name, help=help, description=description, epilog=epilog,
                          formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, max_help_position=width))


def build_parser() -> argparse.ArgumentParser:
    from smcdiff.resampling import SCHEMES

    parser = argparse.ArgumentParser(prog="smcdiff", description="Diffusion sampling as sequential Monte Carlo.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    demo = _command(
        sub, "demo",
        help="SMC corrects a diffusion sampler on an exact 2-D mixture (no downloads, < 1 min on CPU)",
        description="Run SMC on a 2-D Gaussian-mixture problem whose answers are known exactly, "
        "print a table of error against the exact answer, and write a figure.",
        epilog=_DEMO_EPILOG,
    )
    demo.add_argument("--groups", type=_positive_int, default=8, metavar="G",
                      help="independent SMC runs, each with its own particles (default: %(default)s)")
    demo.add_argument("--particles", type=_positive_int, default=512, metavar="K",
                      help="particles per group (default: %(default)s)")
    demo.add_argument("--steps", type=_positive_int, default=32, metavar="N",
                      help="sampler steps on the EDM schedule, NFE = 2N-1 (default: %(default)s)")
    demo.add_argument("--churn", type=_non_negative, default=20.0, metavar="S",
                      help="EDM S_churn of the stochastic Heun kernel used by the SMC rows (default: %(default)s)")
    demo.add_argument("--scheme", choices=sorted(SCHEMES), default="systematic",
                      help="resampling scheme (default: %(default)s)")
    demo.add_argument("--ess-threshold", type=_unit_interval, default=0.5, metavar="F",
                      help="resample a group when ESS < F*K; 0 never, 1 always (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    demo.add_argument("--out", default="smcdiff_demo.png", metavar="PNG",
                      help="where to write the figure (default: %(default)s)")
    demo.add_argument("--no-plot", action="store_true", help="skip the figure")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    demo.set_defaults(func=_run_demo)

    cmp_ = _command(
        sub, "compare",
        help="every method on an exact 2-D mixture at matched NFE: error, NFE, discriminator calls, time",
        description="Run the base EDM sampler, eps-scaling, DG (EDM-G++), SEDM-G++, DiffRS, the particle filter "
        "and discriminator-select on a 2-D mixture problem with an exact discriminator; print a table of "
        "error against the exact data distribution and write a figure of error against NFE.",
        epilog="examples:\n  smcdiff compare\n  smcdiff compare --samples 5000 --particles 8 --out compare.png\n",
    )
    cmp_.add_argument("--samples", type=_positive_int, default=2000, metavar="N",
                      help="outputs per method (default: %(default)s)")
    cmp_.add_argument("--steps", type=_positive_int, default=18, metavar="S",
                      help="EDM steps of every method, NFE 2S-1 per trajectory (default: %(default)s)")
    cmp_.add_argument("--particles", type=_positive_int, default=4, metavar="K",
                      help="particles per output of the particle filter and discriminator-select (default: %(default)s)")
    cmp_.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    cmp_.add_argument("--out", default="smcdiff_compare.png", metavar="PNG",
                      help="where to write the figure (default: %(default)s)")
    cmp_.add_argument("--no-plot", action="store_true", help="skip the figure")
    cmp_.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    cmp_.set_defaults(func=_run_compare)
    _add_generate(sub)
    _add_train(sub)
    _add_table(sub)
    return parser


def _add_train(sub) -> None:
    from smcdiff.train import DATASETS

    t = _command(
        sub, "train",
        help="train a small denoiser (EDM loss), a DG-style discriminator, a digits classifier, or the digits models",
        description="Train on data that ships with the packages (2-D sets, scikit-learn's 8x8 digits). "
        "'denoiser' uses the EDM loss and preconditioning; 'discriminator' follows DG: real data against "
        "samples of a trained denoiser, VP time importance-sampled, binary cross-entropy; 'classifier' trains "
        "the digits classifier of the FD-digits metric; 'digits-models' runs the whole recipe of the shipped "
        "weights (denoiser, classifier, discriminator, manifest.json) into --out (about 5 min on 2 CPU cores).",
        epilog="examples:\n  smcdiff train denoiser --data moons --out moons_denoiser.pt\n"
        "  smcdiff train discriminator --data moons --denoiser moons_denoiser.pt --out moons_disc.pt\n"
        "  smcdiff train digits-models --out my_digits     # remake smcdiff/assets/digits\n"
        "  smcdiff table --weights my_digits --out my_results\n",
    )
    t.add_argument("what", choices=("denoiser", "discriminator", "classifier", "digits-models"),
                   help="what to train ('classifier' uses the options below, not the shipped recipe: "
                   "digits-models makes the shipped classifier)")
    t.add_argument("--data", choices=DATASETS, help="training data (denoiser, discriminator; classifier: digits only)")
    t.add_argument("--out", required=True, metavar="PATH",
                   help="file for the state dict + config (a folder for digits-models)")
    t.add_argument("--denoiser", metavar="PT", help="trained denoiser whose samples are the fakes (discriminator)")
    t.add_argument("--steps", type=_positive_int, default=2000, help="optimiser steps (default: %(default)s)")
    t.add_argument("--batch", type=_positive_int, default=256, help="batch size (default: %(default)s)")
    t.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: 1e-3 denoiser and classifier, 3e-4 discriminator)")
    t.add_argument("--num-fake", type=_positive_int, default=5000, help="generated samples (discriminator; default: %(default)s)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    t.add_argument("--recipe", default=None, metavar="JSON",
                   help="digits-models: overrides of the recipe, e.g. '{\"denoiser\": {\"steps\": 6000}}'")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from smcdiff.train import train_classifier_on, train_denoiser_on, train_discriminator_on

    progress = not args.no_progress
    if args.what == "digits-models":
        ignored = [flag for flag, value, default in (("--data", args.data, None), ("--denoiser", args.denoiser, None),
                                                     ("--steps", args.steps, 2000), ("--batch", args.batch, 256),
                                                     ("--lr", args.lr, None), ("--num-fake", args.num_fake, 5000))
                   if value != default]
        if ignored:
            raise SystemExit(f"error: digits-models takes its settings from --recipe, not {', '.join(ignored)} "
                             f"(e.g. --recipe '{{\"denoiser\": {{\"steps\": 6000}}}}')")
        from smcdiff.models.pretrained import train_digits_models

        import json

        try:
            recipe = json.loads(args.recipe) if args.recipe else None
        except json.JSONDecodeError as err:
            raise SystemExit(f"error: --recipe is not JSON: {err}") from None
        if args.seed != 0:
            recipe = {**(recipe or {}), "seed": args.seed}
        try:
            models = train_digits_models(args.out, recipe=recipe, progress=progress)
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
        print(f"saved denoiser.pt, discriminator.pt, classifier.pt and manifest.json to {args.out}; "
              f"classifier test accuracy {models.manifest['classifier_test_accuracy']:.3f}")
        return 0
    if args.data is None:
        raise SystemExit(f"error: training a {args.what} needs --data")
    if args.what == "denoiser":
        train_denoiser_on(args.data, args.out, steps=args.steps, batch_size=args.batch, lr=args.lr or 1e-3,
                          seed=args.seed, progress=progress)
    elif args.what == "classifier":
        if args.data != "digits":
            raise SystemExit("error: the classifier is trained on --data digits (the other sets have no labels)")
        train_classifier_on(args.out, steps=args.steps, batch_size=args.batch, lr=args.lr or 1e-3, seed=args.seed,
                            progress=progress)
    else:
        if not args.denoiser:
            raise SystemExit("error: training a discriminator needs --denoiser (a trained denoiser file)")
        train_discriminator_on(args.data, args.denoiser, args.out, steps=args.steps, batch_size=args.batch,
                               lr=args.lr or 3e-4, seed=args.seed, num_fake=args.num_fake, progress=progress)
    print(f"saved {args.what} to {args.out}")
    return 0


_TABLE_EPILOG = """\
what it does:
  Loads the shipped digits denoiser, discriminator and classifier (or --weights DIR from
  'smcdiff train digits-models'), runs the base EDM Heun sampler at several step counts and
  eps-scaling, DG (EDM-G++), SEDM-G++, DiffRS, the particle filter (K = 2, 4, 8) and
  discriminator-select at one step count, over several seeds; scores every run by FD-digits,
  precision, recall (classifier features, against the held-out test split) and class balance;
  writes OUT/results.md (kept text outside its generated block), results.png and results.json.

examples:
  smcdiff table --quick --out /tmp/table        # about a minute on 2 CPU cores
  smcdiff table                                 # the full table of docs/results.md (about 20 min)
  smcdiff table --seeds 0,1,2,3,4 --samples 500 --out my_results
"""


def _add_table(sub) -> None:
    t = _command(
        sub, "table",
        help="the digits table: every method on a trained model and discriminator at matched NFE, over seeds",
        description="Compare every method on the shipped 8x8-digits model and discriminator: FD-digits, "
        "precision, recall, NFE per output, discriminator calls and wall time, mean +- std over seeds.",
        epilog=_TABLE_EPILOG,
    )
    t.add_argument("--quick", action="store_true", help="200 samples, 2 seeds, 6 steps, short base curve")
    t.add_argument("--samples", type=_positive_int, default=None, metavar="N", help="outputs per run (default 1000)")
    t.add_argument("--seeds", default=None, metavar="LIST", help="comma-separated seeds (default 0,1,2)")
    t.add_argument("--steps", type=_positive_int, default=None, metavar="S",
                   help="sampler steps of every non-base method (default 9)")
    t.add_argument("--weights", default=None, metavar="DIR", help="folder of digits models (default: the shipped ones)")
    t.add_argument("--out", default="docs", metavar="DIR", help="folder for results.md/png/json (default: %(default)s)")
    t.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--from-json", default=None, metavar="JSON",
                   help="re-render results.md/png in --out from a saved results.json (runs nothing)")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.set_defaults(func=_run_table)


def _load_models(folder):
    from smcdiff.models.pretrained import load_digits_models

    try:
        return load_digits_models(folder)
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}") from None


def _weights_label(folder) -> dict:
    return {} if folder is None else {"weights": f"the weights in `{folder}`"}


def _run_table(args) -> int:
    import dataclasses
    import time

    import torch

    from smcdiff.table import (TableConfig, check_results_folder, format_markdown, read_results, run_table, summarize,
                               write_results)

    if args.from_json:
        try:
            cfg, runs, record = read_results(args.from_json)
        except FileNotFoundError as err:
            raise SystemExit(f"error: {err}") from None
        manifest = record.get("manifest") or _load_models(args.weights).manifest
        label = {"weights": record["weights"]} if "weights" in record else _weights_label(args.weights)
        path = write_results(cfg, runs, args.out, manifest=manifest, command=record["command"],
                             seconds=record["seconds"], threads=record["threads"], **label)
        print(f"re-rendered {path} and its .png/.json from {args.from_json}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TableConfig.quick() if args.quick else TableConfig()
    changes = {}
    if args.samples is not None:
        changes["num_samples"] = args.samples
    if args.seeds is not None:
        try:
            changes["seeds"] = tuple(int(v) for v in args.seeds.split(","))
        except ValueError:
            raise SystemExit(f"error: --seeds takes comma-separated integers, got {args.seeds!r}") from None
    if args.steps is not None:
        changes["steps"] = args.steps
    try:
        cfg = dataclasses.replace(cfg, **changes)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    models = _load_models(args.weights)
    try:
        check_results_folder(args.out)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    start = time.perf_counter()
    runs = run_table(cfg, models=models, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    command = "smcdiff table" + "".join(f" {a}" for a in (args.argv or []))
    path = write_results(cfg, runs, args.out, manifest=models.manifest, command=command, seconds=seconds,
                         **_weights_label(args.weights))
    print(format_markdown(summarize(runs)))
    print(f"\n{len(runs)} runs in {seconds / 60:.1f} min; wrote {path} and its .png/.json")
    return 0


_GEN_EPILOG = """\
conventions (EDM's): one PNG per seed ({seed:06d}.png, in {seed//1000*1000:06d}/ with --subdirs); each
seed has its own generator (latents, label, noise); for SMC methods one seed is one SMC run.
Under torchrun the batches of seeds are dealt round-robin over ranks; only rank 0 prints.

examples:
  smcdiff generate --network edm-cifar10-32x32-uncond-vp.pkl --outdir out --seeds 0-49999 --batch 100
  smcdiff generate --network edm-cifar10-32x32-uncond-vp.pkl --outdir out --seeds 0-49999 --method dg \\
      --classifier 32x32_classifier.pt --discriminator discriminator_60.pt --w1 2.0
  torchrun --standalone --nproc_per_node=2 -m smcdiff.cli generate --network NET.pkl --outdir out --seeds 0-99
"""


def _add_generate(sub) -> None:
    from smcdiff.generate import METHODS

    g = _command(
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
    g.add_argument("--method", choices=METHODS, default="edm", help="sampling method (default: %(default)s)")
    g.add_argument("--steps", type=_positive_int, default=18, metavar="N", help="sampler steps (default: %(default)s)")
    g.add_argument("--sigma_min", type=float, default=0.002, help="lowest noise level (default: %(default)s)")
    g.add_argument("--sigma_max", type=float, default=80.0, help="highest noise level (default: %(default)s)")
    g.add_argument("--rho", type=float, default=7.0, help="schedule exponent (default: %(default)s)")
    g.add_argument("--S_churn", type=_non_negative, default=0.0, help="stochasticity strength (default: %(default)s)")
    g.add_argument("--S_min", type=_non_negative, default=0.0, help="churn window low end (default: %(default)s)")
    g.add_argument("--S_max", type=float, default=float("inf"), help="churn window high end (default: %(default)s)")
    g.add_argument("--S_noise", type=float, default=1.0, help="churn noise inflation (default: %(default)s)")
    g.add_argument("--classifier", metavar="PT", help="ADM noisy classifier state dict (32x32_classifier.pt, 64x64_classifier.pt)")
    g.add_argument("--discriminator", metavar="PT", help="DG discriminator head state dict (discriminator_60.pt, ...)")
    g.add_argument("--w1", type=float, default=None, help="DG weight on the Euler evaluation (dg: 2.0, sedm: 1.67)")
    g.add_argument("--w2", type=float, default=None, help="DG weight on the Heun correction (dg: 0.0)")
    g.add_argument("--boosting", action="store_true", help="DG boosting (dg/sedm)")
    g.add_argument("--eps-scaler", type=float, default=None, help="epsilon scaling b (sedm: 1.004)")
    g.add_argument("--rej-percentile", type=float, default=0.75, help="DiffRS quantile of M (default: %(default)s)")
    g.add_argument("--max-iter", type=int, default=None, help="DiffRS NFE cap per sample (README: 105)")
    g.add_argument("--particles", type=_positive_int, default=4, metavar="K", help="PF particles per seed (default: %(default)s)")
    g.add_argument("--resample-at", default=None, metavar="LIST", help="PF resampling steps, e.g. 15,19,23,27")
    g.add_argument("--device", default="cuda" if _cuda() else "cpu", help="torch device (default: %(default)s)")
    g.add_argument("--manifest", action="store_true", help="also write manifest-rank{r}.txt listing this rank's seeds")
    g.set_defaults(func=_run_generate)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _method_params(args) -> dict:
    params = {}
    churn = dict(S_churn=args.S_churn, S_min=args.S_min, S_max=args.S_max, S_noise=args.S_noise)
    if args.method in ("edm", "dg", "sedm", "diffrs", "pf"):
        params.update(churn)
    if args.method in ("dg", "sedm"):
        for name in ("w1", "w2"):
            if getattr(args, name) is not None:
                params[name] = getattr(args, name)
        if args.eps_scaler is not None:
            params["eps_scaler"] = args.eps_scaler
        params["boosting"] = args.boosting
    if args.method == "diffrs":
        params.update(rej_percentile=args.rej_percentile, max_iter=args.max_iter)
    if args.method == "pf":
        params["num_particles"] = args.particles
        if args.resample_at:
            params["resample_at"] = [int(v) for v in args.resample_at.split(",")]
    return params


def _run_generate(args) -> int:
    import torch

    from smcdiff.generate import dist_info, generate, parse_seeds
    from smcdiff.models.pickle_loader import load_edm

    rank, world = dist_info()
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
    seeds = parse_seeds(args.seeds)
    net = load_edm(args.network, trust_code=args.trust_code).to(args.device)
    log_ratio = None
    if args.method in ("dg", "sedm", "diffrs", "pf") and (args.classifier or args.discriminator):
        if not (args.classifier and args.discriminator):
            raise SystemExit("error: --classifier and --discriminator go together")
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


def _run_demo(args) -> int:
    from smcdiff.demo import format_table, plot_demo, run_demo

    rows, samples = run_demo(num_groups=args.groups, num_particles=args.particles, num_steps=args.steps,
                             S_churn=args.churn, ess_threshold=args.ess_threshold, scheme=args.scheme,
                             seed=args.seed, progress=not args.no_progress)
    print(f"smcdiff demo: G={args.groups} groups x K={args.particles} particles, {args.steps} steps, "
          f"scheme={args.scheme}, ESS threshold {args.ess_threshold}, seed {args.seed}")
    print("data weights 0.6/0.3/0.1, model weights 0.2/0.3/0.5; errors against the exact target\n")
    print(format_table(rows))
    if not args.no_plot:
        plot_demo(samples, args.out, seed=args.seed)
        print(f"\nfigure written to {args.out}")
    return 0


def _run_compare(args) -> int:
    from smcdiff.compare import format_rows, plot_rows, run_compare

    rows = run_compare(num_samples=args.samples, steps=args.steps, num_particles=args.particles, seed=args.seed,
                       progress=not args.no_progress)
    print(f"smcdiff compare: {args.samples} outputs per method, {args.steps} steps, K={args.particles}, seed {args.seed}")
    print("data weights 0.6/0.3/0.1; model weights 0.2/0.3/0.5 with shifted means; exact log-ratio as discriminator\n")
    print(format_rows(rows))
    if not args.no_plot:
        plot_rows(rows, args.out)
        print(f"\nfigure written to {args.out}")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv[1:]
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
