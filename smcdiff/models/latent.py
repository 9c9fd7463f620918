"""Latent diffusion (Stable Diffusion and kin): the VAE, prompt embeddings, and potentials on pixels.

A latent diffusion model runs its diffusion on z = scaling_factor·(E(image) − shift_factor) and
decodes at the end: image = VAE.decode(z/scaling_factor + shift_factor), in [−1, 1], shown as
image/2 + 1/2 in [0, 1]. The denoiser itself is an ordinary EDM denoiser on z
(:func:`smcdiff.models.from_diffusers`), so every kernel, guidance transform and method of smcdiff
applies unchanged; what latent diffusion adds is the VAE, needed only where a potential looks at
pixels (a detector, a reward). This module holds those pieces:

* :class:`VAEDecoder` — ``decode(z) -> images (N, 3, H, W) in [0, 1]`` and ``encode(images) -> z``,
  in chunks of ``max_batch``, the VAE in its own dtype, counted (``decodes``, ``encodes``); the last
  decode is cached, so several potentials reading the same x̂0 at one step decode it once.
* :class:`Decoded` — ``Decoded(fn, decoder)(x0_hat, **cond) = fn(decoder.decode(x0_hat), **cond)``:
  an image detector or reward turned into one on latents. The decode is lazy: it happens only when
  the potential is evaluated, i.e. only at the sampler's ``potential_steps``.
* :class:`PromptEncoder` — tokenizer + text encoder → prompt embeddings ``(P, L, E)``. Samplers
  never need it: embeddings go in directly as ``cond["encoder_hidden_states"]``.
* :class:`LatentDiffusion` — the bundle (denoiser, decoder, latent shape, optional prompt encoder)
  that :func:`from_latent_diffusion` and :func:`smcdiff.models.pipeline_folder.load_pipeline` build.

    >>> import torch
    >>> class ToyVAE(torch.nn.Module):           # any object with decode/encode like diffusers' AutoencoderKL
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.w = torch.nn.Parameter(torch.ones(()))
    ...     def decode(self, z):
    ...         return (self.w * z[:, :3]).tanh()              # "images" in [-1, 1]
    >>> dec = VAEDecoder(ToyVAE(), scaling_factor=0.5, max_batch=2)
    >>> z = torch.zeros(5, 4, 2, 2, dtype=torch.float64)
    >>> dec.decode(z).shape, float(dec.decode(z)[0, 0, 0, 0]), dec.decodes      # cached: decoded once
    (torch.Size([5, 3, 2, 2]), 0.5, 5)
    >>> brightness = Decoded(lambda images: images.mean((1, 2, 3)), dec)   # a "reward" on latents
    >>> brightness(z + 1).shape, dec.decodes
    (torch.Size([5]), 10)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from smcdiff.models.diffusers_adapter import from_diffusers, model_device, network_dtype
from smcdiff.types import Tensor

__all__ = [
    "Decoded",
    "LatentDiffusion",
    "PromptEncoder",
    "VAEDecoder",
    "from_latent_diffusion",
    "latent_shape",
    "quantize",
]


def quantize(images: Tensor) -> Tensor:
    """Images in [0, 1] rounded to the 256 levels a PNG stores (as diffusers' ``numpy_to_pil``)."""
    return torch.round(images.clamp(0, 1) * 255) / 255


def _sample(out):
    for attr in ("sample", "latent_dist"):
        if hasattr(out, attr):
            return getattr(out, attr)
    return out[0] if isinstance(out, (tuple, list)) else out


def _check_batch(max_batch):
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise ValueError(f"max_batch must be an int >= 1 or None, got {max_batch!r}")
    return max_batch


class VAEDecoder:
    """The VAE of a latent diffusion model (see the module doc).

    ``VAEDecoder(vae, *, scaling_factor=None, shift_factor=None, dtype=None, max_batch=None)``:
    ``vae.decode(z)`` (and ``vae.encode(images)`` for :meth:`encode`) as diffusers' AutoencoderKL;
    the factors default to ``vae.config``'s (``scaling_factor`` 0.18215 for SD 1.x/2.x, no shift).
    ``dtype`` the VAE's dtype (default its parameters'); inputs and outputs keep the sampler's side.
    """

    def __init__(self, vae, *, scaling_factor: float | None = None, shift_factor: float | None = None, dtype=None,
                 max_batch: int | None = None):
        if not callable(getattr(vae, "decode", None)):
            raise TypeError(f"vae must have a decode(z) method (e.g. diffusers' AutoencoderKL), got {type(vae).__name__}")
        config = getattr(vae, "config", {}) or {}
        scale = scaling_factor if scaling_factor is not None else config.get("scaling_factor", 0.18215)
        shift = shift_factor if shift_factor is not None else (config.get("shift_factor", None) or 0.0)
        scale, shift = float(scale), float(shift)
        if not (0 < scale < math.inf and math.isfinite(shift)):
            raise ValueError(f"scaling_factor must be finite and > 0 and shift_factor finite, got {scale}, {shift}")
        self.vae, self.scaling_factor, self.shift_factor = vae, scale, shift
        self.max_batch, self.dtype = _check_batch(max_batch), network_dtype(vae, dtype)
        self.decodes = self.encodes = 0
        self._cache: tuple | None = None

    def _chunks(self, x: Tensor):
        step = self.max_batch or max(x.shape[0], 1)
        return [x[i:i + step] for i in range(0, x.shape[0], step)]

    def decode(self, z: Tensor) -> Tensor:
        """Images ``(N, 3, H, W)`` float32 in [0, 1] of latents ``z : (N, C, h, w)`` (on z's device).

        The last call's result is reused when called again with the same, unmodified tensor.
        Autograd runs only when ``z`` requires grad (gradient guidance through the decoder).
        """
        if not isinstance(z, Tensor) or z.dim() != 4:
            raise ValueError(f"decode expects latents (N, C, h, w), got {getattr(z, 'shape', type(z).__name__)}")
        if self._cache is not None and self._cache[0] is z and self._cache[1] == z._version:
            return self._cache[2]
        device = model_device(self.vae, z.device)
        outs = []
        with torch.set_grad_enabled(torch.is_grad_enabled() and z.requires_grad):
            for chunk in self._chunks(z):
                latents = chunk.to(device=device, dtype=self.dtype) / self.scaling_factor + self.shift_factor
                outs.append(_sample(self.vae.decode(latents)))
        images = (torch.cat(outs) / 2 + 0.5).clamp(0, 1).to(device=z.device, dtype=torch.float32)
        self.decodes += int(z.shape[0])
        self._cache = (z, z._version, images)
        return images

    def encode(self, images: Tensor) -> Tensor:
        """Latents ``(N, C, h, w)`` float64 of ``images : (N, 3, H, W)`` in [0, 1] (the posterior mean)."""
        if not callable(getattr(self.vae, "encode", None)):
            raise TypeError(f"{type(self.vae).__name__} has no encode method")
        if not isinstance(images, Tensor) or images.dim() != 4:
            raise ValueError(f"encode expects images (N, 3, H, W), got {getattr(images, 'shape', type(images).__name__)}")
        device = model_device(self.vae, images.device)
        outs = []
        with torch.no_grad():
            for chunk in self._chunks(images):
                dist = _sample(self.vae.encode(chunk.to(device=device, dtype=self.dtype) * 2 - 1))
                outs.append(dist.mean if hasattr(dist, "mean") and not isinstance(dist, Tensor) else dist)
        self.encodes += int(images.shape[0])
        z = (torch.cat(outs).to(torch.float64) - self.shift_factor) * self.scaling_factor
        return z.to(images.device)

    def __repr__(self) -> str:
        return (f"VAEDecoder({type(self.vae).__name__}, scaling_factor={self.scaling_factor}, "
                f"shift_factor={self.shift_factor}, dtype={self.dtype}, max_batch={self.max_batch})")


class Decoded:
    """``fn`` on the decoded images of latents: ``Decoded(fn, decoder)(x0_hat, **cond) =
    fn(decoder.decode(x0_hat), **cond)``; with ``decoder`` None, ``x0_hat`` is a pixel-space sample
    in [−1, 1] (EDM's convention) and ``fn`` sees ``x0_hat/2 + 1/2`` clamped to [0, 1].

    ``fn(images : (N, 3, H, W) in [0, 1], **cond)`` — a detector ``-> (N, C)`` probabilities or a
    reward ``-> (N,)``; ``quantized=True`` rounds the images to 8 bits first (what a saved PNG holds).
    """

    def __init__(self, fn: Callable, decoder: VAEDecoder | None, *, quantized: bool = False):
        if not callable(fn):
            raise TypeError(f"fn must be callable on images, got {fn!r}")
        if decoder is not None and not callable(getattr(decoder, "decode", None)):
            raise TypeError(f"decoder must have decode(z) (a VAEDecoder) or be None, got {decoder!r}")
        self.fn, self.decoder, self.quantized = fn, decoder, bool(quantized)
        self.name = getattr(fn, "name", type(fn).__name__)

    def images(self, x0_hat: Tensor) -> Tensor:
        """The images the wrapped ``fn`` sees for latents ``x0_hat``."""
        if self.decoder is None:
            images = (x0_hat.to(torch.float32) / 2 + 0.5).clamp(0, 1)
        else:
            images = self.decoder.decode(x0_hat)
        return quantize(images) if self.quantized else images

    def __call__(self, x0_hat: Tensor, **cond):
        return self.fn(self.images(x0_hat), **cond)

    def __repr__(self) -> str:
        return f"Decoded({self.fn!r}, {self.decoder!r})"


class PromptEncoder:
    """Prompts → embeddings ``(P, L, E)`` for ``cond["encoder_hidden_states"]``.

    ``PromptEncoder(tokenizer, text_encoder, *, max_batch=None)``: a Hugging Face tokenizer (padding
    to its ``model_max_length``, truncating) and a text encoder whose first output is the last hidden
    state (transformers' ``CLIPTextModel``, as Stable Diffusion 1.x/2.x use). Returns float32 on the
    encoder's device.
    """

    def __init__(self, tokenizer, text_encoder, *, max_batch: int | None = None):
        if not callable(tokenizer) or not callable(text_encoder):
            raise TypeError("PromptEncoder needs a callable tokenizer and text encoder")
        self.tokenizer, self.text_encoder, self.max_batch = tokenizer, text_encoder, _check_batch(max_batch)

    def __call__(self, prompts: Sequence[str]) -> Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
        length = int(getattr(self.tokenizer, "model_max_length", 77))
        device = model_device(self.text_encoder, torch.device("cpu"))
        step = self.max_batch or len(prompts)
        outs = []
        with torch.no_grad():
            for i in range(0, len(prompts), step):
                ids = self.tokenizer(prompts[i:i + step], padding="max_length", max_length=length, truncation=True,
                                     return_tensors="pt").input_ids
                out = self.text_encoder(ids.to(device))
                outs.append(out.last_hidden_state if hasattr(out, "last_hidden_state") else _sample(out))
        return torch.cat(outs).float()


def latent_shape(unet, vae=None) -> tuple[int, int, int]:
    """``(C, h, w)`` of the diffusion's samples: ``unet.config``'s ``in_channels`` and ``sample_size``."""
    config = getattr(unet, "config", None)
    if config is None or "in_channels" not in config or "sample_size" not in config:
        raise ValueError(f"cannot read in_channels/sample_size from {type(unet).__name__}'s config")
    size = config["sample_size"]
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(config["in_channels"]), int(h), int(w)


@dataclass(frozen=True)
class LatentDiffusion:
    """A (latent) diffusion model as smcdiff uses it: ``denoiser`` D(x, σ, **cond) on ``shape``
    ``(C, h, w)``, ``decoder`` (None for a pixel-space model), ``prompt_encoder`` (None without a
    text encoder), and ``components`` (what was loaded, by name)."""

    denoiser: Callable
    shape: tuple
    decoder: VAEDecoder | None = None
    prompt_encoder: PromptEncoder | None = None
    components: dict | None = None

    def decoded(self, fn: Callable, *, quantized: bool = False) -> Decoded:
        """``fn`` on images, as a callable on the diffusion's samples (:class:`Decoded`)."""
        return Decoded(fn, self.decoder, quantized=quantized)

    def images(self, x: Tensor) -> Tensor:
        """Final samples ``x : (N, C, h, w)`` as images ``(N, 3, H, W)`` in [0, 1]."""
        return Decoded(lambda images: images, self.decoder).images(x)


def from_latent_diffusion(unet, scheduler, vae=None, *, text_encoder=None, tokenizer=None, dtype=None,
                          max_batch: int | None = None, **adapter_options) -> LatentDiffusion:
    """The :class:`LatentDiffusion` of diffusers components: the denoiser of
    :func:`~smcdiff.models.from_diffusers` (``dtype``, ``max_batch``, ``adapter_options``), a
    :class:`VAEDecoder` of ``vae`` (same ``dtype`` and ``max_batch``) and, with both a tokenizer and a
    text encoder, a :class:`PromptEncoder`."""
    denoiser = from_diffusers(unet, scheduler, dtype=dtype, max_batch=max_batch, **adapter_options)
    decoder = None if vae is None else VAEDecoder(vae, dtype=dtype, max_batch=max_batch)
    encoder = None
    if text_encoder is not None and tokenizer is not None:
        encoder = PromptEncoder(tokenizer, text_encoder, max_batch=max_batch)
    return LatentDiffusion(denoiser, latent_shape(unet), decoder, encoder)
