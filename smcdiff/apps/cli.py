"""The ``smcdiff`` command line (a thin layer over the library; ``smcdiff COMMAND --help``)."""

from __future__ import annotations

import argparse
import sys

from smcdiff.apps.options import (
    Parser,
    UsageError,
    check_output_file,
    check_output_folder,
    figure_suffixes,
)
from smcdiff.apps.options import command as _command
from smcdiff.apps.options import non_negative as _non_negative
from smcdiff.apps.options import positive_int as _positive_int
from smcdiff.apps.options import unit_interval as _unit_interval

__all__ = ["build_parser", "main"]

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


def build_parser() -> argparse.ArgumentParser:
    from smcdiff.resampling import SCHEMES

    parser = Parser(
        prog="smcdiff", description="Diffusion sampling as sequential Monte Carlo.",
        epilog="Add --debug anywhere to see the full traceback of an error.")
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
    from smcdiff.apps.generate_cli import add_generate_parser

    add_generate_parser(sub, _command)
    _add_train(sub)
    _add_table(sub)
    from smcdiff.apps.density_cli import add_classify_parser, add_likelihood_parser

    add_likelihood_parser(sub)
    add_classify_parser(sub)
    from smcdiff.apps.steer import add_steer_parser

    add_steer_parser(sub, _command)
    return parser


def _add_train(sub) -> None:
    from smcdiff.apps.train import DATASETS

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
    from smcdiff.apps.train import (
        train_classifier_on,
        train_denoiser_on,
        train_discriminator_on,
    )

    progress = not args.no_progress
    if args.what == "digits-models":
        ignored = [flag for flag, value, default in (("--data", args.data, None), ("--denoiser", args.denoiser, None),
                                                     ("--steps", args.steps, 2000), ("--batch", args.batch, 256),
                                                     ("--lr", args.lr, None), ("--num-fake", args.num_fake, 5000))
                   if value != default]
        if ignored:
            raise UsageError(f"error: digits-models takes its settings from --recipe, not {', '.join(ignored)} "
                             f"(e.g. --recipe '{{\"denoiser\": {{\"steps\": 6000}}}}')")
        import json

        from smcdiff.apps.train import train_digits_models

        try:
            recipe = json.loads(args.recipe) if args.recipe else None
        except json.JSONDecodeError as err:
            raise UsageError(f"error: --recipe is not JSON: {err}") from None
        if args.seed != 0:
            recipe = {**(recipe or {}), "seed": args.seed}
        check_output_folder(args.out, "--out")  # before any training
        try:
            models = train_digits_models(args.out, recipe=recipe, progress=progress)
        except ValueError as err:
            raise UsageError(f"error: {err}") from None
        print(f"saved denoiser.pt, discriminator.pt, classifier.pt and manifest.json to {args.out}; "
              f"classifier test accuracy {models.manifest['classifier_test_accuracy']:.3f}")
        return 0
    if args.data is None:
        raise UsageError(f"error: training a {args.what} needs --data")
    check_output_file(args.out, "--out")  # before any training
    if args.what == "denoiser":
        train_denoiser_on(args.data, args.out, steps=args.steps, batch_size=args.batch, lr=args.lr or 1e-3,
                          seed=args.seed, progress=progress)
    elif args.what == "classifier":
        if args.data != "digits":
            raise UsageError("error: the classifier is trained on --data digits (the other sets have no labels)")
        train_classifier_on(args.out, steps=args.steps, batch_size=args.batch, lr=args.lr or 1e-3, seed=args.seed,
                            progress=progress)
    else:
        if not args.denoiser:
            raise UsageError("error: training a discriminator needs --denoiser (a trained denoiser file)")
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
        raise UsageError(f"error: {err}") from None


def _check_table_out(folder, check_results_folder) -> None:
    """``--out`` of the table: a writable folder whose results.md (if any) has the generated block."""
    try:
        check_output_folder(folder, "--out")
        check_results_folder(folder)
    except ValueError as err:
        raise UsageError(f"error: {err}") from None


def _weights_label(folder) -> dict:
    return {} if folder is None else {"weights": f"the weights in `{folder}`"}


def _run_table(args) -> int:
    import dataclasses
    import time

    import torch

    from smcdiff.apps.table import (
        TableConfig,
        check_results_folder,
        format_markdown,
        read_results,
        run_table,
        summarize,
        write_results,
    )

    _check_table_out(args.out, check_results_folder)
    if args.from_json:
        try:
            cfg, runs, record = read_results(args.from_json)
            saved = {k: record[k] for k in ("command", "seconds", "threads")}
        except FileNotFoundError:
            raise UsageError(f"error: --from-json {args.from_json}: no such file") from None
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise UsageError(f"error: --from-json {args.from_json}: not a results.json written by smcdiff table "
                             f"({type(err).__name__}: {err})") from None
        manifest = record.get("manifest") or _load_models(args.weights).manifest
        label = {"weights": record["weights"]} if "weights" in record else _weights_label(args.weights)
        path = write_results(cfg, runs, args.out, manifest=manifest, **saved, **label)
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
            raise UsageError(f"error: --seeds takes comma-separated integers, got {args.seeds!r}") from None
    if args.steps is not None:
        changes["steps"] = args.steps
    try:
        cfg = dataclasses.replace(cfg, **changes)
    except ValueError as err:
        raise UsageError(f"error: {err}") from None
    models = _load_models(args.weights)
    start = time.perf_counter()
    runs = run_table(cfg, models=models, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    command = "smcdiff table" + "".join(f" {a}" for a in (args.argv or []))
    path = write_results(cfg, runs, args.out, manifest=models.manifest, command=command, seconds=seconds,
                         **_weights_label(args.weights))
    print(format_markdown(summarize(runs)))
    print(f"\n{len(runs)} runs in {seconds / 60:.1f} min; wrote {path} and its .png/.json")
    return 0


def _run_demo(args) -> int:
    from smcdiff.apps.demo import format_table, plot_demo, run_demo

    if not args.no_plot:
        check_output_file(args.out, "--out", figure_suffixes())  # before any sampling
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
    from smcdiff.apps.compare import format_rows, plot_rows, run_compare

    if not args.no_plot:
        check_output_file(args.out, "--out", figure_suffixes())  # before any sampling
    rows = run_compare(num_samples=args.samples, steps=args.steps, num_particles=args.particles, seed=args.seed,
                       progress=not args.no_progress)
    print(f"smcdiff compare: {args.samples} outputs per method, {args.steps} steps, K={args.particles}, seed {args.seed}")
    print("data weights 0.6/0.3/0.1; model weights 0.2/0.3/0.5 with shifted means; exact log-ratio as discriminator\n")
    print(format_rows(rows))
    if not args.no_plot:
        plot_rows(rows, args.out)
        print(f"\nfigure written to {args.out}")
    return 0


def _message(err: BaseException) -> str:
    """One line for ``err``: ``OSError``s as ``path: reason``, newlines folded."""
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split("\n"))


def main(argv=None) -> int:
    """Run the ``smcdiff`` command; a user error prints one ``error: ...`` line on stderr and ends
    with exit status 2 (returns 2, or raises :class:`~smcdiff.apps.options.UsageError`, a
    ``SystemExit(2)``, for errors in the options themselves); ``--debug`` shows the traceback."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    args = parser.parse_args(argv)
    args.argv = argv[1:]
    try:
        return args.func(args)
    except UsageError as err:
        print(err, file=sys.stderr)
        raise
    except SystemExit as err:
        if not isinstance(err.code, str):
            raise
        print(err.code if err.code.startswith("error:") else f"error: {err.code}", file=sys.stderr)
        raise UsageError(err.code) from None
    except (ValueError, TypeError, OSError, NotImplementedError, RuntimeError) as err:
        if debug:
            raise
        print(f"error: {_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
