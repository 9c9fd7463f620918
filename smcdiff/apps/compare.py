"""``smcdiff compare``: every method on one exact-mixture problem, at matched network budgets.

The problem: a 2-D *data* mixture and an imperfect *model* mixture (wrong weights and shifted
means), exact denoisers for both, and the exact log density ratio as a perfect discriminator.
Each method turns model samples into (approximately) data samples. The error is measured
against the exact data distribution: the component-weight error (the mean responsibility of each
data component against its weight) and the sliced 1-Wasserstein distance to a fresh exact sample
of the same size. The noise floor of the second is printed too: the same distance between two
exact samples. The last column is a sampler check by likelihood: the mean log-density of the
outputs under the data mixture (exact here; for a learned model use :func:`smcdiff.likelihood.log_prob`),
which the exact data sample's row bounds in expectation (its value is E_q[log q], the negative
entropy; a sampler whose outputs score higher is concentrating on the modes).

    >>> from smcdiff.apps.compare import run_compare, format_rows
    >>> rows = run_compare(num_samples=64, steps=6, num_particles=2)
    >>> [r.method for r in rows][:3]
    ['exact data sample (noise floor)', 'edm', 'edm (matched NFE of K=2)']
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from smcdiff.kernels import karras_sigmas
from smcdiff.methods import registry
from smcdiff.metrics.samples import sliced_wasserstein
from smcdiff.models.pairs import mixture_pair_2d

__all__ = ["CompareRow", "compare_problem", "run_compare", "format_rows", "plot_rows"]

F64 = torch.float64


@dataclass(frozen=True)
class CompareRow:
    method: str
    steps: int
    nfe: float
    disc_calls: float
    weight_error: float
    sliced_w1: float
    seconds: float
    mean_log_p: float = float("nan")


def compare_problem():
    """(data mixture, model mixture, exact log ratio ℓ(x, σ)): :func:`smcdiff.models.pairs.mixture_pair_2d`."""
    return mixture_pair_2d()


def _runs(K: int, steps: int):
    m = registry.method
    matched = (K * (2 * steps - 1) + 1) // 2  # base steps with about the NFE of K particles
    return [
        ("edm", steps, m("edm"), {}),
        (f"edm (matched NFE of K={K})", matched, m("edm"), {}),
        ("eps-scaling (b=1.004)", steps, m("sedm"), dict(log_ratio=None)),
        ("dg (w1=2)", steps, m("dg"), {}),
        ("sedm-g++", steps, m("sedm"), {}),
        ("diffrs (γ=0.75)", steps, m("diffrs"), dict(rej_percentile=0.75)),
        (f"particle filter K={K}, argmax", steps, m("pf"), dict(num_particles=K, S_churn=10.0, select="argmax")),
        (f"particle filter K={K}, weighted", steps, m("pf"), dict(num_particles=K, S_churn=10.0, select="weighted")),
        (f"discriminator-select K={K}", steps, m("d-select"), dict(num_particles=K)),
    ]


def run_compare(num_samples: int = 2000, steps: int = 18, num_particles: int = 4, seed: int = 0,
                progress: bool = False) -> list[CompareRow]:
    """Run every method on :func:`compare_problem`; returns one :class:`CompareRow` per method."""
    data, model, ell = compare_problem()
    exact = data.sample(num_samples, torch.Generator().manual_seed(seed + 1))
    floor_gen = torch.Generator().manual_seed(seed + 2)
    floor = sliced_wasserstein(data.sample(num_samples, torch.Generator().manual_seed(seed + 3)), exact, floor_gen)
    rows = [CompareRow("exact data sample (noise floor)", 0, 0.0, 0.0,
                       (data.responsibilities(exact).mean(0) - data.weights).abs().max().item(), floor, 0.0,
                       data.log_prob(exact).mean().item())]
    runs = _runs(num_particles, steps)
    if progress:
        from tqdm.auto import tqdm

        runs = tqdm(runs, desc="compare")
    for name, n_steps, fn, params in runs:
        kwargs = {"log_ratio": ell, **params}
        start = time.perf_counter()
        out = fn(model.denoise, karras_sigmas(n_steps), num_samples=num_samples, shape=(2,),
                 generator=torch.Generator().manual_seed(seed), **kwargs)
        seconds = time.perf_counter() - start
        werr = (data.responsibilities(out.x).mean(0) - data.weights).abs().max().item()
        sw = sliced_wasserstein(out.x, exact, torch.Generator().manual_seed(seed + 2))
        rows.append(CompareRow(name, n_steps, out.nfe, out.disc_calls, werr, sw, seconds, data.log_prob(out.x).mean().item()))
    return rows


def format_rows(rows) -> str:
    """A markdown table of comparison rows."""
    lines = ["| method | steps | NFE/output | disc. calls/output | weight error | sliced W1 | seconds | mean log p_data |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.method} | {r.steps} | {r.nfe:.1f} | {r.disc_calls:.1f} | {r.weight_error:.4f} | "
                     f"{r.sliced_w1:.4f} | {r.seconds:.2f} | {r.mean_log_p:.4f} |")
    return "\n".join(lines)


def plot_rows(rows, path) -> None:
    """Error against NFE per output (log axis), one marker per method, like the PF paper's figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from smcdiff.diagnostics.nfe_figure import MARKERS, finish_nfe_figure

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4), layout="constrained")
    floor = rows[0]
    panels = (("weight_error", "component-weight error"), ("sliced_w1", "sliced W1 to exact data"))
    for ax, (attr, _) in zip(axes, panels):
        for j, r in enumerate(rows[1:]):
            ax.scatter(r.nfe, getattr(r, attr), s=55, marker=MARKERS[j % len(MARKERS)], color=f"C{j % 10}",
                       alpha=0.8, label=r.method, zorder=3)
        ax.axhline(getattr(floor, attr), color="0.5", ls="--", lw=1, label="exact sample (noise floor)")
    finish_nfe_figure(fig, axes, [label for _, label in panels],
                      "model → data correction on an exact 2-D mixture (perfect discriminator)", path, dpi=110)
