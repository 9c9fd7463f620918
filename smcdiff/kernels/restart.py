"""The Restart sampler (Xu et al. 2023) as a kernel, as used by the particle filter of Liu et al. (CVPR 2024).

A Restart run is a deterministic EDM Heun trajectory on the main grid ``sigmas`` plus *restart
intervals*. An interval ``[N_restart, K_restart, t_min, t_max]`` is attached to the main-grid
index ``j`` whose σ_j is nearest to ``t_min``; when the main loop reaches σ_j it repeats
``K_restart`` times:

1. jump forward: ``x ← x + sqrt(t_max² − σ_j²)·S_noise·ε``;
2. run ``N_restart − 1`` Heun steps on an EDM ρ = 7 grid of ``N_restart`` points from ``t_max``
   down to σ_j (the grid ends exactly at the main-grid σ_j, not at ``t_min``), each step with
   churn γ = ``restart_gamma`` where ``S_min ≤ σ ≤ S_max``.

Then the main loop goes on from σ_j. :class:`Restart` is this schedule as one kernel whose step t is
the t-th operation (main step or restart step); in :func:`smcdiff.methods.particle_filter`
(``sampler="restart"``) every repeat starts with a resampling event at σ_j.

Network evaluations per sample (:func:`restart_nfe`) are
``(2·N_main − 1) + Σ_i K_i·2·(N_restart,i − 1)``: 99 for :data:`IMAGENET64_RESTART` and 67 for
:data:`FFHQ64_RESTART` with the 18-step EDM grid (REFERENCE §5a).

Randomness follows EDM: every Heun step (main or restart) draws its churn noise ε from the
generator even when γ = 0, and each jump draws one more ε, in execution order, so a seed fixes the
stream. Specs are the reference code's strings::

    >>> import torch
    >>> from smcdiff.kernels import karras_sigmas
    >>> from smcdiff.kernels.restart import parse_restart, restart_nfe
    >>> from smcdiff.methods import restart_sampler
    >>> from smcdiff.models.pairs import mixture_pair_1d as pair_1d
    >>> data, model, log_ratio = pair_1d()
    >>> intervals = parse_restart("{[3,1,19.35,40.79], [4,1,1.09,1.92], [4,4,0.59,1.09], "
    ...                           "[4,1,0.30,0.59], [4,4,0.06,0.30]}")
    >>> restart_nfe(18, intervals)
    99
    >>> res = restart_sampler(model.denoise, karras_sigmas(18), restart=intervals, num_samples=1000,
    ...                       shape=(1,), generator=torch.Generator().manual_seed(0))
    >>> res.x.shape, res.nfe
    (torch.Size([1000, 1]), 99.0)
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch

from smcdiff import _rng
from smcdiff.kernels.edm import EDMEuler, EDMHeun, levels
from smcdiff.kernels.schedules import karras_sigmas
from smcdiff.kernels.steps import StepOutput, edm_step
from smcdiff.types import Tensor

__all__ = [
    "RestartInterval", "parse_restart", "format_restart", "check_restart", "restart_nfe", "attach_restarts",
    "restart_grid", "restart_jump", "restart_step", "restart_schedule", "ScheduleOp", "Restart",
    "IMAGENET64_RESTART_SPEC", "FFHQ64_RESTART_SPEC", "IMAGENET64_RESTART", "FFHQ64_RESTART",
]


class RestartInterval(NamedTuple):
    """One restart interval: ``num_steps`` grid points (``num_steps − 1`` Heun steps), ``repeats``
    restarts, attached to the main σ nearest ``t_min``, jumping up to ``t_max``."""

    num_steps: int
    repeats: int
    t_min: float
    t_max: float


_BRACKET = re.compile(r"\[([^\[\]]*)\]")
_INT = re.compile(r"^[+]?\d+$")


def _interval(values, where: str) -> RestartInterval:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != 4:
        raise ValueError(f"{where}: expected [num_steps, repeats, t_min, t_max], got {values!r}")
    n, k, lo, hi = values
    for name, v in (("num_steps", n), ("repeats", k)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{where}: {name} must be an int, got {v!r}")
    try:
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: t_min and t_max must be numbers, got {values!r}") from None
    if n < 2:
        raise ValueError(f"{where}: num_steps must be >= 2 (grid points, incl. both ends), got {n}")
    if k < 1:
        raise ValueError(f"{where}: repeats must be >= 1, got {k}")
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise ValueError(f"{where}: expected finite 0 < t_min < t_max, got t_min={lo}, t_max={hi}")
    return RestartInterval(n, k, lo, hi)


def parse_restart(spec: str) -> list[RestartInterval]:
    """Parse ``"{[N, K, t_min, t_max], [...], ...}"`` (braces optional) into intervals.

    ``N`` and ``K`` must be integers, ``0 < t_min < t_max``. Raises ``ValueError`` naming the
    offending part of the spec.
    """
    if not isinstance(spec, str):
        raise ValueError(f"restart spec must be a string like '{{[4,1,1.09,1.92], ...}}', got {type(spec).__name__}")
    body = spec.strip()
    if body.count("{") != body.count("}"):
        raise ValueError(f"unbalanced braces in restart spec {spec!r}")
    if body.startswith("{") and body.endswith("}"):
        body = body[1:-1]
    rest = _BRACKET.sub("", body)
    if rest.replace(",", "").strip():
        raise ValueError(
            f"restart spec {spec!r} has text outside the [N, K, t_min, t_max] brackets: {rest.strip()!r} "
            "(expected '{[N,K,t_min,t_max], ...}'; the number of main steps is an argument of its own)"
        )
    out = []
    for idx, m in enumerate(_BRACKET.finditer(body)):
        parts = [p.strip() for p in m.group(1).split(",")]
        where = f"restart interval {idx} [{m.group(1)}]"
        if len(parts) != 4:
            raise ValueError(f"{where}: expected 4 numbers N, K, t_min, t_max, got {len(parts)}")
        for name, p in zip(("num_steps", "repeats"), parts[:2]):
            if not _INT.match(p):
                raise ValueError(f"{where}: {name} must be an integer, got {p!r}")
        out.append(_interval([int(parts[0]), int(parts[1]), parts[2], parts[3]], where))
    if not out:
        raise ValueError(f"restart spec {spec!r} holds no interval")
    return out


def format_restart(intervals) -> str:
    """The spec string of ``intervals`` (the inverse of :func:`parse_restart`)."""
    ivs = check_restart(intervals)
    return "{" + ", ".join(f"[{iv.num_steps},{iv.repeats},{iv.t_min!r},{iv.t_max!r}]" for iv in ivs) + "}"


def check_restart(intervals) -> list[RestartInterval]:
    """Validate a spec string, or a sequence of intervals / 4-sequences, into RestartIntervals."""
    if isinstance(intervals, str):
        return parse_restart(intervals)
    if isinstance(intervals, RestartInterval) or not isinstance(intervals, Sequence):
        raise ValueError(
            f"restart must be a spec string or a sequence of [num_steps, repeats, t_min, t_max], got {intervals!r}"
        )
    return [_interval(list(iv), f"restart interval {i}") for i, iv in enumerate(intervals)]


def restart_nfe(num_main_steps: int, intervals) -> int:
    """Network evaluations per sample: ``(2·N_main − 1) + Σ_i K_i·2·(N_restart,i − 1)``."""
    if isinstance(num_main_steps, bool) or not isinstance(num_main_steps, int) or num_main_steps < 1:
        raise ValueError(f"num_main_steps must be an int >= 1, got {num_main_steps!r}")
    ivs = check_restart(intervals)
    return 2 * num_main_steps - 1 + sum(iv.repeats * 2 * (iv.num_steps - 1) for iv in ivs)


IMAGENET64_RESTART_SPEC = "{[3,1,19.35,40.79], [4,1,1.09,1.92], [4,4,0.59,1.09], [4,1,0.30,0.59], [4,4,0.06,0.30]}"
FFHQ64_RESTART_SPEC = "{[5,1,1.09,1.92], [5,2,0.59,1.09], [5,1,0.06,0.30]}"
#: The PF paper's ImageNet-64 config (18 main steps → 99 NFE, 11 resampling events).
IMAGENET64_RESTART = tuple(parse_restart(IMAGENET64_RESTART_SPEC))
#: The FFHQ-64 config the paper's plot implies (18 main steps → 67 NFE).
FFHQ64_RESTART = tuple(parse_restart(FFHQ64_RESTART_SPEC))


def attach_restarts(sigmas: Tensor, intervals) -> dict[int, RestartInterval]:
    """Map main-grid index j (1 ≤ j ≤ N−1, σ_j nearest ``t_min``) → interval.

    Raises ``ValueError`` when two intervals land on the same j or ``t_max <= σ_j``.
    """
    ivs = check_restart(intervals)
    N = len(sigmas) - 1
    out: dict[int, RestartInterval] = {}
    if not ivs:
        return out
    if N < 2:
        raise ValueError(f"restart intervals need a main grid of at least 2 steps, got {N}")
    inner = sigmas[1:N]
    for idx, iv in enumerate(ivs):
        j = int(torch.argmin(torch.abs(inner - iv.t_min))) + 1
        t_j = float(sigmas[j])
        if iv.t_max <= t_j:
            raise ValueError(f"restart interval {idx} {list(iv)}: t_max must exceed the attached σ_{j} = {t_j:.6g}")
        if j in out:
            raise ValueError(
                f"restart intervals {list(out[j])} and {list(iv)} both attach to main step {j} (σ = {t_j:.6g})"
            )
        out[j] = iv
    return out


def restart_grid(t_j: float, interval: RestartInterval) -> Tensor:
    """EDM ρ = 7 grid of ``interval.num_steps`` points from ``t_max`` down to ``t_j`` (float64,
    both ends exact, no trailing 0)."""
    grid = karras_sigmas(interval.num_steps, sigma_min=float(t_j), sigma_max=interval.t_max)[:-1].clone()
    grid[0], grid[-1] = interval.t_max, float(t_j)
    return grid


def restart_jump(x: Tensor, t_j: float, t_max: float, S_noise: float, generator) -> Tensor:
    """Restart's forward jump σ_j → t_max: ``x + sqrt(t_max² − t_j²)·S_noise·ε`` (x flat (N, *event))."""
    eps = _rng.randn_batch(x.shape, generator, dtype=x.dtype, device=x.device)
    return x + math.sqrt(t_max**2 - t_j**2) * S_noise * eps


def restart_step(denoiser, x: Tensor, grid: Tensor, m: int, gamma: float, S_noise: float, generator,
                 cond=None) -> StepOutput:
    """Heun step ``m`` of a restart grid, with churn ``gamma`` (the noise is drawn even when γ = 0)."""
    t_cur, t_next = levels(x, grid, m)
    noise = _rng.randn_batch(x.shape, generator, dtype=x.dtype, device=x.device)
    return edm_step(denoiser, x, t_cur, t_next, gamma=gamma, S_noise=S_noise, noise=noise, cond=cond)


def restart_gamma_at(t: float, restart_gamma: float, S_min: float, S_max: float) -> float:
    """Restart's churn: ``restart_gamma`` where ``S_min ≤ t ≤ S_max``, else 0."""
    return restart_gamma if S_min <= t <= S_max else 0.0


class ScheduleOp(NamedTuple):
    """One step of a schedule with restarts: main Heun step ``index`` of ``sigmas``, or Heun step
    ``index`` of the restart ``grid`` with churn ``gamma``. ``jump``: the forward jump
    ``grid[-1] → grid[0]`` (σ_j → t_max, both exact) comes first; ``j`` is the main-grid index of
    the σ_j a restart op returns to."""

    kind: str  # "main" | "restart"
    index: int
    grid: Tensor | None = None
    jump: bool = False
    gamma: float = 0.0
    j: int = -1


def restart_schedule(sigmas: Tensor, attached: Mapping[int, RestartInterval], restart_gamma: float,
                     S_min: float, S_max: float) -> list[ScheduleOp]:
    """The steps of the Restart sampler in order: each main step ``i``, then, if an interval is
    attached at ``i + 1`` (:func:`attach_restarts`), its ``repeats`` × (jump + ``num_steps − 1``
    restart steps)."""
    ops = []
    for i in range(len(sigmas) - 1):
        ops.append(ScheduleOp("main", i))
        iv = attached.get(i + 1)
        if iv is None:
            continue
        grid = restart_grid(float(sigmas[i + 1]), iv)
        for _ in range(iv.repeats):
            for m in range(iv.num_steps - 1):
                gamma = restart_gamma_at(float(grid[m]), restart_gamma, S_min, S_max)
                ops.append(ScheduleOp("restart", m, grid, m == 0, gamma, i + 1))
    return ops


@functools.lru_cache(maxsize=32)
def _plan(sigmas: tuple, intervals: tuple, restart_gamma: float, S_min: float, S_max: float) -> tuple:
    grid = torch.tensor(sigmas, dtype=torch.float64)
    return tuple(restart_schedule(grid, attach_restarts(grid, list(intervals)), restart_gamma, S_min, S_max))


class Restart:
    """The Restart sampler as one kernel: step t of a run is operation t of :func:`restart_schedule`.

    ``Restart(base=EDMHeun(), intervals=IMAGENET64_RESTART, restart_gamma=0.05)``: main steps are
    ``base`` steps on the main grid (told ``resampled``/``carry`` like any kernel); each repeat of
    an interval jumps up to t_max and runs Heun steps with churn ``restart_gamma`` (where
    ``base.S_min ≤ σ ≤ base.S_max``) and ``base.S_noise``. :func:`smcdiff.sample` asks it for
    :meth:`num_steps` and :meth:`sigma_after`; :meth:`repeat_starts` gives the steps after which a
    repeat begins (the particle filter resamples there).
    """

    stochastic = True  # the jumps add fresh noise

    def __init__(self, base: EDMEuler | None = None, intervals=IMAGENET64_RESTART, restart_gamma: float = 0.05):
        base = EDMHeun() if base is None else base
        if not isinstance(base, EDMEuler):
            raise TypeError(f"Restart's base must be an EDMEuler/EDMHeun kernel, got {base!r}")
        restart_gamma = float(restart_gamma)
        if not (math.isfinite(restart_gamma) and restart_gamma >= 0):
            raise ValueError(f"restart_gamma must be finite and >= 0, got {restart_gamma}")
        self.base, self.intervals, self.restart_gamma = base, tuple(check_restart(intervals)), restart_gamma

    def ops(self, sigmas: Tensor) -> tuple:
        """The operations of the run on main grid ``sigmas`` (:class:`ScheduleOp`)."""
        return _plan(tuple(sigmas.tolist()), self.intervals, self.restart_gamma, self.base.S_min, self.base.S_max)

    def num_steps(self, sigmas: Tensor) -> int:
        return len(self.ops(sigmas))

    def sigma_after(self, sigmas: Tensor, t: int) -> Tensor:
        """The noise level reached by step t (float64 scalar tensor)."""
        op = self.ops(sigmas)[t]
        return sigmas[op.index + 1] if op.kind == "main" else op.grid[op.index + 1]

    def step_grid(self, sigmas: Tensor, t: int) -> tuple[Tensor, int]:
        """The grid and index step t runs on: ``(sigmas, i)`` for main step i, ``(grid, m)`` for
        restart step m (what guidance transforms bind to)."""
        op = self.ops(sigmas)[t]
        return (sigmas, op.index) if op.kind == "main" else (op.grid, op.index)

    def repeat_starts(self, sigmas: Tensor) -> dict[int, int]:
        """{step t after which a repeat begins: main-grid index j of the σ_j it starts from}."""
        return {k - 1: op.j for k, op in enumerate(self.ops(sigmas)) if op.jump}

    def __call__(self, denoiser, x, sigmas, t, generator, cond=None, **context) -> StepOutput:
        op = self.ops(sigmas)[t]
        if op.kind == "main":
            return self.base(denoiser, x, sigmas, op.index, generator, cond, **context)
        if op.jump:  # restart: jump up to t_max, then come back down to σ_j
            x = restart_jump(x, float(op.grid[-1]), float(op.grid[0]), self.base.S_noise, generator)
        return restart_step(denoiser, x, op.grid, op.index, op.gamma, self.base.S_noise, generator, cond)

    def __repr__(self) -> str:
        return f"Restart({self.base!r}, {format_restart(self.intervals)!r}, restart_gamma={self.restart_gamma})"
