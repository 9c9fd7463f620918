"""Text-to-image particle filtering with the paper's settings (Liu et al., CVPR 2024, REFERENCE §5b).

For users who have the weights on disk (nothing is downloaded):

    python examples/text_to_image.py --pipeline stable-diffusion-2-1-base --detector detr-resnet-50 \\
        --prompts coco_prompts.txt --outdir out/pf-hybrid --discriminator latent_disc.pt \\
        --eval-detector detr-resnet-101 --fid-ref coco5k.npz --inception pt_inception-2015-12-05-6726825d.pth \\
        --device cuda --dtype float16

Settings (``--method pf-hybrid``, the default): SD 2.1-base, CFG 7.5, K = 10 particles per prompt,
the paper's Restart sampler (29 Euler main steps on σ(1) … σ(10⁻³), 4 restart intervals with 6
repeats = 6 resampling events, churn 0.05 inside the restarts), caption term of the detector with
prior 0.2 on the decoded x̂0 + the latent discriminator's log-ratio, multinomial resampling, argmax
of the final score. ``--method pf-detector`` needs no discriminator; ``object-select`` is the
baseline; ``edm`` is plain SD with the same seeds. One image per (prompt, seed): ``--seeds 0``
gives one per prompt, as the paper's MS-COCO evaluation (5,000 prompts).

Evaluation (the paper's): object occurrence by a *second* detector (``--eval-detector``, DETR-ResNet101
in the paper; p_c > 0.5 counts as present), and FID against reference statistics (``--fid-ref``, an
``.npz`` with ``mu``/``sigma`` made by the same Inception weights ``--inception``).
"""

from __future__ import annotations

import argparse
import json
import sys

from smcdiff.apps.pipeline import TEXT_TO_IMAGE_METHODS, generate_from_pipeline, read_prompts
from smcdiff.methods.text_to_image import PAPER_SETTINGS, SD21_MAIN_STEPS, sd21_sigmas

DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--pipeline", required=True, metavar="DIR", help="local Stable Diffusion pipeline folder")
    p.add_argument("--detector", metavar="PATH", help="detector for the weights (DETR folder, or torchvision checkpoint)")
    p.add_argument("--detector-arch", metavar="NAME", help="torchvision detection model of a checkpoint")
    p.add_argument("--prompts", required=True, metavar="FILE", help="one prompt per line")
    p.add_argument("--discriminator", metavar="PT", help="latent discriminator (pf-hybrid, pf-discriminator)")
    p.add_argument("--method", default="pf-hybrid", choices=["edm", *TEXT_TO_IMAGE_METHODS], help="(default: %(default)s)")
    p.add_argument("--particles", type=int, default=PAPER_SETTINGS["num_particles"], help="K (default: %(default)s)")
    p.add_argument("--cfg", type=float, default=PAPER_SETTINGS["guidance"], help="CFG weight (default: %(default)s)")
    p.add_argument("--steps", type=int, default=SD21_MAIN_STEPS, help="main-grid steps (default: %(default)s)")
    p.add_argument("--seeds", default="0", help="seeds per prompt, e.g. 0 or 0-3 (default: %(default)s)")
    p.add_argument("--batch", type=int, default=1, help="seeds per batch (default: %(default)s)")
    p.add_argument("--outdir", default="out/text-to-image", metavar="DIR")
    p.add_argument("--detector-resize", type=int, default=800, help="DETR input short side (default: %(default)s)")
    p.add_argument("--eval-detector", metavar="PATH", help="a second detector for object occurrence")
    p.add_argument("--fid-ref", metavar="NPZ", help="FID reference statistics (mu, sigma)")
    p.add_argument("--inception", metavar="PTH", help="Inception weights for FID (the ones --fid-ref was made with)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="network dtype (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=None, help="largest batch per network/VAE call")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import torch

    args = parse(argv)
    if args.method in ("pf-hybrid", "pf-detector", "object-select") and not args.detector:
        raise SystemExit(f"--method {args.method} needs --detector")
    if args.method in ("pf-hybrid", "pf-discriminator") and not args.discriminator:
        raise SystemExit(f"--method {args.method} needs --discriminator (or use --method pf-detector)")
    if bool(args.fid_ref) != bool(args.inception):
        raise SystemExit("FID needs both --fid-ref and --inception (smcdiff never downloads Inception weights)")
    params = {}
    if args.method in TEXT_TO_IMAGE_METHODS:
        params = {"num_particles": args.particles, "sampler": PAPER_SETTINGS["sampler"]}
        if args.method != "object-select":
            params.update(prior=PAPER_SETTINGS["prior"], select=PAPER_SETTINGS["select"])
    prompts = read_prompts(None, args.prompts)
    written = generate_from_pipeline(
        args.pipeline, prompts, args.outdir, method=args.method, cfg=args.cfg, seeds=args.seeds, batch=args.batch,
        sigmas=sd21_sigmas(args.steps), detector=args.detector, detector_arch=args.detector_arch,
        detector_resize=args.detector_resize, discriminator=args.discriminator, method_params=params,
        dtype=getattr(torch, DTYPES[args.dtype]), device=args.device, max_batch=args.max_batch, progress=True)
    with open(f"{args.outdir}/generation.json", encoding="utf-8") as f:
        record = json.load(f)
    row = {"method": args.method, "images": len(written), "nfe": record["nfe"], "decodes": record["decodes"],
           "detector calls": record.get("detector_calls", 0.0), "disc calls": record.get("disc_calls", 0.0)}
    if args.eval_detector:
        from smcdiff.metrics.object_occurrence import object_occurrence_folder
        from smcdiff.models.detectors import load_detector

        evaluator = load_detector(args.eval_detector, device=args.device, max_batch=args.max_batch)
        row["object occurrence"] = object_occurrence_folder(args.outdir, evaluator)["score"]
    if args.fid_ref:
        from smcdiff.metrics import InceptionFeatures, fid

        row["FID"] = fid(args.outdir, args.fid_ref, InceptionFeatures(args.inception))
    print("| " + " | ".join(row) + " |")
    print("|" + "---|" * len(row))
    print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
