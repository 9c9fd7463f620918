"""Flow-matching (rectified-flow) models as EDM denoisers ``D(x, sigma, **cond) -> x0_hat``.

A flow-matching model (SD3, Flux, diffusers' ``FlowMatchEulerDiscreteScheduler``) is trained on
x_t = (1 − t)·x0 + t·ε and predicts the velocity v = ε − x0. Dividing by the scale s(t) = 1 − t gives
the EDM convention x_σ = x_t/(1 − t) = x0 + σ·ε with

    σ = t/(1 − t),   t = σ/(1 + σ),   D(x, σ) = (x − σ·v̂)/(1 + σ),   v̂ = F(x/(1 + σ), t·scale),

since x̂0 = x_t − t·v̂. ``scale`` (``timestep_scale``) is what the network expects per unit t: 1000
for SD3-style models (the scheduler's ``timesteps``), 1 for Flux's transformer. The scheduler's
*shift* only moves its grid, and in σ it is a pure rescaling (static shift s: σ′ = s·σ; Flux's
dynamic shift: σ′ = e^μ·σ), so the denoiser does not depend on it: :meth:`FlowMatchingDenoiser.sigmas`
returns the scheduler's own (shifted) grid, endpoints included as diffusers builds them.

**σ_max = ∞.** The flow starts at t = 1, i.e. σ = ∞. :meth:`~FlowMatchingDenoiser.sigmas` puts the
finite ``sigma_max`` (default 1e8) in its place: starting at x = σ_max·z instead of x0 + σ_max·ε
errs by O(|x0|/σ_max) after the first step, below float32 resolution, so ``EDMEuler`` on that grid
reproduces diffusers' flow-matching Euler loop (EDM Euler in σ *is* the flow Euler step in t).
That grid's first step is a huge ratio (σ_max → σ_1), fine for Euler but not for Heun's trapezoid
or an Euler–Maruyama step: for those, use a schedule that starts lower, e.g.
``karras_sigmas(n, D.sigma_min, 80.0)`` (the prior mismatch is then O(Var(x0)/80²), as in EDM).

**Stochastic kernels, resampling.** Once mapped, the model is an ordinary EDM denoiser (for an exact
model, D(x; σ) = E[x0 | x_σ]), so every EDM stochastic kernel — ``EDMHeun(S_churn>0)``/``EDMEuler``
churn, ``EulerMaruyama`` on the reverse SDE dx = −2σ∇log p_σ dσ + sqrt(2σ) dW̄ — has the same
marginals p_σ as the probability-flow ODE (up to discretisation error). Resampled copies of a
particle therefore diverge under them, which a deterministic flow solver cannot do (FK steering
issue #7). (diffusers' ``stochastic_sampling=True`` re-noises x̂0 fully, x′ = x̂0 + σ′·z: another
member of the same family.)

    >>> import torch
    >>> from smcdiff.kernels import EDMEuler
    >>> from smcdiff.models import GaussianMixture
    >>> gmm = GaussianMixture(torch.tensor([1.0]), torch.tensor([[0.5, -1.0]]), torch.tensor([0.25]))
    >>> def velocity(x_t, timestep):                     # the exact v = E[ε − x0 | x_t] of that Gaussian
    ...     t = (timestep / 1000)[:, None]
    ...     var = (1 - t) ** 2 * 0.25 + t**2
    ...     r = x_t - (1 - t) * gmm.means[0]
    ...     return t / var * r - (gmm.means[0] + (1 - t) * 0.25 / var * r)
    >>> D = FlowMatchingDenoiser(velocity, dtype=torch.float64)
    >>> x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> sigma = torch.full((5,), 3.0, dtype=torch.float64)
    >>> bool(torch.allclose(D(x, sigma), gmm.denoise(x, sigma), atol=1e-12))
    True

With diffusers, :func:`smcdiff.models.diffusers_adapter.from_diffusers` dispatches here when the
scheduler is a ``FlowMatchEulerDiscreteScheduler`` (``from_flow_matching(transformer, scheduler)``
does the same). For Flux pass ``timestep_scale=1.0`` and, with dynamic shifting, ``mu`` (diffusers'
``calculate_shift`` of the image-token count); packing latents and passing ``img_ids``/``txt_ids``
through ``cond`` stay the caller's business.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from smcdiff.kernels.schedules import check_sigmas
from smcdiff.models.diffusers_adapter import (
    accepted_keys,
    fresh_scheduler,
    model_device,
    network_cond,
    network_dtype,
    run_network,
    sigma_batch,
)
from smcdiff.types import Tensor

__all__ = ["FlowMatchingDenoiser", "flow_scheduler_sigmas", "from_flow_matching"]


class FlowMatchingDenoiser:
    """A velocity network ``model(x_t, timestep=t·timestep_scale, **cond)`` as an EDM denoiser.

    ``sigma_min`` is the smallest trained noise level (default t = 1/1000); ``sigma_max`` the finite
    stand-in for t = 1 (see the module docstring); ``schedule(n)`` (optional) the σ grid that
    :meth:`sigmas` returns. Call as ``D(x, sigma, **cond)``, ``x : (N, *event)``, ``sigma : (N,)``.
    """

    def __init__(self, model: Callable, *, timestep_scale: float = 1000.0, sigma_min: float = 1 / 999,
                 sigma_max: float = 1e8, dtype=None, max_batch: int | None = None, schedule: Callable | None = None):
        if not callable(model):
            raise TypeError(f"model must be callable as model(x_t, timestep=t, **cond), got {type(model).__name__}")
        if not 0 < sigma_min < sigma_max < float("inf"):
            raise ValueError(f"expected 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")
        if not timestep_scale > 0:
            raise ValueError(f"timestep_scale must be positive, got {timestep_scale}")
        if max_batch is not None and (not isinstance(max_batch, int) or max_batch < 1):
            raise ValueError(f"max_batch must be an int >= 1 or None, got {max_batch!r}")
        self.model, self.timestep_scale, self.max_batch = model, float(timestep_scale), max_batch
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.dtype = network_dtype(model, dtype)
        self.schedule = schedule
        self._keys = accepted_keys(model)

    def round_sigma(self, sigma) -> Tensor:
        """σ clamped to [σ_min, σ_max], float64."""
        return torch.as_tensor(sigma, dtype=torch.float64).clamp(self.sigma_min, self.sigma_max)

    def sigmas(self, num_steps: int) -> Tensor:
        """The σ grid (float64, ending in 0): the scheduler's own when built by :func:`from_flow_matching`,
        else ``num_steps`` levels uniform in t from t(σ_max) to t(σ_min), then 0."""
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
        if self.schedule is not None:
            return check_sigmas(self.schedule(num_steps))
        ends = torch.tensor([self.sigma_max, self.sigma_min], dtype=torch.float64)
        t = torch.linspace(*(ends / (1 + ends)).tolist(), num_steps, dtype=torch.float64)
        return check_sigmas(torch.cat([t / (1 - t), t.new_zeros(1)]))

    def _call(self, sample, timestep, **cond):
        return self.model(sample, timestep=timestep, **cond)

    def __call__(self, x: Tensor, sigma, **cond) -> Tensor:
        """x̂0 ``(N, *event)`` float64 of ``x : (N, *event)`` at noise levels ``sigma : (N,)``."""
        sigma = sigma_batch(sigma, x)
        x = x.to(torch.float64)
        s = sigma.reshape(-1, *([1] * (x.dim() - 1)))
        t = (sigma / (1 + sigma)) * self.timestep_scale
        t = t.to(torch.float64 if self.dtype == torch.float64 else torch.float32)
        v = run_network(self._call, x / (1 + s), t, network_cond(cond, self._keys), dtype=self.dtype,
                        device=model_device(self.model, x.device), max_batch=self.max_batch)
        return (x - s * v) / (1 + s)

    def __repr__(self) -> str:
        return (f"FlowMatchingDenoiser({type(self.model).__name__}, timestep_scale={self.timestep_scale}, "
                f"sigma_min={self.sigma_min:.4g}, sigma_max={self.sigma_max:.4g}, dtype={self.dtype})")


def _set_timesteps(scheduler, num_steps: int, mu):
    if scheduler.config.get("use_dynamic_shifting", False):
        if mu is None:
            raise ValueError("this scheduler uses dynamic shifting: pass mu= (diffusers' calculate_shift of the "
                             "image-token count)")
        return fresh_scheduler(scheduler, num_steps, mu=mu)
    return fresh_scheduler(scheduler, num_steps)


def flow_scheduler_sigmas(scheduler, num_steps: int, *, sigma_max: float = 1e8, mu: float | None = None) -> Tensor:
    """The scheduler's own grid of ``num_steps`` steps in EDM σ = t/(1 − t) (float64, ending in 0),
    with t = 1 replaced by ``sigma_max``."""
    t = torch.as_tensor(_set_timesteps(scheduler, num_steps, mu).sigmas, dtype=torch.float64).reshape(-1)
    sigma = torch.where(t >= 1, torch.full_like(t, sigma_max), t / (1 - t).clamp(min=1e-300))
    if bool((sigma[t < 1] >= sigma_max).any()):
        raise ValueError(f"the scheduler's grid reaches σ = {float(sigma[t < 1].max()):.4g} >= sigma_max = {sigma_max}")
    return check_sigmas(sigma)


def from_flow_matching(model, scheduler, *, dtype=None, sigma_max: float = 1e8, timestep_scale: float | None = None,
                       mu: float | None = None, max_batch: int | None = None) -> FlowMatchingDenoiser:
    """An EDM denoiser for a velocity network and its ``FlowMatchEulerDiscreteScheduler``.

    ``timestep_scale`` defaults to the scheduler's ``num_train_timesteps`` (SD3-style; Flux: 1.0);
    ``mu`` is required with dynamic shifting. σ_min is the scheduler's smallest trained level after
    its shift; ``sigmas(n)`` is :func:`flow_scheduler_sigmas`.
    """
    config = getattr(scheduler, "config", None)
    if config is None or "shift" not in config:
        raise TypeError(f"expected a diffusers FlowMatchEulerDiscreteScheduler, got {type(scheduler).__name__}")
    if config.get("invert_sigmas", False):
        raise ValueError("schedulers with invert_sigmas=True (Mochi) are not supported")
    scale = float(config.get("num_train_timesteps", 1000)) if timestep_scale is None else timestep_scale
    fresh = type(scheduler).from_config(config)
    t_min = torch.tensor([float(fresh.sigma_min)], dtype=torch.float64)
    if config.get("use_dynamic_shifting", False):
        if mu is None:
            raise ValueError("this scheduler uses dynamic shifting: pass mu= (diffusers' calculate_shift)")
        t_min = fresh.time_shift(mu, 1.0, t_min)
    t_min = float(t_min[0])
    return FlowMatchingDenoiser(model, timestep_scale=scale, sigma_min=t_min / (1 - t_min), sigma_max=sigma_max,
                                dtype=dtype, max_batch=max_batch,
                                schedule=lambda n: flow_scheduler_sigmas(scheduler, n, sigma_max=sigma_max, mu=mu))
