"""Time the resampling schemes against one ``torch.cumsum`` over the same weights.

For N = 2^10 ... 2^max_log2 particles (one group of K = N, and G = 64 groups of N / 64), each
scheme's median time is divided by the median time of ``torch.cumsum`` over the same float64
weights, measured in the same process with the calls interleaved (so that load on the machine
hits both alike). ``torch.multinomial`` is the reference line. Target: systematic and
stratified within 3x a cumsum.

    python benchmarks/bench_resampling.py                      # print the table
    python benchmarks/bench_resampling.py --max-log2 16 --repeats 5 --out docs/bench.md
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from smcdiff.resampling import SCHEMES

SCHEME_NAMES = ["systematic", "stratified", "multinomial", "residual", "rejection"]
TARGET = 3.0  # systematic and stratified: at most this many cumsums


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="example: python benchmarks/bench_resampling.py --max-log2 18 --out bench.md",
    )
    p.add_argument("--repeats", type=int, default=7, help="timed calls per (N, method)")
    p.add_argument("--stat", choices=["median", "min"], default="median",
                   help="statistic of the repeats (min resists load from other processes)")
    p.add_argument("--min-log2", type=int, default=10, help="smallest N = 2^min_log2")
    p.add_argument("--max-log2", type=int, default=20, help="largest N = 2^max_log2")
    p.add_argument("--groups", type=str, default="1,64", help="comma-separated G values (K = N / G)")
    p.add_argument("--sigma", type=float, default=1.0, help="log-weights ~ N(0, sigma^2)")
    p.add_argument("--schemes", type=str, default=",".join(SCHEME_NAMES), help="schemes to time")
    p.add_argument("--no-torch-multinomial", action="store_true", help="skip the torch.multinomial line")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = p.parse_args(argv)
    if args.repeats < 1 or not 1 <= args.min_log2 <= args.max_log2 <= 28:
        p.error("need --repeats >= 1 and 1 <= --min-log2 <= --max-log2 <= 28")
    args.groups = [int(g) for g in args.groups.split(",")]
    args.schemes = [s for s in args.schemes.split(",") if s]
    unknown = set(args.schemes) - set(SCHEMES)
    if unknown:
        p.error(f"unknown schemes {sorted(unknown)}; known: {sorted(SCHEMES)}")
    return args


def time_interleaved(fns: dict, repeats: int, stat=statistics.median) -> dict[str, float]:
    """``stat`` of the wall times (s) of each callable; one warm-up call each, then the repeats
    in turn (cumsum, scheme 1, scheme 2, ..., cumsum, ...)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: stat(ts) for name, ts in times.items()}


def main(argv=None) -> str:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)
    cols = list(args.schemes) + ([] if args.no_torch_multinomial else ["torch.multinomial"])
    stat = statistics.median if args.stat == "median" else min
    ratio_rows, ms_rows = [], []
    for log2 in range(args.min_log2, args.max_log2 + 1):
        n = 2**log2
        for groups in args.groups:
            if n % groups:
                continue
            K = n // groups
            lw = torch.randn(groups, K, generator=g, dtype=torch.float64) * args.sigma
            w = lw.exp()
            fns = {"cumsum": functools.partial(torch.cumsum, lw, 1)}
            for name in args.schemes:
                fns[name] = functools.partial(SCHEMES[name], lw, g)
            if not args.no_torch_multinomial:
                fns["torch.multinomial"] = functools.partial(
                    torch.multinomial, w, K, replacement=True, generator=g
                )
            t = time_interleaved(fns, args.repeats, stat)
            base = t["cumsum"]
            lead = [f"2^{log2}", f"{groups} x {K}"]
            ratios = [t[c] / base for c in cols]
            ratio_rows.append(lead + [f"{base * 1e3:.3f}"] + [
                f"{r:.1f}" + (" ⚠" if c in ("systematic", "stratified") and r > TARGET else "")
                for c, r in zip(cols, ratios)
            ])
            ms_rows.append(lead + [f"{t[c] * 1e3:.3f}" for c in ["cumsum"] + cols])
            print(" | ".join(ratio_rows[-1]), file=sys.stderr, flush=True)

    def markdown(header, rows):
        return "\n".join([
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows),
        ])

    lines = [
        f"Ratio to one `torch.cumsum` ({args.stat} of {args.repeats} interleaved calls):\n",
        markdown(["N", "G x K", "cumsum (ms)"] + cols, ratio_rows),
        "\nAbsolute times (ms, same runs):\n",
        markdown(["N", "G x K", "cumsum"] + cols, ms_rows),
    ]
    notes = (
        f"\nlog-weights ~ N(0, {args.sigma}^2), float64, shape (G, K); num = K offspring per group.\n"
        f"Target: systematic and stratified <= {TARGET:g}x cumsum (⚠ marks a miss).\n"
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}.\n"
    )
    table = "\n".join(lines) + "\n" + notes
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    return table


if __name__ == "__main__":
    main()
