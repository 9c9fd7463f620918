"""Reproduce the published FID rows (EDM, EDM-G++, SEDM-G++, DiffRS, PF) from the published files.

Nothing is downloaded: pass the local files. CIFAR-10 unconditional rows (REFERENCE §1g, §2e, §4b, §3):

    python examples/reproduce_tables.py cifar10 --network edm-cifar10-32x32-uncond-vp.pkl \\
        --classifier 32x32_classifier.pt --discriminator discriminator_60.pt \\
        --inception pt_inception-2015-12-05.pth --ref cifar10-32x32.npz --seeds 0-49999 --outdir runs/cifar10

ImageNet-64 particle filter (REFERENCE §5a, Restart config, K = 2, 4, 6; conditional discriminator):

    python examples/reproduce_tables.py imagenet64-pf --network edm-imagenet-64x64-cond-adm.pkl \\
        --classifier 64x64_classifier.pt --discriminator <conditional 64x64 head>.pt \\
        --inception pt_inception-2015-12-05.pth --ref imagenet-64x64.npz --seeds 0-49999 --outdir runs/in64

Each row writes its PNGs under ``outdir/<row>/`` and the script prints FID next to the published
number; an interrupted run resumes where it stopped (see ``smcdiff generate --help``). ``--smoke``
runs every row end to end on tiny random-weight networks, on 4 seeds into a temporary folder by
default (seconds on a CPU; the FID values are then meaningless) — the test suite runs it:

    python examples/reproduce_tables.py cifar10 --smoke

Multi-GPU: run the generation part under ``torchrun`` with ``smcdiff generate`` and the same settings.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from smcdiff.apps.generate import generate, parse_seeds
from smcdiff.apps.options import UsageError, check_output_folder
from smcdiff.kernels.restart import IMAGENET64_RESTART

# row -> (method, method params, steps, published FID, where it was published)
CIFAR10 = {
    "edm": ("edm", {}, 18, "1.97 (min of 3 seeds) / 2.03 (DG re-measure)", "EDM README; DG README"),
    "edm-g++": ("dg", dict(w1=2.0, w2=0.0, time_min=0.01, time_max=1.0, boosting=False), 18, "1.77", "DG README"),
    "sedm-g++": ("sedm", dict(eps_scaler=1.004, w1=1.67), 18, "1.73", "SEDM README"),
    "diffrs": ("diffrs", dict(rej_percentile=0.75, max_iter=105, batch_size=100), 18, "≈1.59 [UNVERIFIED]", "DiffRS paper"),
}
_PF_BASE = dict(sampler="restart", restart=IMAGENET64_RESTART, S_noise=1.003, S_min=0.01, S_max=1.0,
                restart_gamma=0.05, select="argmax")
IMAGENET64_PF = {
    "restart": ("pf", {**_PF_BASE, "num_particles": 1}, 18, "1.74 (figure)", "PF README figure"),
    "pf-k2": ("pf", {**_PF_BASE, "num_particles": 2}, 18, "≈1.37 at NFE ≈ 200 (figure)", "PF README figure"),
    "pf-k4": ("pf", {**_PF_BASE, "num_particles": 4}, 18, "≈1.13 at NFE ≈ 400 (figure)", "PF README figure"),
    "pf-k6": ("pf", {**_PF_BASE, "num_particles": 6}, 18, "≈1.07 at NFE ≈ 600 (figure)", "PF README figure"),
}
TABLES = {"cifar10": CIFAR10, "imagenet64-pf": IMAGENET64_PF}


def load_files(args):
    from smcdiff.metrics.fid import load_statistics
    from smcdiff.models import load_edm
    from smcdiff.models.discriminator import DGDiscriminator
    from smcdiff.models.inception import InceptionFeatures

    net = load_edm(args.network, trust_code=args.trust_code).to(args.device)
    disc = DGDiscriminator.load(args.classifier, args.discriminator, img_resolution=net.img_resolution).to(args.device)
    extractor = InceptionFeatures(args.inception).to(args.device)
    return net, disc, extractor, load_statistics(args.ref)


def smoke_files(tmp: Path):
    """Tiny random-weight stand-ins: an EDMPrecond/SongUNet, the fixtures' random ADM classifier +
    head when available (else a tiny random pair), a random Inception, random reference statistics."""
    from smcdiff.metrics.fid import feature_statistics
    from smcdiff.models.adm import create_classifier
    from smcdiff.models.discriminator import DGDiscriminator
    from smcdiff.models.inception import InceptionFeatures
    from smcdiff.models.precond import EDMPrecond

    g = torch.Generator().manual_seed(0)
    net = EDMPrecond(img_resolution=32, img_channels=3, label_dim=0, model_type="SongUNet", model_channels=16,
                     channel_mult=[1, 2], num_blocks=1, attn_resolutions=[16], dropout=0.0).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    classifier = create_classifier(32, 32, 1, "16,8", out_channels=10)
    head = create_classifier(8, 64, 2, "32,16,8", out_channels=1, in_channels=128)
    disc = DGDiscriminator(classifier, head, img_resolution=32)
    extractor = InceptionFeatures.random(g)
    ref = feature_statistics(torch.randn(64, 2048, generator=g).numpy())
    return net, disc, extractor, ref


def run(args) -> int:
    from smcdiff.metrics.fid import fid

    rows = TABLES[args.table]
    chosen = list(rows) if args.rows == "all" else args.rows.split(",")
    unknown = [r for r in chosen if r not in rows]
    if unknown:
        raise UsageError(f"unknown rows {unknown}; {args.table} has {list(rows)}")
    missing = [k for k in ("network", "classifier", "discriminator", "inception", "ref") if not getattr(args, k)]
    if missing and not args.smoke:
        raise UsageError(f"pass the local files: {', '.join('--' + k for k in missing)} (or --smoke)")
    try:
        seeds = parse_seeds(args.seeds)
        check_output_folder(args.outdir, "--outdir")  # before loading or sampling anything
    except ValueError as err:
        raise UsageError(str(err)) from None
    net, disc, extractor, ref = smoke_files(Path(tempfile.mkdtemp())) if args.smoke else load_files(args)
    print("| row | method | settings | FID (here) | FID (published) | source |")
    print("|---|---|---|---|---|---|")
    for row in chosen:
        method, params, steps, published, source = rows[row]
        params = dict(params)
        if args.smoke:
            steps = 3
            if method == "diffrs":
                params.update(max_iter=None, batch_size=None, num_warmup=2)
            if method == "pf":
                params.update(sampler="edm", restart=None, resample_at=[1])
        ratio = disc.logit if method == "diffrs" else disc
        outdir = Path(args.outdir) / row
        generate(net, seeds, outdir, method=method, steps=steps, batch=args.batch, log_ratio=ratio,
                 method_params=params, device=args.device, progress=not args.smoke)
        # eigh: the symmetric form of tr((Σ1Σ2)^½), exact and several times faster than sqrtm at D = 2048
        value = fid(outdir, ref, extractor, batch_size=args.batch, method="eigh")
        shown = {k: v for k, v in params.items() if k != "restart"}
        print(f"| {row} | {method} | {shown} | {value:.3f} | {published} | {source} |")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", choices=sorted(TABLES))
    p.add_argument("--rows", default="all", help="comma-separated rows of the table (default: all)")
    p.add_argument("--network"), p.add_argument("--classifier"), p.add_argument("--discriminator")
    p.add_argument("--inception", help="local FID Inception-v3 weights (.pth)")
    p.add_argument("--ref", help="reference statistics .npz (mu, sigma)")
    p.add_argument("--trust-code", action="store_true")
    p.add_argument("--seeds", default=None, help="seeds (default: 0-49999; with --smoke 0-3)")
    p.add_argument("--batch", type=int, default=None, help="seeds per batch (default: 100; with --smoke 4)")
    p.add_argument("--outdir", default=None, help="where the rows' PNGs go (default: runs; with --smoke a temporary folder)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--smoke", action="store_true", help="tiny random-weight networks on 4 seeds, end to end in seconds")
    args = p.parse_args(argv)
    small = args.smoke
    args.seeds = args.seeds or ("0-3" if small else "0-49999")
    args.batch = args.batch or (4 if small else 100)
    args.outdir = args.outdir or (tempfile.mkdtemp(prefix="reproduce-smoke-") if small else "runs")
    if args.batch < 1:
        p.error(f"--batch must be >= 1, got {args.batch}")
    try:
        return run(args)
    except UsageError as err:
        print(err, file=sys.stderr)
        raise


if __name__ == "__main__":
    sys.exit(main())
