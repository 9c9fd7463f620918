"""Engine overhead: smcdiff.sample vs a bare Heun loop with the same denoiser, kernel and NFE.

Both run EDM Heun (the same kernel object, so the same network calls and noise draws) on an exact
Gaussian-mixture denoiser; the ratio of wall times is the cost of the SMC machinery (state dicts,
log-weights, ESS, records, resampling decisions). Ratios are measured in one process, median of
``--repeats`` runs, alternating the order. Target: ratio <= 1.05 at 16k particles on CPU.

    python benchmarks/bench_engine.py                 # 16k particles, d = 16
    python benchmarks/bench_engine.py --particles 65536 --dim 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import smcdiff
from smcdiff.kernels import EDMHeun, karras_sigmas
from smcdiff.models import GaussianMixture
from smcdiff.resampling import Resampler


def make_denoiser(dim: int, components: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    means = 2 * torch.randn(components, dim, generator=g, dtype=torch.float64)
    return GaussianMixture(torch.ones(components), means, 0.1 + torch.rand(components, dim, generator=g, dtype=torch.float64)).denoise


def bare_loop(denoiser, sigmas, kernel, n, dim, seed):
    g = torch.Generator().manual_seed(seed)
    x = sigmas[0] * torch.randn((n, dim), generator=g, dtype=torch.float64)
    for i in range(len(sigmas) - 1):
        x = kernel(denoiser, x, sigmas, i, g).x
    return x


def engine_run(denoiser, sigmas, kernel, n, dim, seed, groups, potential=None, resampler=None):
    return smcdiff.sample(denoiser, sigmas, kernel, potential=potential, resampler=resampler, num_groups=groups,
                          num_particles=n // groups, shape=(dim,), generator=torch.Generator().manual_seed(seed)).x


class TimedKernel:
    """Wraps a kernel and accumulates the wall time spent inside it (denoiser + step arithmetic)."""

    def __init__(self, kernel):
        self.kernel, self.seconds = kernel, 0.0
        self.stochastic = kernel.stochastic

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = self.kernel(*args, **kwargs)
        self.seconds += time.perf_counter() - t0
        return out


def outside_kernel(run, kernel, repeats):
    """Median seconds spent outside the kernel per run: the loop's own cost, measured in-run."""
    spent = []
    for _ in range(repeats):
        timed = TimedKernel(kernel)
        t0 = time.perf_counter()
        run(timed)
        spent.append((time.perf_counter() - t0 - timed.seconds, timed.seconds))
    return statistics.median(o for o, _ in spent), statistics.median(k for _, k in spent)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--particles", type=int, default=16384)
    p.add_argument("--groups", type=int, default=16)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--components", type=int, default=8)
    p.add_argument("--steps", type=int, default=18)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--stat", choices=("median", "min"), default="median",
                   help="statistic over repeats (min resists load from other processes)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    den = make_denoiser(args.dim, args.components)
    sig = karras_sigmas(args.steps)
    kernel = EDMHeun(S_churn=10)
    zero = lambda x, sigma, x0_hat: torch.zeros(x.shape[0], dtype=torch.float64)  # noqa: E731
    cases = {
        "bare Heun loop": lambda: bare_loop(den, sig, kernel, args.particles, args.dim, 0),
        "smcdiff.sample (no potential)": lambda: engine_run(den, sig, kernel, args.particles, args.dim, 0, args.groups),
        "smcdiff.sample + zero potential + resampling every step": lambda: engine_run(
            den, sig, kernel, args.particles, args.dim, 0, args.groups, zero, Resampler("systematic", 1.0)),
    }
    # identical particles from the bare loop and the engine (one group, one generator)
    a = bare_loop(den, sig, kernel, 256, args.dim, 1)
    b = engine_run(den, sig, kernel, 256, args.dim, 1, 1).reshape(256, args.dim)
    assert torch.equal(a, b), "engine and bare loop disagree"
    for fn in cases.values():  # warm-up: allocator, thread pool
        fn()
    times = {k: [] for k in cases}
    for r in range(args.repeats):
        order = list(cases) if r % 2 == 0 else list(reversed(cases))
        for k in order:
            t0 = time.perf_counter()
            cases[k]()
            times[k].append(time.perf_counter() - t0)
    stat = statistics.median if args.stat == "median" else min
    base = stat(times["bare Heun loop"])
    print(f"engine overhead: {args.particles} particles ({args.groups} groups), d={args.dim}, "
          f"{args.components}-component GMM denoiser, {args.steps} Heun steps (NFE {2 * args.steps - 1}), "
          f"torch threads {torch.get_num_threads()}, {args.stat} of {args.repeats}\n")
    print(f"| run | {args.stat} seconds | ratio to bare loop |")
    print("|---|---|---|")
    for k, v in times.items():
        med = stat(v)
        print(f"| {k} | {med:.4f} | {med / base:.3f} |")
    print("\nTime outside the kernel (the loop's own cost, measured inside each run; median):\n")
    print("| run | seconds outside kernel | seconds in kernel | overhead = outside / in kernel |")
    print("|---|---|---|---|")
    in_run = {
        "bare Heun loop": lambda k: bare_loop(den, sig, k, args.particles, args.dim, 0),
        "smcdiff.sample (no potential)": lambda k: engine_run(den, sig, k, args.particles, args.dim, 0, args.groups),
        "smcdiff.sample + zero potential + resampling every step": lambda k: engine_run(
            den, sig, k, args.particles, args.dim, 0, args.groups, zero, Resampler("systematic", 1.0)),
    }
    for name, run in in_run.items():
        out, ker = outside_kernel(run, kernel, args.repeats)
        print(f"| {name} | {out:.4f} | {ker:.4f} | {out / ker:.4f} |")


if __name__ == "__main__":
    main()
