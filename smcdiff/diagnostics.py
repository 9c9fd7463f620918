"""Diagnostics of an SMC run: ArviZ export, a three-panel plot, a text summary.

Every function takes the result of :func:`smcdiff.sample` (a :class:`~smcdiff.sampling.SampleResult`)
or of :func:`smcdiff.engine.run` (an :class:`~smcdiff.engine.SMCResult`) and only reads it.

* :func:`to_arviz` — an ArviZ 0.23 ``InferenceData`` that round-trips through NetCDF
  (``idata.to_netcdf(path)``, ``arviz.from_netcdf(path)``); the layout is below.
* :func:`plot` — one PNG with (a) ESS/K against the noise level σ, one line per group, resampling
  events marked; (b) the final normalised weights, sorted, as K·w (1 = uniform); (c) the genealogy
  of one group: which particle each particle descends from, showing how lineages coalesce.
* :func:`summary` — a few lines of text: final ESS, resampling events, log-evidence over groups.

Layout of :func:`to_arviz` (G groups = ArviZ *chains*, K particles = *draws*, T steps)::

    posterior
        x                        (chain, draw, x_dim_0, ...)  final particles (a dict state gives
                                                              one variable per entry)
    sample_stats
        log_weight               (chain, draw)   unnormalised final log-weights (-inf = weight 0)
        log_marginal_likelihood  (chain,)        log-evidence estimate of each run (PyMC's name)
    log_likelihood                               absent when the run has no potential
        <name>                   (chain, draw)   final value of each named potential term
                                                 (``named_potentials``), else ``potential``
    smc_diagnostics
        ess                      (step, chain)   effective sample size after step t, before
                                                 resampling, in particles (divide by K for ESS/K)
        log_evidence_increment   (step, chain)   log Z_t - log Z_{t-1}; sums over the steps to
                                                 log_marginal_likelihood
        resampled                (step, chain)   int8: 1 if the group was resampled after step t
        ancestors                (step, chain, draw)  int64: ancestors[t, g, k] is the index (after
                                                 step t's move) of particle k's parent; identity
                                                 where not resampled
        sigma                    (step,)         noise level reached by step t (sigmas[1:]), when
                                                 the result has a schedule
        accept_rate              (step, chain)   acceptance rate of rejection control, when used

NetCDF has no boolean type, so ``resampled`` is stored as int8 (0/1) in memory and on disk alike,
with the CF attributes ``flag_values = [0, 1]`` and ``flag_meanings = "kept resampled"``;
``idata.smc_diagnostics.resampled.astype(bool)`` gives the flags.

Coordinates are ``chain = 0..G-1``, ``draw = 0..K-1``, ``step = 0..T-1``. Every group carries
ArviZ's attributes (``created_at``, ``arviz_version``, ``inference_library``) and ``created_by =
"smcdiff <version>"``; the root attributes add ``num_groups``, ``num_particles``, ``num_steps``
and, for a diffusion run, ``nfe`` (network evaluations per particle) and ``nfe_total``.

Example::

    >>> import torch, smcdiff
    >>> from smcdiff.models import GaussianMixture
    >>> from smcdiff.resampling import Resampler
    >>> from smcdiff.diagnostics import to_arviz, plot, summary
    >>> gmm = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-2.0, 0.0], [2.0, 0.0]]),
    ...                       torch.tensor([0.1, 0.1]))
    >>> res = smcdiff.sample(gmm.denoise, smcdiff.karras_sigmas(16), smcdiff.kernels.EDMHeun(S_churn=10),
    ...                      potential=lambda x, sigma, x0_hat: -0.5 * (x0_hat[:, 0] - 1.0) ** 2,
    ...                      resampler=Resampler("systematic", 0.5),
    ...                      num_groups=4, num_particles=64, shape=(2,),
    ...                      generator=torch.Generator().manual_seed(0))
    >>> idata = to_arviz(res)
    >>> idata.posterior["x"].dims
    ('chain', 'draw', 'x_dim_0')
    >>> idata.smc_diagnostics["ess"].shape          # (step, chain)
    (16, 4)
    >>> path = idata.to_netcdf("run.nc")            # read back with arviz.from_netcdf("run.nc")
    >>> plot(res, "run.png", title="two-mode mixture, tilted towards x = 1")
    >>> print(summary(res))                         # doctest: +ELLIPSIS
    smcdiff run: 4 groups x 64 particles, 16 steps...

``to_arviz`` imports ArviZ only when called (ArviZ 0.23 prints a ``FutureWarning`` about its
coming refactor on the first import of the day); ``plot`` draws on a standalone Agg figure and
never touches pyplot's global state or backend.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    import arviz

__all__ = ["to_arviz", "plot", "summary"]

_REQUIRED = ("x", "log_weights", "log_evidence", "ess", "resampled", "ancestors", "log_evidence_increments")
_MAX_GROUPS_DRAWN = 16
_MAX_LINEAGES = 128


# ----------------------------------------------------------------------------- reading a result


@dataclass(frozen=True)
class _Run:
    """A result's fields as NumPy arrays (copies), validated against (G, K, T)."""

    G: int
    K: int
    T: int
    x: dict[str, np.ndarray]  # name -> (G, K, ...); empty unless read with_x
    log_weights: np.ndarray  # (G, K)
    log_evidence: np.ndarray  # (G,)
    ess: np.ndarray  # (T, G)
    resampled: np.ndarray  # (T, G) bool
    ancestors: np.ndarray  # (T, G, K) int64
    increments: np.ndarray  # (T, G)
    sigma: np.ndarray | None  # (T,)
    accept_rate: np.ndarray | None  # (T, G)
    potentials: dict[str, np.ndarray]  # name -> (G, K)
    nfe: float | None
    nfe_total: int | None


def _array(value: Any, name: str) -> np.ndarray:
    """A copy of ``value`` (tensor or ndarray) as NumPy; low-precision floats become float32."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
            t = t.to(torch.float32)  # float16 / bfloat16: no NetCDF type
        return t.numpy().copy()
    if isinstance(value, np.ndarray):
        return value.copy()
    raise TypeError(f"result.{name} must be a torch.Tensor, got {type(value).__name__}")


def _expect(arr: np.ndarray, shape: tuple[int, ...], name: str, meaning: str) -> np.ndarray:
    if arr.shape != shape:
        raise ValueError(f"result.{name} must have shape {meaning} = {shape}, got {arr.shape}")
    return arr


def _name(name: Any) -> str:
    return str(name).replace("/", "_")  # "/" separates groups in NetCDF


def _read(result: Any, with_x: bool = True) -> _Run:
    """Validate ``result`` and copy its fields (``x`` only when ``with_x``: plots do not need it)."""
    missing = [name for name in _REQUIRED if getattr(result, name, None) is None]
    if missing:
        raise TypeError(
            f"expected an SMCResult / SampleResult (from smcdiff.sample or smcdiff.engine.run), "
            f"got a {type(result).__name__} missing {', '.join(missing)}"
        )
    log_w = _array(result.log_weights, "log_weights")
    if log_w.ndim != 2:
        raise ValueError(f"result.log_weights must have shape (G, K), got {log_w.shape}")
    G, K = log_w.shape
    ess = _array(result.ess, "ess")
    if ess.ndim != 2:
        raise ValueError(f"result.ess must have shape (T, G), got {ess.shape}")
    T = ess.shape[0]
    _expect(ess, (T, G), "ess", "(T, G)")

    raw_x = result.x
    items = raw_x.items() if isinstance(raw_x, Mapping) else [("x", raw_x)]
    x = {}
    for name, value in items:
        shape = tuple(getattr(value, "shape", ()))
        if shape[:2] != (G, K):
            raise ValueError(f"result.x entry {name!r} must have leading dims (G, K) = ({G}, {K}), got {shape}")
        if with_x:
            x[_name(name)] = _array(value, f"x[{name!r}]" if isinstance(raw_x, Mapping) else "x")
    ancestors = _expect(_array(result.ancestors, "ancestors"), (T, G, K), "ancestors", "(T, G, K)").astype(np.int64)
    if ancestors.size and (ancestors.min() < 0 or ancestors.max() >= K):
        raise ValueError(f"result.ancestors must be particle indices in [0, {K - 1}], "
                         f"got values in [{ancestors.min()}, {ancestors.max()}]")

    sigma = None
    if getattr(result, "sigmas", None) is not None:
        sigmas = _array(result.sigmas, "sigmas")
        sigma = _expect(sigmas, (T + 1,), "sigmas", "(T + 1,)")[1:]
    accept = None
    if getattr(result, "accept_rate", None) is not None:
        accept = _expect(_array(result.accept_rate, "accept_rate"), (T, G), "accept_rate", "(T, G)")

    named = getattr(result, "named_potentials", None)
    if named:
        potentials = {
            _name(n): _expect(_array(v, f"named_potentials[{n!r}]"), (G, K), f"named_potentials[{n!r}]", "(G, K)")
            for n, v in named.items()
        }
    elif getattr(result, "potential", None) is not None:
        potentials = {"potential": _expect(_array(result.potential, "potential"), (G, K), "potential", "(G, K)")}
    else:
        potentials = {}

    nfe = getattr(result, "nfe", None)
    nfe_total = getattr(result, "nfe_total", None)
    return _Run(
        G=G, K=K, T=T, x=x,
        log_weights=log_w.astype(np.float64),
        log_evidence=_expect(_array(result.log_evidence, "log_evidence"), (G,), "log_evidence", "(G,)"),
        ess=ess,
        resampled=_expect(_array(result.resampled, "resampled"), (T, G), "resampled", "(T, G)").astype(bool),
        ancestors=ancestors,
        increments=_expect(_array(result.log_evidence_increments, "log_evidence_increments"), (T, G),
                           "log_evidence_increments", "(T, G)"),
        sigma=sigma,
        accept_rate=accept,
        potentials=potentials,
        nfe=float(nfe) if isinstance(nfe, (int, float)) else None,
        nfe_total=int(nfe_total) if isinstance(nfe_total, int) else None,
    )


def _version() -> str:
    import smcdiff

    return getattr(smcdiff, "__version__", "unknown")


# ----------------------------------------------------------------------------- ArviZ export


def to_arviz(result) -> arviz.InferenceData:
    """Export a run to an ArviZ 0.23 ``InferenceData`` (layout in the module docstring).

    ``result`` : an :class:`~smcdiff.engine.SMCResult` or :class:`~smcdiff.sampling.SampleResult`
    with ``x : (G, K, ...)`` (or a dict of such), ``log_weights : (G, K)``, ``log_evidence : (G,)``,
    ``ess``, ``resampled``, ``log_evidence_increments : (T, G)`` and ``ancestors : (T, G, K)``;
    optional ``sigmas : (T + 1,)``, ``potential : (G, K)``, ``named_potentials`` (name → (G, K)),
    ``accept_rate : (T, G)``, ``nfe``, ``nfe_total``. G groups become chains, K particles draws.
    The arrays are copies: the InferenceData does not share memory with the result's tensors.
    Raises ``TypeError`` when a required field is missing, ``ValueError`` when a shape disagrees.
    """
    run = _read(result)
    import arviz as az
    import xarray as xr

    version = _version()
    group_attrs = {
        "created_at": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "arviz_version": az.__version__,
        "inference_library": "smcdiff",
        "inference_library_version": version,
        "created_by": f"smcdiff {version}",
    }
    chain = np.arange(run.G)
    draw = np.arange(run.K)
    step = np.arange(run.T)

    def particles(name: str, arr: np.ndarray) -> xr.DataArray:
        dims = ("chain", "draw") + tuple(f"{name}_dim_{i}" for i in range(arr.ndim - 2))
        return xr.DataArray(arr, dims=dims)

    event_coords = {f"{name}_dim_{i}": np.arange(n) for name, arr in run.x.items() for i, n in enumerate(arr.shape[2:])}
    posterior = xr.Dataset({name: particles(name, arr) for name, arr in run.x.items()},
                           coords={"chain": chain, "draw": draw, **event_coords}, attrs=group_attrs)
    sample_stats = xr.Dataset(
        {
            "log_weight": xr.DataArray(run.log_weights, dims=("chain", "draw"),
                                       attrs={"long_name": "unnormalised final log-weight"}),
            "log_marginal_likelihood": xr.DataArray(run.log_evidence, dims=("chain",),
                                                    attrs={"long_name": "log-evidence estimate of the run"}),
        },
        coords={"chain": chain, "draw": draw}, attrs=group_attrs,
    )
    diag = {
        "ess": xr.DataArray(run.ess, dims=("step", "chain"),
                            attrs={"long_name": "effective sample size after the step, before resampling",
                                   "units": "particles"}),
        "log_evidence_increment": xr.DataArray(run.increments, dims=("step", "chain"),
                                               attrs={"long_name": "increment of the log-evidence estimate"}),
        "resampled": xr.DataArray(run.resampled.astype(np.int8), dims=("step", "chain"),
                                  attrs={"long_name": "resampled after the step",
                                         "flag_values": np.array([0, 1], dtype=np.int8),
                                         "flag_meanings": "kept resampled"}),
        "ancestors": xr.DataArray(run.ancestors, dims=("step", "chain", "draw"),
                                  attrs={"long_name": "parent index of each particle after the step's resampling"}),
    }
    if run.sigma is not None:
        diag["sigma"] = xr.DataArray(run.sigma, dims=("step",), attrs={"long_name": "noise level reached by the step"})
    if run.accept_rate is not None:
        diag["accept_rate"] = xr.DataArray(run.accept_rate, dims=("step", "chain"),
                                           attrs={"long_name": "acceptance rate of rejection control"})
    smc_diagnostics = xr.Dataset(diag, coords={"step": step, "chain": chain, "draw": draw}, attrs=group_attrs)

    groups = {"posterior": posterior, "sample_stats": sample_stats}
    if run.potentials:
        groups["log_likelihood"] = xr.Dataset(
            {name: xr.DataArray(arr, dims=("chain", "draw")) for name, arr in run.potentials.items()},
            coords={"chain": chain, "draw": draw}, attrs=group_attrs,
        )
    groups["smc_diagnostics"] = smc_diagnostics

    attrs: dict[str, Any] = {"created_by": f"smcdiff {version}", "num_groups": run.G,
                             "num_particles": run.K, "num_steps": run.T}
    if run.nfe is not None:
        attrs["nfe"] = run.nfe
    if run.nfe_total is not None:
        attrs["nfe_total"] = run.nfe_total
    return az.InferenceData(attrs=attrs, **groups)


# ----------------------------------------------------------------------------- plot


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


def _sigma_axis(ax, run: _Run) -> np.ndarray:
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


def _panel_ess(ax, run: _Run, colors) -> None:
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


def _panel_weights(ax, run: _Run, colors) -> None:
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


def _panel_genealogy(ax, run: _Run, group: int) -> None:
    """(c) one group's genealogy: a segment from each particle's parent at step t to it at step t+1."""
    from matplotlib.collections import LineCollection
    from matplotlib.ticker import FixedLocator, MaxNLocator

    T, K = run.T, run.K
    anc = run.ancestors[:, group, :]
    every = K <= _MAX_LINEAGES
    roots = np.arange(K) if every else np.unique(np.linspace(0, K - 1, _MAX_LINEAGES).round().astype(int))
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
    run = _read(result, with_x=False)
    if not isinstance(group, int) or not 0 <= group < run.G:
        raise ValueError(f"group must be an int in [0, {run.G - 1}], got {group!r}")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15.0, 4.8), dpi=100)
    # A fixed layout: every label fits at this size, and it draws twice as fast as a constrained one.
    ax_ess, ax_w, ax_gen = fig.subplots(1, 3, gridspec_kw=dict(left=0.045, right=0.99, bottom=0.11, top=0.83,
                                                                wspace=0.24))
    colors = _colors(min(run.G, _MAX_GROUPS_DRAWN))
    _panel_ess(ax_ess, run, colors)
    _panel_weights(ax_w, run, colors)
    _panel_genealogy(ax_gen, run, group)
    default = f"smcdiff: {_plural(run.G, 'group')} × {_plural(run.K, 'particle')}, {_plural(run.T, 'step')}"
    fig.suptitle(default if title is None else title, fontsize=12)
    fig.savefig(path, format="png")


# ----------------------------------------------------------------------------- summary


def summary(result) -> str:
    """A short text table of a run: final ESS/K (mean/min/max over groups), resampling events per
    group, NFE per particle, the log-evidence mean ± sd over groups and, when present, the mean
    acceptance rate of rejection control."""
    run = _read(result, with_x=False)
    final = run.ess[-1] / run.K
    events = run.resampled.sum(axis=0)
    head = f"smcdiff run: {run.G} groups x {run.K} particles, {run.T} steps"
    if run.nfe is not None:
        head += f", NFE/particle {run.nfe:g}"
    logz = run.log_evidence.astype(float)
    spread = f"   (sd over groups {logz.std(ddof=1):.4f})" if run.G > 1 else ""
    lines = [
        head,
        f"{'':22s}{'mean':>10s}{'min':>10s}{'max':>10s}",
        f"{'final ESS / K':22s}{final.mean():10.3f}{final.min():10.3f}{final.max():10.3f}",
        f"{'resampling events':22s}{events.mean():10.2f}{events.min():10d}{events.max():10d}",
        f"{'log-evidence':22s}{logz.mean():10.4f}{logz.min():10.4f}{logz.max():10.4f}{spread}",
    ]
    if run.accept_rate is not None:
        acc = run.accept_rate.mean(axis=0)
        lines.append(f"{'accept rate':22s}{acc.mean():10.3f}{acc.min():10.3f}{acc.max():10.3f}")
    return "\n".join(lines)
