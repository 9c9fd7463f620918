"""A combination that no published code offers, as one ``smcdiff.sample`` call: a DG-guided proposal
(with its importance correction), particle-filter resampling on the density-ratio potential, and
rejection control — on the exact 2-D mixture pair, where the answer (the data mixture) is known.

    python examples/combination.py            # the table in docs/composition.md (about a minute)
    python examples/combination.py --quick    # a smaller run (seconds)

Each row reports the error of the estimated component weights against the data's, as the maximum
absolute error over components (mean over seeds ± standard error over seeds), at (about) equal NFE.
"""

from __future__ import annotations

import argparse
import math

import torch

import smcdiff
from smcdiff.engine import RejectionControl
from smcdiff.kernels import CorrectedEulerMaruyama, DiscriminatorGuidance, EulerMaruyama
from smcdiff.methods.particle_filtering import LogRatioPotential
from smcdiff.models.pairs import mixture_pair_2d

__all__ = ["run", "combination_weights", "INGREDIENTS"]

#: name → (guided proposal, ratio potential + resampling, rejection control)
INGREDIENTS = {
    "DG-guided kernel alone": (True, False, False),
    "PF resampling on the ratio alone": (False, True, False),
    "rejection control on the ratio alone": (False, "rc", True),
    "all three combined": (True, True, True),
}


def combination_weights(name: str, *, steps: int, groups: int, particles: int, seed: int, w: float = 1.0):
    """Estimated data-component weights ``(groups, 3)`` of one configuration, and the NFE per particle."""
    data, model, ell = mixture_pair_2d()
    guided, weighted, rc = INGREDIENTS[name]
    kernel = CorrectedEulerMaruyama(DiscriminatorGuidance(ell, w1=w, time_min=0.0)) if guided else EulerMaruyama()
    potential = LogRatioPotential(ell, 1e-4) if weighted else None
    if guided and not weighted:  # guidance alone: the plain guided proposal, no weights
        kernel = smcdiff.kernels.Guided(EulerMaruyama(), DiscriminatorGuidance(ell, w1=w, time_min=0.0))
    res = smcdiff.sample(model.denoise, smcdiff.karras_sigmas(steps), kernel, potential,
                         smcdiff.Resampler("systematic", 0.5) if weighted is True else None,
                         num_groups=groups, num_particles=particles, shape=(2,),
                         generator=torch.Generator().manual_seed(seed),
                         rejection_control=RejectionControl(quantile=0.5) if rc else None)
    resp = data.responsibilities(res.x.reshape(-1, 2)).reshape(groups, particles, -1)
    est = (res.weights[..., None] * resp).sum(1)  # (G, 3): self-normalised estimate per group
    return est, res.nfe


def run(steps: int = 64, groups: int = 16, particles: int = 64, seeds: int = 3) -> list[tuple[str, float, float, float]]:
    """Rows ``(name, NFE per output, mean weight error, its standard error over seeds)``.

    The combination and rejection control alone run ``particles`` particles per group; the others
    get as many particles as the combination's network budget per group buys (equal NFE per output).
    """
    data, _, _ = mixture_pair_2d()
    budget = None
    rows = {}
    for name in ("all three combined", "rejection control on the ratio alone", "DG-guided kernel alone",
                 "PF resampling on the ratio alone"):
        K = particles if INGREDIENTS[name][2] else max(1, round(budget / steps))
        errs, nfes = [], []
        for seed in range(seeds):
            est, nfe = combination_weights(name, steps=steps, groups=groups, particles=K, seed=seed)
            errs.append(float((est.mean(0) - data.weights).abs().max()))
            nfes.append(nfe * K)  # per output (group)
        if budget is None:
            budget = sum(nfes) / len(nfes)
        mean = sum(errs) / len(errs)
        se = math.sqrt(sum((e - mean) ** 2 for e in errs) / max(len(errs) - 1, 1) / len(errs))
        rows[name] = (name, sum(nfes) / len(nfes), mean, se)
    return [rows[name] for name in INGREDIENTS]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 steps, 4 groups x 32 particles, 2 seeds")
    args = parser.parse_args(argv)
    cfg = dict(steps=16, groups=4, particles=32, seeds=2) if args.quick else {}
    print("| configuration | NFE / output | weight error (max over components) |")
    print("|---|---:|---:|")
    for name, nfe, err, se in run(**cfg):
        print(f"| {name} | {nfe:.1f} | {err:.4f} ± {se:.4f} |")


if __name__ == "__main__":
    main()
