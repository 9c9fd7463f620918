"""PNG diagnostics of SMC results: ESS against σ, final weights, genealogy."""

from __future__ import annotations

import math
from os import PathLike
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    pass

from smcdiff.engine.records import MAX_GROUPS_DRAWN, MAX_LINEAGES, RunArrays, read_run


def _genealogy(ancestors: np.ndarray, roots: np.ndarray) -> np.ndarray:
    """``alive[t, k]``: particle k after step t's move has a descendant among ``roots`` at step T−1.

    ``ancestors : (T, K)`` of one group; particle k after step t+1 descends from ``ancestors[t, k]``.
    """
    T, K = ancestors.shape
    alive = np.zeros((T, K), dtype=bool)
    alive[T - 1, roots] = True
    for t in range(T - 2, -1, -1):
        alive[t, ancestors[t, alive[t + 1]]] = True
    return alive


def _sigma_axis(ax, run: RunArrays) -> np.ndarray:
    """x positions of the T steps on ``ax``: σ reached (log scale, decreasing), or the step number."""
    if run.sigma is None or not np.isfinite(run.sigma).all():
        ax.set_xlabel("step")
        return np.arange(1, run.T + 1, dtype=float)
    from matplotlib.ticker import NullFormatter

    sigma = run.sigma.astype(float)
    positive = sigma[sigma > 0]
    # σ = 0 (the last step) has no place on a log axis: draw it a little beyond the smallest σ.
    zero_at = positive.min() / 4.0 if positive.size else 1.0
    xs = np.where(sigma > 0, sigma, zero_at)
    ax.set_xscale("log")
    lo, hi = xs.min(), xs.max()
    ax.set_xlim(hi * 1.5, lo / 1.5)  # decreasing left to right, as the sampler runs
    if (sigma <= 0).any():
        decades = ([10.0**e for e in range(math.ceil(math.log10(positive.min())), math.floor(math.log10(hi)) + 1)]
                   if positive.size else [])
        ax.set_xticks(decades + [zero_at], labels=[f"{v:g}" for v in decades] + ["0"])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("noise level σ reached by the step")
    return xs


def _colors(n: int):
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    return [colormaps["viridis"](v) for v in np.linspace(0.0, 0.92, n)]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _panel_ess(ax, run: RunArrays, colors) -> None:
    """(a) ESS/K after each step along the schedule; hollow circles where a group was resampled."""
    from matplotlib.lines import Line2D

    xs = _sigma_axis(ax, run)
    shown = len(colors)
    for g in range(shown):
        y = run.ess[:, g] / run.K
        ax.plot(xs, y, color=colors[g], lw=1.2, marker="." if run.T <= 64 else None, ms=4, label=f"group {g}")
        r = run.resampled[:, g]
        if r.any():
            ax.scatter(xs[r], y[r], s=40, facecolors="none", edgecolors=colors[g], linewidths=1.2, zorder=3)
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("ESS / K")
    which = f"groups 0–{shown - 1} of {run.G}" if shown < run.G else _plural(run.G, "group")
    ax.set_title(f"(a) ESS / K ({which}; {_plural(int(run.resampled.sum()), 'resampling event')})", fontsize=10)
    handles = [Line2D([], [], ls="", marker="o", mfc="none", mec="0.2", label="resampled after this step")]
    if shown <= 8:
        handles = ax.get_legend_handles_labels()[0] + handles
    ax.legend(handles=handles, fontsize=7, loc="best")
    ax.grid(alpha=0.3)


def _panel_weights(ax, run: RunArrays, colors) -> None:
    """(b) final normalised weights of each group, sorted, as K·w on a log axis."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    K = run.K
    w = np.exp(run.log_weights - run.log_weights.max(axis=1, keepdims=True))
    w = K * w / w.sum(axis=1, keepdims=True)  # (G, K); 1 = uniform
    ranks = np.arange(1, K + 1)
    for g in range(len(colors)):
        kw = np.sort(w[g])[::-1]
        ax.plot(ranks, np.where(kw > 0, kw, np.nan), color=colors[g], lw=1.2, marker="." if K <= 64 else None, ms=4)
    ax.axhline(1.0, color="0.3", ls="--", lw=0.8, label="uniform (K·w = 1)")
    ax.set_yscale("log")
    top = w[: len(colors)].max()
    positive = w[: len(colors)][w[: len(colors)] > 0]
    bottom = max(positive.min(), top * 1e-12)  # zero weights are not drawn
    ax.set_ylim(min(bottom, 1.0) / 1.5, max(top, 1.0) * 1.5)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    # Label some minor ticks (leading digit, × 10^n) when the range is narrow; never 9, next to 10.
    digits = "2345678" if top / bottom < 4 else "235" if top / bottom < 1e3 else ""
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:e}"[0] in digits else ""))
    ax.set_xlim(0.5, K + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("particle rank (heaviest first)")
    ax.set_ylabel("K · normalised weight")
    ess = K / (w**2).sum(axis=1)  # ESS/K = 1 / (K Σ p²) with p = w / K
    ax.set_title(f"(b) final weights (ESS/K over groups: mean {ess.mean():.2f}, min {ess.min():.2f})", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)


def _panel_genealogy(ax, run: RunArrays, group: int) -> None:
    """(c) one group's genealogy: a segment from each particle's parent at step t to it at step t+1."""
    from matplotlib.collections import LineCollection
    from matplotlib.ticker import FixedLocator, MaxNLocator

    T, K = run.T, run.K
    anc = run.ancestors[:, group, :]
    every = K <= MAX_LINEAGES
    roots = np.arange(K) if every else np.unique(np.linspace(0, K - 1, MAX_LINEAGES).round().astype(int))
    alive = _genealogy(anc, roots)
    lw = 0.9 if K <= 64 else 0.5
    if T > 1:
        t_idx, k_idx = np.meshgrid(np.arange(T - 1), np.arange(K), indexing="ij")
        segs = np.stack([np.stack([t_idx, anc[:-1]], -1), np.stack([t_idx + 1, k_idx], -1)], axis=-2)
        survive = alive[1:]
        if every:  # extinct branches too; with a subset of lineages they would be every other line
            ax.add_collection(LineCollection(segs[~survive], colors="0.78", linewidths=lw * 0.6))
        ax.add_collection(LineCollection(segs[survive], colors="C0", linewidths=lw))
    roots_0 = np.flatnonzero(alive[0])
    ax.scatter(np.zeros(roots_0.size), roots_0, s=10 if K <= 64 else 3, color="C3", zorder=3)
    ax.set_xlim(-0.5, T - 0.5)
    ax.set_ylim(-0.5, K - 0.5)
    for axis, n in ((ax.xaxis, T), (ax.yaxis, K)):
        axis.set_major_locator(FixedLocator(range(n)) if n <= 10 else MaxNLocator(integer=True))
    ax.set_xlabel("step t (σ decreasing →)")
    ax.set_ylabel("particle index")
    if every:
        head, tail = "all lineages, grey: extinct", f"{roots_0.size} of {K} initial particles (red) have descendants"
    else:
        head = f"{roots.size} of {K} lineages traced"
        tail = f"they descend from {roots_0.size} of {K} initial particles (red)"
    ax.set_title(f"(c) genealogy of group {group} ({head})\n{tail}", fontsize=10)


def plot(result, path: str | PathLike, *, title: str | None = None, group: int = 0) -> None:
    """Write a PNG (1500 × 480 pixels) with three panels describing the run ``result``.

    (a) ESS/K after each step (``ess : (T, G)`` / K) against the σ reached (log axis, decreasing
    left to right, σ = 0 drawn just past the smallest σ; the step number when the result has no
    schedule), one line per group for the first 16 groups, hollow circles where ``resampled``;
    (b) the final normalised weights of each group, sorted, as K·w on a log axis (1 = uniform; zero
    weights are not drawn); (c) the genealogy of group ``group`` from ``ancestors : (T, G, K)``: a
    segment from each particle's parent at step t to the particle at step t+1, blue where the
    lineage reaches the end, grey where it dies out (with K > 128, only the lineages of 128 evenly
    spaced final particles). Works for any G, K, T ≥ 1, with or without resampling. ``result`` is
    read as by :func:`to_arviz` (same errors). Draws on a standalone Agg figure: no pyplot state,
    no display.
    """
    run = read_run(result, with_x=False)
    if not isinstance(group, int) or not 0 <= group < run.G:
        raise ValueError(f"group must be an int in [0, {run.G - 1}], got {group!r}")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15.0, 4.8), dpi=100)
    # A fixed layout: every label fits at this size, and it draws twice as fast as a constrained one.
    ax_ess, ax_w, ax_gen = fig.subplots(1, 3, gridspec_kw=dict(left=0.045, right=0.99, bottom=0.11, top=0.83,
                                                                wspace=0.24))
    colors = _colors(min(run.G, MAX_GROUPS_DRAWN))
    _panel_ess(ax_ess, run, colors)
    _panel_weights(ax_w, run, colors)
    _panel_genealogy(ax_gen, run, group)
    default = f"smcdiff: {_plural(run.G, 'group')} × {_plural(run.K, 'particle')}, {_plural(run.T, 'step')}"
    fig.suptitle(default if title is None else title, fontsize=12)
    fig.savefig(path, format="png")


# ----------------------------------------------------------------------------- summary


