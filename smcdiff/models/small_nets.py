"""Small trainable networks for toy problems: EDM-preconditioned denoisers and a time-dependent
discriminator, with seeded initialisation and a safe save/load.

* :class:`MLPDenoiser` (vectors ``(N, dim)``) and :class:`ConvDenoiser` (images ``(N, C, H, W)``,
  a tiny U-Net) are smcdiff denoisers ``D(x, sigma, **cond) -> x0_hat`` with EDM preconditioning
  (REFERENCE §1c): ``D = c_skip·x + c_out·F(c_in·x, c_noise)``, ``c_noise = ln(σ)/4`` fed through a
  fixed Fourier embedding. ``F`` runs in float32; the skip arithmetic runs in ``x``'s dtype, so a
  float64 input gives a float64 output.
* :class:`TimeDiscriminator` is DG's d(x_vp, τ) (REFERENCE §2a) on the VP-scaled input; called as
  ``disc(x, sigma, **cond)`` it is the log ratio ℓ = logit in the EDM scale, so it plugs into
  ``smcdiff.methods.dg(..., log_ratio=disc)``.
* Parameters are drawn by :func:`init_parameters_` from a caller's generator (``generator=None``
  means seed 0); building a network never touches the global RNG.

    >>> import torch
    >>> from smcdiff.models.small_nets import MLPDenoiser, TimeDiscriminator
    >>> net = MLPDenoiser(2, hidden=16, generator=torch.Generator().manual_seed(1))
    >>> x = torch.zeros(3, 2, dtype=torch.float64)
    >>> net(x, torch.ones(3, dtype=torch.float64)).dtype
    torch.float64
    >>> disc = TimeDiscriminator((2,), hidden=16)
    >>> disc(x, torch.full((3,), 0.5, dtype=torch.float64)).shape
    torch.Size([3])

:func:`save` writes ``{"config": {"class": name, "kwargs": {...}}, "state_dict": ...}``;
:func:`load` rebuilds the class named in the config (one of this module's) with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from smcdiff import _rng
from smcdiff.kernels.schedules import vp_alpha, vp_time
from smcdiff.models.precond import edm_preconditioning
from smcdiff.types import Tensor

__all__ = [
    "NETWORKS",
    "ConvDenoiser",
    "ConvTimeDiscriminator",
    "DigitsClassifier",
    "MLPDenoiser",
    "TimeDiscriminator",
    "edm_preconditioning",
    "fourier_embedding",
    "init_parameters_",
    "load",
    "save",
]

#: τ below this is clamped before the discriminator's log-time embedding (DG's t_min).
TAU_MIN = 1e-5


def fourier_embedding(c: Tensor, dim: int, max_freq: float = 16.0) -> Tensor:
    """[cos(ω_k c), sin(ω_k c)] with ω_k geometric from 1 to ``max_freq``: ``c : (N,)`` → ``(N, dim)``."""
    omega = torch.exp(torch.linspace(0.0, math.log(max_freq), dim // 2, dtype=c.dtype, device=c.device))
    angle = c[:, None] * omega
    return torch.cat([torch.cos(angle), torch.sin(angle)], dim=1)


_NORMS = (nn.GroupNorm, nn.LayerNorm)


@torch.no_grad()
def init_parameters_(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Draw every parameter of ``module`` from ``generator`` (in place; returns ``module``).

    Weights (≥ 2-D) ~ U(−1/√fan_in, 1/√fan_in) (PyTorch's default scale), biases 0, norm scales 1.
    Draws are made on the CPU in float64 in ``module.named_parameters()`` order, so the result
    depends on the seed alone (not on device or dtype).
    """
    _rng.check_generator(generator)
    if not isinstance(generator, torch.Generator):
        raise TypeError("init_parameters_ takes one torch.Generator")
    for m in module.modules():
        for name, p in m.named_parameters(recurse=False):
            if isinstance(m, _NORMS):
                p.fill_(1.0 if name == "weight" else 0.0)
            elif name == "bias" or p.dim() < 2:
                p.zero_()
            else:
                bound = 1 / math.sqrt(p[0].numel())
                u = _rng.rand(tuple(p.shape), generator)
                p.copy_((2 * u - 1) * bound)
    return module


def _build(module: nn.Module, make: Callable[[], None], generator: torch.Generator | None) -> None:
    """Create ``module``'s layers on the meta device (no global-RNG draws), then seed them."""
    with torch.device("meta"):
        make()
    module.to_empty(device="cpu")
    init_parameters_(module, generator if generator is not None else torch.Generator().manual_seed(0))


def _sigma_vector(sigma, x: Tensor) -> Tensor:
    sigma = torch.as_tensor(sigma, device=x.device)
    sigma = sigma.to(torch.promote_types(sigma.dtype, x.dtype) if sigma.is_floating_point() else x.dtype)
    sigma = sigma.reshape(-1)
    if sigma.numel() == 1:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape[0] != x.shape[0]:
        raise ValueError(f"sigma must have one value per sample ({x.shape[0]}), got shape {tuple(sigma.shape)}")
    return sigma


class _EDMDenoiser(nn.Module):
    """D(x, σ) = c_skip·x + c_out·F(c_in·x, c_noise); subclasses define ``event_shape`` and ``raw``."""

    event_shape: tuple[int, ...]
    sigma_data: float
    config: dict
    emb_dim: int = 32

    def raw(self, x: Tensor, emb: Tensor) -> Tensor:
        raise NotImplementedError

    def round_sigma(self, sigma):
        """Noise levels the network can represent: the identity (as a tensor)."""
        return torch.as_tensor(sigma)

    def forward(self, x: Tensor, sigma, **cond) -> Tensor:
        """``x : (N, *event_shape)``, ``sigma : (N,)`` (or a scalar) → x0_hat in ``x``'s dtype.

        ``cond`` is accepted for the denoiser contract and ignored (the networks are unconditional).
        """
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"{type(self).__name__}: expected x of shape (N, *{self.event_shape}), got {tuple(x.shape)}")
        dtype = x.dtype if x.is_floating_point() else torch.float32
        x = x.to(dtype)
        sigma = _sigma_vector(sigma, x)
        c_skip, c_out, c_in, c_noise = (c.reshape(-1, *([1] * (x.dim() - 1))) for c in
                                        edm_preconditioning(sigma, self.sigma_data))
        emb = fourier_embedding(c_noise.reshape(-1).to(torch.float32), self.emb_dim)
        F_x = self.raw((c_in * x).to(torch.float32), emb)
        return c_skip * x + c_out * F_x.to(dtype)


class MLPDenoiser(_EDMDenoiser):
    """EDM-preconditioned MLP denoiser for vectors ``(N, dim)``.

    ``F``: [c_in·x, noise features] → ``depth`` SiLU layers of width ``hidden`` → ``dim``; the noise
    features (an MLP of the Fourier embedding of c_noise) are added to every hidden layer.
    """

    emb_dim = 32

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, sigma_data: float = 0.5, *,
                 generator: torch.Generator | None = None):
        if dim < 1 or hidden < 1 or depth < 1 or sigma_data <= 0:
            raise ValueError(f"MLPDenoiser: need dim, hidden, depth >= 1 and sigma_data > 0, got "
                             f"{dim}, {hidden}, {depth}, {sigma_data}")
        super().__init__()
        self.event_shape, self.sigma_data = (int(dim),), float(sigma_data)
        self.config = {"class": "MLPDenoiser",
                       "kwargs": {"dim": int(dim), "hidden": int(hidden), "depth": int(depth), "sigma_data": float(sigma_data)}}

        def make():
            self.embed = nn.Sequential(nn.Linear(self.emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            self.inp = nn.Linear(dim, hidden)
            self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 1))
            self.out = nn.Linear(hidden, dim)

        _build(self, make, generator)

    def raw(self, x: Tensor, emb: Tensor) -> Tensor:
        e = self.embed(emb)
        h = self.inp(x) + e
        for layer in self.layers:
            h = layer(F.silu(h)) + e
        return self.out(F.silu(h))


class _ResBlock(nn.Module):
    """Pre-activation residual block; ``emb`` features (if ``emb_dim``) shift the channels."""

    def __init__(self, cin: int, cout: int, emb_dim: int | None):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(emb_dim, cout) if emb_dim else None
        self.norm2, self.conv2 = nn.GroupNorm(_groups(cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.affine is not None:
            h = h + self.affine(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (h + self.skip(x)) / math.sqrt(2)


def _groups(c: int) -> int:
    return math.gcd(c, 8) if c >= 8 else 1


class ConvDenoiser(_EDMDenoiser):
    """EDM-preconditioned tiny U-Net for images ``(N, channels, resolution, resolution)``.

    One down/up level: conv → ResBlock(w) → avg-pool → ResBlock(2w) → ResBlock(2w) → upsample →
    concat skip → ResBlock(w) → conv; noise features enter every block as a per-channel shift.
    """

    emb_dim = 32

    def __init__(self, channels: int = 1, resolution: int = 8, width: int = 32, sigma_data: float = 0.5, *,
                 generator: torch.Generator | None = None):
        if channels < 1 or width < 1 or resolution < 2 or resolution % 2 or sigma_data <= 0:
            raise ValueError(f"ConvDenoiser: need channels, width >= 1, an even resolution >= 2 and sigma_data > 0, "
                             f"got {channels}, {resolution}, {width}, {sigma_data}")
        super().__init__()
        self.event_shape, self.sigma_data = (int(channels), int(resolution), int(resolution)), float(sigma_data)
        self.config = {"class": "ConvDenoiser", "kwargs": {"channels": int(channels), "resolution": int(resolution),
                                                           "width": int(width), "sigma_data": float(sigma_data)}}
        w, e = width, 2 * width

        def make():
            self.embed = nn.Sequential(nn.Linear(self.emb_dim, e), nn.SiLU(), nn.Linear(e, e))
            self.conv_in = nn.Conv2d(channels, w, 3, padding=1)
            self.enc1, self.enc2, self.mid = _ResBlock(w, w, e), _ResBlock(w, 2 * w, e), _ResBlock(2 * w, 2 * w, e)
            self.dec = _ResBlock(3 * w, w, e)
            self.norm_out, self.conv_out = nn.GroupNorm(_groups(w), w), nn.Conv2d(w, channels, 3, padding=1)

        _build(self, make, generator)

    def raw(self, x: Tensor, emb: Tensor) -> Tensor:
        e = F.silu(self.embed(emb))
        h1 = self.enc1(self.conv_in(x), e)
        h = self.mid(self.enc2(F.avg_pool2d(h1, 2), e), e)
        h = self.dec(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), h1], dim=1), e)
        return self.conv_out(F.silu(self.norm_out(h)))


class _VPDiscriminator(nn.Module):
    """The EDM-scale face of a VP-time discriminator: subclasses define ``logit(x_vp, tau)``."""

    event_shape: tuple[int, ...]
    emb_dim = 32

    def logit(self, x_vp: Tensor, tau: Tensor) -> Tensor:
        raise NotImplementedError

    def _inputs(self, x_vp: Tensor, tau) -> tuple[Tensor, Tensor, Tensor]:
        """Checked float32 ``x_vp``, ``tau : (N,)`` and the Fourier embedding of ln(max(τ, 1e−5))/4."""
        if tuple(x_vp.shape[1:]) != self.event_shape:
            raise ValueError(f"{type(self).__name__}: expected x of shape (N, *{self.event_shape}), got {tuple(x_vp.shape)}")
        x_vp = x_vp.to(torch.float32)
        tau = _sigma_vector(tau, x_vp).to(torch.float32)
        return x_vp, tau, fourier_embedding(torch.log(tau.clamp_min(TAU_MIN)) / 4, self.emb_dim)

    def log_ratio(self, x: Tensor, sigma, **cond) -> Tensor:
        """ℓ(x, σ) = logit d(α(τ(σ))·x, τ(σ)) in the EDM scale: ``x : (N, *event)`` → ``(N,)``."""
        dtype = x.dtype if x.is_floating_point() else torch.float32
        sigma = _sigma_vector(sigma, x.to(dtype))
        tau = vp_time(sigma)
        x_vp = vp_alpha(tau).reshape(-1, *([1] * (x.dim() - 1))) * x
        return self.logit(x_vp, tau).to(dtype)

    def forward(self, x: Tensor, sigma, **cond) -> Tensor:
        return self.log_ratio(x, sigma, **cond)


class TimeDiscriminator(_VPDiscriminator):
    """DG's time-dependent discriminator d(x_vp, τ) = sigmoid(logit), as an MLP.

    ``logit(x_vp, tau)`` works in the VP convention (``x_vp : (N, *event_shape)``, τ ∈ [0, 1], used
    by training); ``log_ratio(x, sigma, **cond)`` (also ``disc(x, sigma, **cond)``) maps an EDM-scale
    input: τ = τ(σ), x_vp = α(τ)·x (REFERENCE §0.3), ℓ = log(d/(1−d)) = the logit, unclipped,
    differentiable in ``x``, returned as ``(N,)`` in ``x``'s dtype. ``cond`` is ignored.

    ``features``: an optional frozen extractor ``features(x_vp, tau) -> (N, ...)`` (DG uses a noisy
    classifier's middle block) whose flattened output, of size ``feature_dim``, replaces x_vp as
    the MLP input. It is held outside the module: not trained, not saved, not moved by ``.to``;
    gradients flow through it only when ``x_vp`` requires them (guidance), not in training.
    The time input is a Fourier embedding of ln(max(τ, 1e−5))/4.
    """

    def __init__(self, event_shape: Sequence[int] | int, hidden: int = 128, depth: int = 2, *,
                 features: Callable[[Tensor, Tensor], Tensor] | None = None, feature_dim: int | None = None,
                 generator: torch.Generator | None = None):
        event_shape = (int(event_shape),) if isinstance(event_shape, int) else tuple(int(s) for s in event_shape)
        if not event_shape or min(event_shape) < 1 or hidden < 1 or depth < 1:
            raise ValueError(f"TimeDiscriminator: need a non-empty event_shape and hidden, depth >= 1, got "
                             f"{event_shape}, {hidden}, {depth}")
        if (features is None) != (feature_dim is None):
            raise ValueError("TimeDiscriminator: pass features and feature_dim together")
        super().__init__()
        self.event_shape = event_shape
        self._features = (features,)  # a tuple keeps a module out of parameters() and state_dict()
        self.config = {"class": "TimeDiscriminator",
                       "kwargs": {"event_shape": list(event_shape), "hidden": int(hidden), "depth": int(depth),
                                  "feature_dim": None if feature_dim is None else int(feature_dim)}}
        in_dim = math.prod(event_shape) if feature_dim is None else int(feature_dim)

        def make():
            self.embed = nn.Sequential(nn.Linear(self.emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            self.inp = nn.Linear(in_dim, hidden)
            self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 1))
            self.out = nn.Linear(hidden, 1)

        _build(self, make, generator)

    @property
    def features(self):
        return self._features[0]

    def logit(self, x_vp: Tensor, tau: Tensor) -> Tensor:
        """The logit of d(x_vp, τ): ``x_vp : (N, *event_shape)``, ``tau : (N,)`` → ``(N,)`` float32."""
        x_vp, tau, emb = self._inputs(x_vp, tau)
        h = x_vp
        if self.features is not None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and x_vp.requires_grad):
                h = self.features(x_vp, tau)
        h = h.reshape(h.shape[0], -1).to(torch.float32)
        e = self.embed(emb)
        h = self.inp(h) + e
        for layer in self.layers:
            h = layer(F.silu(h)) + e
        return self.out(F.silu(h)).reshape(-1)


class ConvTimeDiscriminator(_VPDiscriminator):
    """DG's time-dependent discriminator as a small CNN for images ``(N, C, H, W)`` (the role of
    DG's noisy-classifier encoder, trained end to end).

    conv(w) → ResBlock(w) → avg-pool → ResBlock(2w) → ResBlock(2w) → global average pool → SiLU →
    Linear(1); the time embedding shifts the channels of every block. Same interface as
    :class:`TimeDiscriminator`: ``logit(x_vp, tau)`` (VP convention) and ``log_ratio(x, sigma)`` /
    ``disc(x, sigma)`` (EDM scale, ℓ = the logit).
    """

    def __init__(self, channels: int = 1, resolution: int = 8, width: int = 32, *,
                 generator: torch.Generator | None = None):
        if channels < 1 or width < 1 or resolution < 2 or resolution % 2:
            raise ValueError(f"ConvTimeDiscriminator: need channels, width >= 1 and an even resolution >= 2, "
                             f"got {channels}, {width}, {resolution}")
        super().__init__()
        self.event_shape = (int(channels), int(resolution), int(resolution))
        self.config = {"class": "ConvTimeDiscriminator",
                       "kwargs": {"channels": int(channels), "resolution": int(resolution), "width": int(width)}}
        w, e = width, 2 * width

        def make():
            self.embed = nn.Sequential(nn.Linear(self.emb_dim, e), nn.SiLU(), nn.Linear(e, e))
            self.conv_in = nn.Conv2d(channels, w, 3, padding=1)
            self.block1, self.block2, self.block3 = _ResBlock(w, w, e), _ResBlock(w, 2 * w, e), _ResBlock(2 * w, 2 * w, e)
            self.norm_out, self.out = nn.GroupNorm(_groups(2 * w), 2 * w), nn.Linear(2 * w, 1)

        _build(self, make, generator)

    def logit(self, x_vp: Tensor, tau: Tensor) -> Tensor:
        """The logit of d(x_vp, τ): ``x_vp : (N, *event_shape)``, ``tau : (N,)`` → ``(N,)`` float32."""
        x_vp, tau, emb = self._inputs(x_vp, tau)
        e = F.silu(self.embed(emb))
        h = self.block1(self.conv_in(x_vp), e)
        h = self.block3(self.block2(F.avg_pool2d(h, 2), e), e)
        h = F.silu(self.norm_out(h)).mean(dim=(2, 3))
        return self.out(h).reshape(-1)


class DigitsClassifier(nn.Module):
    """A small CNN classifier for ``(N, channels, resolution, resolution)`` images in ``[-1, 1]``.

    conv(w) → ResBlock(w) → avg-pool → ResBlock(2w) → global average pool → Linear(``feature_dim``)
    → SiLU → Linear(``num_classes``). :meth:`features` returns the ``(N, feature_dim)`` activations
    before the last layer (the space of the FD-digits metric, :mod:`smcdiff.metrics.fd_digits`);
    ``forward`` returns the ``(N, num_classes)`` logits. Runs in float32 whatever the input dtype.
    """

    def __init__(self, channels: int = 1, resolution: int = 8, width: int = 32, feature_dim: int = 32,
                 num_classes: int = 10, *, generator: torch.Generator | None = None):
        if min(channels, width, feature_dim) < 1 or num_classes < 2 or resolution < 2 or resolution % 2:
            raise ValueError(f"DigitsClassifier: need channels, width, feature_dim >= 1, num_classes >= 2 and an even "
                             f"resolution >= 2, got {channels}, {width}, {feature_dim}, {num_classes}, {resolution}")
        super().__init__()
        self.event_shape = (int(channels), int(resolution), int(resolution))
        self.config = {"class": "DigitsClassifier",
                       "kwargs": {"channels": int(channels), "resolution": int(resolution), "width": int(width),
                                  "feature_dim": int(feature_dim), "num_classes": int(num_classes)}}
        w = width

        def make():
            self.conv_in = nn.Conv2d(channels, w, 3, padding=1)
            self.block1, self.block2 = _ResBlock(w, w, None), _ResBlock(w, 2 * w, None)
            self.feature = nn.Linear(2 * w, feature_dim)
            self.head = nn.Linear(feature_dim, num_classes)

        _build(self, make, generator)

    def features(self, x: Tensor) -> Tensor:
        """``x : (N, *event_shape)`` → ``(N, feature_dim)`` float32 features."""
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"DigitsClassifier: expected x of shape (N, *{self.event_shape}), got {tuple(x.shape)}")
        h = self.block1(self.conv_in(x.to(torch.float32)))
        h = self.block2(F.avg_pool2d(h, 2))
        return F.silu(self.feature(h.mean(dim=(2, 3))))

    def forward(self, x: Tensor) -> Tensor:
        """``x : (N, *event_shape)`` → logits ``(N, num_classes)`` float32."""
        return self.head(self.features(x))


#: The classes :func:`load` may rebuild, by the name a saved config carries.
NETWORKS: dict[str, type[nn.Module]] = {c.__name__: c for c in (MLPDenoiser, ConvDenoiser, TimeDiscriminator,
                                                                   ConvTimeDiscriminator, DigitsClassifier)}


def save(module: nn.Module, path, config: dict | None = None) -> None:
    """Write ``{"config": config, "state_dict": ...}`` to ``path`` with ``torch.save``.

    ``config`` = ``{"class": name, "kwargs": {...}}`` defaults to ``module.config``, which every
    network of this module records. A discriminator's ``features`` extractor is not saved.
    """
    config = getattr(module, "config", None) if config is None else config
    if not isinstance(config, dict) or config.get("class") not in NETWORKS or not isinstance(config.get("kwargs"), dict):
        raise ValueError(f"save: need config={{'class': one of {sorted(NETWORKS)}, 'kwargs': {{...}}}}, got {config!r}")
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    torch.save({"config": {"class": config["class"], "kwargs": dict(config["kwargs"])}, "state_dict": state}, path)


def load(path, *, features: Callable[[Tensor, Tensor], Tensor] | None = None) -> nn.Module:
    """Rebuild the network saved by :func:`save` (``torch.load(weights_only=True)``, no code runs).

    Raises ``ValueError`` for a class this module does not define. A discriminator saved with a
    ``feature_dim`` needs its extractor again as ``features=``.
    """
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or not {"config", "state_dict"} <= blob.keys():
        raise ValueError(f"load: {path} is not a file written by smcdiff.models.small_nets.save")
    config = blob["config"]
    name = config.get("class") if isinstance(config, dict) else None
    if name not in NETWORKS:
        raise ValueError(f"load: unknown network class {name!r}; expected one of {sorted(NETWORKS)}")
    kwargs = dict(config.get("kwargs") or {})
    if name == "TimeDiscriminator":
        if kwargs.get("feature_dim") is not None and features is None:
            raise ValueError("load: this discriminator was trained on features; pass features=")
        kwargs["features"] = features if kwargs.get("feature_dim") is not None else None
    elif features is not None:
        raise ValueError(f"load: features= only applies to a TimeDiscriminator, not {name}")
    module = NETWORKS[name](**kwargs)
    module.load_state_dict(blob["state_dict"])
    return module
