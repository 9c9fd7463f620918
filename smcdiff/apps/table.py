"""``smcdiff table``: every method on the shipped digits model and discriminator, at matched NFE.

The paper-shaped experiment of this package: on one trained 8×8-digits denoiser and one DG-style
discriminator (:func:`smcdiff.models.pretrained.load_digits_models`), run

* the base EDM Heun sampler at several step counts (the quality-against-NFE curve),
* ε-scaling (EDM-ES), DG (EDM-G++), SEDM-G++, DiffRS, the particle filter (K = 2, 4, 8; EDM
  stochastic variant, arg-max selection) and discriminator-select (best-of-K by the discriminator)
  at :attr:`TableConfig.steps` sampler steps,

each over several seeds, and score the outputs by FD-digits, precision and recall against the
held-out test split (:mod:`smcdiff.metrics.fd_digits`). NFE per output counts every network
evaluation (:class:`~smcdiff.methods.base.CallCounter`), discriminator calls likewise.

Each method gets two verdicts: against the base sampler at the *same steps*, and against the base
sampler at *matched NFE* (the cheapest base run spending at least as many network evaluations per
output), for FD and for precision. "better"/"worse" means a two-sided t-test over seeds rejects
"no difference" at the 5 % level (paired by seed, since runs with the same seed share their
starting noise); otherwise "≈ (within noise)". With one seed there is no verdict.

    >>> cfg = TableConfig.quick()
    >>> cfg.num_samples, len(cfg.seeds), cfg.steps
    (200, 2, 6)
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from smcdiff.methods import registry

__all__ = ["Run", "Summary", "TableConfig", "check_results_folder", "format_markdown", "method_specs", "plot_summary", "read_results",
           "run_table", "summarize", "write_results"]


@dataclass(frozen=True)
class TableConfig:
    """What the table runs. ``base_steps``: step counts of the base curve; ``steps``: the sampler
    steps of every other method; ``num_samples`` outputs per run; one run per seed."""

    num_samples: int = 1000
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 9
    base_steps: tuple[int, ...] = (3, 4, 6, 9, 13, 18, 25, 36, 50, 69)
    particles: tuple[int, ...] = (2, 4, 8)
    select_particles: tuple[int, ...] = (4, 8)
    pf_churn: float = 10.0
    rej_percentile: float = 0.75

    @classmethod
    def quick(cls) -> TableConfig:
        """The ``--quick`` setting (about a minute on 2 CPU cores): fewer samples, seeds and steps."""
        return cls(num_samples=200, seeds=(0, 1), steps=6, base_steps=(3, 6, 12, 24, 48), select_particles=(4,))

    def __post_init__(self):
        if self.num_samples < 40:
            raise ValueError(f"num_samples must be >= 40 (FD-digits estimates a 32x32 covariance), got {self.num_samples}")
        if len(self.seeds) < 1 or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}")
        if self.steps < 2 or min(self.base_steps, default=0) < 2:
            raise ValueError("steps and every base step count must be >= 2")
        if min((*self.particles, *self.select_particles), default=2) < 2:
            raise ValueError("particle counts must be >= 2")


@dataclass(frozen=True)
class Run:
    """One method at one seed: cost and scores."""

    method: str
    family: str
    steps: int
    seed: int
    nfe: float
    disc_calls: float
    seconds: float
    fd: float
    precision: float
    recall: float
    class_tv: float


@dataclass(frozen=True)
class Summary:
    """A method over all seeds: means and standard deviations (``*_std``; 0 with one seed)."""

    method: str
    family: str
    steps: int
    num_seeds: int
    nfe: float
    disc_calls: float
    seconds: float
    fd: float
    fd_std: float
    precision: float
    precision_std: float
    recall: float
    recall_std: float
    class_tv: float
    class_tv_std: float
    vs_same_steps: str = ""
    vs_matched_nfe: str = ""
    precision_vs_matched_nfe: str = ""


@dataclass(frozen=True)
class MethodSpec:
    name: str
    family: str
    steps: int
    fn: Callable
    params: dict = field(default_factory=dict)
    uses_disc: bool = True


def method_specs(cfg: TableConfig) -> list[MethodSpec]:
    """The runs of the table, base curve first."""
    m = registry.method
    n = cfg.steps
    specs = [MethodSpec(f"EDM Heun, {s} steps", "base", s, m("edm"), uses_disc=False) for s in cfg.base_steps]
    specs += [
        MethodSpec("ε-scaling (b = 1.004)", "eps-scaling", n, m("sedm"), uses_disc=False),
        MethodSpec("DG (EDM-G++, w = 2)", "dg", n, m("dg")),
        MethodSpec("SEDM-G++ (b = 1.004, w = 1.67)", "sedm-g++", n, m("sedm")),
        MethodSpec(f"DiffRS (γ = {cfg.rej_percentile})", "diffrs", n, m("diffrs"),
                   dict(rej_percentile=cfg.rej_percentile)),
    ]
    specs += [MethodSpec(f"particle filter, K = {k}", "pf", n, m("pf"),
                         dict(num_particles=k, S_churn=cfg.pf_churn, select="argmax")) for k in cfg.particles]
    specs += [MethodSpec(f"discriminator-select, K = {k}", "select", n, m("d-select"),
                         dict(num_particles=k)) for k in cfg.select_particles]
    return specs


def _real_row(cfg: TableConfig, seed: int, scores: Callable) -> Run:
    from smcdiff.data import load_digits

    train = load_digits("train")[0]
    n = min(cfg.num_samples, train.shape[0])
    idx = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    s = scores(train[idx])
    return Run(f"real images (train split, n = {n})", "real", 0, seed, 0.0, 0.0, 0.0, **s)


def run_table(cfg: TableConfig | None = None, *, models=None, progress: bool = False) -> list[Run]:
    """Run every :func:`method_specs` entry at every seed; returns one :class:`Run` each, the real-data
    floor (training images, same sample size) first."""
    from smcdiff.kernels import karras_sigmas
    from smcdiff.metrics.fd_digits import (
        DigitsFeatures,
        digits_scores,
        reference_features,
    )
    from smcdiff.models.pretrained import load_digits_models

    cfg = TableConfig() if cfg is None else cfg
    models = load_digits_models() if models is None else models
    features = DigitsFeatures(models.classifier)
    ref = reference_features(features)

    def scores(x):
        return digits_scores(x, features=features, ref_features=ref)

    runs = [_real_row(cfg, seed, scores) for seed in cfg.seeds]
    jobs = [(spec, seed) for spec in method_specs(cfg) for seed in cfg.seeds]
    if progress:
        from tqdm.auto import tqdm

        jobs = tqdm(jobs, desc="table")
    shape = tuple(models.denoiser.event_shape)
    for spec, seed in jobs:
        if progress:
            jobs.set_postfix_str(f"{spec.name}, seed {seed}")
        start = time.perf_counter()
        out = spec.fn(models.denoiser, karras_sigmas(spec.steps), log_ratio=models.discriminator if spec.uses_disc else None,
                      num_samples=cfg.num_samples, shape=shape, generator=torch.Generator().manual_seed(seed),
                      **spec.params)
        seconds = time.perf_counter() - start
        if not torch.isfinite(out.x).all():
            raise FloatingPointError(f"{spec.name} (seed {seed}) produced non-finite samples")
        runs.append(Run(spec.name, spec.family, spec.steps, seed, float(out.nfe), float(out.disc_calls), seconds,
                        **scores(out.x)))
    return runs


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if t.numel() > 1 else 0.0


def _verdict(m_runs: Sequence[Run], b_runs: Sequence[Run] | None, key: str = "fd",
             lower_is_better: bool = True) -> str:
    """Compare ``key`` between a method's runs and a base run's, by a two-sided t-test at 5 %.

    Runs with the same seed share their starting noise, so when both cover the same seeds the
    test is paired (the per-seed differences, n − 1 degrees of freedom); otherwise Welch's
    standard error with min(n_m, n_b) − 1 degrees of freedom (conservative). The text gives the
    mean difference ± its standard error; one seed gives no verdict.
    """
    if not b_runs:
        return "—"
    from scipy.stats import t as student_t

    m = {r.seed: getattr(r, key) for r in m_runs}
    b = {r.seed: getattr(r, key) for r in b_runs}
    if set(m) == set(b):
        d = torch.tensor([m[s] - b[s] for s in sorted(m)], dtype=torch.float64)
        n = d.numel()
        diff = float(d.mean())
        se = float(d.std()) / math.sqrt(n) if n > 1 else 0.0
    else:
        mv, bv = (torch.tensor(list(v.values()), dtype=torch.float64) for v in (m, b))
        n = min(mv.numel(), bv.numel())
        diff = float(mv.mean() - bv.mean())
        se = math.sqrt(sum(float(v.var()) / v.numel() for v in (mv, bv) if v.numel() > 1))
    digits = 2 if key == "fd" else 3
    text = f"{b_runs[0].steps} steps (Δ {diff:+.{digits}f} ± {se:.{digits}f})"
    if n < 2:
        return f"n/a (1 seed): {text}"
    significant = abs(diff) > student_t.ppf(0.975, n - 1) * se if se > 0 else diff != 0
    if not significant:
        return f"≈ {text}"
    return f"{'better' if (diff < 0) == lower_is_better else 'worse'} than {text}"


def summarize(runs: Sequence[Run]) -> list[Summary]:
    """Mean ± std over seeds per method (in first-seen order), with the verdicts of :func:`_verdict`."""
    order: dict[str, list[Run]] = {}
    for r in runs:
        order.setdefault(r.method, []).append(r)
    out = []
    for name, rs in order.items():
        stats = {k: _mean_std([getattr(r, k) for r in rs]) for k in ("fd", "precision", "recall", "class_tv")}
        out.append(Summary(name, rs[0].family, rs[0].steps, len(rs), _mean_std([r.nfe for r in rs])[0],
                           _mean_std([r.disc_calls for r in rs])[0], _mean_std([r.seconds for r in rs])[0],
                           stats["fd"][0], stats["fd"][1], stats["precision"][0], stats["precision"][1],
                           stats["recall"][0], stats["recall"][1], stats["class_tv"][0], stats["class_tv"][1]))
    base = sorted((s for s in out if s.family == "base"), key=lambda s: s.nfe)
    final = []
    for s in out:
        if s.family not in ("base", "real"):
            same = next((b for b in base if b.steps == s.steps), None)
            matched = next((b for b in base if b.nfe >= s.nfe - 1e-9), None)
            mine = order[s.method]
            beyond = f"no base run reaches {s.nfe:.0f} NFE"
            s = replace(s, vs_same_steps=_verdict(mine, order[same.method]) if same else "—",
                        vs_matched_nfe=_verdict(mine, order[matched.method]) if matched else beyond,
                        precision_vs_matched_nfe=_verdict(mine, order[matched.method], "precision", False)
                        if matched else beyond)
        final.append(s)
    return final


def format_markdown(summaries: Sequence[Summary]) -> str:
    """The results table in markdown (FD-digits, precision, recall, class TV: mean ± std over seeds)."""
    lines = ["| method | steps | NFE / output | disc. calls / output | FD-digits ↓ | precision ↑ | recall ↑ | "
             "class TV ↓ | s / run | FD vs base, same steps | FD vs base, matched NFE | precision vs base, matched NFE |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for s in summaries:
        steps = "—" if s.family == "real" else str(s.steps)
        lines.append(
            f"| {s.method} | {steps} | {s.nfe:.1f} | {s.disc_calls:.1f} | {s.fd:.2f} ± {s.fd_std:.2f} | "
            f"{s.precision:.3f} ± {s.precision_std:.3f} | {s.recall:.3f} ± {s.recall_std:.3f} | "
            f"{s.class_tv:.3f} ± {s.class_tv_std:.3f} | {s.seconds:.1f} | {s.vs_same_steps or '—'} | "
            f"{s.vs_matched_nfe or '—'} | {s.precision_vs_matched_nfe or '—'} |")
    return "\n".join(lines)


def plot_summary(summaries: Sequence[Summary], path) -> None:
    """FD-digits, precision and recall against NFE per output (log axis): the base curve as a
    line, every other method as a marker, the real-data floor dashed (the PF paper's figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from smcdiff.diagnostics.nfe_figure import MARKERS, finish_nfe_figure

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), layout="constrained")
    base = sorted((s for s in summaries if s.family == "base"), key=lambda s: s.nfe)
    real = next((s for s in summaries if s.family == "real"), None)
    others = [s for s in summaries if s.family not in ("base", "real")]
    panels = (("fd", "FD-digits (lower is better)"), ("precision", "precision"), ("recall", "recall"))
    for ax, (key, _) in zip(axes, panels):
        ax.errorbar([s.nfe for s in base], [getattr(s, key) for s in base],
                    yerr=[getattr(s, key + "_std") for s in base], color="k", marker=".", capsize=2,
                    label="EDM Heun (base), by steps")
        for j, s in enumerate(others):
            ax.errorbar(s.nfe, getattr(s, key), yerr=getattr(s, key + "_std"), marker=MARKERS[j % len(MARKERS)],
                        color=f"C{j % 10}", ms=7, capsize=2, ls="none", label=s.method)
        if real is not None:
            ax.axhline(getattr(real, key), color="0.5", ls="--", lw=1, label="real images (floor)")
    axes[0].set_yscale("log")
    finish_nfe_figure(fig, axes, [label for _, label in panels],
                      "8×8 digits: sample quality against network budget (mean ± std over seeds)", path)


BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _generated_block(cfg: TableConfig, summaries: Sequence[Summary], manifest: dict, image_name: str,
                     command: str, seconds: float, threads: int, weights: str) -> str:
    acc = manifest.get("discriminator_heldout_accuracy", {})
    acc_text = ", ".join(f"σ = {k}: {v:.3f}" for k, v in acc.items())
    return "\n".join([
        BEGIN,
        f"Command: `{command}` — {len(summaries)} rows, {len(cfg.seeds)} seeds × {cfg.num_samples} samples per "
        f"run, total {seconds / 60:.1f} min on {platform.machine()}, torch threads: {threads} "
        f"(torch {torch.__version__}).",
        "",
        format_markdown(summaries),
        "",
        f"![FD-digits, precision and recall against NFE]({image_name})",
        "",
        f"Models: {weights}, classifier test accuracy "
        f"{manifest.get('classifier_test_accuracy', float('nan')):.3f}; discriminator held-out accuracy "
        f"(test images vs fresh samples) {acc_text}.",
        END,
    ])


def _block_span(path: Path) -> tuple[str | None, int, int]:
    """``(text, start of BEGIN, start of END)`` of an existing results file (``(None, -1, -1)`` if none)."""
    if not path.exists():
        return None, -1, -1
    old = path.read_text()
    start = old.find(BEGIN)
    stop = -1 if start < 0 else old.find(END, start)
    if stop < 0:
        raise ValueError(f"{path} exists without a {BEGIN} ... {END} block; move it away or add the markers")
    return old, start, stop


def check_results_folder(folder, name: str = "results") -> None:
    """Raise ``ValueError`` now (before a long run) if :func:`write_results` would refuse ``folder``."""
    _block_span(Path(folder) / f"{name}.md")


def write_results(cfg: TableConfig, runs: Sequence[Run], folder, *, manifest: dict, command: str, seconds: float,
                  threads: int | None = None, weights: str = "the shipped weights (`smcdiff/assets/digits`)",
                  name: str = "results") -> Path:
    """Write ``{name}.md``, ``{name}.png`` and ``{name}.json`` to ``folder``; return the markdown path.

    The markdown is the generated block between ``BEGIN`` and ``END``; in an existing file only
    that block is replaced (text around it is kept), and an existing file without the markers is
    refused rather than overwritten. The json holds every run, the command, seconds, torch
    threads, the models' manifest and the ``weights`` label, so :func:`read_results` can re-render.
    """
    folder = Path(folder)
    path = folder / f"{name}.md"
    old, start, stop = _block_span(path)
    folder.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads() if threads is None else threads
    summaries = summarize(runs)
    plot_summary(summaries, folder / f"{name}.png")
    (folder / f"{name}.json").write_text(json.dumps(
        {"config": asdict(cfg), "command": command, "seconds": seconds, "threads": threads, "weights": weights,
         "manifest": manifest, "runs": [asdict(r) for r in runs]}, indent=1) + "\n")
    block = _generated_block(cfg, summaries, manifest, f"{name}.png", command, seconds, threads, weights)
    text = f"# Digits results\n\n{block}\n" if old is None else old[:start] + block + old[stop + len(END):]
    path.write_text(text)
    return path


def read_results(path) -> tuple[TableConfig, list[Run], dict]:
    """``(config, runs, record)`` from a ``results.json`` written by :func:`write_results`."""
    record = json.loads(Path(path).read_text())
    cfg = record["config"]
    cfg = TableConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    return cfg, [Run(**r) for r in record["runs"]], record
