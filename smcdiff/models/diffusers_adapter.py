"""diffusers and k-diffusion models as EDM denoisers ``D(x, sigma, **cond) -> x0_hat``.

smcdiff's samplers speak one convention (EDM: x_σ = x0 + σ·n, a float64 state, a per-sample σ).
:func:`from_diffusers` turns a diffusers network and its scheduler into such a denoiser, so every
kernel, guidance transform, potential and method applies to it unchanged:

* **discrete-time VP models** (``UNet2DModel``, ``UNet2DConditionModel`` with a DDPM/DDIM/Euler/
  DPM-Solver scheduler): the scheduler's ᾱ_j gives the grid σ_j = sqrt((1 − ᾱ_j)/ᾱ_j); the network
  sees x_vp = x/sqrt(1 + σ²) at the fractional timestep t(σ) found by linear interpolation in log σ
  over that grid (as diffusers' ``EulerDiscreteScheduler`` and k-diffusion do), always passed as a
  float tensor (diffusers casts a Python number to an integer). The output F becomes x̂0 by the
  scheduler's ``prediction_type``: ``epsilon`` D = x − σF; ``v_prediction``
  D = x/(1+σ²) − σF/sqrt(1+σ²); ``sample`` D = F. A network that returns 2C channels for C input
  channels (learned variance) has the second half dropped.
* **flow-matching models** (a ``FlowMatchEulerDiscreteScheduler``): :func:`from_diffusers`
  dispatches to :func:`smcdiff.models.flow_adapter.from_flow_matching` (see there).

Conditioning arrives through ``cond``, e.g. ``class_labels``, ``encoder_hidden_states`` (prompt
embeddings, no tokenizer needed) and ``added_cond_kwargs`` — as a dict, or flattened into tensor keys
``"added_cond_kwargs.text_embeds"``, ``"added_cond_kwargs.time_ids"`` so the engine can carry each one
with its particle. Keys the network's ``forward`` does not accept are ignored (the engine hands the
same ``cond`` to potentials). Tensors with leading dimension N are split with ``x``.

The adapter exposes ``sigma_min``/``sigma_max`` (ends of the training grid), ``round_sigma`` (clamps
to that range; with ``quantize=True`` it also snaps to the grid) and ``sigmas(num_steps)``, the
scheduler's own σ grid (float64, ending in 0), so ``EDMEuler`` on it reproduces diffusers'
``EulerDiscreteScheduler`` loop, and DDIM with η = 0 is the same Euler step in σ. Keep other
schedules inside [σ_min, σ_max]: outside it the timestep is clipped to the grid's end while x is
still scaled by the true σ (as in diffusers and k-diffusion).

The network runs in ``dtype`` (default: its parameters' dtype; a different one casts the model in
place — prefer loading with ``torch_dtype=``), on its own device; the sampler's arithmetic stays in
float64 and the output is float64. ``max_batch`` splits each call into chunks of that many samples.
Autograd is off unless an input already requires grad (gradient guidance through the network).

    >>> import torch
    >>> from smcdiff.kernels import EDMEuler
    >>> class TinyEps(torch.nn.Module):                    # any model(sample, timestep=t, **cond)
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.w = torch.nn.Parameter(torch.tensor(0.5))
    ...     def forward(self, sample, timestep):
    ...         return self.w * sample                     # an ε-prediction
    >>> betas = torch.linspace(0.85e-3 ** 0.5, 0.012 ** 0.5, 1000) ** 2     # SD's "scaled_linear"
    >>> D = DiscreteVPDenoiser(TinyEps(), torch.cumprod(1 - betas, 0), "epsilon")
    >>> round(D.sigma_min, 4), round(D.sigma_max, 2)
    (0.0292, 14.61)
    >>> sigmas = D.sigmas(10)                                # uniform in t, then 0
    >>> g = torch.Generator().manual_seed(0)
    >>> x = sigmas[0] * torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=g)
    >>> for i in range(10):
    ...     x = EDMEuler()(D, x, sigmas, i, g).x
    >>> x.dtype, x.shape
    (torch.float64, torch.Size([2, 3, 4, 4]))

With diffusers installed (``pip install smcdiff[diffusers]``), from a local folder — nothing is
downloaded::

    unet = UNet2DModel.from_pretrained("ddpm-folder/unet", torch_dtype=torch.float16, local_files_only=True)
    scheduler = DDIMScheduler.from_pretrained("ddpm-folder/scheduler", local_files_only=True)
    D = from_diffusers(unet, scheduler, max_batch=64)
    res = smcdiff.sample(D, D.sigmas(50), EDMHeun(S_churn=10), ..., shape=(3, 32, 32))

**k-diffusion.** k-diffusion's denoisers (``DiscreteEpsDDPMDenoiser``, ``CompVisDenoiser``,
``VDenoiser``, ``OpenAIDenoiser``, ...) already follow ``model(x, sigma, **extra_args) -> x0_hat`` in
the EDM convention: ``x0_hat`` is E[x0 | x_σ] with x_σ = x0 + σn, and ``sigma_min``/``sigma_max`` are
their grid's ends. The one thing to bridge is the dtype: they compute in the input's dtype, so
:func:`from_k_diffusion` feeds them ``dtype`` tensors and returns float64 (plus ``max_batch``, the
same autograd rule, ``round_sigma`` and ``sigmas(n)`` from their ``get_sigmas``).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping

import torch

from smcdiff.kernels.schedules import check_sigmas, karras_sigmas
from smcdiff.types import Tensor

__all__ = ["DiscreteVPDenoiser", "KDiffusionDenoiser", "accepted_keys", "fresh_scheduler", "from_diffusers",
           "from_k_diffusion", "model_device", "network_cond", "network_dtype", "run_network", "scheduler_sigmas",
           "sigma_batch"]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def sigma_batch(sigma, x: Tensor) -> Tensor:
    """σ as a float64 ``(N,)`` tensor on ``x``'s device; a scalar or one-element σ is broadcast."""
    s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
    if s.numel() == 1:
        return s.expand(x.shape[0])
    if s.numel() != x.shape[0]:
        raise ValueError(f"sigma must be a scalar or have one value per sample ({x.shape[0]}), got {s.numel()}")
    return s


def network_dtype(model, dtype=None) -> torch.dtype:
    """The dtype the network runs in: ``dtype`` if given (casting the model in place), else its first
    floating parameter's dtype, else float32."""
    params = [p for p in getattr(model, "parameters", list)() if p.is_floating_point()]
    if dtype is None:
        return params[0].dtype if params else torch.float32
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype (e.g. torch.float16), got {dtype!r}")
    if params and params[0].dtype != dtype:
        model.to(dtype=dtype)
    return dtype


def model_device(model, fallback):
    """The device of ``model``'s first parameter, else ``fallback``."""
    for p in getattr(model, "parameters", list)():
        return p.device
    return fallback


def accepted_keys(fn) -> frozenset | None:
    """Keyword names ``fn`` (or ``fn.forward``) accepts; None when it takes ``**kwargs``."""
    try:
        params = inspect.signature(getattr(fn, "forward", fn)).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params)


def network_cond(cond: Mapping, accepted: frozenset | None = None) -> dict:
    """Conditioning for the network: ``added_cond_kwargs.<k>`` keys regrouped into one dict,
    ``uncond.<k>`` keys (for :class:`~smcdiff.kernels.cfg.ClassifierFreeGuidance`) and keys not in
    ``accepted`` dropped."""
    out: dict = {}
    for key, value in cond.items():
        if key.startswith("uncond."):
            continue
        if key.startswith("added_cond_kwargs."):
            out.setdefault("added_cond_kwargs", {})[key[len("added_cond_kwargs."):]] = value
        else:
            out[key] = value if not isinstance(value, Mapping) else dict(value)
    return {k: v for k, v in out.items() if accepted is None or k in accepted}


def _prepare(value, sl: slice, n: int, dtype, device):
    if isinstance(value, Mapping):
        return {k: _prepare(v, sl, n, dtype, device) for k, v in value.items()}
    if not isinstance(value, Tensor):
        return value
    if value.dim() > 0 and value.shape[0] == n:
        value = value[sl]
    return value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)


def _unwrap(out):
    return out.sample if hasattr(out, "sample") else out[0] if isinstance(out, (tuple, list)) else out


def _wants_grad(x: Tensor, cond: Mapping) -> bool:
    tensors = [x] + [v for v in cond.values() if isinstance(v, Tensor)]
    tensors += [w for v in cond.values() if isinstance(v, Mapping) for w in v.values() if isinstance(w, Tensor)]
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def run_network(fn: Callable, x_in: Tensor, t: Tensor, cond: Mapping, *, dtype: torch.dtype, device,
                max_batch: int | None = None) -> Tensor:
    """``fn(x_chunk, t_chunk, **cond_chunk)`` in chunks of ``max_batch`` samples, float64 out.

    ``x_in : (N, C, ...)`` is cast to ``dtype`` on ``device``; ``t : (N,)`` is moved to ``device``
    as it is. The output (a tensor, a tuple or an object with ``.sample``) must have x_in's shape,
    or 2C channels (learned variance: the second half is dropped). Returns ``(N, C, ...)`` float64 on
    x_in's device; autograd runs only if an input requires grad.
    """
    n = x_in.shape[0]
    step = n if not max_batch else int(max_batch)
    outs = []
    with torch.set_grad_enabled(_wants_grad(x_in, cond)):
        for start in range(0, n, max(step, 1)):
            sl = slice(start, min(start + step, n))
            c = {k: _prepare(v, sl, n, dtype, device) for k, v in cond.items()}
            outs.append(_unwrap(fn(x_in[sl].to(device=device, dtype=dtype), t[sl].to(device), **c)))
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    if not isinstance(out, Tensor):
        raise TypeError(f"the network must return a tensor (or .sample / a tuple), got {type(out).__name__}")
    if out.shape != x_in.shape:
        C = x_in.shape[1] if x_in.dim() > 1 else 0
        if x_in.dim() > 1 and out.shape[1] == 2 * C and out.shape[2:] == x_in.shape[2:] and out.shape[0] == n:
            out = out[:, :C]  # learned variance: keep the mean half
        else:
            raise ValueError(f"the network returned shape {tuple(out.shape)} for input {tuple(x_in.shape)}; "
                             "expected the same shape (or twice the channels, for learned variance)")
    return out.to(device=x_in.device, dtype=torch.float64)


class DiscreteVPDenoiser:
    """A discrete-time VP network on the grid ``alphas_cumprod : (M,)`` as an EDM denoiser.

    ``model(sample, timestep=t, **cond)`` with ``t : (N,)`` fractional timesteps in [0, M − 1];
    ``prediction_type`` one of ``"epsilon"``, ``"v_prediction"``, ``"sample"``. ``schedule(n)``
    (optional) gives the σ grid that :meth:`sigmas` returns; :func:`from_diffusers` sets it to the
    scheduler's own. Call as ``D(x, sigma, **cond)`` with ``x : (N, C, ...)``, ``sigma : (N,)``.
    """

    def __init__(self, model: Callable, alphas_cumprod, prediction_type: str = "epsilon", *, dtype=None,
                 max_batch: int | None = None, quantize: bool = False, schedule: Callable | None = None):
        if not callable(model):
            raise TypeError(f"model must be callable as model(sample, timestep=t, **cond), got {type(model).__name__}")
        if prediction_type == "original_sample":
            prediction_type = "sample"
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if max_batch is not None and (not isinstance(max_batch, int) or max_batch < 1):
            raise ValueError(f"max_batch must be an int >= 1 or None, got {max_batch!r}")
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu().reshape(-1)
        if ac.numel() < 2 or not bool(((ac > 0) & (ac < 1)).all()) or not bool((ac[1:] < ac[:-1]).all()):
            raise ValueError("alphas_cumprod must hold at least 2 values in (0, 1), strictly decreasing")
        self.model, self.prediction_type, self.max_batch, self.quantize = model, prediction_type, max_batch, quantize
        self.dtype = network_dtype(model, dtype)
        self.schedule = schedule
        self.sigma_grid = torch.sqrt((1 - ac) / ac)  # (M,) increasing in the timestep
        self.log_sigmas = self.sigma_grid.log()
        self.num_train_timesteps = ac.numel()
        self.sigma_min, self.sigma_max = float(self.sigma_grid[0]), float(self.sigma_grid[-1])
        self._keys = accepted_keys(model)
        self._grids: dict = {}

    def _log_grid(self, device) -> Tensor:
        # Cached per device: a host-to-device copy on every call would synchronise.
        if device not in self._grids:
            self._grids[device] = self.log_sigmas.to(device)
        return self._grids[device]

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Fractional timesteps ``(N,)`` float64 of noise levels ``sigma : (N,)`` (log-σ interpolation,
        clipped to [0, M − 1]; the nearest index when ``quantize``)."""
        ls = self._log_grid(sigma.device)
        log_s = torch.log(sigma.to(torch.float64).clamp(min=1e-10))
        if self.quantize:
            return (log_s[None, :] - ls[:, None]).abs().argmin(0).to(torch.float64)
        low = (torch.searchsorted(ls, log_s, right=True) - 1).clamp(0, ls.numel() - 2)
        lo, hi = ls[low], ls[low + 1]
        w = ((lo - log_s) / (lo - hi)).clamp(0, 1)
        return (1 - w) * low + w * (low + 1)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """Noise levels of fractional timesteps ``t`` (log-σ interpolation; inverse of :meth:`sigma_to_t`)."""
        ls = self._log_grid(t.device)
        t = t.to(torch.float64).clamp(0, ls.numel() - 1)
        low = t.floor().long().clamp(max=ls.numel() - 2)
        w = t - low
        return ((1 - w) * ls[low] + w * ls[low + 1]).exp()

    def round_sigma(self, sigma) -> Tensor:
        """σ clamped to [σ_min, σ_max] (and snapped to the grid when ``quantize``), float64."""
        s = torch.as_tensor(sigma, dtype=torch.float64).clamp(self.sigma_min, self.sigma_max)
        if self.quantize:
            grid = self._log_grid(s.device).exp()
            s = grid[self.sigma_to_t(s.reshape(-1)).long()].reshape(s.shape)
        return s

    def sigmas(self, num_steps: int) -> Tensor:
        """The σ grid of ``num_steps`` steps (float64, ending in 0): the scheduler's own when built by
        :func:`from_diffusers`, else ``num_steps`` levels uniform in t from M − 1 to 0, then 0."""
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
        if self.schedule is not None:
            return check_sigmas(self.schedule(num_steps))
        t = torch.linspace(self.num_train_timesteps - 1, 0, num_steps, dtype=torch.float64)
        return check_sigmas(torch.cat([self.t_to_sigma(t), t.new_zeros(1)]))

    def _call(self, sample, timestep, **cond):
        return self.model(sample, timestep=timestep, **cond)

    def __call__(self, x: Tensor, sigma, **cond) -> Tensor:
        """x̂0 ``(N, C, ...)`` float64 of ``x : (N, C, ...)`` at noise levels ``sigma : (N,)``."""
        sigma = sigma_batch(sigma, x)
        x = x.to(torch.float64)
        s = sigma.reshape(-1, *([1] * (x.dim() - 1)))
        c_in = 1 / torch.sqrt(1 + s**2)
        t = self.sigma_to_t(sigma).to(torch.float64 if self.dtype == torch.float64 else torch.float32)
        F = run_network(self._call, x * c_in, t, network_cond(cond, self._keys), dtype=self.dtype,
                        device=model_device(self.model, x.device), max_batch=self.max_batch)
        if self.prediction_type == "epsilon":
            return x - s * F
        if self.prediction_type == "v_prediction":
            return x * c_in**2 - s * c_in * F
        return F

    def __repr__(self) -> str:
        return (f"DiscreteVPDenoiser({type(self.model).__name__}, prediction_type={self.prediction_type!r}, "
                f"sigma_min={self.sigma_min:.4g}, sigma_max={self.sigma_max:.4g}, dtype={self.dtype})")


def _is_flow_scheduler(scheduler) -> bool:
    return "FlowMatch" in type(scheduler).__name__ or (
        not hasattr(scheduler, "alphas_cumprod") and "shift" in getattr(scheduler, "config", {}))


def fresh_scheduler(scheduler, num_steps: int, **options):
    """A new scheduler from ``scheduler``'s config, set to ``num_steps`` (the original is untouched).

    diffusers 0.42's ``set_timesteps`` converts a tensor with ``np.array``, which NumPy 2 answers with
    a ``DeprecationWarning`` about the ``copy`` keyword; that one warning is silenced here.
    """
    fresh = type(scheduler).from_config(scheduler.config)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy keyword",
                                category=DeprecationWarning)
        fresh.set_timesteps(num_steps, **options)
    return fresh


def scheduler_sigmas(scheduler, num_steps: int) -> Tensor:
    """The EDM σ grid (float64, ending in 0) of a fresh copy of a VP ``scheduler`` set to ``num_steps``.

    Euler-family schedulers (with a ``sigmas`` attribute) give it directly (a repeated value, as in
    Heun's, is kept once; a grid ending in σ_min gets a final 0); DDPM/DDIM-family ones give
    σ = sqrt((1 − ᾱ_t)/ᾱ_t) at their integer timesteps, then 0 (DDIM's last step to ᾱ = 1).
    """
    fresh = fresh_scheduler(scheduler, num_steps)
    if getattr(fresh, "sigmas", None) is not None:
        s = torch.unique_consecutive(torch.as_tensor(fresh.sigmas, dtype=torch.float64).reshape(-1))
    else:
        ac = torch.as_tensor(fresh.alphas_cumprod, dtype=torch.float64)[torch.as_tensor(fresh.timesteps).long()]
        s = torch.sqrt((1 - ac) / ac)
    if float(s[-1]) != 0.0:
        s = torch.cat([s, s.new_zeros(1)])
    return check_sigmas(s)


def from_diffusers(unet, scheduler, *, dtype=None, prediction_type: str | None = None,
                   max_batch: int | None = None, quantize: bool = False, **flow_options):
    """An EDM denoiser for a diffusers network and its scheduler (dispatching on the scheduler).

    A ``FlowMatchEulerDiscreteScheduler`` gives :func:`smcdiff.models.flow_adapter.from_flow_matching`
    (``flow_options``: ``sigma_max``, ``timestep_scale``, ``mu``); any scheduler with
    ``alphas_cumprod`` gives a :class:`DiscreteVPDenoiser` with ``sigmas(n)`` = :func:`scheduler_sigmas`.
    ``prediction_type`` overrides the scheduler config's.
    """
    if _is_flow_scheduler(scheduler):
        from smcdiff.models.flow_adapter import from_flow_matching

        if prediction_type not in (None, "flow_prediction") or quantize:
            raise ValueError("a flow-matching scheduler predicts velocity: prediction_type and quantize do not apply")

        return from_flow_matching(unet, scheduler, dtype=dtype, max_batch=max_batch, **flow_options)
    if flow_options:
        raise TypeError(f"unexpected options for a VP scheduler: {sorted(flow_options)}")
    if not hasattr(scheduler, "alphas_cumprod") or not hasattr(scheduler, "config"):
        raise TypeError(f"expected a diffusers scheduler with alphas_cumprod, got {type(scheduler).__name__}")
    config = getattr(unet, "config", {})
    if config.get("time_embedding_type") == "fourier":
        raise ValueError("a UNet2DModel with time_embedding_type='fourier' is a VE score model "
                         "(its output is divided by the timestep); this adapter expects a VP network")
    if scheduler.config.get("timestep_type", "discrete") != "discrete":
        raise ValueError("schedulers with timestep_type='continuous' (EDM-preconditioned models) are not supported")
    pred = prediction_type or scheduler.config.get("prediction_type", "epsilon")
    return DiscreteVPDenoiser(unet, scheduler.alphas_cumprod, pred, dtype=dtype, max_batch=max_batch,
                              quantize=quantize, schedule=lambda n: scheduler_sigmas(scheduler, n))


class KDiffusionDenoiser:
    """A k-diffusion denoiser ``inner(x, sigma, **extra_args)`` fed ``dtype`` tensors, float64 out."""

    def __init__(self, inner: Callable, *, dtype=None, max_batch: int | None = None):
        if not callable(inner):
            raise TypeError(f"expected a k-diffusion denoiser model(x, sigma, **extra_args), got {type(inner).__name__}")
        if max_batch is not None and (not isinstance(max_batch, int) or max_batch < 1):
            raise ValueError(f"max_batch must be an int >= 1 or None, got {max_batch!r}")
        self.inner, self.max_batch = inner, max_batch
        self.dtype = network_dtype(inner, dtype)
        self.sigma_min = float(getattr(inner, "sigma_min", 0.002))
        self.sigma_max = float(getattr(inner, "sigma_max", 80.0))

    def round_sigma(self, sigma) -> Tensor:
        """σ clamped to [σ_min, σ_max], float64."""
        return torch.as_tensor(sigma, dtype=torch.float64).clamp(self.sigma_min, self.sigma_max)

    def sigmas(self, num_steps: int) -> Tensor:
        """``inner.get_sigmas(num_steps)`` when it exists, else ``karras_sigmas`` on [σ_min, σ_max]."""
        if hasattr(self.inner, "get_sigmas"):
            return check_sigmas(torch.as_tensor(self.inner.get_sigmas(num_steps), dtype=torch.float64).cpu())
        return karras_sigmas(num_steps, self.sigma_min, self.sigma_max)

    def __call__(self, x: Tensor, sigma, **cond) -> Tensor:
        sigma = sigma_batch(sigma, x).to(self.dtype)
        return run_network(self.inner, x, sigma, cond, dtype=self.dtype, device=model_device(self.inner, x.device),
                           max_batch=self.max_batch)

    def __repr__(self) -> str:
        return f"KDiffusionDenoiser({type(self.inner).__name__}, dtype={self.dtype})"


def from_k_diffusion(denoiser: Callable, *, dtype=None, max_batch: int | None = None) -> KDiffusionDenoiser:
    """Wrap a k-diffusion denoiser (already ``D(x, σ, **cond)``) for smcdiff's float64 sampler."""
    return KDiffusionDenoiser(denoiser, dtype=dtype, max_batch=max_batch)
