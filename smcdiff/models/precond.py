"""EDM preconditioning wrappers: the denoiser ``D(x; sigma)`` around a raw UNet ``F``.

Each wrapper turns a network into the EDM denoiser
``D(x; sigma, y) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma), y)``
with the coefficients of its training recipe (Karras et al. 2022, Table 1):

=============  ===================  ================  ===================  ======================
class          c_skip               c_out             c_in                 c_noise
=============  ===================  ================  ===================  ======================
EDMPrecond     sd^2/(s^2+sd^2)      s sd/sqrt(s^2+sd^2)  1/sqrt(s^2+sd^2)  ln(s)/4
VPPrecond      1                    -s                1/sqrt(s^2+1)        (M-1) t(s)
VEPrecond      1                    s                 1                    ln(s/2)
iDDPMPrecond   1                    -s                1/sqrt(s^2+1)        M-1-j(s)
=============  ===================  ================  ===================  ======================

(``s`` = sigma, ``sd`` = sigma_data, ``t(s)`` the VP time, ``j(s)`` the index of the nearest
iDDPM grid level.) The wrappers keep the EDM calling convention
``net(x, sigma, class_labels=None, force_fp32=False, **model_kwargs)`` and attributes
(``sigma_min``, ``sigma_max``, ``round_sigma``, ``label_dim`` ...), so checkpoints built by the
reference code load strictly, and they are smcdiff denoisers ``D(x, sigma, **cond)`` as they
stand: ``x`` may be float64 (computed in float32, or float16 on CUDA with ``use_fp16``) and the
output is float32.

    >>> import torch
    >>> from smcdiff.models.precond import EDMPrecond
    >>> net = EDMPrecond(img_resolution=8, img_channels=3, label_dim=10, model_type='SongUNet',
    ...                  model_channels=16, channel_mult=[1, 2], num_blocks=1,
    ...                  attn_resolutions=[4]).eval()
    >>> x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    >>> sigma = torch.tensor([0.01, 0.5, 2.0, 80.0], dtype=torch.float64)
    >>> net(x, sigma, class_labels=torch.eye(10)[:4]).shape
    torch.Size([4, 3, 8, 8])
"""

from __future__ import annotations

import math

import torch
from torch import nn

from smcdiff.models.dhariwal_unet import DhariwalUNet
from smcdiff.models.song_unet import SongUNet

__all__ = ["MODEL_TYPES", "PRECOND_TYPES", "edm_preconditioning", "EDMPrecond", "VEPrecond", "VPPrecond", "iDDPMPrecond"]

Tensor = torch.Tensor


def edm_preconditioning(sigma: Tensor, sigma_data: float = 0.5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EDM's (c_skip, c_out, c_in, c_noise) at ``sigma`` (elementwise, in ``sigma``'s dtype)."""
    s2, sd2 = sigma**2, sigma_data**2
    c_skip = sd2 / (s2 + sd2)
    c_out = sigma * sigma_data / torch.sqrt(s2 + sd2)
    c_in = 1 / torch.sqrt(s2 + sd2)
    c_noise = torch.log(sigma) / 4
    return c_skip, c_out, c_in, c_noise


#: Inner architectures by the ``model_type`` name a checkpoint's ``_init_kwargs`` carries.
MODEL_TYPES = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


class _Precond(nn.Module):
    """Shared plumbing: inner-model construction, input casting, label handling, the forward."""

    def __init__(self, init_kwargs: dict, img_resolution: int, img_channels: int, label_dim: int,
                 use_fp16: bool, model_type: str, model_kwargs: dict, out_factor: int = 1):
        if model_type not in MODEL_TYPES:
            raise ValueError(f"{type(self).__name__}: unknown model_type {model_type!r}; "
                             f"expected one of {sorted(MODEL_TYPES)}")
        if int(label_dim) < 0:
            raise ValueError(f"{type(self).__name__}: label_dim must be >= 0, got {label_dim}")
        super().__init__()
        self._init_kwargs = dict(init_kwargs)
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = int(label_dim)
        self.use_fp16 = bool(use_fp16)
        self.model = MODEL_TYPES[model_type](
            img_resolution=img_resolution, in_channels=img_channels,
            out_channels=img_channels * out_factor, label_dim=label_dim, **model_kwargs)

    def round_sigma(self, sigma):
        """Noise levels the network can represent: the identity (as a tensor)."""
        return torch.as_tensor(sigma)

    def _coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def _labels(self, class_labels, x: Tensor) -> Tensor | None:
        if self.label_dim == 0:
            return None
        if class_labels is None:
            return torch.zeros(1, self.label_dim, device=x.device)
        class_labels = torch.as_tensor(class_labels, device=x.device).to(torch.float32)
        if class_labels.ndim not in (1, 2) or class_labels.shape[-1] != self.label_dim:
            raise ValueError(f"{type(self).__name__}: class_labels must have shape "
                             f"(B, {self.label_dim}) (one-hot rows), got {tuple(class_labels.shape)}")
        class_labels = class_labels.reshape(-1, self.label_dim)
        if class_labels.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"{type(self).__name__}: {class_labels.shape[0]} label rows for a "
                             f"batch of {x.shape[0]}")
        return class_labels

    def forward(self, x: Tensor, sigma, class_labels=None, force_fp32: bool = False,
                **model_kwargs) -> Tensor:
        """``D(x; sigma)``: ``x : (B, C, H, W)``, ``sigma : (B,)`` or scalar -> float32 ``(B, C, H, W)``.

        ``class_labels : (B or 1, label_dim)`` one-hot rows; None on a conditional net means an
        all-zero row (not "unconditional"); ignored by an unconditional net (``label_dim == 0``).
        """
        if x.ndim != 4:
            raise ValueError(f"{type(self).__name__}: x must be (B, C, H, W), got {tuple(x.shape)}")
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
        if sigma.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"{type(self).__name__}: {sigma.shape[0]} sigmas for a batch of "
                             f"{x.shape[0]}")
        class_labels = self._labels(class_labels, x)
        fp16 = self.use_fp16 and not force_fp32 and x.device.type == "cuda"
        dtype = torch.float16 if fp16 else torch.float32
        c_skip, c_out, c_in, c_noise = self._coefficients(sigma)
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels,
                         **model_kwargs)
        return c_skip * x + c_out * F_x[:, :self.img_channels].to(torch.float32)


class EDMPrecond(_Precond):
    """EDM preconditioning (sigma_data = 0.5): the wrapper of every published ``edm-*.pkl``."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0,
                 use_fp16: bool = False, sigma_min: float = 0.0, sigma_max: float = float("inf"),
                 sigma_data: float = 0.5, model_type: str = "DhariwalUNet", **model_kwargs):
        kwargs = dict(img_resolution=img_resolution, img_channels=img_channels,
                      label_dim=label_dim, use_fp16=use_fp16, sigma_min=sigma_min,
                      sigma_max=sigma_max, sigma_data=sigma_data, model_type=model_type)
        super().__init__(kwargs | model_kwargs, img_resolution, img_channels, label_dim, use_fp16,
                         model_type, model_kwargs)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data

    def _coefficients(self, sigma):
        return edm_preconditioning(sigma, self.sigma_data)


class VPPrecond(_Precond):
    """Variance-preserving (DDPM++) preconditioning; noise label = ``(M - 1) t(sigma)``.

    ``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)`` and its inverse are evaluated in
    float32, hence ``sigma_min = sigma(epsilon_t) = 2^-10`` exactly for the defaults.
    """

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0,
                 use_fp16: bool = False, beta_d: float = 19.9, beta_min: float = 0.1,
                 M: int = 1000, epsilon_t: float = 1e-5, model_type: str = "SongUNet",
                 **model_kwargs):
        kwargs = dict(img_resolution=img_resolution, img_channels=img_channels,
                      label_dim=label_dim, use_fp16=use_fp16, beta_d=beta_d, beta_min=beta_min,
                      M=M, epsilon_t=epsilon_t, model_type=model_type)
        super().__init__(kwargs | model_kwargs, img_resolution, img_channels, label_dim, use_fp16,
                         model_type, model_kwargs)
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.M = M
        self.epsilon_t = epsilon_t
        self.sigma_min = float(self.sigma(epsilon_t))
        self.sigma_max = float(self.sigma(1))

    def sigma(self, t) -> Tensor:
        """VP noise level at time ``t`` (float32 unless ``t`` is a float64 tensor)."""
        t = torch.as_tensor(t, dtype=torch.float32) if not torch.is_tensor(t) else t
        return ((0.5 * self.beta_d * t ** 2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma) -> Tensor:
        """VP time of noise level ``sigma``."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32) if not torch.is_tensor(sigma) else sigma
        root = (self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt()
        # Multiplying by the reciprocal reproduces the reference's float32 rounding bit for bit.
        return (root - self.beta_min) * (1 / self.beta_d)

    def _coefficients(self, sigma):
        c_in = 1 / (sigma ** 2 + 1).sqrt()
        return torch.ones_like(sigma), -sigma, c_in, (self.M - 1) * self.sigma_inv(sigma)


class VEPrecond(_Precond):
    """Variance-exploding (NCSN++) preconditioning; noise label = ``ln(sigma / 2)``."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0,
                 use_fp16: bool = False, sigma_min: float = 0.02, sigma_max: float = 100.0,
                 model_type: str = "SongUNet", **model_kwargs):
        kwargs = dict(img_resolution=img_resolution, img_channels=img_channels,
                      label_dim=label_dim, use_fp16=use_fp16, sigma_min=sigma_min,
                      sigma_max=sigma_max, model_type=model_type)
        super().__init__(kwargs | model_kwargs, img_resolution, img_channels, label_dim, use_fp16,
                         model_type, model_kwargs)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def _coefficients(self, sigma):
        return torch.ones_like(sigma), sigma, torch.ones_like(sigma), (0.5 * sigma).log()


class iDDPMPrecond(_Precond):
    """Improved-DDPM (cosine schedule) preconditioning on a discrete grid of M + 1 levels.

    The grid ``u`` (buffer, float32, ``u[M] = 0``; ``sigma_min = u[M-1]``, ``sigma_max = u[0]``,
    refreshed when a state dict is loaded) follows
    ``u[j-1] = sqrt((u[j]^2 + 1) / max(abar(j-1) / abar(j), C_1) - 1)`` with
    ``abar(j) = sin^2(pi j / (2 M (C_2 + 1)))``. ``round_sigma`` snaps to the nearest grid level
    (sigma below ~0.0032 snaps to 0); the noise label is ``M - 1 - index``. The inner model has
    ``2 * img_channels`` outputs, of which the first ``img_channels`` are used.
    """

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0,
                 use_fp16: bool = False, C_1: float = 0.001, C_2: float = 0.008, M: int = 1000,
                 model_type: str = "DhariwalUNet", **model_kwargs):
        kwargs = dict(img_resolution=img_resolution, img_channels=img_channels,
                      label_dim=label_dim, use_fp16=use_fp16, C_1=C_1, C_2=C_2, M=M,
                      model_type=model_type)
        super().__init__(kwargs | model_kwargs, img_resolution, img_channels, label_dim, use_fp16,
                         model_type, model_kwargs, out_factor=2)
        self.C_1 = C_1
        self.C_2 = C_2
        self.M = M
        u = self._grid(M, C_1, C_2)
        self.register_buffer("u", u.to(self.model.map_layer0.weight.device))
        self.sigma_min = float(u[M - 1])
        self.sigma_max = float(u[0])
        self.register_load_state_dict_post_hook(iDDPMPrecond._sync_range)

    @staticmethod
    def _sync_range(module: iDDPMPrecond, incompatible_keys) -> None:
        # A loaded grid wins over the recomputed one (they can differ by an ulp across machines).
        if not module.u.is_meta:
            module.sigma_min = float(module.u[module.M - 1])
            module.sigma_max = float(module.u[0])

    @staticmethod
    def _grid(M: int, C_1: float, C_2: float) -> Tensor:
        """The M + 1 noise levels, computed on the CPU in float32."""
        j = torch.arange(M + 1, dtype=torch.float32, device="cpu")
        alpha_bar = (0.5 * math.pi * j / M / (C_2 + 1)).sin() ** 2
        u = torch.zeros(M + 1, dtype=torch.float32, device="cpu")
        for i in range(M, 0, -1):
            ratio = (alpha_bar[i - 1] / alpha_bar[i]).clip(min=C_1)
            u[i - 1] = ((u[i] ** 2 + 1) / ratio - 1).sqrt()
        return u

    def round_sigma(self, sigma, return_index: bool = False):
        """Nearest grid level (in ``sigma``'s dtype), or its index with ``return_index``."""
        sigma = torch.as_tensor(sigma)
        grid = self.u
        flat = sigma.to(device=grid.device, dtype=torch.float32).reshape(-1)
        index = (flat[:, None] - grid[None, :]).abs().argmin(dim=1)
        result = index if return_index else grid[index].to(sigma.dtype)
        return result.reshape(sigma.shape).to(sigma.device)

    def _coefficients(self, sigma):
        c_in = 1 / (sigma ** 2 + 1).sqrt()
        c_noise = self.M - 1 - self.round_sigma(sigma, return_index=True).to(torch.float32)
        return torch.ones_like(sigma), -sigma, c_in, c_noise


#: Wrapper classes by the ``class_name`` a checkpoint records.
PRECOND_TYPES = {cls.__name__: cls for cls in (EDMPrecond, VPPrecond, VEPrecond, iDDPMPrecond)}
