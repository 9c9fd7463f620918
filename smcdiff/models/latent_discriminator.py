"""The latent discriminator of Liu et al.'s text-to-image particle filter (REFERENCE §5b).

Architecture: the *encoder half* of a Stable Diffusion ``UNet2DConditionModel`` (``conv_in``, the
time embedding, the down blocks and the mid block; the up blocks are dropped) → global average
pool (the paper's 8×8 AvgPool on 64×64 latents) → ``Linear(C → 1)`` → the logit of d, the
probability that a noisy latent comes from real images. Its input is the VP-scaled latent
x/sqrt(1 + σ²) at the diffusion timestep t(σ) of the model's own grid, with a text context: the
empty-prompt embedding for PF-Hybrid (an unconditional discriminator) or the prompt's embedding
for PF-Discriminator.

:class:`LatentLogRatio` turns it into ``log_ratio(x, sigma, **cond) -> (N,)`` in the EDM scale,
ℓ = log d/(1 − d) = the logit, with d clipped to [1e−6, 1 − 1e−6] (|ℓ| ≤ 13.8), as the methods of
:mod:`smcdiff.methods.text_to_image` take it. The context is read from ``cond``
(``"encoder_hidden_states"`` or ``"uncond.encoder_hidden_states"``), so it follows the particle.

:func:`save_latent_discriminator` / :func:`load_latent_discriminator` keep ``{"format", "unet_config",
"state_dict"}`` in one ``torch.save`` file (read with ``weights_only=True``; the network is built
on the meta device, so loading an SD-sized one costs only its weights).

    import torch, diffusers
    from smcdiff.models.latent_discriminator import LatentDiscriminator, LatentLogRatio
    unet = diffusers.UNet2DConditionModel.from_pretrained("sd21/unet", local_files_only=True)       # initialise from SD's UNet
    disc = LatentDiscriminator(unet)                                        # then train it (real vs generated)
    log_ratio = LatentLogRatio(disc, model.denoiser, context="empty")      # model = load_pipeline("sd21")
"""

from __future__ import annotations

import math
import os

import torch

from smcdiff.models.diffusers_adapter import model_device, network_dtype, sigma_batch
from smcdiff.models.file_formats import FileFormatError, torch_load_file
from smcdiff.types import Tensor

__all__ = [
    "FORMAT",
    "LatentDiscriminator",
    "LatentLogRatio",
    "load_latent_discriminator",
    "save_latent_discriminator",
]

FORMAT = "smcdiff.latent_discriminator.v1"
_CONTEXTS = {"prompt": "encoder_hidden_states", "empty": "uncond.encoder_hidden_states"}


class LatentDiscriminator(torch.nn.Module):
    """The encoder half of ``unet`` (a diffusers ``UNet2DConditionModel``) + a linear head (zero
    at construction: ℓ = 0 until trained or loaded).

    ``forward(sample : (N, C, h, w), timestep : (N,), encoder_hidden_states : (N, L, E)) -> (N,)``
    logits. The unet's modules are shared, not copied; its up blocks are not used.
    """

    def __init__(self, unet):
        super().__init__()
        for part in ("conv_in", "time_proj", "time_embedding", "down_blocks", "mid_block", "config"):
            if not hasattr(unet, part):
                raise TypeError(f"expected a diffusers UNet2DConditionModel (it has no {part!r}), got {type(unet).__name__}")
        self.unet_config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
        self.conv_in, self.time_proj, self.time_embedding = unet.conv_in, unet.time_proj, unet.time_embedding
        self.down_blocks, self.mid_block = unet.down_blocks, unet.mid_block
        width = int(unet.config["block_out_channels"][-1])
        # A zero head (d = 1/2, ℓ = 0 until trained), made on the meta device: no draw from the global RNG.
        w = unet.conv_in.weight
        self.head = torch.nn.Linear(width, 1, device="meta", dtype=w.dtype).to_empty(device=w.device)
        if w.device.type != "meta":
            torch.nn.init.zeros_(self.head.weight)
            torch.nn.init.zeros_(self.head.bias)

    def forward(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor) -> Tensor:
        emb = self.time_embedding(self.time_proj(timestep.reshape(-1).expand(sample.shape[0])).to(sample.dtype))
        h = self.conv_in(sample)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, _ = block(hidden_states=h, temb=emb, encoder_hidden_states=encoder_hidden_states)
            else:
                h, _ = block(hidden_states=h, temb=emb)
        if self.mid_block is not None:
            if getattr(self.mid_block, "has_cross_attention", False):
                h = self.mid_block(h, emb, encoder_hidden_states=encoder_hidden_states)
            else:
                h = self.mid_block(h, emb)
        return self.head(h.mean((2, 3))).reshape(-1)


class LatentLogRatio:
    """ℓ(x, σ, **cond) = clipped logit of ``discriminator`` on x/sqrt(1 + σ²) at t(σ) (module doc).

    ``LatentLogRatio(discriminator, denoiser, *, context="empty", eps=1e-6, max_batch=None, dtype=None)``:
    ``denoiser`` the model's :class:`~smcdiff.models.diffusers_adapter.DiscreteVPDenoiser` (its
    ``sigma_to_t``); ``context`` "empty" reads ``cond["uncond.encoder_hidden_states"]`` (PF-Hybrid),
    "prompt" reads ``cond["encoder_hidden_states"]`` (PF-Discriminator).
    """

    def __init__(self, discriminator, denoiser, *, context: str = "empty", eps: float = 1e-6,
                 max_batch: int | None = None, dtype=None):
        if context not in _CONTEXTS:
            raise ValueError(f"context must be one of {tuple(_CONTEXTS)}, got {context!r}")
        if not callable(getattr(denoiser, "sigma_to_t", None)):
            raise TypeError("denoiser must map noise levels to timesteps (sigma_to_t), e.g. the adapter of "
                            f"smcdiff.models.from_diffusers; got {type(denoiser).__name__}")
        if not 0 < float(eps) < 0.5:
            raise ValueError(f"eps must be in (0, 0.5), got {eps}")
        self.disc, self.denoiser, self.key = discriminator, denoiser, _CONTEXTS[context]
        self.bound, self.max_batch = math.log((1 - eps) / eps), max_batch
        self.dtype = network_dtype(discriminator, dtype)
        self.name = "log_ratio"

    def __call__(self, x: Tensor, sigma, **cond) -> Tensor:
        if self.key not in cond:
            raise ValueError(f"LatentLogRatio reads its text context from cond[{self.key!r}]; pass it (G, K, L, E)")
        sigma = sigma_batch(sigma, x)
        x_vp = x.to(torch.float64) / torch.sqrt(1 + sigma**2).reshape(-1, *([1] * (x.dim() - 1)))
        t = self.denoiser.sigma_to_t(sigma).to(torch.float32)
        context = cond[self.key]
        device = model_device(self.disc, x.device)
        step, out = self.max_batch or x.shape[0], []
        with torch.no_grad():
            for i in range(0, x.shape[0], step):
                sl = slice(i, i + step)
                out.append(self.disc(x_vp[sl].to(device=device, dtype=self.dtype), t[sl].to(device),
                                     context[sl].to(device=device, dtype=self.dtype)).reshape(-1))
        return torch.cat(out).to(device=x.device, dtype=torch.float64).clamp(-self.bound, self.bound)


def save_latent_discriminator(path: str | os.PathLike, discriminator: LatentDiscriminator) -> None:
    """Write ``discriminator`` (its unet config and weights) to ``path`` with ``torch.save``."""
    if not isinstance(discriminator, LatentDiscriminator):
        raise TypeError(f"expected a LatentDiscriminator, got {type(discriminator).__name__}")
    torch.save({"format": FORMAT, "unet_config": discriminator.unet_config,
                "state_dict": {k: v.detach().cpu() for k, v in discriminator.state_dict().items()}}, path)


def load_latent_discriminator(path: str | os.PathLike, *, device=None, dtype=None) -> LatentDiscriminator:
    """The :class:`LatentDiscriminator` saved at ``path`` (needs diffusers)."""
    import diffusers

    what = "a smcdiff latent discriminator (torch.save of {'format', 'unet_config', 'state_dict'})"
    data = torch_load_file(path, what)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise FileFormatError(f"{os.fspath(path)}: not {what}")
    with torch.device("meta"):
        disc = LatentDiscriminator(diffusers.UNet2DConditionModel.from_config(data["unet_config"]))
    try:
        disc.load_state_dict(data["state_dict"], assign=True)
    except (RuntimeError, KeyError, TypeError) as err:
        raise ValueError(f"{os.fspath(path)}: the weights do not fit the saved unet_config "
                         f"({' '.join(str(err).split())[:300]})") from err
    return disc.eval().to(device=device, dtype=dtype)
