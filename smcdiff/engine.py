"""The generic Feynman–Kac loop: sequential Monte Carlo that knows nothing of diffusion.

A *model* is anything with

* ``num_steps`` — the number of steps T,
* ``init(num_groups, num_particles, generator) -> x`` — the initial state,
* ``move(t, x, generator) -> x_new`` — the proposal kernel M_t,
* ``log_potential(t, x_prev, x) -> (G, K)`` — the log-potential log G_t,

where a state ``x`` is a tensor or a dict of tensors, each with leading dims ``(G, K)`` (G groups =
independent SMC runs, K particles each). Dict entries follow their particle through resampling, so
extras such as the previous potential value or x̂0 stay attached to the right particle. The loop is

    for t in range(T):
        x_new = move(t, x);  log_w += log_potential(t, x, x_new);  x = x_new
        if t < T - 1: resample the groups whose ESS fell below the threshold

and :func:`run` returns an immutable :class:`SMCResult`. Log-weights are never re-centred: a
resampled group gets equal weights carrying the group's running mean weight, so
``log_evidence = logsumexp(log_w) - log K`` estimates log Z after every step, whether or not a
step resampled (steps that skip resampling keep their weights; nothing is dropped).

Example — a bootstrap particle filter for a random walk observed with noise::

    import torch
    from smcdiff import engine
    from smcdiff.resampling import Resampler
from smcdiff.resampling import ess as ess_of

    class RandomWalk:
        num_steps = 10
        def init(self, G, K, generator):
            return torch.zeros(G, K, dtype=torch.float64)
        def move(self, t, x, generator):
            return x + torch.randn(x.shape, generator=generator, dtype=x.dtype)
        def log_potential(self, t, x_prev, x):
            return -0.5 * (x - 1.0) ** 2          # observation y_t = 1, unit noise (unnormalised)

    res = engine.run(RandomWalk(), 4, 1000, Resampler("systematic", 0.5),
                     torch.Generator().manual_seed(0))
    res.log_evidence          # (4,) one estimate per group
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from smcdiff import _rng
from smcdiff.resampling import Resampler
from smcdiff.resampling import ess as ess_of
from smcdiff.types import GeneratorSpec, State, Tensor

__all__ = ["SMCResult", "StepInfo", "SMCFailedError", "RejectionControl", "run", "gather", "check_model"]

_MODEL_API = ("num_steps", "init", "move", "log_potential")


class SMCFailedError(ValueError):
    """Every particle of some group has zero weight (log-weight −inf or NaN)."""


@dataclass(frozen=True)
class StepInfo:
    """What a ``callback`` sees after step ``t`` (before resampling is applied to ``x``).

    ``log_weights : (G, K)``, ``ess : (G,)``, ``log_evidence : (G,)``, ``resampled : (G,)`` (whether
    the groups are resampled after this step), ``x`` the state after the move.
    """

    t: int
    x: State
    log_weights: Tensor
    ess: Tensor
    log_evidence: Tensor
    resampled: Tensor


@dataclass(frozen=True)
class SMCResult:
    """The outcome of :func:`run`.

    ``x`` final state (G, K, ...); ``log_weights : (G, K)`` unnormalised final log-weights;
    ``log_evidence : (G,)`` estimate of log Z per group; per-step records ``ess : (T, G)``,
    ``resampled : (T, G)`` (resampled after step t; the last row is always False),
    ``ancestors : (T, G, K)`` (the indices applied after step t; identity where not resampled) and
    ``log_evidence_increments : (T, G)`` (they sum to ``log_evidence``); ``accept_rate : (T, G)``
    with rejection control, else None; ``history`` per-step records kept only when asked
    (``record_history=True``): ``log_weights : (T, G, K)`` after each step's weighting, before
    resampling (front-ends add their own, e.g. potential values).
    """

    x: State
    log_weights: Tensor
    log_evidence: Tensor
    ess: Tensor
    resampled: Tensor
    ancestors: Tensor
    log_evidence_increments: Tensor
    accept_rate: Tensor | None = None
    history: Mapping[str, Tensor] = field(default_factory=dict)

    @property
    def weights(self) -> Tensor:
        """Normalised weights (G, K), summing to one in each group."""
        return torch.softmax(self.log_weights, dim=-1)

    def to_arviz(self):
        """This result as an ArviZ ``InferenceData`` (see :func:`smcdiff.diagnostics.to_arviz`)."""
        from smcdiff.diagnostics import to_arviz

        return to_arviz(self)

    @property
    def num_groups(self) -> int:
        return self.log_weights.shape[0]

    @property
    def num_particles(self) -> int:
        return self.log_weights.shape[1]


@dataclass(frozen=True)
class RejectionControl:
    """Partial rejection control (Liu, Chen & Wong 1998), usable with any model.

    After the potential of step t, a particle with incremental weight w is accepted with
    probability min(1, w/c); a rejected particle is re-proposed from its previous state
    (``move(t, x_prev)``) until accepted. The accepted particle's weight becomes
    max(w, c)·r̂, where r̂ estimates the acceptance probability r_c(x_prev) without bias: each
    particle keeps proposing until its second acceptance (n trials in all) and r̂ = 1/(n − 1)
    (Haldane's negative-binomial estimator), so weights and evidence stay unbiased. The threshold
    c is ``exp(log_c)`` if given, else the ``quantile`` of the group's incremental weights.
    ``max_rounds`` bounds the proposals per step; particles still short of two acceptances then
    get a biased r̂ (one acceptance: 1/n) or weight zero (none), with a ``RuntimeWarning``.
    """

    quantile: float = 0.5
    log_c: float | None = None
    max_rounds: int = 64

    def __post_init__(self):
        if self.log_c is None and not 0.0 <= self.quantile <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {self.quantile}")
        if not isinstance(self.max_rounds, int) or self.max_rounds < 2:
            raise ValueError(f"max_rounds must be an int >= 2, got {self.max_rounds!r}")


def _rejection_control(model, t, x_prev, x_new, inc, rc: RejectionControl, generator, rc_generator):
    """Apply :class:`RejectionControl` to step t; returns (state, incremental log-weight, accept rate (G,))."""
    G, K = inc.shape
    if rc.log_c is not None:
        log_c = torch.full((G, 1), float(rc.log_c), dtype=inc.dtype, device=inc.device)
    else:
        finite = torch.where(torch.isfinite(inc), inc, torch.full_like(inc, math.nan))
        log_c = torch.nanquantile(finite, rc.quantile, dim=1, keepdim=True)
        log_c = torch.nan_to_num(log_c, nan=0.0)
    count = torch.zeros(G, K, dtype=torch.long, device=inc.device)
    trials = torch.zeros_like(count)
    keep_x, keep_inc = x_new, inc.clone()
    cand_x, cand_inc = x_new, inc
    for r in range(rc.max_rounds):
        if r > 0:
            cand_x = model.move(t, x_prev, generator)
            cand_inc = model.log_potential(t, x_prev, cand_x).to(inc.dtype)
        u = _rng.rand((G, K), rc_generator, dtype=inc.dtype, device=inc.device)
        accept = torch.log(u) < cand_inc - log_c
        active = count < 2
        trials = trials + active.long()
        first = accept & active & (count == 0)
        keep_x = _where(first, cand_x, keep_x)
        keep_inc = torch.where(first, cand_inc, keep_inc)
        count = count + (accept & active).long()
        if bool((count >= 2).all()):
            break
    if bool((count < 2).any()):
        warnings.warn(
            f"rejection control at step {t}: {int((count < 2).sum())} particle(s) did not reach two "
            f"acceptances in max_rounds={rc.max_rounds}; their weights are biased (one acceptance) "
            "or zero (none). Raise max_rounds or lower the threshold.",
            RuntimeWarning,
            stacklevel=3,
        )
    log_r = torch.where(count >= 2, -torch.log((trials - 1).clamp(min=1).to(inc.dtype)),
                        -torch.log(trials.clamp(min=1).to(inc.dtype)))
    new_inc = torch.maximum(keep_inc, log_c) + log_r
    new_inc = torch.where(count > 0, new_inc, torch.full_like(new_inc, -math.inf))
    rate = count.sum(1).to(inc.dtype) / trials.sum(1).clamp(min=1).to(inc.dtype)
    return keep_x, new_inc, rate


def _where(mask: Tensor, a: State, b: State) -> State:
    """Per-particle select between two states: ``mask : (G, K)``."""
    if isinstance(a, Mapping):
        return {k: _where(mask, a[k], b[k]) for k in a}
    return torch.where(mask.reshape(mask.shape + (1,) * (a.dim() - 2)), a, b)


def check_model(model) -> None:
    """Raise ``TypeError`` naming every part of the Feynman–Kac model API that ``model`` lacks."""
    missing = [name for name in _MODEL_API if not hasattr(model, name)]
    if missing:
        raise TypeError(
            f"{type(model).__name__} is not a Feynman–Kac model: missing {', '.join(missing)} "
            "(expected num_steps, init(G, K, generator), move(t, x, generator), "
            "log_potential(t, x_prev, x) -> (G, K))"
        )
    if not isinstance(model.num_steps, int) or model.num_steps < 1:
        raise ValueError(f"model.num_steps must be a positive int, got {model.num_steps!r}")


def _check_state(x: State, G: int, K: int, where: str) -> None:
    items = x.items() if isinstance(x, Mapping) else [("x", x)]
    for name, value in items:
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{where}: state entry {name!r} must be a tensor, got {type(value).__name__}")
        if value.dim() < 2 or tuple(value.shape[:2]) != (G, K):
            raise ValueError(
                f"{where}: state entry {name!r} must have leading dims (G, K) = ({G}, {K}), "
                f"got shape {tuple(value.shape)}"
            )


def gather(x: State, ancestors: Tensor) -> State:
    """Select particles: ``x[g, ancestors[g, k]]`` for every entry of the state.

    ``x`` : tensor or dict of tensors (G, K, ...); ``ancestors : (G, K')`` → state (G, K', ...).
    """
    if isinstance(x, Mapping):
        return {name: gather(value, ancestors) for name, value in x.items()}
    rows = torch.arange(ancestors.shape[0], device=ancestors.device)[:, None]
    return x[rows, ancestors]


def _log_mean_exp(log_w: Tensor) -> Tensor:
    return torch.logsumexp(log_w, dim=-1) - math.log(log_w.shape[-1])


def _fail_message(lse: Tensor, t: int) -> str:
    nan = torch.nonzero(torch.isnan(lse)).flatten().tolist()
    dead = torch.nonzero(torch.isneginf(lse)).flatten().tolist()
    inf = torch.nonzero(torch.isposinf(lse)).flatten().tolist()
    parts = []
    if dead:
        parts.append(f"every particle has weight zero (log-weight -inf) in group(s) {dead}")
    if nan:
        parts.append(f"the log-potential returned NaN in group(s) {nan}")
    if inf:
        parts.append(f"the log-potential returned +inf in group(s) {inf}")
    return f"SMC failed at step {t}: " + "; ".join(parts)


def run(
    model,
    num_groups: int,
    num_particles: int,
    resampler: Resampler | None,
    generator: GeneratorSpec,
    callback: Callable[[StepInfo], None] | None = None,
    *,
    resample_generator: GeneratorSpec | None = None,
    resample_steps=None,
    rejection_control: RejectionControl | None = None,
    record_history: bool = False,
    progress: bool = False,
) -> SMCResult:
    """Run the Feynman–Kac model ``model`` with ``num_groups`` × ``num_particles`` particles.

    ``generator`` (one ``torch.Generator`` or one per group) is handed to ``model.init`` and
    ``model.move``. Resampling draws from ``resample_generator``, by default an independent stream
    derived from ``generator``'s seed without consuming from it — so with K = 1, or with
    resampling off, the particles are exactly those of the model run alone.
    ``resampler=None`` never resamples (importance sampling); ``resample_steps`` (a collection of
    step indices) restricts resampling to after those steps (a fixed schedule; the resampler's
    ESS threshold still applies — use 1.0 to always resample there). ``rejection_control`` applies
    :class:`RejectionControl` at every step. ``callback(StepInfo)`` is called after every step;
    ``record_history=True`` keeps the per-step log-weights (memory T·G·K);
    ``progress=True`` shows a tqdm bar on stderr. Returns an :class:`SMCResult`; raises
    :class:`SMCFailedError` naming the step when some group's weights all become zero.
    """
    check_model(model)
    for name, value in (("num_groups", num_groups), ("num_particles", num_particles)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    _rng.check_generator(generator)
    if resample_generator is None:
        resample_generator = _rng.derive(generator, "smcdiff.resampling")
    G, K, T = num_groups, num_particles, model.num_steps
    if resample_steps is not None:
        resample_steps = frozenset(int(i) for i in resample_steps)
        bad = sorted(i for i in resample_steps if not 0 <= i < T)
        if bad:
            raise ValueError(f"resample_steps must lie in [0, {T - 1}], got {bad}")
    if rejection_control is not None and not isinstance(rejection_control, RejectionControl):
        raise TypeError("rejection_control must be a smcdiff.engine.RejectionControl")
    rc_generator = _rng.derive(generator, "smcdiff.rejection_control") if rejection_control else None

    x = model.init(G, K, generator)
    _check_state(x, G, K, "model.init")
    device = _first_tensor(x).device
    log_w = torch.zeros(G, K, dtype=torch.float64, device=device)
    identity = torch.arange(K, device=device).expand(G, K)
    never = torch.zeros(G, dtype=torch.bool, device=device)
    ess_hist, res_hist, anc_hist, logz_hist, rate_hist, lw_hist = [], [], [], [], [], []

    steps = range(T)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="smc", leave=False)
    for t in steps:
        x_new = model.move(t, x, generator)
        _check_state(x_new, G, K, f"model.move at step {t}")
        inc = model.log_potential(t, x, x_new)
        if not isinstance(inc, torch.Tensor) or tuple(inc.shape) != (G, K):
            shape = tuple(inc.shape) if isinstance(inc, torch.Tensor) else type(inc).__name__
            raise ValueError(f"log_potential at step {t} must return a (G, K) = ({G}, {K}) tensor, got {shape}")
        inc = inc.to(torch.float64)
        if rejection_control is not None:
            x_new, inc, rate = _rejection_control(model, t, x, x_new, inc, rejection_control, generator, rc_generator)
            rate_hist.append(rate)
        log_w = log_w + inc
        x = x_new
        lse = torch.logsumexp(log_w, dim=-1)
        if not bool(torch.isfinite(lse).all()):
            raise SMCFailedError(_fail_message(lse, t))
        logz_hist.append(lse - math.log(K))
        if record_history:
            lw_hist.append(log_w)
        do_resample = resampler is not None and t < T - 1 and (resample_steps is None or t in resample_steps)
        if do_resample:  # the resampler computes the ESS it decides on; record that one
            outcome = resampler(log_w, resample_generator)
            resampled, ancestors, ess = outcome.resampled, outcome.ancestors, outcome.ess
        else:
            resampled, ancestors, ess = never, identity, ess_of(log_w)
        ess_hist.append(ess)
        res_hist.append(resampled)
        anc_hist.append(ancestors)
        if callback is not None:
            callback(StepInfo(t, x, log_w, ess, logz_hist[-1], resampled))
        if do_resample:
            x = gather(x, ancestors)
            flat = (lse - math.log(K))[:, None].expand(G, K)
            log_w = torch.where(resampled[:, None], flat, log_w)

    logz = torch.stack(logz_hist)
    increments = torch.diff(logz, dim=0, prepend=torch.zeros_like(logz[:1]))
    return SMCResult(
        x=x,
        log_weights=log_w,
        log_evidence=_log_mean_exp(log_w),
        ess=torch.stack(ess_hist),
        resampled=torch.stack(res_hist),
        ancestors=torch.stack(anc_hist),
        log_evidence_increments=increments,
        accept_rate=torch.stack(rate_hist) if rate_hist else None,
        history={"log_weights": torch.stack(lw_hist)} if record_history else {},
    )


def _first_tensor(x: State) -> Tensor:
    return next(iter(x.values())) if isinstance(x, Mapping) else x
