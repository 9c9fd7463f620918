"""Diffusion sampling as SMC: :func:`sample` turns a denoiser, a schedule, a kernel, a potential, a
resampler and a final choice into one Feynman–Kac model (:class:`DiffusionModel`) and runs it on the
generic engine (:mod:`smcdiff.engine`). Every method of :mod:`smcdiff.methods` is such a call.

Particle ``k`` of group ``g`` starts at σ_0·z (z unit-variance, drawn from the generator or given
as ``x_init``) and moves one kernel step per step of the schedule (a kernel such as
:class:`~smcdiff.kernels.Restart` may define its own steps). After the steps listed in
``potential_steps`` (default: every step) the potential V(x, σ, x̂0) → (N,) is evaluated on the new
state; in ``"difference"`` form the log-weight grows by V_new − V_old (V_old = 0 at the start), so
the weights telescope to the last V and ``log_evidence`` estimates log E[exp V] under the sampler;
in ``"incremental"`` form it grows by V itself. A kernel may add a log-weight of its own (a twisted
proposal's density ratio). Between steps, groups whose ESS is low are resampled, and the kernel is
told which were (``resampled``), so it can re-diversify the copies. The final choice picks the
output (:mod:`smcdiff.results`).

    >>> import torch, smcdiff
    >>> from smcdiff.models import GaussianMixture
    >>> gmm = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-2.0], [2.0]]), torch.tensor([0.1, 0.1]))
    >>> res = smcdiff.sample(gmm.denoise, smcdiff.karras_sigmas(32), smcdiff.kernels.EDMHeun(S_churn=10),
    ...                      potential=lambda x, sigma, x0_hat: -x0_hat[:, 0] ** 2,
    ...                      resampler=smcdiff.Resampler("systematic", 0.5),
    ...                      num_groups=4, num_particles=256, shape=(1,),
    ...                      generator=torch.Generator().manual_seed(0))
    >>> res.x.shape, res.log_weights.shape, res.nfe
    (torch.Size([4, 256, 1]), torch.Size([4, 256]), 63.0)

Sampling runs under ``torch.no_grad()``: only guidance transforms that need a gradient enable it,
locally. Non-finite values never pass: a NaN/inf from the denoiser (or its guidance), in the
kernel's state or from the kernel's log-weight is recorded per particle and raised as
:class:`~smcdiff.engine.SMCFailedError` naming the step and the source at the engine's failure
check (every step by default; ``check_every`` defers it, e.g. on a GPU, where each check is one
host read); a NaN potential raises at once, naming the potential.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping

import torch

from smcdiff import _rng, engine
from smcdiff.checks import check_size, check_steps
from smcdiff.engine import RejectionControl, StepInfo
from smcdiff.kernels.counting import CallCounter
from smcdiff.kernels.schedules import check_sigmas
from smcdiff.resampling import Resampler
from smcdiff.results import FINAL_CHOICES, Result, choose_final
from smcdiff.types import Denoiser, GeneratorSpec, Potential, Tensor
from smcdiff.weights.compose import evaluate_terms, potential_name

__all__ = ["sample", "DiffusionModel", "Result", "SampleResult"]

#: The former name of :class:`~smcdiff.results.Result` (one result type for everything).
SampleResult = Result

_FORMS = ("difference", "incremental")
_FAULTS = ((8, "the guidance term (e.g. the discriminator's log-ratio or its gradient) is non-finite"),
           (1, "the denoiser returned non-finite values"),
           (2, "the kernel produced a non-finite state x"),
           (4, "the kernel's log-weight is NaN"),
           (16, "the potential {potential!r} returned NaN or +inf (use -inf for zero weight)"))


def _accepts_context(kernel) -> bool:
    """Whether ``kernel(...)`` takes the ``resampled``/``carry`` keywords (or ``**context``)."""
    try:
        params = inspect.signature(kernel).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_KEYWORD or p.name in ("resampled", "carry") for p in params)


def _flat(v: Tensor, N: int) -> Tensor:
    return v.reshape((N,) + tuple(v.shape[2:]))


class DiffusionModel:
    """The Feynman–Kac model behind :func:`sample`: configuration only, no state of its own.

    State (a dict, every tensor ``(G, K, ...)``): ``x`` float64, ``x0_hat``, ``value`` the current
    potential value and ``value_before`` the one before the latest evaluation, ``terms`` (name →
    value of each named potential term), ``cond`` (conditioning tensors), ``carry`` (what the kernel
    asked to get back), ``resampled`` (bool: the group was just resampled), ``log_weight`` the
    kernel's log-weight of the latest step, ``fault`` (uint8 bitmask of non-finite sources) and
    ``fault_step`` (the step of the first fault, −1 if none).
    """

    def __init__(self, denoiser, sigmas, kernel, potential=None, *, shape, x_init=None,
                 potential_form="difference", potential_steps=None, cond=None):
        self.denoiser, self.sigmas, self.kernel, self.potential = denoiser, sigmas, kernel, potential
        self.shape, self.x_init, self.potential_form = tuple(shape), x_init, potential_form
        self.cond = dict(cond or {})
        self.num_steps = kernel.num_steps(sigmas) if hasattr(kernel, "num_steps") else len(sigmas) - 1
        self.potential_steps = check_steps(potential_steps, self.num_steps, "potential_steps")
        self.first_potential_step = min(self.potential_steps) if self.potential_steps else 0
        self.context = _accepts_context(kernel)

    def sigma_after(self, t: int) -> Tensor:
        """The noise level reached by step t (a float64 scalar tensor)."""
        if hasattr(self.kernel, "sigma_after"):
            return torch.as_tensor(self.kernel.sigma_after(self.sigmas, t), dtype=torch.float64)
        return self.sigmas[t + 1]

    def evaluates(self, t: int) -> bool:
        return self.potential is not None and (self.potential_steps is None or t in self.potential_steps)

    def init(self, G, K, generator):
        device = (generator if isinstance(generator, torch.Generator) else generator[0]).device
        z = _rng.randn((G, K) + self.shape, generator, device=device) if self.x_init is None else \
            self.x_init.to(torch.float64)
        x = self.sigmas[0] * z
        zeros = torch.zeros(G, K, dtype=torch.float64, device=x.device)
        return {"x": x, "x0_hat": torch.zeros_like(x), "value": zeros, "value_before": zeros, "terms": {},
                "cond": dict(self.cond), "carry": {}, "log_weight": zeros,
                "resampled": torch.zeros(G, K, dtype=torch.bool, device=x.device),
                "fault": torch.zeros(G, K, dtype=torch.uint8, device=x.device),
                "fault_step": torch.full((G, K), -1, dtype=torch.long, device=x.device)}

    def move(self, t, state, generator):
        x = state["x"]
        G, K = x.shape[:2]
        N = G * K
        cond = {k: _flat(v, N) for k, v in state["cond"].items()}
        context = {}
        if self.context:
            carry = {k: _flat(v, N) for k, v in state["carry"].items()}
            context = {"resampled": state["resampled"].reshape(N), "carry": carry or None}
        # Propose: one kernel step of every particle, one batched call.
        out = self.kernel(self.denoiser, _flat(x, N), self.sigmas, t, generator, cond, **context)
        new = dict(state)
        new["x"], new["x0_hat"] = out.x.reshape(x.shape), out.x0_hat.reshape(x.shape)
        carry = dict(out.carry or {})
        guidance_fault = carry.pop("guidance_fault", None)  # reported by a guidance transform, not carried
        new["carry"] = {k: v.reshape((G, K) + tuple(v.shape[1:])) for k, v in carry.items()}
        new["resampled"] = torch.zeros_like(state["resampled"])
        kernel_lw = torch.zeros(G, K, dtype=torch.float64, device=x.device)
        if out.log_weight is not None:
            kernel_lw = out.log_weight.to(torch.float64).reshape(G, K)
        new["log_weight"] = kernel_lw
        # Record non-finite values per particle (checked by the engine, no host read here).
        # (a row sum is non-finite iff some entry is — up to overflow past 1e308 — and is one cheap pass)
        bits = ((~torch.isfinite(out.x0_hat.reshape(N, -1).sum(1))).to(torch.uint8)
                | ((~torch.isfinite(out.x.reshape(N, -1).sum(1))).to(torch.uint8) << 1)
                | (torch.isnan(kernel_lw.reshape(N)).to(torch.uint8) << 2)).reshape(G, K)
        if guidance_fault is not None:
            bits = bits | (guidance_fault.reshape(G, K).to(torch.uint8) << 3)
        # Weight: the potential at the noise level reached, on the scheduled steps.
        if self.evaluates(t):
            sigma = torch.full((N,), float(self.sigma_after(t)), dtype=torch.float64, device=x.device)
            extra = {}
            if getattr(self.potential, "uses_previous", False):  # running statistics (FK "max"/"sum")
                extra["previous"] = None if t == self.first_potential_step else state["value"].reshape(N)
            value, terms = evaluate_terms(self.potential, out.x, sigma, out.x0_hat, check_finite=False, **extra, **cond)
            bad_value = torch.isnan(value) | torch.isposinf(value)  # recorded, raised at the engine's check
            bits = bits | (bad_value.reshape(G, K).to(torch.uint8) << 4)
            new["value_before"], new["value"] = state["value"], value.reshape(G, K)
            if hasattr(self.potential, "terms"):
                new["terms"] = {name: term.reshape(G, K) for name, term in terms.items()}
        new["fault"] = state["fault"] | bits
        new["fault_step"] = torch.where((state["fault_step"] < 0) & (bits > 0), t, state["fault_step"])
        return new

    def log_potential(self, t, prev, new):
        if not self.evaluates(t):
            return new["log_weight"]
        if self.potential_form == "difference":
            return (new["value"] - prev["value"]) + new["log_weight"]
        return new["value"] + new["log_weight"]

    def on_resample(self, t, state, resampled):
        K = state["x"].shape[1]
        flags = resampled[:, None].expand(-1, K) & (K > 1)  # a group of one particle never really resamples
        return dict(state, resampled=flags)

    def check(self, state) -> str | None:
        fault = state["fault"]
        if not bool(fault.any()):
            return None
        parts = []
        for bit, what in _FAULTS:
            hit = (fault & bit) > 0
            if bool(hit.any()):
                groups = torch.nonzero(hit.any(1)).flatten().tolist()
                first = int(state["fault_step"][hit].min())
                what = what.format(potential=potential_name(self.potential)) if bit == 16 else what
                parts.append(f"{what} at step {first} in group(s) {groups}")
        return "; ".join(parts)


def _check_cond(cond, G, K) -> dict:
    out = {}
    for name, value in (cond or {}).items():
        value = torch.as_tensor(value)
        if value.dim() < 2 or tuple(value.shape[:2]) != (G, K):
            raise ValueError(f"cond[{name!r}] must have leading dims (G, K) = ({G}, {K}), got {tuple(value.shape)}; "
                             f"to share a value within a group use y[:, None].expand(-1, {K}, *y.shape[1:])")
        out[name] = value
    return out


def sample(
    denoiser: Denoiser,
    sigmas,
    kernel,
    potential: Potential | None = None,
    resampler: Resampler | None = None,
    num_groups: int = 1,
    num_particles: int = 1,
    shape=None,
    generator: GeneratorSpec | None = None,
    x_init: Tensor | None = None,
    *,
    potential_form: str = "difference",
    potential_steps=None,
    final: str = "all",
    cond: Mapping[str, Tensor] | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    resample_steps=None,
    rejection_control: RejectionControl | None = None,
    record_history: bool = False,
    check_every: int = 1,
    progress: bool = False,
) -> Result:
    """Sample ``num_groups`` × ``num_particles`` particles of shape ``shape`` by SMC.

    ``denoiser(x, sigma, **cond) -> x0_hat`` with ``x : (N, *shape)``, ``sigma : (N,)``;
    ``sigmas`` a decreasing float64 schedule ending in 0 (e.g. :func:`karras_sigmas`); ``kernel`` a
    proposal kernel (:mod:`smcdiff.kernels`); ``potential(x, sigma, x0_hat, **cond) -> (N,)`` or
    None (plain sampling), evaluated after the steps in ``potential_steps`` (None: every step);
    ``resampler`` a :class:`~smcdiff.resampling.Resampler` or None (never resample);
    ``resample_steps`` the steps after which resampling may happen (None: every step but the last);
    ``final`` the final choice ("all", "argmax", "weighted", "resample"; :mod:`smcdiff.results`);
    ``generator`` one ``torch.Generator`` or one per group (required — smcdiff never uses the
    global RNG); ``x_init : (G, K, *shape)`` optional unit-variance latents (the start is
    σ_0·x_init); ``cond`` tensors (G, K, ...) passed to the denoiser and potential as keywords (they
    follow their particle through resampling); ``rejection_control``, ``callback``,
    ``check_every`` and ``progress`` go to :func:`smcdiff.engine.run`. ``record_history=True``
    keeps per-step ``(T, G, K)`` records in ``result.history``: ``log_weights``, ``potential`` and
    ``term.<name>`` for named terms. Returns a :class:`~smcdiff.results.Result`.
    """
    if generator is None:
        raise TypeError("sample() needs generator=torch.Generator().manual_seed(seed) (or one per group)")
    sigmas = check_sigmas(sigmas).cpu()  # host numbers: kernels fill per-step levels without a sync
    if potential_form not in _FORMS:
        raise ValueError(f"potential_form must be one of {_FORMS}, got {potential_form!r}")
    if final not in FINAL_CHOICES:
        raise ValueError(f"final must be one of {FINAL_CHOICES}, got {final!r}")
    num_groups, num_particles = check_size("num_groups", num_groups), check_size("num_particles", num_particles)
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable as denoiser(x, sigma, **cond) -> x0_hat, got {denoiser!r}")
    if not callable(kernel):
        raise TypeError(f"kernel must be callable as kernel(denoiser, x, sigmas, i, generator, cond), got {kernel!r}")
    if potential is not None and not callable(potential):
        raise TypeError(f"potential must be callable as potential(x, sigma, x0_hat) -> (N,), got {potential!r}")
    if resampler is not None and not isinstance(resampler, Resampler):
        raise TypeError(f"resampler must be a smcdiff.Resampler (e.g. Resampler('systematic', 0.5)) or None, "
                        f"got {resampler!r}")
    if final == "argmax" and potential is None:
        raise ValueError('final="argmax" picks by the last potential value; pass a potential')
    if x_init is not None:
        x_init = torch.as_tensor(x_init)
        if x_init.dim() < 2 or tuple(x_init.shape[:2]) != (num_groups, num_particles):
            raise ValueError(
                f"x_init must have shape (G, K, *shape) = ({num_groups}, {num_particles}, ...), got {tuple(x_init.shape)}"
            )
        if shape is not None and tuple(x_init.shape[2:]) != tuple(shape):
            raise ValueError(f"x_init's event shape {tuple(x_init.shape[2:])} does not match shape={tuple(shape)}")
        if not bool(torch.isfinite(x_init).all()):
            raise ValueError("x_init contains NaN or inf")
        shape = tuple(x_init.shape[2:])
    if shape is None:
        raise ValueError("pass shape=(...) (the event shape of one sample) or x_init")
    _rng.check_generator(generator, num_groups if not isinstance(generator, torch.Generator) else None)
    if resampler is not None and resampler.ess_threshold > 0 and not getattr(kernel, "stochastic", True):
        warnings.warn(
            f"resampling with a deterministic kernel ({kernel!r}): resampled copies stay identical, "
            "so resampling cannot diversify them; use a stochastic kernel (e.g. EDMHeun(S_churn>0) or EulerMaruyama)",
            UserWarning,
            stacklevel=2,
        )
    net = CallCounter(denoiser)
    model = DiffusionModel(net, sigmas, kernel, potential, shape=shape, x_init=x_init, potential_form=potential_form,
                           potential_steps=potential_steps, cond=_check_cond(cond, num_groups, num_particles))
    T = model.num_steps
    steps_seen: list[dict] = []

    def observe(info: StepInfo) -> None:
        if record_history:
            steps_seen.append({"potential": info.x["value"],
                               **{f"term.{k}": v for k, v in info.x["terms"].items()}})
        if callback is not None:
            callback(info)

    with torch.no_grad():
        res = engine.run(model, num_groups, num_particles, resampler, generator, observe, progress=progress,
                         resample_steps=resample_steps, rejection_control=rejection_control,
                         record_history=record_history, check_every=check_every)
    history = dict(res.history)
    if record_history and potential is not None:
        for key in steps_seen[-1]:
            history[key] = torch.stack([s[key] for s in steps_seen if key in s])
    state = res.x
    value = state["value"] if potential is not None else None
    x, log_w, selected = choose_final(final, state["x"], res.log_weights, value, generator)
    levels = torch.stack([sigmas[0]] + [model.sigma_after(t) for t in range(T)])
    return Result(
        x=x, log_weights=log_w, log_evidence=res.log_evidence, ess=res.ess, resampled=res.resampled,
        ancestors=res.ancestors, log_evidence_increments=res.log_evidence_increments,
        accept_rate=res.accept_rate, history=history, particles=state["x"], selected=selected,
        x0_hat=state["x0_hat"], potential=value, named_potentials=dict(state["terms"]), sigmas=levels,
        nfe=net.count / (num_groups * num_particles), nfe_total=net.count,
        diagnostics={"state": state},
    )
