"""Classifier-free guidance (Ho & Salimans) as a denoiser transform D → D'.

:class:`ClassifierFreeGuidance` has the interface of the transforms in :mod:`smcdiff.kernels.guidance`
(``bind(denoiser, sigmas, i) -> denoiser'``), so it composes with any kernel through
:class:`~smcdiff.kernels.guidance.Guided`. The guided denoiser is

    D_cfg = D_u + w·(D_c − D_u)

in x̂0 space, which is the same as ε_cfg = ε_u + w·(ε_c − ε_u) (diffusers' pipelines) and as the
same combination of v-predictions, because at fixed (x, σ) each of them is an affine function of
x̂0 (ε̂ = (x − x̂0)/σ). w = 1 is the conditional model, w = 0 the unconditional one; diffusers' SD
default is 7.5; azula's ω is w − 1; EDM2's ``lerp(D_u, D_c, w)`` is this w.

The unconditional and conditional inputs go through the network in **one batched call** of 2N
samples, ordered [uncond, cond] as in diffusers, so :class:`~smcdiff.kernels.counting.CallCounter`
(and ``smcdiff.sample``'s NFE) counts 2 network evaluations per guided evaluation. With w = 1 (or
w = 0) only one half is evaluated.

Prompt embeddings go in directly (no tokenizer): the conditional ones in ``cond`` (e.g.
``cond["encoder_hidden_states"] : (N, L, E)``), the unconditional ones either

* given to the transform: ``uncond=`` a tensor (for ``key``, default ``"encoder_hidden_states"``) or a
  dict name → tensor, each of the conditional value's shape, of its shape without the leading N, or
  with leading dimension 1 (broadcast to every sample); or
* in ``cond`` under ``"uncond.<name>"`` with leading dimension N (per particle, e.g. one negative
  prompt per group; these take precedence and are never passed to the network).

Inputs without an unconditional value (class labels, SDXL's ``added_cond_kwargs.time_ids`` ...) are
duplicated into both halves.

    >>> import torch
    >>> from smcdiff.kernels import CallCounter, EDMEuler, Guided, karras_sigmas
    >>> def D(x, sigma, encoder_hidden_states):          # a toy conditional denoiser
    ...     return encoder_hidden_states.mean(1) / (1 + sigma[:, None] ** 2)
    >>> counted = CallCounter(D)
    >>> kernel = Guided(EDMEuler(), ClassifierFreeGuidance(7.5, uncond=torch.zeros(3, 2)))
    >>> g = torch.Generator().manual_seed(0)
    >>> x = 80 * torch.randn(4, 2, dtype=torch.float64, generator=g)
    >>> cond = {"encoder_hidden_states": torch.ones(4, 3, 2)}
    >>> out = kernel(counted, x, karras_sigmas(8), 0, g, cond)
    >>> counted.count                                     # 2 evaluations for each of the 4 samples
    8
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from smcdiff.types import Tensor

__all__ = ["UNCOND_PREFIX", "ClassifierFreeGuidance"]

#: ``cond["uncond.<name>"]`` holds the unconditional value of ``cond["<name>"]``.
UNCOND_PREFIX = "uncond."


def _broadcast(u, c, name: str):
    if isinstance(c, Mapping):
        if not isinstance(u, Mapping):
            raise TypeError(f"the unconditional {name!r} must be a dict like the conditional one")
        return {k: _broadcast(u[k], v, f"{name}.{k}") if k in u else v for k, v in c.items()}
    u = torch.as_tensor(u, device=c.device, dtype=c.dtype)
    if u.shape == c.shape:
        return u
    if u.shape == c.shape[1:] or (u.dim() == c.dim() and u.shape[0] == 1 and u.shape[1:] == c.shape[1:]):
        return u.expand(c.shape)
    raise ValueError(f"the unconditional {name!r} has shape {tuple(u.shape)}; expected {tuple(c.shape)}, "
                     f"{tuple(c.shape[1:])} or (1, *{tuple(c.shape[1:])})")


def _pair(u, c):
    if isinstance(c, Mapping):
        return {k: _pair(u[k], v) for k, v in c.items()}
    if isinstance(c, Tensor):
        return torch.cat([u, c])
    return c


class ClassifierFreeGuidance:
    """CFG with guidance weight ``w``: D' = D_u + w·(D_c − D_u), one batched call of 2N samples.

    ``uncond``: the unconditional input — a tensor for ``cond[key]`` or a dict name → tensor —
    unless ``cond`` carries ``"uncond.<name>"`` entries (see the module docstring).
    """

    def __init__(self, w: float, uncond: Tensor | Mapping[str, Tensor] | None = None, *,
                 key: str = "encoder_hidden_states"):
        w = float(w)
        if not math.isfinite(w):
            raise ValueError(f"the guidance weight w must be finite, got {w}")
        if uncond is not None and not isinstance(uncond, (Tensor, Mapping)):
            raise TypeError(f"uncond must be a tensor, a dict of tensors or None, got {type(uncond).__name__}")
        self.w, self.key = w, key
        self.uncond = {} if uncond is None else dict(uncond) if isinstance(uncond, Mapping) else {key: uncond}
        self._moved: dict = {}  # the given uncond inputs per (name, device, dtype): one copy, not one per call

    def _given(self, name: str, like: Tensor):
        value = self.uncond[name]
        if not isinstance(value, Tensor) or isinstance(like, Mapping):
            return value
        key = (name, like.device, like.dtype)
        if key not in self._moved:
            self._moved[key] = value.to(device=like.device, dtype=like.dtype)
        return self._moved[key]

    def split(self, cond: Mapping) -> tuple[dict, dict]:
        """(the conditional inputs, the unconditional ones), each keyed like ``cond`` without the
        ``uncond.`` entries; unconditional values broadcast to the conditional shapes."""
        cond_c = {k: v for k, v in cond.items() if not k.startswith(UNCOND_PREFIX)}
        override = {k: self._given(k, cond_c[k]) if k in cond_c else v for k, v in self.uncond.items()}
        override.update({k[len(UNCOND_PREFIX):]: v for k, v in cond.items() if k.startswith(UNCOND_PREFIX)})
        if not override:
            raise ValueError("classifier-free guidance needs an unconditional input: pass "
                             f"ClassifierFreeGuidance(w, uncond=...) or cond['{UNCOND_PREFIX}{self.key}']")
        missing = sorted(set(override) - set(cond_c))
        if missing:
            raise ValueError(f"unconditional inputs {missing} have no conditional counterpart in cond "
                             f"(got keys {sorted(cond_c)})")
        return cond_c, {k: _broadcast(override[k], v, k) if k in override else v for k, v in cond_c.items()}

    def bind(self, denoiser, sigmas: Tensor, i: int):
        return _CFGDenoiser(denoiser, self)

    def __repr__(self) -> str:
        return f"ClassifierFreeGuidance(w={self.w}, key={self.key!r}, uncond={sorted(self.uncond)})"


class _CFGDenoiser:
    """The guided denoiser of one step; other attributes (``round_sigma``, ``sigma_min``, ...) are
    the wrapped denoiser's."""

    def __init__(self, denoiser, cfg: ClassifierFreeGuidance):
        self.denoiser, self.cfg = denoiser, cfg

    @property
    def evaluations_per_sample(self) -> int:
        """Network evaluations per sample of one call: 2 (uncond + cond), 1 when w is 0 or 1."""
        return 1 if self.cfg.w in (0.0, 1.0) else 2

    def __getattr__(self, name):
        if name in ("denoiser", "cfg"):
            raise AttributeError(name)
        return getattr(self.denoiser, name)

    def __call__(self, x: Tensor, sigma, **cond) -> Tensor:
        n, w = x.shape[0], self.cfg.w
        cond_c, cond_u = self.cfg.split(cond)
        if w == 1.0:
            return self.denoiser(x, sigma, **cond_c).to(torch.float64)
        if w == 0.0:
            return self.denoiser(x, sigma, **cond_u).to(torch.float64)
        sigma = torch.as_tensor(sigma, device=x.device).reshape(-1)
        sigma = sigma.expand(n) if sigma.numel() == 1 else sigma
        # Uncond and cond in one batched call: [uncond, cond].
        out = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]),
                            **{k: _pair(cond_u[k], v) for k, v in cond_c.items()}).to(torch.float64)
        d_u, d_c = out[:n], out[n:]
        return d_u + w * (d_c - d_u)
