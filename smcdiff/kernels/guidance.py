"""Guidance as denoiser transforms D → D', so every kernel gets it for free.

A *transform* has ``bind(denoiser, sigmas, i) -> denoiser'``: the denoiser to use for step ``i`` of
schedule ``sigmas``. :class:`Guided` wraps any kernel with a chain of transforms (applied left to
right). Expressed on D, the ODE direction d = (x − D)/σ changes exactly as in the papers:

* :class:`EpsilonScaling` (Ning et al.; SEDM-G++): the ε estimate (x − D)/σ is divided by
  s_i = b + κ·i, i.e. D' = x − (x − D)/s_i, the same s_i for both Heun evaluations of step i and
  on the final Euler step.
* :class:`DiscriminatorGuidance` (Kim et al., DG / EDM-G++): D' = D + w·σ²·∇ₓℓ(x, σ), which adds
  w·∇ₓℓ to the score and is DG's d ← d + w·G/σ with G = −σ²·α·∇_{x_vp}ℓ = −σ²∇ₓℓ. The weight is
  ``w1`` for the step's first (Euler) evaluation and ``w2`` for the Heun correction (the evaluation
  at σ_{i+1}); with w2 = 0 the guidance enters the Heun update with effective weight w1/2. Outside
  the VP-time window (τ(σ) < ``time_min`` or > ``time_max``) the guidance is zero. The window is
  applied per sample; DG applies it to the whole batch by the batch minimum of τ, which is the
  same whenever the batch shares one σ (every sampler here except DiffRS's per-slot batches).

    >>> import torch
    >>> from smcdiff.kernels import EDMHeun, karras_sigmas
    >>> from smcdiff.models.pairs import mixture_pair_2d
    >>> data, model, log_ratio = mixture_pair_2d()
    >>> kernel = Guided(EDMHeun(), EpsilonScaling(1.004), DiscriminatorGuidance(log_ratio, w1=1.67))
    >>> g = torch.Generator().manual_seed(0)
    >>> x = 80.0 * torch.randn(8, 2, dtype=torch.float64, generator=g)
    >>> out = kernel(model.denoise, x, karras_sigmas(18), 0, g)
    >>> out.x.shape, out.nfe.tolist()
    (torch.Size([8, 2]), [2, 2, 2, 2, 2, 2, 2, 2])

``log_ratio(x, sigma, **cond) -> (N,)`` is ℓ ≈ log q_σ(x)/p_σ(x) in the EDM scale (the
VP-scaling α of a neural discriminator is its wrapper's business; by the chain rule ∇ₓℓ already
carries it). Cost: one ℓ forward+backward per guided evaluation.
"""

from __future__ import annotations

import math

import torch

from smcdiff import _rng
from smcdiff.kernels.edm import levels
from smcdiff.kernels.schedules import vp_time
from smcdiff.kernels.steps import StepOutput, denoise, per_sample
from smcdiff.types import Tensor

__all__ = ["EpsilonScaling", "DiscriminatorGuidance", "Guided", "CorrectedEulerMaruyama", "log_ratio_grad",
           "OUTSIDE_WINDOW"]

#: DG reports ℓ = 1e7 where the time window switches guidance off (so boosting never fires there).
OUTSIDE_WINDOW = 1e7


def log_ratio_grad(log_ratio, x: Tensor, sigma: Tensor, cond=None) -> tuple[Tensor, Tensor]:
    """(∇ₓℓ(x, σ), ℓ(x, σ)) by autograd, float64: ``x : (N, *event)`` → ((N, *event), (N,)).

    Raises ``ValueError`` when ℓ has no gradient path to x (computed under ``torch.no_grad``, detached,
    or a constant): guidance would otherwise silently be zero.
    """
    with torch.enable_grad():
        x_ = x.detach().requires_grad_(True)
        ell = log_ratio(x_, sigma, **(cond or {}))
        if not isinstance(ell, Tensor) or tuple(ell.shape) != (x.shape[0],):
            got = tuple(ell.shape) if isinstance(ell, Tensor) else type(ell).__name__
            raise ValueError(f"log_ratio must return one value per sample, shape ({x.shape[0]},), got {got}")
        grad = torch.autograd.grad(ell.sum(), x_, allow_unused=True)[0] if ell.requires_grad else None
    if grad is None:
        raise ValueError("the guidance's log_ratio(x, sigma) has no gradient path to x (computed under "
                         "torch.no_grad, detached, or constant), so its guidance would silently be zero; "
                         "compute it differentiably in x (a constant ratio: write it as 0 * x.sum())")
    return grad.detach().to(torch.float64), ell.detach().to(torch.float64)


class EpsilonScaling:
    """ε-scaling: D' = x − (x − D)/s_i with s_i = ``b`` + ``kappa``·i (i = step index, 0-based)."""

    def __init__(self, b: float = 1.0, kappa: float = 0.0):
        self.b, self.kappa = float(b), float(kappa)

    def scale(self, i: int) -> float:
        s = self.b + self.kappa * i
        if s <= 0:
            raise ValueError(f"epsilon scale s_i = b + kappa*i must be positive, got {s} at step {i}")
        return s

    def bind(self, denoiser, sigmas: Tensor, i: int):
        s = self.scale(i)
        if s == 1.0:
            return denoiser

        def scaled(x, sigma, **cond):
            return x - (x - denoiser(x, sigma, **cond).to(x.dtype)) / s

        scaled.round_sigma = getattr(denoiser, "round_sigma", None)
        return scaled

    def __repr__(self) -> str:
        return f"EpsilonScaling(b={self.b}, kappa={self.kappa})"


class DiscriminatorGuidance:
    """DG: D' = D + w·σ²·∇ₓℓ(x, σ) inside the VP-time window, w = ``w1`` (Euler eval) / ``w2`` (correction).

    ``double_every``: DG's boosting of the weight — at every ``double_every``-th step, w1 is doubled
    for the samples whose ℓ < 0 at that evaluation. The ℓ of each step's first evaluation is
    reported to the kernel as ``carry["log_ratio"]`` (``OUTSIDE_WINDOW`` outside the window), which
    :class:`~smcdiff.kernels.edm.ChurnBoost` reads.
    """

    reports = ("log_ratio",)

    def __init__(self, log_ratio, w1: float = 2.0, w2: float = 0.0, time_min: float = 0.01, time_max: float = 1.0,
                 *, double_every: int | None = None):
        if not callable(log_ratio):
            raise TypeError("DiscriminatorGuidance needs a callable log_ratio(x, sigma, **cond) -> (N,)")
        w1, w2, time_min, time_max = (float(v) for v in (w1, w2, time_min, time_max))
        if not all(math.isfinite(v) for v in (w1, w2, time_min, time_max)):
            raise ValueError(f"DG weights and window must be finite, got w1={w1}, w2={w2}, "
                             f"time_min={time_min}, time_max={time_max}")
        if not 0.0 <= time_min <= time_max:
            raise ValueError(f"expected 0 <= time_min <= time_max, got {time_min}, {time_max}")
        if double_every is not None and (isinstance(double_every, bool) or int(double_every) != double_every
                                         or double_every < 1):
            raise ValueError(f"double_every must be None or an int >= 1, got {double_every!r}")
        self.log_ratio, self.w1, self.w2 = log_ratio, w1, w2
        self.time_min, self.time_max, self.double_every = time_min, time_max, double_every

    def in_window(self, sigma: Tensor) -> Tensor:
        """(N,) bool: where τ(σ) lies in [time_min, time_max]."""
        tau = vp_time(sigma.to(torch.float64))
        return (tau >= self.time_min) & (tau <= self.time_max)

    def guidance(self, x: Tensor, sigma: Tensor, cond=None) -> tuple[Tensor, Tensor]:
        """(σ²∇ₓℓ masked to the window (N, *event), ℓ with ``OUTSIDE_WINDOW`` outside (N,))."""
        inside = self.in_window(sigma)
        if not bool(inside.any()):
            return torch.zeros_like(x, dtype=torch.float64), torch.full((x.shape[0],), OUTSIDE_WINDOW, dtype=torch.float64, device=x.device)
        grad, ell = log_ratio_grad(self.log_ratio, x, sigma, cond)
        term = per_sample(sigma.to(torch.float64) ** 2 * inside, x) * grad
        return term, torch.where(inside, ell, torch.full_like(ell, OUTSIDE_WINDOW))

    def bind(self, denoiser, sigmas: Tensor, i: int):
        if self.w1 == 0.0 and self.w2 == 0.0:
            return denoiser
        return _DGStep(self, denoiser, float(sigmas[i + 1]),
                       self.double_every is not None and i % self.double_every == 0)

    def __repr__(self) -> str:
        extra = "" if self.double_every is None else f", double_every={self.double_every}"
        return (f"DiscriminatorGuidance(w1={self.w1}, w2={self.w2}, time_min={self.time_min}, "
                f"time_max={self.time_max}{extra})")


class _DGStep:
    """DG's denoiser for one step: w1 on the evaluations above σ_{i+1} (the Euler one), w2 at σ_{i+1}
    (the Heun correction); remembers the ℓ of its first evaluation for :meth:`report`."""

    def __init__(self, dg: DiscriminatorGuidance, denoiser, t_next: float, double: bool):
        self.dg, self.denoiser, self.t_next, self.double = dg, denoiser, t_next, double
        self.round_sigma = getattr(denoiser, "round_sigma", None)
        self.seen: dict[str, Tensor] = {}

    def __call__(self, x, sigma, **cond):
        x0 = self.denoiser(x, sigma, **cond).to(torch.float64)
        first = not bool((sigma.to(torch.float64) <= self.t_next).all())
        w = self.dg.w1 if first else self.dg.w2
        if w == 0.0:
            return x0
        term, ell = self.dg.guidance(x, sigma, cond)
        bad = ~torch.isfinite(term.flatten(1)).all(1) | torch.isnan(ell)
        self.seen["guidance_fault"] = bad | self.seen.get("guidance_fault", torch.zeros_like(bad))
        w = torch.full_like(ell, w)
        if first and self.double:  # boosting: double the weight where ℓ < 0
            w = torch.where(ell < 0, 2 * w, w)
        if first:
            self.seen.setdefault("log_ratio", ell)
        return x0 + per_sample(w, x0) * term

    def report(self) -> dict[str, Tensor]:
        return dict(self.seen)


class Guided:
    """A kernel whose denoiser is transformed, per step, by ``transforms`` (applied left to right).

    What the bound transforms report (DG's ℓ) is returned in ``StepOutput.carry`` and handed back
    to the kernel at the next step (entries not reported this step keep their last value). Around a
    kernel with a schedule of its own (:class:`~smcdiff.kernels.Restart`) the transforms are bound to
    the grid and index its step runs on (``kernel.step_grid``).
    """

    def __init__(self, kernel, *transforms):
        for t in transforms:
            if not hasattr(t, "bind"):
                raise TypeError(f"{t!r} is not a denoiser transform: it needs bind(denoiser, sigmas, i)")
        if not callable(kernel):
            raise TypeError(f"kernel must be callable as kernel(denoiser, x, sigmas, i, generator, cond), got {kernel!r}")
        self.kernel, self.transforms = kernel, transforms

    @property
    def stochastic(self) -> bool:
        return getattr(self.kernel, "stochastic", True)

    def __getattr__(self, name):  # the wrapped kernel's schedule (num_steps, sigma_after, ...)
        if name in ("kernel", "transforms"):
            raise AttributeError(name)
        return getattr(self.kernel, name)

    def __call__(self, denoiser, x, sigmas, i, generator, cond=None, **context) -> StepOutput:
        # A kernel with a schedule of its own (Restart) says which grid and step its step i runs on.
        grid, j = self.kernel.step_grid(sigmas, i) if hasattr(self.kernel, "step_grid") else (sigmas, i)
        bound = []
        for t in self.transforms:
            denoiser = t.bind(denoiser, grid, j)
            bound.append(denoiser)
        out = self.kernel(denoiser, x, sigmas, i, generator, cond, **context)
        carry = dict(context.get("carry") or {})
        carry.update(out.carry or {})
        for d in bound:
            if hasattr(d, "report"):
                carry.update(d.report())
        return out._replace(carry=carry or None)

    def __repr__(self) -> str:
        return f"Guided({self.kernel!r}, {', '.join(map(repr, self.transforms))})"


class CorrectedEulerMaruyama:
    """An Euler–Maruyama step moved by guidance transforms, with the importance correction that keeps
    the *unguided* sampler's target: ``log_weight = log p(x'|x) − log q(x'|x)``.

    The base transition is :class:`~smcdiff.kernels.EulerMaruyama`'s, N(m, v) with
    m = x + (v/σ²)(D(x; σ) − x), v = 2σ(σ − σ'); the proposal uses the transformed denoiser D' (e.g.
    DG's D + w·σ²∇ℓ), so q = N(m', v) with m' from D'. The denoiser is evaluated once: the
    transforms act on its cached output. The step to σ' = 0 is the base one (x' = D(x; σ), no
    guidance, weight 0), so the last weight is the untwisted one. With this kernel a guided proposal
    can be combined with potentials and resampling and still target p_θ·exp(V) (DG's gradient then
    only improves the proposal; the weights make the result exact).
    """

    stochastic = True

    def __init__(self, *transforms):
        for t in transforms:
            if not hasattr(t, "bind"):
                raise TypeError(f"{t!r} is not a denoiser transform: it needs bind(denoiser, sigmas, i)")
        self.transforms = transforms

    def __call__(self, denoiser, x, sigmas, i, generator, cond=None, **context) -> StepOutput:
        n = x.shape[0]
        t_cur, t_next = levels(x, sigmas, i)
        noise = _rng.randn_batch(x.shape, generator, dtype=x.dtype, device=x.device)
        x0 = denoise(denoiser, x, t_cur, cond)
        ones = torch.ones(n, dtype=torch.long, device=x.device)
        if float(sigmas[i + 1]) == 0.0:  # the last step: untwisted, deterministic
            return StepOutput(x0, x0, ones, log_weight=torch.zeros(n, dtype=torch.float64, device=x.device))
        guided = _Cached(x0, getattr(denoiser, "round_sigma", None))
        bound = []
        for t in self.transforms:
            guided = t.bind(guided, sigmas, i)
            bound.append(guided)
        x0_guided = denoise(guided, x, t_cur, cond)
        var = 2.0 * t_cur * (t_cur - t_next)
        step = per_sample(var / t_cur**2, x)
        shift = step * (x0_guided - x0)  # m' − m
        # Propose from the guided Gaussian; weight by base over guided density.
        x_next = x + step * (x0_guided - x) + per_sample(torch.sqrt(var), x) * noise
        log_weight = -(noise * per_sample(torch.sqrt(var), x) * shift).flatten(1).sum(1) / var \
            - shift.pow(2).flatten(1).sum(1) / (2 * var)
        carry = {}
        for d in bound:
            if hasattr(d, "report"):
                carry.update(d.report())
        return StepOutput(x_next, x0, ones, log_weight=log_weight, carry=carry or None)

    def __repr__(self) -> str:
        return f"CorrectedEulerMaruyama({', '.join(map(repr, self.transforms))})"


class _Cached:
    """A denoiser that returns an already computed output (so transforms cost no network call)."""

    def __init__(self, x0: Tensor, round_sigma=None):
        self.x0, self.round_sigma = x0, round_sigma

    def __call__(self, x, sigma, **cond):
        return self.x0
