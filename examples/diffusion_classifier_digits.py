"""Accuracy of the Diffusion Classifier on the held-out digits against network evaluations per image.

Uses the shipped class-conditional digits denoiser (smcdiff/assets/digits/conditional_denoiser.pt)
and the held-out split of smcdiff.data.load_digits("test") (359 images) — the split the shipped
discriminative classifier's accuracy (manifest.json: classifier_test_accuracy) was measured on.
Rows: every class on K (σ, ε) draws (no pruning, 10·K evaluations per image), then adaptive
pruning in stages. Each image draws from its own generator (seed·1000003 + image index), so a row
does not depend on the batch size.

    python examples/diffusion_classifier_digits.py            # the table of docs/likelihood.md
    python examples/diffusion_classifier_digits.py --quick    # 60 images, a few rows (~1 min)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

FLAT = (1, 2, 4, 8, 16, 32, 64)
ADAPTIVE = (((8, 3), (32, 1)), ((16, 3), (64, 1)), ((32, 3), (128, 1)))
QUICK_FLAT, QUICK_ADAPTIVE = (1, 4, 16), (((8, 3), (32, 1)),)


def _row(net, x, y, stages, sigma_dist: str, seed: int, batch: int) -> dict:
    from smcdiff.methods.zero_shot_classifier import diffusion_classifier

    gens = [torch.Generator().manual_seed(seed * 1_000_003 + i) for i in range(x.shape[0])]
    start, preds, evals = time.perf_counter(), [], 0.0
    for lo in range(0, x.shape[0], batch):
        res = diffusion_classifier(net, x[lo:lo + batch], list(range(10)), generator=gens[lo:lo + batch],
                                   stages=stages, sigma_dist=sigma_dist)
        preds.append(res.prediction)
        evals += res.nfe * res.prediction.shape[0]
    right = (torch.cat(preds) == y).to(torch.float64)
    n = right.numel()
    return {"stages": [list(s) for s in stages], "accuracy": float(right.mean()),
            "stderr": float(right.std() / math.sqrt(n)), "evaluations_per_image": evals / n,
            "seconds": round(time.perf_counter() - start, 1), "images": n}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="60 images and a few rows (a smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sigma-dist", choices=("edm", "loguniform"), default="edm")
    parser.add_argument("--batch", type=int, default=32, help="images per call")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from smcdiff.data import load_digits
    from smcdiff.models.conditional_digits import load_conditional_digits
    from smcdiff.models.pretrained import load_digits_models

    net = load_conditional_digits()
    x, y = load_digits("test")
    if args.quick:
        x, y = x[:60], y[:60]
    flat, adaptive = (QUICK_FLAT, QUICK_ADAPTIVE) if args.quick else (FLAT, ADAPTIVE)
    rows = [_row(net, x, y, ((k, 1),), args.sigma_dist, args.seed, args.batch) for k in flat]
    rows += [_row(net, x, y, stages, args.sigma_dist, args.seed, args.batch) for stages in adaptive]
    reference = load_digits_models().manifest.get("classifier_test_accuracy")

    command = "python examples/diffusion_classifier_digits.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"command: {command.strip()}   (torch threads {torch.get_num_threads()})")
    print(f"{rows[0]['images']} held-out digits; sigma {args.sigma_dist}; seed {args.seed}\n")
    print("| stages (cumulative draws: classes kept) | evaluations / image | accuracy | s.e. | seconds |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        stages = ", ".join(f"{n}:{k}" for n, k in r["stages"])
        print(f"| {stages} | {r['evaluations_per_image']:.0f} | {r['accuracy']:.4f} | {r['stderr']:.4f} | {r['seconds']} |")
    if reference is not None:
        print(f"| shipped discriminative classifier (manifest.json) | 1 | {reference:.4f} | | |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"command": command.strip(), "rows": rows, "discriminative": reference}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
