"""Type aliases and protocols shared across smcdiff.

Shapes follow one convention everywhere: particles are ``(G, K, *event)`` (G groups = independent
SMC runs, K particles each), log-weights ``(G, K)``, log-evidence ``(G,)``. Functions that work on a
flat batch take ``(N, *event)`` with ``N = G * K`` and a per-sample ``sigma : (N,)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, Union, runtime_checkable

import torch

Tensor = torch.Tensor
#: One generator for the whole batch, or one per group (see :mod:`smcdiff._rng`).
GeneratorSpec = Union[torch.Generator, Sequence[torch.Generator]]
#: SMC state: a tensor or a dict of tensors, each with leading dims ``(G, K)``.
State = Union[Tensor, Mapping[str, Tensor]]


@runtime_checkable
class Denoiser(Protocol):
    """``D(x, sigma, **cond) -> x0_hat``: ``x : (N, *event)``, ``sigma : (N,)``, same-shape output.

    The EDM convention: ``x_sigma = x_0 + sigma * n``. An optional ``round_sigma(sigma)`` attribute
    snaps noise levels to the network's grid (identity when absent).
    """

    def __call__(self, x: Tensor, sigma: Tensor, **cond) -> Tensor: ...


@runtime_checkable
class Potential(Protocol):
    """``V(x, sigma, x0_hat, **cond) -> (N,)`` log-potential of each sample."""

    def __call__(self, x: Tensor, sigma: Tensor, x0_hat: Tensor, **cond) -> Tensor: ...


@runtime_checkable
class LogRatio(Protocol):
    """``l(x, sigma, **cond) -> (N,)``: log density ratio log q_sigma(x) / p_sigma(x) (EDM scale)."""

    def __call__(self, x: Tensor, sigma: Tensor, **cond) -> Tensor: ...
