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
``torch.load(weights_only=True)``; a file that is not such a checkpoint (empty, truncated,
garbage, an EDM pickle, a config this version cannot build, tensors that do not fit) raises
:class:`~smcdiff.models.file_formats.FileFormatError` naming the file.

The networks live in :mod:`smcdiff.models.small_denoisers`, :mod:`smcdiff.models.small_classifiers`
and :mod:`smcdiff.models.net_blocks`; this module re-exports them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from smcdiff.models.file_formats import FileFormatError, torch_load_file
from smcdiff.models.net_blocks import fourier_embedding, init_parameters_
from smcdiff.models.precond import edm_preconditioning
from smcdiff.models.small_classifiers import (
    TAU_MIN,
    ConvTimeDiscriminator,
    DigitsClassifier,
    TimeDiscriminator,
)
from smcdiff.models.small_denoisers import ConvDenoiser, MLPDenoiser
from smcdiff.types import Tensor

__all__ = [
    "NETWORKS",
    "TAU_MIN",
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

_EXPECTED = "a network saved by smcdiff.models.small_nets.save (a torch.save file of {'config', 'state_dict'})"

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

    Raises :class:`~smcdiff.models.file_formats.FileFormatError` (a ``ValueError``) naming the
    file when it is not such a checkpoint: empty, truncated, garbage or another format, a class
    this module does not define, settings it cannot build, or tensors that do not fit.
    ``FileNotFoundError`` for a missing file. A discriminator saved with a ``feature_dim`` needs
    its extractor again as ``features=`` (``ValueError`` otherwise).
    """
    blob = torch_load_file(path, _EXPECTED)
    if not isinstance(blob, dict) or not {"config", "state_dict"} <= blob.keys():
        got = f"a dict with keys {sorted(map(str, blob))[:10]}" if isinstance(blob, dict) else type(blob).__name__
        raise FileFormatError(f"{path}: not {_EXPECTED}; it holds {got}")
    config = blob["config"]
    name = config.get("class") if isinstance(config, dict) else None
    if name not in NETWORKS:
        raise FileFormatError(f"load: {path}: unknown network class {name!r}; expected one of {sorted(NETWORKS)}")
    kwargs = dict(config.get("kwargs") or {})
    if name == "TimeDiscriminator":
        if kwargs.get("feature_dim") is not None and features is None:
            raise ValueError("load: this discriminator was trained on features; pass features=")
        kwargs["features"] = features if kwargs.get("feature_dim") is not None else None
    elif features is not None:
        raise ValueError(f"load: features= only applies to a TimeDiscriminator, not {name}")
    try:
        module = NETWORKS[name](**kwargs)
        module.load_state_dict(blob["state_dict"])
    except (TypeError, ValueError, RuntimeError) as err:  # settings or tensors that do not fit
        raise FileFormatError(f"load: {path}: the saved {name} cannot be rebuilt ({type(err).__name__}: "
                              f"{str(err)[:300]})") from err
    return module
