"""Diffusion sampling as SMC: :func:`sample` turns a denoiser, a schedule, a kernel and a potential
into a Feynman–Kac model and runs it on the generic engine (:mod:`smcdiff.engine`).

Particle ``k`` of group ``g`` starts at σ_0·z (z unit-variance, drawn from the generator or given
as ``x_init``) and moves one kernel step per noise level. After each step the potential
V(x, σ, x̂0) → (N,) is evaluated on the new state; in ``"difference"`` form the log-weight grows by
V_new − V_old (V_old = 0 at the start), so the weights telescope to the final V and
``log_evidence`` estimates log E[exp V(x_0)] under the sampler; in ``"incremental"`` form it grows
by V itself. Between steps, groups whose ESS is low are resampled.

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
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from smcdiff import _rng, engine
from smcdiff.engine import RejectionControl, SMCResult, StepInfo
from smcdiff.kernels.schedules import check_sigmas
from smcdiff.resampling import Resampler
from smcdiff.types import GeneratorSpec, Tensor
from smcdiff.weights.compose import evaluate_terms

__all__ = ["sample", "SampleResult", "DiffusionModel"]

_FORMS = ("difference", "incremental")


@dataclass(frozen=True)
class SampleResult(SMCResult):
    """:class:`~smcdiff.engine.SMCResult` of a diffusion run, with ``x : (G, K, *shape)`` the final
    samples, ``x0_hat`` the last denoiser outputs, ``potential : (G, K)`` the last potential
    values, ``named_potentials`` the last value of each named term ``(G, K)`` of potentials that
    define ``terms`` (sums, Pyro programs), ``sigmas`` the schedule, ``nfe`` network evaluations per particle trajectory (total
    calls / (G·K), e.g. 2N − 1 for Heun) and ``nfe_total`` all network evaluations.
    """

    x0_hat: Tensor | None = None
    potential: Tensor | None = None
    named_potentials: Mapping[str, Tensor] = field(default_factory=dict)
    sigmas: Tensor | None = None
    nfe: float = 0.0
    nfe_total: int = 0


class DiffusionModel:
    """The Feynman–Kac model behind :func:`sample` (one instance per run; it counts NFE).

    State: dict with ``x`` (G, K, *shape) float64, ``x0_hat`` like x, ``v`` (G, K) the current
    potential value, ``term.<name>`` (G, K) each named potential term, and ``cond.<name>`` (G, K, ...) for each conditioning tensor (they follow their
    particle through resampling).
    """

    def __init__(self, denoiser, sigmas, kernel, potential=None, *, shape, x_init=None,
                 potential_form="difference", cond=None):
        self.denoiser, self.sigmas, self.kernel, self.potential = denoiser, sigmas, kernel, potential
        self.shape, self.x_init, self.potential_form = tuple(shape), x_init, potential_form
        self.cond = dict(cond or {})
        self.num_steps = len(sigmas) - 1
        self.network_calls = None  # tensor on the particles' device, no host sync while running

    def init(self, G, K, generator):
        if self.x_init is None:
            z = _rng.randn((G, K) + self.shape, generator)
        else:
            z = self.x_init.to(torch.float64)
        x = self.sigmas[0] * z
        state = {"x": x, "x0_hat": torch.zeros_like(x), "v": torch.zeros(G, K, dtype=torch.float64, device=x.device)}
        for name, value in self.cond.items():
            state[f"cond.{name}"] = value
        return state

    def _flat_cond(self, state, N):
        return {k[5:]: v.reshape((N,) + tuple(v.shape[2:])) for k, v in state.items() if k.startswith("cond.")}

    def move(self, t, state, generator):
        x = state["x"]
        G, K = x.shape[:2]
        N = G * K
        cond = self._flat_cond(state, N)
        out = self.kernel(self.denoiser, x.reshape((N,) + self.shape), self.sigmas, t, generator, cond)
        calls = out.nfe.sum()
        self.network_calls = calls if self.network_calls is None else self.network_calls + calls
        new = dict(state)
        new["x"] = out.x.reshape(x.shape)
        new["x0_hat"] = out.x0_hat.reshape(x.shape)
        if self.potential is not None:
            sigma = self.sigmas[t + 1].to(x.device).expand(N)
            extra = {}
            if getattr(self.potential, "uses_previous", False):  # running statistics (FK "max"/"sum")
                extra["previous"] = None if t == 0 else state["v"].reshape(N)
            value, terms = evaluate_terms(self.potential, out.x, sigma, out.x0_hat, **extra, **cond)
            if hasattr(self.potential, "terms"):
                for name, term in terms.items():
                    new[f"term.{name}"] = term.reshape(G, K)
            new["v"] = value.reshape(G, K)
        return new

    def log_potential(self, t, prev, new):
        if self.potential is None:
            return torch.zeros_like(new["v"])
        if self.potential_form == "difference":
            return new["v"] - prev["v"]
        return new["v"]


def _check_cond(cond, G, K) -> dict:
    out = {}
    for name, value in (cond or {}).items():
        value = torch.as_tensor(value)
        if value.dim() < 2 or tuple(value.shape[:2]) != (G, K):
            raise ValueError(f"cond[{name!r}] must have leading dims (G, K) = ({G}, {K}), got {tuple(value.shape)}")
        out[name] = value
    return out


def sample(
    denoiser: Callable,
    sigmas,
    kernel,
    potential: Callable | None = None,
    resampler: Resampler | None = None,
    num_groups: int = 1,
    num_particles: int = 1,
    shape=None,
    generator: GeneratorSpec | None = None,
    x_init: Tensor | None = None,
    *,
    potential_form: str = "difference",
    cond: Mapping[str, Tensor] | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    resample_steps=None,
    rejection_control: RejectionControl | None = None,
    record_history: bool = False,
    progress: bool = False,
) -> SampleResult:
    """Sample ``num_groups`` × ``num_particles`` particles of shape ``shape`` by SMC.

    ``denoiser(x, sigma, **cond) -> x0_hat`` with ``x : (N, *shape)``, ``sigma : (N,)``;
    ``sigmas`` a decreasing float64 schedule ending in 0 (e.g. :func:`karras_sigmas`); ``kernel`` a
    proposal kernel (:mod:`smcdiff.kernels`); ``potential(x, sigma, x0_hat, **cond) -> (N,)`` or
    None (plain sampling); ``resampler`` a :class:`~smcdiff.resampling.Resampler` or None (never
    resample); ``generator`` one ``torch.Generator`` or one per group (required — smcdiff never
    uses the global RNG); ``x_init : (G, K, *shape)`` optional unit-variance latents (the start is
    σ_0·x_init); ``cond`` tensors (G, K, ...) passed to the denoiser and potential as keywords;
    ``resample_steps``, ``rejection_control``, ``callback`` and ``progress`` go to
    :func:`smcdiff.engine.run`. ``record_history=True`` keeps per-step ``(T, G, K)`` records in
    ``result.history``: ``log_weights``, ``potential`` and ``term.<name>`` for named terms.
    Returns a :class:`SampleResult`.
    """
    if generator is None:
        raise TypeError("sample() needs generator=torch.Generator().manual_seed(seed) (or one per group)")
    sigmas = check_sigmas(sigmas)
    if potential_form not in _FORMS:
        raise ValueError(f"potential_form must be one of {_FORMS}, got {potential_form!r}")
    for name, value in (("num_groups", num_groups), ("num_particles", num_particles)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not callable(kernel):
        raise TypeError(f"kernel must be callable as kernel(denoiser, x, sigmas, i, generator, cond), got {kernel!r}")
    if potential is not None and not callable(potential):
        raise TypeError(f"potential must be callable as potential(x, sigma, x0_hat) -> (N,), got {potential!r}")
    if x_init is not None:
        x_init = torch.as_tensor(x_init)
        if x_init.dim() < 2 or tuple(x_init.shape[:2]) != (num_groups, num_particles):
            raise ValueError(
                f"x_init must have shape (G, K, *shape) = ({num_groups}, {num_particles}, ...), got {tuple(x_init.shape)}"
            )
        if shape is not None and tuple(x_init.shape[2:]) != tuple(shape):
            raise ValueError(f"x_init's event shape {tuple(x_init.shape[2:])} does not match shape={tuple(shape)}")
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
    model = DiffusionModel(denoiser, sigmas, kernel, potential, shape=shape, x_init=x_init,
                           potential_form=potential_form, cond=_check_cond(cond, num_groups, num_particles))
    steps_seen: list[dict] = []

    def observe(info: StepInfo) -> None:
        if record_history:
            steps_seen.append({k: v for k, v in info.x.items() if k == "v" or k.startswith("term.")})
        if callback is not None:
            callback(info)

    res = engine.run(model, num_groups, num_particles, resampler, generator, observe, progress=progress,
                     resample_steps=resample_steps, rejection_control=rejection_control,
                     record_history=record_history)
    history = dict(res.history)
    if record_history and potential is not None:
        for key in steps_seen[0]:
            history["potential" if key == "v" else key] = torch.stack([s[key] for s in steps_seen])
    total = int(model.network_calls) if model.network_calls is not None else 0
    return SampleResult(
        x=res.x["x"],
        log_weights=res.log_weights,
        log_evidence=res.log_evidence,
        ess=res.ess,
        resampled=res.resampled,
        ancestors=res.ancestors,
        log_evidence_increments=res.log_evidence_increments,
        accept_rate=res.accept_rate,
        history=history,
        x0_hat=res.x["x0_hat"],
        potential=res.x["v"] if potential is not None else None,
        named_potentials={k[5:]: v for k, v in res.x.items() if k.startswith("term.")},
        sigmas=sigmas,
        nfe=total / (num_groups * num_particles),
        nfe_total=total,
    )
