"""Random draws from caller-owned generators.

Every random number in smcdiff comes from a ``torch.Generator`` the caller passes in, never from
the global RNG. A *generator spec* is either one ``torch.Generator`` (the whole batch draws from
one stream) or a sequence of them, one per group (row ``g`` of the leading axis draws from
``generator[g]`` alone, so a group's numbers depend on its seed, not on the batch it ran in).

    >>> g = torch.Generator().manual_seed(0)
    >>> z = randn((2, 3), g)                       # one stream
    >>> gs = [torch.Generator().manual_seed(s) for s in (0, 1)]
    >>> z = randn((2, 3), gs)                      # row 0 from seed 0, row 1 from seed 1
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

__all__ = ["randn", "rand", "randn_batch", "num_streams", "derive", "check_generator"]


def check_generator(generator, num_groups: int | None = None) -> None:
    """Raise a clear error unless ``generator`` is a generator or a list of ``num_groups`` of them."""
    if isinstance(generator, torch.Generator):
        return
    if isinstance(generator, Sequence) and generator and all(
        isinstance(g, torch.Generator) for g in generator
    ):
        if num_groups is not None and len(generator) != num_groups:
            raise ValueError(
                f"expected one torch.Generator per group ({num_groups}), got {len(generator)}"
            )
        return
    raise TypeError(
        "generator must be a torch.Generator or a sequence of torch.Generator (one per group), "
        f"got {type(generator).__name__}; smcdiff never uses the global RNG"
    )


def num_streams(generator) -> int:
    """1 for a single generator, else the number of per-group generators."""
    return 1 if isinstance(generator, torch.Generator) else len(generator)


def _draw(fn, shape, generator, dtype, device):
    check_generator(generator)
    shape = tuple(shape)
    if isinstance(generator, torch.Generator):
        return fn(shape, generator=generator, dtype=dtype, device=device)
    if not shape or shape[0] != len(generator):
        raise ValueError(
            f"{len(generator)} per-group generators need a leading axis of that size, got shape {shape}"
        )
    rows = [fn(shape[1:], generator=g, dtype=dtype, device=device) for g in generator]
    return torch.stack(rows)


def randn(shape, generator, dtype=torch.float64, device=None) -> torch.Tensor:
    """Standard normal draws of ``shape`` from ``generator`` (see the module docstring)."""
    return _draw(torch.randn, shape, generator, dtype, device)


def rand(shape, generator, dtype=torch.float64, device=None) -> torch.Tensor:
    """Uniform [0, 1) draws of ``shape`` from ``generator`` (see the module docstring)."""
    return _draw(torch.rand, shape, generator, dtype, device)


def randn_batch(shape, generator, dtype=torch.float64, device=None) -> torch.Tensor:
    """Normal draws for a *flat* batch ``(N, *event)`` with ``N = G * K`` rows ordered group-major.

    With one generator this is :func:`randn`; with G per-group generators, rows ``g*K .. g*K+K-1``
    come from ``generator[g]``, so kernels working on flattened particles keep per-group streams.
    """
    shape = tuple(shape)
    if isinstance(generator, torch.Generator):
        return randn(shape, generator, dtype, device)
    check_generator(generator)
    G = len(generator)
    if not shape or shape[0] % G:
        raise ValueError(f"a flat batch of {shape[0] if shape else 0} rows cannot be split over {G} groups")
    return randn((G, shape[0] // G) + shape[1:], generator, dtype, device).reshape(shape)


def derive(generator, purpose: str):
    """An independent generator (spec) for ``purpose``, seeded from ``generator``'s initial seed.

    Consumes nothing from ``generator``, so adding a new consumer (e.g. resampling) never shifts
    the stream a sampler draws its noise from.
    """
    check_generator(generator)

    def one(g: torch.Generator) -> torch.Generator:
        digest = hashlib.sha256(f"{g.initial_seed()}:{purpose}".encode()).digest()
        seed = int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
        return torch.Generator(device=g.device).manual_seed(seed)

    if isinstance(generator, torch.Generator):
        return one(generator)
    return [one(g) for g in generator]
