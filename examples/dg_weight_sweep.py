"""Does DG's gradient carry a usable direction? Sweep the guidance weight on the shipped digits model.

    python examples/dg_weight_sweep.py                          # w = 0, 2, 8, 32, 128; seeds 0, 1; 1,000 samples
    python examples/dg_weight_sweep.py --weights 0 2 --samples 200 --seeds 0

Runs DG (EDM-G++, guidance on the Euler evaluation only) at 9 steps with the shipped denoiser and
discriminator and prints FD-digits, precision, recall and class TV (means over seeds) per weight.
w = 0 is the base sampler. docs/results.md quotes the default run.
"""

import argparse

import torch

from smcdiff import methods
from smcdiff.kernels import karras_sigmas
from smcdiff.metrics.fd_digits import DigitsFeatures, digits_scores, reference_features
from smcdiff.models.pretrained import load_digits_models


def sweep(weights, seeds, num_samples: int, steps: int) -> list[tuple[float, dict]]:
    m = load_digits_models()
    features = DigitsFeatures(m.classifier)
    ref = reference_features(features)
    rows = []
    for w in weights:
        scores = []
        for seed in seeds:
            x = methods.dg(m.denoiser, karras_sigmas(steps), log_ratio=m.discriminator if w else None, w1=w,
                           num_samples=num_samples, shape=(1, 8, 8), generator=torch.Generator().manual_seed(seed)).x
            scores.append(digits_scores(x, features=features, ref_features=ref))
        rows.append((w, {k: sum(s[k] for s in scores) / len(scores) for k in scores[0]}))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 2.0, 8.0, 32.0, 128.0], help="DG weights w1")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds (one run of --samples each)")
    p.add_argument("--samples", type=int, default=1000, help="outputs per run (default: %(default)s)")
    p.add_argument("--steps", type=int, default=9, help="EDM Heun steps (default: %(default)s)")
    args = p.parse_args(argv)
    print("| w | FD-digits | precision | recall | class TV |\n|---:|---:|---:|---:|---:|")
    for w, s in sweep(args.weights, args.seeds, args.samples, args.steps):
        print(f"| {w:g} | {s['fd']:.2f} | {s['precision']:.3f} | {s['recall']:.3f} | {s['class_tv']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
