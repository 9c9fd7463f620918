"""Training loops for the small networks: EDM denoising and DG's time-dependent discriminator.

* :func:`edm_loss` / :func:`train_denoiser` — EDM's recipe (Karras et al. 2022): ln σ ~ N(P_mean,
  P_std²), loss λ(σ)·‖D(x0 + σn; σ) − x0‖², λ = (σ² + σd²)/(σ·σd)², Adam on random minibatches,
  optionally an EMA copy of the weights.
* :func:`train_classifier` — cross-entropy for the classifier whose features define the FD-digits
  metric (:mod:`smcdiff.metrics.fd_digits`).
* :func:`discriminator_loss` / :func:`train_discriminator` — DG's recipe (REFERENCE §2a): real
  (label 1) vs fake (label 0), VP time t importance-sampled by :func:`importance_vp_time`,
  x_t = α(t)·x + std(t)·z, binary cross-entropy on the logit, Adam with weight decay.

Every random number (minibatches, noise levels, noise) comes from the ``generator`` passed in, so
a run's weights depend on its seed alone::

    from smcdiff.models.pairs import mixture_pair_1d
    from smcdiff.models.small_nets import MLPDenoiser, TimeDiscriminator
    data, model, _ = mixture_pair_1d()
    g = torch.Generator().manual_seed(0)
    net, losses = train_denoiser(MLPDenoiser(1, generator=g), data.sample(10_000, g),
                                 steps=2_000, batch_size=256, generator=g)
    disc = TimeDiscriminator((1,), generator=g)
    disc, bce = train_discriminator(disc, data.sample(10_000, g), model.sample(10_000, g),
                                    steps=2_000, batch_size=128, generator=g)
    # net is a denoiser, disc a log_ratio for smcdiff.methods.dg(net, sigmas, log_ratio=disc, ...)
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from smcdiff import _rng
from smcdiff.kernels.edm import EDMHeun
from smcdiff.kernels.schedules import (
    VP_BETA_MIN,
    karras_sigmas,
    vp_alpha,
    vp_time_from_integral,
)
from smcdiff.kernels.steps import per_sample
from smcdiff.sampling import sample
from smcdiff.types import Tensor

__all__ = [
    "discriminator_loss",
    "edm_loss",
    "importance_vp_time",
    "sample_vp_time",
    "model_samples",
    "train_classifier",
    "train_denoiser",
    "train_discriminator",
]

VP_BETA_MAX = 20.0


def _one_generator(generator) -> torch.Generator:
    _rng.check_generator(generator)
    if not isinstance(generator, torch.Generator):
        raise TypeError("training takes one torch.Generator (not one per group)")
    return generator


def edm_loss(denoiser, x0: Tensor, generator: torch.Generator, P_mean: float = -1.2, P_std: float = 1.2,
             sigma_data: float = 0.5, reduction: str = "mean") -> Tensor:
    """EDM's denoising loss on a batch ``x0 : (N, *event)``, in ``x0``'s dtype.

    Draws ln σ ~ N(P_mean, P_std²) and n ~ N(0, I) (in that order) from ``generator``; per sample
    λ(σ)·‖D(x0 + σn; σ) − x0‖² (summed over the event), λ = (σ² + σd²)/(σ·σd)². Returns the batch
    mean, or the ``(N,)`` per-sample losses with ``reduction="none"``.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    g = _one_generator(generator)
    dtype = x0.dtype if x0.is_floating_point() else torch.float64
    x0 = x0.to(dtype)
    # Noise level and noise.
    sigma = torch.exp(P_mean + P_std * _rng.randn((x0.shape[0],), g, dtype, x0.device))
    n = _rng.randn(tuple(x0.shape), g, dtype, x0.device)
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    # Weighted squared error of the denoised batch.
    err = (denoiser(x0 + per_sample(sigma, x0) * n, sigma).to(dtype) - x0) ** 2
    losses = weight * err.reshape(x0.shape[0], -1).sum(dim=1)
    return losses.mean() if reduction == "mean" else losses


def _ema_beta(ema: float, step: int) -> float:
    """EMA decay with a warm-up, min(ema, (1 + k)/(10 + k)), so short runs are not stuck at init."""
    return min(ema, (1 + step) / (10 + step))


def _steps(steps: int, desc: str, progress: bool):
    if progress:
        from tqdm.auto import tqdm

        return tqdm(range(steps), desc=desc, leave=False)
    return range(steps)


def _check_loop(steps: int, batch_size: int, lr: float) -> None:
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")


def _fit(module: nn.Module, opt: torch.optim.Optimizer, steps: int, desc: str, progress: bool,
         loss_at: Callable[[int], Tensor], after: Callable[[int], None] | None = None) -> Tensor:
    """The loop every trainer shares: ``steps`` times, ``loss_at(k)`` → backward → ``opt.step()`` →
    ``after(k)``; ``module`` in train mode meanwhile, eval mode after. Returns the ``(steps,)`` float64 losses."""
    losses = torch.empty(steps, dtype=torch.float64)
    module.train()
    bar = _steps(steps, desc, progress)
    for k in bar:
        loss = loss_at(k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses[k] = float(loss.detach())
        if after is not None:
            after(k)
        if progress:
            bar.set_postfix(loss=f"{float(losses[k]):.4f}")
    module.eval()
    return losses


def _minibatch(data: Tensor, batch_size: int, g: torch.Generator) -> Tensor:
    idx = torch.randint(0, data.shape[0], (batch_size,), generator=g)
    return data[idx.to(data.device)]


def train_denoiser(denoiser: nn.Module, data: Tensor, *, steps: int, batch_size: int, lr: float = 1e-3,
                   generator: torch.Generator, ema: float | None = None, progress: bool = False,
                   P_mean: float = -1.2, P_std: float = 1.2) -> tuple[nn.Module, Tensor]:
    """Train ``denoiser`` (in place) on ``data : (N, *event)`` with :func:`edm_loss` and Adam.

    Each step draws ``batch_size`` rows with replacement, then σ and the noise, from ``generator``.
    σ_data is the denoiser's ``sigma_data`` attribute (0.5 if absent). Returns ``(model, losses)``:
    ``model`` is ``denoiser`` itself, or with ``ema`` (e.g. 0.999) a separate EMA copy of its
    weights (decay min(ema, (1+k)/(10+k)) at step k); ``losses : (steps,)`` float64 minibatch losses.
    """
    _check_loop(steps, batch_size, lr)
    g = _one_generator(generator)
    data = torch.as_tensor(data)
    sigma_data = float(getattr(denoiser, "sigma_data", 0.5))
    params = [p for p in denoiser.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    averaged = copy.deepcopy(denoiser).requires_grad_(False) if ema is not None else None

    def loss_at(k: int) -> Tensor:  # minibatch, then σ and noise
        return edm_loss(denoiser, _minibatch(data, batch_size, g), g, P_mean, P_std, sigma_data)

    def average(k: int) -> None:  # exponential moving average of the weights
        beta = _ema_beta(float(ema), k)
        with torch.no_grad():
            for p_avg, p in zip(averaged.parameters(), denoiser.parameters()):
                p_avg.lerp_(p.detach(), 1 - beta)

    losses = _fit(denoiser, opt, steps, "denoiser", progress, loss_at, average if averaged is not None else None)
    if averaged is not None:
        return averaged.eval(), losses
    return denoiser, losses


# ------------------------------------------------------------------------- DG discriminator
def _I(t, beta_min: float, beta_max: float):
    """Integrated β: I(t) = ½t²(β1 − β0) + tβ0 (so α(t)² = e^{−I(t)})."""
    return 0.5 * t**2 * (beta_max - beta_min) + t * beta_min


def _A(t, beta_min: float, beta_max: float):
    """A(t) = ln(1 − e^{−I(t)}) + I(t) = ln(e^{I(t)} − 1), the importance sampler's log-CDF scale."""
    i = _I(torch.as_tensor(t, dtype=torch.float64), beta_min, beta_max)
    return torch.log(-torch.expm1(-i)) + i


def importance_vp_time(u: Tensor, t_min: float = 1e-5, beta_min: float = VP_BETA_MIN,
                       beta_max: float = VP_BETA_MAX) -> Tensor:
    """DG's inverse CDF u ∈ [0, 1] → t ∈ [t_min, 1] (float64, monotone; u = 0 → t_min, u = 1 → 1).

    t = (−β0 + √(β0² + 2(β1−β0)·ln(1 + exp(Z·u + A(t_min)))))/(β1−β0), Z = A(1) − A(t_min). The
    density of t is A'(t)/Z = β(t)/(Z·(1 − α(t)²)) ∝ g(t)²/std(t)² (likelihood weighting).
    """
    if not 0 < t_min < 1:
        raise ValueError(f"t_min must lie in (0, 1), got {t_min}")
    u = torch.as_tensor(u, dtype=torch.float64)
    a_min, a_max = _A(t_min, beta_min, beta_max), _A(1.0, beta_min, beta_max)
    s = (a_max - a_min) * u + a_min
    i = F.softplus(s, beta=1, threshold=30)  # ln(1 + e^s) = I(t)
    return vp_time_from_integral(i, beta_min, beta_max).clamp(t_min, 1.0)


def sample_vp_time(n: int, generator: torch.Generator, t_min: float = 1e-5) -> Tensor:
    """``n`` importance-sampled VP times ``(n,)`` float64 (:func:`importance_vp_time` of U(0, 1) draws)."""
    return importance_vp_time(_rng.rand((n,), _one_generator(generator)), t_min)


@torch.no_grad()
def model_samples(denoiser, num: int, *, steps: int, generator: torch.Generator) -> Tensor:
    """``num`` samples ``(num, *denoiser.event_shape)`` float32 of ``denoiser`` by the deterministic
    EDM Heun sampler with ``steps`` steps: the "fake" set DG trains its discriminator on."""
    res = sample(denoiser, karras_sigmas(steps), EDMHeun(), num_groups=num, num_particles=1,
                 shape=tuple(denoiser.event_shape), generator=_one_generator(generator))
    return res.x[:, 0].to(torch.float32)


def discriminator_loss(disc, real: Tensor, fake: Tensor, generator: torch.Generator, t_min: float = 1e-5) -> Tensor:
    """DG's BCE on one batch: ``real : (B, *event)`` labelled 1, ``fake : (M, *event)`` labelled 0.

    Draws t (importance-sampled, :func:`sample_vp_time`) then z ~ N(0, I) for the B + M rows from
    ``generator``; x_t = α(t)·x + √(1 − α(t)²)·z; loss = mean BCE-with-logits of
    ``disc.logit(x_t, t)``.
    """
    g = _one_generator(generator)
    x = torch.cat([torch.as_tensor(real), torch.as_tensor(fake)]).to(torch.float64)
    labels = torch.cat([torch.ones(real.shape[0]), torch.zeros(fake.shape[0])])
    # Diffuse both sets to importance-sampled VP times.
    t = sample_vp_time(x.shape[0], g, t_min).to(x.device)
    alpha = vp_alpha(t)
    z = _rng.randn(tuple(x.shape), g, x.dtype, x.device)
    x_t = per_sample(alpha, x) * x + per_sample(torch.sqrt(-torch.expm1(-_I(t, VP_BETA_MIN, VP_BETA_MAX))), x) * z
    # Binary cross-entropy on the logit.
    logit = disc.logit(x_t, t)
    return F.binary_cross_entropy_with_logits(logit, labels.to(logit.device, logit.dtype))


def train_discriminator(disc: nn.Module, real: Tensor, fake: Tensor, *, steps: int, batch_size: int,
                        lr: float = 3e-4, weight_decay: float = 1e-7, generator: torch.Generator,
                        t_min: float = 1e-5, progress: bool = False) -> tuple[nn.Module, Tensor]:
    """Train ``disc`` (in place; a :class:`~smcdiff.models.small_nets.TimeDiscriminator` or any
    module with ``logit(x_vp, tau)``) to tell ``real : (N, *event)`` from ``fake : (M, *event)``.

    Each step draws ``batch_size`` rows of each set with replacement (real first), then
    :func:`discriminator_loss`; Adam(lr, weight_decay) as DG. Returns ``(disc, losses)`` with
    ``losses : (steps,)`` float64.
    """
    _check_loop(steps, batch_size, lr)
    g = _one_generator(generator)
    real, fake = torch.as_tensor(real), torch.as_tensor(fake)
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"real and fake must share an event shape, got {tuple(real.shape)} and {tuple(fake.shape)}")
    opt = torch.optim.Adam([p for p in disc.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)

    def loss_at(k: int) -> Tensor:  # minibatches of both sets (real first), then t and z
        xr, xf = _minibatch(real, batch_size, g), _minibatch(fake, batch_size, g)
        return discriminator_loss(disc, xr, xf, g, t_min)

    losses = _fit(disc, opt, steps, "discriminator", progress, loss_at)
    return disc, losses


# ------------------------------------------------------------------------------- classifier
def train_classifier(classifier: nn.Module, images: Tensor, labels: Tensor, *, steps: int, batch_size: int,
                     lr: float = 1e-3, weight_decay: float = 1e-4, generator: torch.Generator,
                     progress: bool = False) -> tuple[nn.Module, Tensor]:
    """Train ``classifier`` (in place; logits ``(B, C)`` from ``(B, *event)``) on ``images : (N, *event)``
    and ``labels : (N,)`` long with cross-entropy and AdamW(lr, weight_decay).

    Each step draws ``batch_size`` rows with replacement from ``generator``. Returns
    ``(classifier, losses)`` with ``losses : (steps,)`` float64.
    """
    _check_loop(steps, batch_size, lr)
    g = _one_generator(generator)
    images, labels = torch.as_tensor(images), torch.as_tensor(labels)
    if labels.dtype != torch.long or labels.shape != images.shape[:1]:
        raise ValueError(f"labels must be long of shape ({images.shape[0]},), got {labels.dtype} {tuple(labels.shape)}")
    opt = torch.optim.AdamW([p for p in classifier.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)

    def loss_at(k: int) -> Tensor:
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=g).to(images.device)
        return F.cross_entropy(classifier(images[idx]), labels[idx])

    losses = _fit(classifier, opt, steps, "classifier", progress, loss_at)
    return classifier, losses
