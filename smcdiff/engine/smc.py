"""The generic Feynman–Kac loop: sequential Monte Carlo that knows nothing of diffusion.

A *model* is anything with

* ``num_steps`` — the number of steps T,
* ``init(num_groups, num_particles, generator) -> x`` — the initial state,
* ``move(t, x, generator) -> x_new`` — the proposal kernel M_t,
* ``log_potential(t, x_prev, x) -> (G, K)`` — the log-potential log G_t,

and optionally

* ``on_resample(t, x, resampled) -> x`` — told which groups (``resampled : (G,)`` bool) were just
  resampled after step t (a diffusion kernel uses it to re-diversify the copies),
* ``check(x) -> str | None`` — a description of any fault recorded in the state (non-finite network
  output, say), read at the engine's failure checks,

where a state ``x`` is a tensor or a (nested) dict of tensors, each with leading dims ``(G, K)``
(G groups = independent SMC runs, K particles each). Dict entries follow their particle through
resampling. The engine is three pure functions:

* :func:`init` → an immutable :class:`SMCState` (the particles, their log-weights, the streams);
* :func:`step` → ``(SMCState, StepInfo)``: move, weight, and resample the groups whose ESS fell
  below the threshold (never after the last step);
* :func:`run` — the loop over :func:`step`, stacking the :class:`StepInfo` records into an
  :class:`SMCResult`. Driving :func:`step` yourself gives the same result, bit for bit.

Log-weights are never re-centred: a resampled group gets equal weights carrying the group's running
mean weight, so ``log_evidence = logsumexp(log_w) - log K`` estimates log Z after every step,
whether or not a step resampled (skipped steps keep their weights; nothing is dropped).

Example — a bootstrap particle filter for a random walk observed with noise::

    import torch
    from smcdiff import engine
    from smcdiff.resampling import Resampler

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

    state = engine.init(RandomWalk(), 4, 1000, torch.Generator().manual_seed(0))
    for t in range(10):       # the same run, one step at a time
        state, info = engine.step(RandomWalk(), state, t, Resampler("systematic", 0.5))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from smcdiff import _rng
from smcdiff.checks import check_size, check_steps
from smcdiff.engine.export import to_arviz
from smcdiff.engine.rejection_control import RejectionControl, apply_rejection_control
from smcdiff.resampling import Resampler
from smcdiff.resampling import ess as ess_of
from smcdiff.types import GeneratorSpec, State, Tensor

__all__ = ["SMCState", "StepInfo", "SMCResult", "SMCFailedError", "init", "step", "run", "gather",
           "check_model"]

_MODEL_API = ("num_steps", "init", "move", "log_potential")


class SMCFailedError(ValueError):
    """Every particle of some group has zero weight (log-weight −inf or NaN), or the model reported
    a fault (a non-finite network output, say); the message names the step and the source."""


class SMCState(NamedTuple):
    """The engine's state between steps (immutable; :func:`step` returns a new one).

    ``x`` the particles (G, K, ...); ``log_weights : (G, K)`` float64, never re-centred;
    ``generator`` the model's stream(s); ``resample_generator`` and ``rc_generator`` the streams of
    resampling and rejection control, derived from ``generator`` without consuming it.
    """

    x: State
    log_weights: Tensor
    generator: GeneratorSpec
    resample_generator: GeneratorSpec
    rc_generator: GeneratorSpec | None


class StepInfo(NamedTuple):
    """The record of step ``t`` (what a ``callback`` sees; ``x`` and ``log_weights`` before resampling).

    ``ess : (G,)``, ``log_evidence : (G,)`` the running estimate of log Z, ``resampled : (G,)``
    (resampled after this step), ``ancestors : (G, K)`` (identity where not resampled),
    ``accept_rate : (G,)`` with rejection control, else None.
    """

    t: int
    x: State
    log_weights: Tensor
    ess: Tensor
    log_evidence: Tensor
    resampled: Tensor
    ancestors: Tensor
    accept_rate: Tensor | None = None


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

    @property
    def num_groups(self) -> int:
        return self.log_weights.shape[0]

    @property
    def num_particles(self) -> int:
        return self.log_weights.shape[1]

    def to_arviz(self):
        """This result as an ArviZ ``InferenceData`` (layout in :mod:`smcdiff.diagnostics`)."""
        return to_arviz(self)


def check_model(model) -> None:
    """Raise ``TypeError`` naming every part of the Feynman–Kac model API that ``model`` lacks."""
    missing = [name for name in _MODEL_API if not hasattr(model, name)]
    if missing:
        raise TypeError(
            f"{type(model).__name__} is not a Feynman–Kac model: missing {', '.join(missing)} "
            "(expected num_steps, init(G, K, generator), move(t, x, generator), "
            "log_potential(t, x_prev, x) -> (G, K))"
        )
    if isinstance(model.num_steps, bool) or not isinstance(model.num_steps, int) or model.num_steps < 1:
        raise ValueError(f"model.num_steps must be a positive int, got {model.num_steps!r}")


def _check_state(x: State, G: int, K: int, where: str, name: str = "x") -> None:
    if isinstance(x, Mapping):
        for key, value in x.items():
            _check_state(value, G, K, where, f"{name}[{key!r}]" if name != "x" else repr(key))
        return
    if x is None:
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where}: state entry {name} must be a tensor, got {type(x).__name__}")
    if x.dim() < 2 or tuple(x.shape[:2]) != (G, K):
        raise ValueError(f"{where}: state entry {name} must have leading dims (G, K) = ({G}, {K}), "
                         f"got shape {tuple(x.shape)}")


def gather(x: State, ancestors: Tensor) -> State:
    """Select particles: ``x[g, ancestors[g, k]]`` for every entry of the (nested) state.

    ``x`` : tensor or dict of tensors (G, K, ...); ``ancestors : (G, K')`` → state (G, K', ...).
    """
    if isinstance(x, Mapping):
        return {name: gather(value, ancestors) for name, value in x.items()}
    if x is None:
        return None
    rows = torch.arange(ancestors.shape[0], device=ancestors.device)[:, None]
    return x[rows, ancestors]


def _log_mean_exp(log_w: Tensor) -> Tensor:
    return torch.logsumexp(log_w, dim=-1) - math.log(log_w.shape[-1])


def _first_tensor(x: State) -> Tensor:
    if isinstance(x, Mapping):
        for value in x.values():
            found = _first_tensor(value)
            if found is not None:
                return found
        return None
    return x


def _check_sizes(num_groups, num_particles) -> tuple[int, int]:
    return check_size("num_groups", num_groups), check_size("num_particles", num_particles)


def init(model, num_groups: int, num_particles: int, generator: GeneratorSpec, *,
         resample_generator: GeneratorSpec | None = None, rejection_control: bool = False) -> SMCState:
    """The initial :class:`SMCState` of ``num_groups`` × ``num_particles`` particles of ``model``.

    ``generator`` (one ``torch.Generator`` or one per group) is handed to ``model.init`` and
    ``model.move``. Resampling draws from ``resample_generator``, by default an independent stream
    derived from ``generator``'s seed without consuming from it — so with K = 1, or with
    resampling off, the particles are exactly those of the model run alone. Pass
    ``rejection_control=True`` when steps will use rejection control (it derives its stream).
    """
    check_model(model)
    num_groups, num_particles = _check_sizes(num_groups, num_particles)
    _rng.check_generator(generator)
    if resample_generator is None:
        resample_generator = _rng.derive(generator, "smcdiff.resampling")
    rc_generator = _rng.derive(generator, "smcdiff.rejection_control") if rejection_control else None
    x = model.init(num_groups, num_particles, generator)
    _check_state(x, num_groups, num_particles, "model.init")
    device = _first_tensor(x).device
    log_w = torch.zeros(num_groups, num_particles, dtype=torch.float64, device=device)
    return SMCState(x, log_w, generator, resample_generator, rc_generator)


def _failure(model, x: State, log_w: Tensor, t: int) -> str | None:
    """The message of an :class:`SMCFailedError` at step t, or None (one host read)."""
    if hasattr(model, "check"):
        fault = model.check(x)
        if fault:
            return f"SMC failed at step {t}: {fault}"
    lse = torch.logsumexp(log_w, dim=-1)
    if bool(torch.isfinite(lse).all()):
        return None
    parts = []
    for what, mask in (("every particle has weight zero (log-weight -inf)", torch.isneginf(lse)),
                       ("the log-potential returned NaN", torch.isnan(lse)),
                       ("the log-potential returned +inf", torch.isposinf(lse))):
        groups = torch.nonzero(mask).flatten().tolist()
        if groups:
            parts.append(f"{what} in group(s) {groups}")
    return f"SMC failed at step {t}: " + "; ".join(parts)


def step(model, state: SMCState, t: int, resampler: Resampler | None, *, resample: bool = True,
         rejection_control: RejectionControl | None = None, check: bool = True) -> tuple[SMCState, StepInfo]:
    """Step ``t`` of ``model`` from ``state``: move, weight, then resample (unless t is the last step).

    ``resampler=None`` or ``resample=False`` skips resampling at this step (a fixed schedule);
    the resampler's ESS threshold decides which groups resample. ``rejection_control`` applies
    :class:`RejectionControl` (the state must come from ``init(..., rejection_control=True)``).
    ``check=True`` raises :class:`SMCFailedError` (naming step t and the source) when some group's
    weights all became zero or NaN, or the model reports a fault; that is this step's one host
    read — pass ``check=False`` to defer it (``run(check_every=...)``) on a GPU.
    Returns ``(new_state, StepInfo)``.
    """
    G, K = state.log_weights.shape
    T = model.num_steps
    x_prev = state.x
    # Propose (M_t).
    x_new = model.move(t, x_prev, state.generator)
    _check_state(x_new, G, K, f"model.move at step {t}")
    # Weight (G_t).
    inc = model.log_potential(t, x_prev, x_new)
    if not isinstance(inc, torch.Tensor) or tuple(inc.shape) != (G, K):
        shape = tuple(inc.shape) if isinstance(inc, torch.Tensor) else type(inc).__name__
        raise ValueError(f"log_potential at step {t} must return a (G, K) = ({G}, {K}) tensor, got {shape}")
    inc = inc.to(torch.float64)
    rate = None
    if rejection_control is not None:
        if state.rc_generator is None:
            raise ValueError("rejection control needs a state from engine.init(..., rejection_control=True)")
        x_new, inc, rate = apply_rejection_control(model, t, x_prev, x_new, inc, rejection_control,
                                                   state.generator, state.rc_generator)
    log_w = state.log_weights + inc
    if check:
        message = _failure(model, x_new, log_w, t)
        if message:
            raise SMCFailedError(message)
    log_z = _log_mean_exp(log_w)
    # Resample the groups whose ESS is low (never after the last step).
    if resampler is not None and resample and t < T - 1:
        outcome = resampler(log_w, state.resample_generator)  # computes the ESS it decides on
        resampled, ancestors, ess = outcome.resampled, outcome.ancestors, outcome.ess
        x_next = gather(x_new, ancestors)
        if hasattr(model, "on_resample"):
            x_next = model.on_resample(t, x_next, resampled)
        log_w_next = torch.where(resampled[:, None], log_z[:, None].expand(G, K), log_w)
    else:
        resampled = torch.zeros(G, dtype=torch.bool, device=log_w.device)
        ancestors = torch.arange(K, device=log_w.device).expand(G, K)
        ess = ess_of(log_w)
        x_next, log_w_next = x_new, log_w
    info = StepInfo(t, x_new, log_w, ess, log_z, resampled, ancestors, rate)
    return state._replace(x=x_next, log_weights=log_w_next), info


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
    check_every: int = 1,
    progress: bool = False,
) -> SMCResult:
    """Run the Feynman–Kac model ``model`` with ``num_groups`` × ``num_particles`` particles.

    The loop over :func:`step` from :func:`init`. ``resampler=None`` never resamples (importance
    sampling); ``resample_steps`` (a collection of step indices) restricts resampling to after those
    steps (a fixed schedule; the resampler's ESS threshold still applies — use 1.0 to always
    resample there). ``rejection_control`` applies :class:`RejectionControl` at every step.
    ``callback(StepInfo)`` is called after every step; ``record_history=True`` keeps the per-step
    log-weights (memory T·G·K). ``check_every`` k runs the failure check (one host read) every k
    steps and at the last; on a GPU ``check_every=model.num_steps`` leaves one read in the whole
    run (a failure is then reported at the end, naming the step where it was detected).
    ``progress=True`` shows a tqdm bar on stderr. Returns an :class:`SMCResult`; raises
    :class:`SMCFailedError` naming the step when some group's weights all become zero.
    """
    check_model(model)
    num_groups, num_particles = _check_sizes(num_groups, num_particles)
    T = model.num_steps
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every must be an int >= 1, got {check_every!r}")
    resample_steps = check_steps(resample_steps, T, "resample_steps")
    if rejection_control is not None and not isinstance(rejection_control, RejectionControl):
        raise TypeError("rejection_control must be a smcdiff.engine.RejectionControl")
    state = init(model, num_groups, num_particles, generator, resample_generator=resample_generator,
                 rejection_control=rejection_control is not None)
    infos: list[StepInfo] = []
    steps: Any = range(T)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="smc", leave=False)
    for t in steps:
        state, info = step(model, state, t, resampler, rejection_control=rejection_control,
                           resample=resample_steps is None or t in resample_steps,
                           check=(t + 1) % check_every == 0 or t == T - 1)
        infos.append(info if record_history else info._replace(x=None, log_weights=None))
        if callback is not None:
            callback(info)
    return stack_records(state, infos)


def stack_records(state: SMCState, infos: list[StepInfo]) -> SMCResult:
    """The :class:`SMCResult` of a run that ended in ``state`` after the steps ``infos``.

    Per-step log-weights go into ``history`` when the records hold them (``record_history``).
    """
    log_z = torch.stack([i.log_evidence for i in infos])
    increments = torch.diff(log_z, dim=0, prepend=torch.zeros_like(log_z[:1]))
    rates = [i.accept_rate for i in infos]
    weights = [i.log_weights for i in infos]
    return SMCResult(
        x=state.x,
        log_weights=state.log_weights,
        log_evidence=_log_mean_exp(state.log_weights),
        ess=torch.stack([i.ess for i in infos]),
        resampled=torch.stack([i.resampled for i in infos]),
        ancestors=torch.stack([i.ancestors for i in infos]),
        log_evidence_increments=increments,
        accept_rate=torch.stack(rates) if rates[0] is not None else None,
        history={"log_weights": torch.stack(weights)} if weights[0] is not None else {},
    )
