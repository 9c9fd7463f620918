"""``smcdiff likelihood`` and ``smcdiff classify``: density estimates and the Diffusion Classifier
from the command line (thin wrappers over :mod:`smcdiff.likelihood` and
:mod:`smcdiff.methods.zero_shot_classifier`).

The main ``smcdiff`` parser wires them in with :func:`add_likelihood_parser` /
:func:`add_classify_parser` (each sets ``func`` to :func:`run_likelihood` / :func:`run_classify`,
which return an exit code). User errors raise ``ValueError`` with a message saying what was
expected (the CLI prints it as one ``error:`` line and exits 2).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from smcdiff.apps.options import positive_int

UsageError = ValueError  # user errors: the CLI prints them as one "error:" line, exit 2

__all__ = ["add_classify_parser", "add_likelihood_parser", "run_classify", "run_likelihood"]

MODELS = ("digits", "digits-conditional", "mixture-2d", "mixture-2d-model")
DATA = ("digits-test", "digits-train", "mixture-2d")

_LIKELIHOOD_EPILOG = """\
what it prints:
  The mean over the data of log p_{sigma_min}(x) (the data smoothed to sigma_min, prior N(0, sigma_max^2 I)
  included) in nats and in bits per dimension, each with its standard error over the data points (it
  includes the Hutchinson and dequantisation noise). Images are uniformly dequantised over their grid of
  --levels values in [-1, 1] (digits: 17, uint8 files: 256); bits/dim then bounds the discrete data's.
  For mixture data under a mixture model the exact value is printed too. Quote sigma_min with every number,
  and keep it at or above the data's own noise: the shipped digits networks were trained on the 17 grid
  values, so use --sigma-min 0.05 (above the dequantisation noise 0.036) for meaningful digits numbers.

examples:
  smcdiff likelihood --sigma-min 0.05                        # shipped digits denoiser, 64 test digits
  smcdiff likelihood --num 359 --probes 4 --batch 64         # all held-out digits, 4 Hutchinson probes
  smcdiff likelihood --estimator elbo --draws 128            # the ELBO instead of the ODE
  smcdiff likelihood --model digits-conditional              # log p(x | its label)
  smcdiff likelihood --model mixture-2d --data mixture-2d --divergence exact --rtol 1e-7
  smcdiff likelihood --model net.pkl --data images.npz       # an EDM pickle on uint8 images
"""

_CLASSIFY_EPILOG = """\
what it does:
  Classifies the held-out digits (the split the shipped discriminative classifier's accuracy was
  measured on) with the shipped class-conditional digits denoiser: every class is scored by its ELBO
  on the same (sigma, eps) draws; after each stage only the best classes are kept.

examples:
  smcdiff classify                                  # stages 32:3,128:1: 608 evaluations per image
  smcdiff classify --stages 16:3,64:1 --num 100     # cheaper, first 100 images
  smcdiff classify --draws 256                      # no pruning: 256 draws for all 10 classes
"""


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def add_likelihood_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``likelihood`` to ``subparsers`` (from ``ArgumentParser.add_subparsers``); return it."""
    p = subparsers.add_parser(
        "likelihood", formatter_class=_formatter, epilog=_LIKELIHOOD_EPILOG,
        help="log-likelihood (bits/dim) of data under a diffusion model: probability-flow ODE or ELBO",
        description="Estimate log p(x) of data under a denoiser by the probability-flow ODE (torchdiffeq, "
        "dopri5) or by the denoising ELBO, and report bits/dim with a standard error.")
    p.add_argument("--model", default="digits", metavar="NAME|PATH",
                   help=f"one of {', '.join(MODELS)}, an EDM network pickle (.pkl) or a small-network file "
                   "(.pt) (default: %(default)s)")
    p.add_argument("--data", default="digits-test", metavar="NAME|PATH",
                   help=f"one of {', '.join(DATA)}, or a .npy/.npz array: uint8 images (N,H,W,C or N,C,H,W) "
                   "or float vectors (default: %(default)s)")
    p.add_argument("--num", type=positive_int, default=64, help="use the first N points (default: %(default)s)")
    p.add_argument("--batch", type=positive_int, default=16, help="points per solve (default: %(default)s)")
    p.add_argument("--estimator", choices=("ode", "elbo"), default="ode", help="(default: %(default)s)")
    p.add_argument("--divergence", choices=("auto", "exact", "hutchinson"), default="auto",
                   help="ODE divergence; auto: exact up to 16 values per point (default: %(default)s)")
    p.add_argument("--probes", type=positive_int, default=1, help="Hutchinson probes per point (default: %(default)s)")
    p.add_argument("--draws", type=positive_int, default=64, help="ELBO (sigma, eps) draws per point (default: %(default)s)")
    p.add_argument("--rtol", type=_positive_float, default=1e-5, help="ODE relative tolerance (default: %(default)s)")
    p.add_argument("--atol", type=_positive_float, default=1e-5, help="ODE absolute tolerance (default: %(default)s)")
    p.add_argument("--sigma-min", type=_positive_float, default=0.002, help="(default: %(default)s)")
    p.add_argument("--sigma-max", type=_positive_float, default=80.0, help="(default: %(default)s)")
    p.add_argument("--levels", type=positive_int, default=None,
                   help="grid values of the data in [-1, 1] (default: 17 digits, 256 uint8 files, none otherwise)")
    p.add_argument("--no-dequantize", action="store_true", help="score the grid points themselves")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_likelihood)
    return p


def add_classify_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``classify`` to ``subparsers``; return it."""
    p = subparsers.add_parser(
        "classify", formatter_class=_formatter, epilog=_CLASSIFY_EPILOG,
        help="the Diffusion Classifier (Li et al. 2023) on the held-out digits",
        description="Zero-shot classification of the held-out 8x8 digits by the ELBO of a class-conditional "
        "denoiser, with adaptive pruning of the classes in stages.")
    p.add_argument("--weights", default=None, metavar="PT",
                   help="conditional denoiser file (default: the shipped conditional_denoiser.pt)")
    p.add_argument("--stages", default="32:3,128:1", metavar="N:K,...",
                   help="cumulative draws:classes kept, per stage (default: %(default)s)")
    p.add_argument("--draws", type=positive_int, default=None, help="no pruning: N draws for every class")
    p.add_argument("--sigma-dist", choices=("edm", "loguniform"), default="edm", help="(default: %(default)s)")
    p.add_argument("--num", type=positive_int, default=None, help="first N held-out images (default: all 359)")
    p.add_argument("--batch", type=positive_int, default=32, help="images per call (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_classify)
    return p


# ------------------------------------------------------------------------------------ loading
def _load_model(spec: str):
    """``(denoiser, exact mixture or None, needs labels)``."""
    if spec in ("digits", "digits-conditional"):
        if spec == "digits":
            from smcdiff.models.pretrained import load_digits_models

            return load_digits_models().denoiser, None, False
        from smcdiff.models.conditional_digits import load_conditional_digits

        return load_conditional_digits(), None, True
    if spec in ("mixture-2d", "mixture-2d-model"):
        from smcdiff.models.pairs import mixture_pair_2d

        data, model, _ = mixture_pair_2d()
        gmm = data if spec == "mixture-2d" else model
        return gmm, gmm, False
    path = Path(spec)
    if path.suffix not in (".pkl", ".pt"):
        raise UsageError(f"--model must be one of {MODELS}, a .pkl EDM network or a .pt small network; got {spec!r}")
    if not path.is_file():
        raise UsageError(f"--model {spec}: no such file")
    if path.suffix == ".pkl":
        from smcdiff.models import load_edm

        net = load_edm(path)
        return net, None, bool(getattr(net, "label_dim", 0))
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(blob, dict) and isinstance(blob.get("config"), dict) and blob["config"].get("class") == "ConditionalConvDenoiser":
        from smcdiff.models.conditional_digits import load_conditional_digits

        return load_conditional_digits(path), None, True
    from smcdiff.models.small_nets import load

    return load(path).eval().requires_grad_(False), None, False


def _load_data(spec: str, num: int, seed: int):
    """``(x : (N, *shape) float64, labels or None, default levels or None, description)``."""
    if spec in ("digits-test", "digits-train"):
        from smcdiff.data import load_digits

        x, y = load_digits(spec.split("-")[1], dtype=torch.float64)
        return x[:num], y[:num], 17, f"{spec} (first {min(num, x.shape[0])} of {x.shape[0]})"
    if spec == "mixture-2d":
        from smcdiff.models.pairs import mixture_pair_2d

        data, _, _ = mixture_pair_2d()
        return data.sample(num, torch.Generator().manual_seed(seed)), None, None, f"{num} samples of mixture-2d"
    path = Path(spec)
    if path.suffix not in (".npy", ".npz"):
        raise UsageError(f"--data must be one of {DATA} or a .npy/.npz file; got {spec!r}")
    if not path.is_file():
        raise UsageError(f"--data {spec}: no such file")
    import numpy as np

    arr = np.load(path)
    if hasattr(arr, "files"):
        key = next((k for k in ("x", "images", "arr_0") if k in arr.files), arr.files[0] if arr.files else None)
        if key is None:
            raise UsageError(f"--data {spec}: the .npz holds no array")
        arr = arr[key]
    arr = np.asarray(arr)[:num]
    if arr.ndim < 2:
        raise UsageError(f"--data {spec}: expected an array (N, ...) with N points, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        if arr.ndim == 4 and arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
            arr = arr.transpose(0, 3, 1, 2)  # NHWC -> NCHW
        return torch.tensor(arr, dtype=torch.float64) / 127.5 - 1.0, None, 256, f"{arr.shape[0]} uint8 images from {spec}"
    if not np.issubdtype(arr.dtype, np.floating):
        raise UsageError(f"--data {spec}: expected uint8 images or float values, got {arr.dtype}")
    return torch.tensor(arr, dtype=torch.float64), None, None, f"{arr.shape[0]} points from {spec}"


def _progress(total: int, desc: str, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=disable, leave=False)


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    n = values.numel()
    return float(values.mean()), (float(values.std() / math.sqrt(n)) if n >= 2 else math.nan)


# ----------------------------------------------------------------------------------- commands
def run_likelihood(args) -> int:
    """``smcdiff likelihood``: print the mean log-likelihood and bits/dim with standard errors."""
    from smcdiff.likelihood import elbo, log_prob, to_bits_per_dim, uniform_dequantize

    if not args.sigma_min < args.sigma_max:
        raise UsageError(f"need --sigma-min < --sigma-max, got {args.sigma_min} and {args.sigma_max}")
    denoiser, exact, needs_labels = _load_model(args.model)
    x, labels, levels, described = _load_data(args.data, args.num, args.seed)
    levels = args.levels if args.levels is not None else levels
    if needs_labels and labels is None:
        raise UsageError(f"--model {args.model} is class-conditional; use labelled data (digits-test, digits-train)")
    shape = getattr(denoiser, "event_shape", None)
    if shape is not None and tuple(shape) != tuple(x.shape[1:]):
        raise UsageError(f"--model {args.model} takes points of shape {tuple(shape)}, --data gives {tuple(x.shape[1:])}")
    label_dim = getattr(denoiser, "label_dim", 0) or 0
    d = math.prod(x.shape[1:])
    divergence = args.divergence if args.divergence != "auto" else ("exact" if d <= 16 else "hutchinson")
    g = torch.Generator().manual_seed(args.seed)
    if levels is not None and not args.no_dequantize:
        x = uniform_dequantize(x, levels, g)
    start, nfe, values = time.perf_counter(), 0, []
    with _progress(x.shape[0], args.estimator, args.no_progress) as bar:
        for lo in range(0, x.shape[0], args.batch):
            xb = x[lo:lo + args.batch]
            cond = None
            if needs_labels:
                cond = {"class_labels": torch.nn.functional.one_hot(labels[lo:lo + args.batch], label_dim).float()}
            if args.estimator == "ode":
                res = log_prob(denoiser, xb, sigma_min=args.sigma_min, sigma_max=args.sigma_max, cond=cond,
                               divergence=divergence, num_probes=args.probes, generator=g, rtol=args.rtol, atol=args.atol)
                values.append(res.log_prob)
                nfe += res.nfe
            else:
                res = elbo(denoiser, xb, sigma_min=args.sigma_min, sigma_max=args.sigma_max, cond=cond,
                           num_draws=args.draws, replicates=1, generator=g)
                values.append(res.elbo)
                nfe += res.nfe * xb.shape[0]
            bar.update(xb.shape[0])
    lp = torch.cat(values)
    bpd = to_bits_per_dim(lp, d, levels)
    (m, se), (b, bse) = _mean_se(lp), _mean_se(bpd)
    how = (f"ODE (dopri5, rtol {args.rtol:g}, atol {args.atol:g}, {divergence} divergence"
           + (f", {args.probes} probe(s))" if divergence == "hutchinson" else ")")
           if args.estimator == "ode" else f"ELBO ({args.draws} draws x 2 evaluations)")
    print(f"model {args.model}; data {described}; {how}; sigma_min {args.sigma_min:g}, sigma_max {args.sigma_max:g}")
    kind = "log p" if args.estimator == "ode" else "ELBO"
    print(f"{kind}: {m:.4f} ± {se:.4f} nats per point   bits/dim: {b:.4f} ± {bse:.4f}"
          + (f" (levels {levels}, {'not ' if args.no_dequantize else ''}dequantised)" if levels else ""))
    unit = "solver evaluations per batch" if args.estimator == "ode" else "network evaluations per point"
    count = nfe / math.ceil(x.shape[0] / args.batch) if args.estimator == "ode" else nfe / x.shape[0]
    print(f"{count:.0f} {unit}; {time.perf_counter() - start:.1f} s")
    if exact is not None and args.data == "mixture-2d":
        ex = exact.noised(args.sigma_min).log_prob(x)
        print(f"exact log p_sigma_min: {float(ex.mean()):.4f} nats per point (mean difference "
              f"{float((lp - ex).mean()):+.4f})")
    return 0


def _parse_stages(text: str) -> tuple[tuple[int, int], ...]:
    try:
        stages = tuple(tuple(int(v) for v in part.split(":")) for part in text.split(","))
    except ValueError:
        stages = ()
    if not stages or any(len(s) != 2 for s in stages):
        raise UsageError(f"--stages must look like 32:3,128:1 (cumulative draws:classes kept), got {text!r}")
    return stages


def run_classify(args) -> int:
    """``smcdiff classify``: the diffusion classifier's accuracy on the held-out digits."""
    from smcdiff.data import NUM_CLASSES, load_digits
    from smcdiff.methods.zero_shot_classifier import diffusion_classifier
    from smcdiff.models.conditional_digits import load_conditional_digits

    stages = ((args.draws, 1),) if args.draws is not None else _parse_stages(args.stages)
    if args.weights is not None and not Path(args.weights).is_file():
        raise UsageError(f"--weights {args.weights}: no such file")
    net = load_conditional_digits(args.weights)
    x, y = load_digits("test")
    if args.num is not None:
        x, y = x[:args.num], y[:args.num]
    # One generator per image: an image's result does not depend on the batch it ran in.
    gens = [torch.Generator().manual_seed(args.seed * 1_000_003 + i) for i in range(x.shape[0])]
    start, preds, nfe = time.perf_counter(), [], 0.0
    with _progress(x.shape[0], "classify", args.no_progress) as bar:
        for lo in range(0, x.shape[0], args.batch):
            res = diffusion_classifier(net, x[lo:lo + args.batch], list(range(NUM_CLASSES)),
                                       generator=gens[lo:lo + args.batch], stages=stages, sigma_dist=args.sigma_dist)
            preds.append(res.prediction)
            nfe += res.nfe * res.prediction.shape[0]
            bar.update(res.prediction.shape[0])
    right = (torch.cat(preds) == y).to(torch.float64)
    acc, se = _mean_se(right)
    print(f"diffusion classifier on {x.shape[0]} held-out digits; stages {stages}; sigma {args.sigma_dist}; seed {args.seed}")
    print(f"accuracy {acc:.4f} ± {se:.4f}; {nfe / x.shape[0]:.0f} network evaluations per image; "
          f"{time.perf_counter() - start:.1f} s")
    return 0
