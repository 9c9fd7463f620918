"""``smcdiff steer``: the steering methods at equal cost, against exact answers (benchmark A) and on
the digits (benchmark B, :mod:`smcdiff.apps.steer_digits`).

**Benchmark A.** Target ``p(x0)·exp r(x0)`` for the Gaussian-mixture priors and quadratic rewards of
:mod:`smcdiff.models.tilted` (2-D and 8-D), where the tilted mixture, its component weights and
``log Z`` are closed forms. Every method runs at the budgets ``b × C`` per output, ``C`` the base
sampler's cost (Euler–Maruyama, ``steps`` network calls). **Cost model:** one unit per denoiser
forward, per denoiser backward, per reward forward and per reward backward; each method's
particle count is the largest that fits the budget (at least 1, so at ``b = 1`` the methods that
cost more than the base sampler per particle run over budget: the ``cost`` column says by how
much). Errors of the outputs (one per group: a weighted draw for samplers, the best for searches):
total variation between the component weights (mean responsibilities under the exact target)
and the exact ones, sliced Wasserstein-1 to exact samples (:func:`smcdiff.metrics.sliced_wasserstein`,
64 directions), and ``|log mean_g Ẑ_g − log Z|`` where a method estimates Z. Mean ± standard
error over seeds; the row ``exact`` is the metrics' floor (exact draws of the same size).

    $ smcdiff steer exact --quick --out runs/steer          # < 2 min on 2 cores
    $ python -m smcdiff.apps.steer exact --out docs/steering   # the full table (budgets 1-64, 5 seeds)

    >>> rows = benchmark_exact(problems=("2d",), methods=("fk",), budgets=(1,), seeds=(0,), num_samples=16, steps=8)
    >>> sorted(rows[0])[:4]
    ['budget', 'cost', 'log_z_error', 'method']
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from smcdiff.kernels import EulerMaruyama, karras_sigmas
from smcdiff.methods.fk_correctors import fkc
from smcdiff.methods.reward_steering import fk_steering
from smcdiff.methods.search_over_noise import noise_search
from smcdiff.methods.tempered_smc import das
from smcdiff.methods.tree_search import dts
from smcdiff.methods.twisted_smc import tds
from smcdiff.metrics.samples import sliced_wasserstein
from smcdiff.models.tilted import component_weights, example_2d, example_8d

__all__ = ["BUDGETS", "EXACT_METHODS", "benchmark_exact", "cost_of", "figure", "fmt_estimate", "main", "markdown", "plan",
           "summarise"]

BUDGETS = (1, 4, 16, 64)
PROBLEMS = {"2d": lambda: example_2d("quadratic"), "8d": lambda: example_8d("quadratic")}


def _fk(den, sig, K, **kw):
    return fk_steering(den, sig, num_particles=K, ess_threshold=0.5, **kw)


def _sir(den, sig, K, **kw):  # importance resampling: the reward at the end only
    return fk_steering(den, sig, num_particles=K, window=(len(sig) - 2, len(sig) - 2), **kw)


def _best(den, sig, K, **kw):  # best-of-N on the same EM base sampler
    return noise_search(den, sig, num_particles=K, rounds=1, mode="random", kernel=EulerMaruyama(), **kw)


def _dts(den, sig, K, **kw):
    return dts(den, sig, num_particles=K, **kw)


def _dts_star(den, sig, K, **kw):
    return dts(den, sig, num_particles=K, selection="greedy", **kw)


def _twisted(method):
    return lambda den, sig, K, **kw: method(den, sig, num_particles=K, ess_threshold=0.5, **kw)


#: name -> (run(denoiser, sigmas, K, **convention), per-particle cost for N steps, greedy?)
EXACT_METHODS: dict[str, tuple[Callable, Callable[[int], float], bool]] = {
    "best-of-n": (_best, lambda N: N + 1, True),
    "sir": (_sir, lambda N: N + 1, False),
    "fk": (_fk, lambda N: 2 * N, False),
    "tds": (_twisted(tds), lambda N: 5 * N, False),
    "das": (_twisted(das), lambda N: 5 * N, False),
    "fkc": (_twisted(fkc), lambda N: 3 * N, False),
    "dts": (_dts, lambda N: N + 1, False),
    "dts*": (_dts_star, lambda N: N + 1, True),
}


def plan(method: str, budget: int, steps: int) -> int:
    """Particles (rollouts for DTS) of ``method`` for ``budget`` × the base cost ``steps``: >= 1."""
    return max(1, int(budget * steps // EXACT_METHODS[method][1](steps)))


def cost_of(res) -> float:
    """Cost per output of a method's result: denoiser forwards (``nfe``) and backwards
    (``diagnostics["grad_nfe"]``), reward forwards (``disc_calls``) and backwards
    (``diagnostics["reward_grad_calls"]``)."""
    d = res.diagnostics
    return float(res.nfe + d.get("grad_nfe", 0.0) + res.disc_calls + d.get("reward_grad_calls", 0.0))


def _log_z_error(res, log_z: float) -> float:
    le = res.log_evidence
    if le is None or not bool(torch.isfinite(le).all()):
        return math.nan
    return abs(float(torch.logsumexp(le, 0) - math.log(le.shape[0])) - log_z)


def benchmark_exact(problems=("2d", "8d"), methods=tuple(EXACT_METHODS), budgets=BUDGETS, seeds=(0, 1, 2, 3, 4),
                    num_samples: int = 512, steps: int = 32, num_reference: int = 4096, progress=None) -> list[dict]:
    """Run benchmark A; one row per (problem, method, budget, seed) with its metrics."""
    rows, sigmas = [], karras_sigmas(steps)
    for pname in problems:
        tilt = PROBLEMS[pname]()
        d = tilt.prior.dim
        for seed in seeds:
            ref = tilt.target.sample(num_reference, torch.Generator().manual_seed(10_000 + seed))
            for mname in ("exact",) + tuple(methods):
                for budget in (budgets if mname != "exact" else (1,)):
                    start = time.perf_counter()
                    if mname == "exact":
                        x, cost, lz = tilt.target.sample(num_samples, torch.Generator().manual_seed(20_000 + seed)), 0.0, math.nan
                        K = 0
                    else:
                        K = plan(mname, budget, steps)
                        res = EXACT_METHODS[mname][0](tilt.prior.denoise, sigmas, K, reward=tilt.reward,
                                                      num_samples=num_samples, shape=(d,),
                                                      generator=torch.Generator().manual_seed(seed))
                        x, cost, lz = res.x, cost_of(res), _log_z_error(res, float(tilt.log_z))
                    tv = 0.5 * float((component_weights(tilt.target, x) - tilt.target.weights).abs().sum())
                    sw = sliced_wasserstein(x.reshape(-1, d), ref, torch.Generator().manual_seed(seed), 64)
                    rows.append({"problem": pname, "method": mname, "budget": budget, "seed": seed, "particles": K,
                                 "cost": cost / steps, "tv": tv, "sw": sw, "log_z_error": lz,
                                 "seconds": round(time.perf_counter() - start, 3)})
                    if progress:
                        progress(rows[-1])
    return rows


def summarise(rows: list[dict], metrics=("cost", "tv", "sw", "log_z_error")) -> list[dict]:
    """Mean ± standard error over seeds for each (problem, method, budget)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["problem"], r["method"], r["budget"]), []).append(r)
    out = []
    for (p, m, b), rs in groups.items():
        entry = {"problem": p, "method": m, "budget": b, "particles": rs[0]["particles"], "seeds": len(rs)}
        for k in metrics:
            v = torch.tensor([r[k] for r in rs], dtype=torch.float64)
            entry[k] = float(v.mean())
            entry[k + "_se"] = float(v.std() / math.sqrt(len(rs))) if len(rs) > 1 else math.nan
        out.append(entry)
    return out


def fmt_estimate(v, se, digits=3):
    """``"v ± se"`` with ``digits`` decimals; "—" for NaN, no ``±`` for a NaN s.e. (one seed)."""
    if math.isnan(v):
        return "—"
    return f"{v:.{digits}f}" if math.isnan(se) else f"{v:.{digits}f} ± {se:.{digits}f}"


def markdown(summary: list[dict]) -> str:
    """The summary as a markdown table per problem."""
    lines = []
    for p in dict.fromkeys(s["problem"] for s in summary):
        lines += [f"\n**{p}** (cost in units of the base sampler's NFE; mean ± s.e. over seeds)\n",
                  "| method | budget | K | cost | TV(weights) | SW-1 | abs log-Z error |", "|---|---|---|---|---|---|---|"]
        for s in (s for s in summary if s["problem"] == p):
            lines.append(f"| {s['method']} | {s['budget']}× | {s['particles']} | {s['cost']:.2f} | "
                         f"{fmt_estimate(s['tv'], s['tv_se'])} | {fmt_estimate(s['sw'], s['sw_se'])} | "
                         f"{fmt_estimate(s['log_z_error'], s['log_z_error_se'])} |")
    return "\n".join(lines) + "\n"


def figure(summary: list[dict], path, metrics=("tv", "sw", "log_z_error")):
    """Error against cost (log scale), one panel per problem and metric; saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = list(dict.fromkeys(s["problem"] for s in summary))
    names = [m for m in dict.fromkeys(s["method"] for s in summary) if m not in ("exact", "real")]
    colour = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(names)}  # one colour per method everywhere
    fig, axes = plt.subplots(len(problems), len(metrics), figsize=(4.2 * len(metrics), 3.3 * len(problems)),
                             squeeze=False)
    for i, p in enumerate(problems):
        for j, k in enumerate(metrics):
            ax = axes[i][j]
            for m in dict.fromkeys(s["method"] for s in summary if s["problem"] == p):
                pts = sorted((s for s in summary if s["problem"] == p and s["method"] == m), key=lambda s: s["cost"])
                if m in ("exact", "real"):  # the metric's floor at this sample size
                    if not math.isnan(pts[0][k]):
                        ax.axhline(pts[0][k], color="k", ls=":", lw=1, label=f"{m} (floor)")
                    continue
                if all(math.isnan(s[k]) for s in pts):
                    continue
                ax.errorbar([max(s["cost"], 0.5) for s in pts], [s[k] for s in pts],
                            yerr=[0 if math.isnan(s[k + "_se"]) else s[k + "_se"] for s in pts], marker="o", ms=3,
                            capsize=2, label=m, color=colour[m])
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{p}: {k}")
            ax.set_xlabel("cost per output / base NFE")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


_STEER_EPILOG = """\
benchmarks:
  exact   A: steering toward closed-form tilted Gaussian mixtures (2-D and 8-D); error against the
          exact target (TV of component weights, sliced W1, log-Z error) at 1/4/16/64 x base NFE
  digits  B: class-conditional digits from the unconditional model, scored by a classifier trained
          apart on held-out data (accuracy, FD-digits, precision/recall)

examples:
  smcdiff steer exact --quick --out runs/steer
  smcdiff steer exact --out docs/steering          # the tables in docs/steering.md (~5 min)
  smcdiff steer digits --seeds 3 --out docs/steering
"""


def _add_arguments(parser) -> None:
    parser.add_argument("benchmark", choices=("exact", "digits"), help="A: exact mixtures; B: digits")
    parser.add_argument("--quick", action="store_true", help="a small run (< 2 min) for the test suite")
    parser.add_argument("--out", default="runs/steer", help="output folder (results.json, table.md, figure.png)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 5, quick 2)")


def add_steer_parser(sub, command) -> None:
    """Add ``smcdiff steer`` to the subparsers ``sub`` (``command`` makes a subcommand parser)."""
    p = command(sub, "steer", help="steering benchmarks: FK, TDS, DAS, FKC, DTS, noise search vs best-of-N",
                description=__doc__.split("\n\n")[0], epilog=_STEER_EPILOG)
    _add_arguments(p)
    p.set_defaults(func=run_steer)


def run_steer(args) -> int:
    """Run one benchmark (parsed ``args``) and write its json, markdown table and figure."""
    argv = list(getattr(args, "argv", None) or [args.benchmark])
    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; expected a folder")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.benchmark == "exact":
        seeds = tuple(range(args.seeds or (2 if args.quick else 5)))
        kw = {"budgets": (1, 4), "num_samples": 64, "steps": 32, "problems": ("2d",)} if args.quick else {}
        rows = benchmark_exact(seeds=seeds, **kw)
        summary, name = summarise(rows), "exact"
        metrics = ("tv", "sw", "log_z_error")
    else:
        from smcdiff.apps.steer_digits import (
            benchmark_digits,
            markdown_digits,
            summarise_digits,
        )

        rows = benchmark_digits(quick=args.quick, seeds=args.seeds)
        summary, name, metrics = summarise_digits(rows), "digits", ("accuracy", "fd", "precision")
    seconds = round(time.perf_counter() - start, 1)
    (out / f"{name}.json").write_text(json.dumps({"command": "smcdiff steer " + " ".join(argv), "seconds": seconds,
                                                   "threads": torch.get_num_threads(), "rows": rows,
                                                   "summary": summary}, indent=1) + "\n")
    table = markdown(summary) if name == "exact" else markdown_digits(summary)
    (out / f"{name}.md").write_text(table)
    figure(summary, out / f"{name}.png", metrics)
    print(table)
    print(f"{name}: {seconds} s; wrote {out}/{name}.json, .md, .png")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="smcdiff steer", description=__doc__.split("\n\n")[0],
                                     epilog=_STEER_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    return run_steer(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
