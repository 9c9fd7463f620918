"""Reading an SMC result into plain NumPy arrays, with shape checks (shared by the ArviZ export,
the plots and the text summary of :mod:`smcdiff.diagnostics`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

_REQUIRED = ("x", "log_weights", "log_evidence", "ess", "resampled", "ancestors", "log_evidence_increments")
MAX_GROUPS_DRAWN = 16
MAX_LINEAGES = 128


# ----------------------------------------------------------------------------- reading a result


@dataclass(frozen=True)
class RunArrays:
    """A result's fields as NumPy arrays (copies), validated against (G, K, T)."""

    G: int
    K: int
    T: int
    x: dict[str, np.ndarray]  # name -> (G, K, ...); empty unless read with_x
    log_weights: np.ndarray  # (G, K)
    log_evidence: np.ndarray  # (G,)
    ess: np.ndarray  # (T, G)
    resampled: np.ndarray  # (T, G) bool
    ancestors: np.ndarray  # (T, G, K) int64
    increments: np.ndarray  # (T, G)
    sigma: np.ndarray | None  # (T,)
    accept_rate: np.ndarray | None  # (T, G)
    potentials: dict[str, np.ndarray]  # name -> (G, K)
    nfe: float | None
    nfe_total: int | None


def _array(value: Any, name: str) -> np.ndarray:
    """A copy of ``value`` (tensor or ndarray) as NumPy; low-precision floats become float32."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
            t = t.to(torch.float32)  # float16 / bfloat16: no NetCDF type
        return t.numpy().copy()
    if isinstance(value, np.ndarray):
        return value.copy()
    raise TypeError(f"result.{name} must be a torch.Tensor, got {type(value).__name__}")


def _expect(arr: np.ndarray, shape: tuple[int, ...], name: str, meaning: str) -> np.ndarray:
    if arr.shape != shape:
        raise ValueError(f"result.{name} must have shape {meaning} = {shape}, got {arr.shape}")
    return arr


def _name(name: Any) -> str:
    return str(name).replace("/", "_")  # "/" separates groups in NetCDF


def read_run(result: Any, with_x: bool = True) -> RunArrays:
    """Validate ``result`` and copy its fields (``x`` only when ``with_x``: plots do not need it)."""
    missing = [name for name in _REQUIRED if getattr(result, name, None) is None]
    if missing:
        raise TypeError(
            f"expected an SMCResult / Result (from smcdiff.sample, a method or smcdiff.engine.run), "
            f"got a {type(result).__name__} missing {', '.join(missing)}"
        )
    log_w = _array(result.log_weights, "log_weights")
    if log_w.ndim != 2:
        raise ValueError(f"result.log_weights must have shape (G, K), got {log_w.shape}")
    G, K = log_w.shape
    ess = _array(result.ess, "ess")
    if ess.ndim != 2:
        raise ValueError(f"result.ess must have shape (T, G), got {ess.shape}")
    T = ess.shape[0]
    _expect(ess, (T, G), "ess", "(T, G)")

    raw_x = result.x
    if getattr(result, "selected", None) is not None:  # x holds one chosen particle per group: read them all
        raw_x = result.particles
    items = raw_x.items() if isinstance(raw_x, Mapping) else [("x", raw_x)]
    x = {}
    for name, value in items:
        shape = tuple(getattr(value, "shape", ()))
        if shape[:2] != (G, K):
            raise ValueError(f"result.x entry {name!r} must have leading dims (G, K) = ({G}, {K}), got {shape}")
        if with_x:
            x[_name(name)] = _array(value, f"x[{name!r}]" if isinstance(raw_x, Mapping) else "x")
    ancestors = _expect(_array(result.ancestors, "ancestors"), (T, G, K), "ancestors", "(T, G, K)").astype(np.int64)
    if ancestors.size and (ancestors.min() < 0 or ancestors.max() >= K):
        raise ValueError(f"result.ancestors must be particle indices in [0, {K - 1}], "
                         f"got values in [{ancestors.min()}, {ancestors.max()}]")

    sigma = None
    if getattr(result, "sigmas", None) is not None:
        sigmas = _array(result.sigmas, "sigmas")
        sigma = _expect(sigmas, (T + 1,), "sigmas", "(T + 1,)")[1:]
    accept = None
    if getattr(result, "accept_rate", None) is not None:
        accept = _expect(_array(result.accept_rate, "accept_rate"), (T, G), "accept_rate", "(T, G)")

    named = getattr(result, "named_potentials", None)
    if named:
        potentials = {
            _name(n): _expect(_array(v, f"named_potentials[{n!r}]"), (G, K), f"named_potentials[{n!r}]", "(G, K)")
            for n, v in named.items()
        }
    elif getattr(result, "potential", None) is not None:
        potentials = {"potential": _expect(_array(result.potential, "potential"), (G, K), "potential", "(G, K)")}
    else:
        potentials = {}

    nfe = getattr(result, "nfe", None)
    nfe_total = getattr(result, "nfe_total", None)
    return RunArrays(
        G=G, K=K, T=T, x=x,
        log_weights=log_w.astype(np.float64),
        log_evidence=_expect(_array(result.log_evidence, "log_evidence"), (G,), "log_evidence", "(G,)"),
        ess=ess,
        resampled=_expect(_array(result.resampled, "resampled"), (T, G), "resampled", "(T, G)").astype(bool),
        ancestors=ancestors,
        increments=_expect(_array(result.log_evidence_increments, "log_evidence_increments"), (T, G),
                           "log_evidence_increments", "(T, G)"),
        sigma=sigma,
        accept_rate=accept,
        potentials=potentials,
        nfe=float(nfe) if isinstance(nfe, (int, float)) else None,
        nfe_total=int(nfe_total) if isinstance(nfe_total, int) else None,
    )


def smcdiff_version() -> str:
    """The installed smcdiff's version (``"unknown"`` when run from a source tree that is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("smcdiff")
    except PackageNotFoundError:
        return "unknown"
