"""Safe mode of the EDM pickle loader: an allow-list of globals, inert stand-ins, no code runs.

A restricted :class:`pickle.Unpickler` (:class:`SafeUnpickler`) resolves only the globals in
:data:`SAFE_GLOBALS` (those recorded in real EDM pickles); every EDM persistent object (stored as a
call of ``torch_utils.persistence._reconstruct_persistent_obj(meta)``) becomes an inert
:class:`PersistentStub` holding its class name and pickled ``__dict__``, whose tensors
:meth:`PersistentStub.state_dict` collects. Anything else raises :class:`UnsafePickleError`
before it is used. The user guide is :mod:`smcdiff.models.pickle_loader`.

    >>> import io, pickle
    >>> SafeUnpickler(io.BytesIO(pickle.dumps({"ema": None}))).load()
    {'ema': None}
"""

from __future__ import annotations

import _codecs
import collections
import io
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from smcdiff.models.file_formats import FileFormatError

__all__ = [
    "PERSISTENT_VERSION", "RECONSTRUCT", "SAFE_GLOBALS", "PersistentStub", "SafeUnpickler", "UnsafePickleError",
    "check_persistent_meta", "collect_tensors", "make_stub",
]

#: The global every EDM persistent object reduces to.
RECONSTRUCT = ("torch_utils.persistence", "_reconstruct_persistent_obj")
#: The persistent-object format version EDM writes (the only one read).
PERSISTENT_VERSION = 6


class UnsafePickleError(FileFormatError, pickle.UnpicklingError):
    """The pickle refers to a global that safe mode does not allow (nothing was executed).

    A :class:`~smcdiff.models.file_formats.FileFormatError` (so a ``ValueError``) and a
    ``pickle.UnpicklingError``."""


# --------------------------------------------------------------------------------------------------
# Globals allowed in safe mode.


def _load_storage_from_bytes(b: Any) -> Any:
    """Replacement for ``torch.storage._load_from_bytes``: each storage is a nested legacy
    ``torch.save`` byte string, read with torch's restricted (weights-only) unpickler, on the
    CPU."""
    if not isinstance(b, (bytes, bytearray)):
        raise pickle.UnpicklingError(
            f"torch.storage._load_from_bytes expects bytes, got {type(b).__name__}"
        )
    return torch.load(io.BytesIO(bytes(b)), weights_only=True, map_location="cpu")


def _numpy_scalar_function() -> Callable[..., Any]:
    try:  # numpy >= 2 (also present as a private alias in late 1.x releases)
        from numpy._core.multiarray import scalar
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar
    return scalar


_np_scalar = _numpy_scalar_function()

#: ``(module, name) -> object`` resolved by the safe unpickler: the globals recorded in real EDM
#: pickles, plus ``builtins.set`` and ``_codecs.encode`` (sets and byte strings in pickle protocol
#: <= 3 / 2) and ``torch._utils._rebuild_parameter_with_state`` (parameters with extra state).
#: ``torch.storage._load_from_bytes`` is served by a weights-only ``torch.load`` shim and numpy's
#: ``scalar`` is accepted under both ``numpy.core.multiarray`` (numpy 1.x writers) and
#: ``numpy._core.multiarray`` (numpy 2.x writers) without importing the deprecated path.
SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch.nn.modules.container", "ModuleDict"): torch.nn.ModuleDict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy", "dtype"): np.dtype,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
    ("_codecs", "encode"): _codecs.encode,
}


# --------------------------------------------------------------------------------------------------
# Persistent-object metadata.


def check_persistent_meta(meta: Any) -> tuple[str, dict]:
    """Validate a persistent-object ``meta`` dict; return ``(class_name, state)``."""
    if not isinstance(meta, dict):
        raise ValueError(f"persistent object metadata must be a dict, got {type(meta).__name__}")
    if meta.get("type") != "class":
        raise ValueError(
            f"unsupported persistent object type {meta.get('type')!r} (only 'class' is supported)"
        )
    if meta.get("version") != PERSISTENT_VERSION:
        raise ValueError(
            f"unsupported persistent object version {meta.get('version')!r} "
            f"(only version {PERSISTENT_VERSION} is supported)"
        )
    class_name = meta.get("class_name")
    if not isinstance(class_name, str) or not class_name:
        raise ValueError(f"persistent object has no valid class_name: {class_name!r}")
    state = meta.get("state")
    if state is None:
        state = {}
    if not isinstance(state, dict):
        raise ValueError(
            f"state of persistent {class_name} must be a dict, got {type(state).__name__}"
        )
    return class_name, state


class PersistentStub:
    """Inert stand-in for an EDM persistent object read in safe mode.

    Keeps ``class_name`` and ``state`` (the pickled ``__dict__``: ``_parameters``, ``_buffers``,
    ``_modules``, ``_init_kwargs``, plain attributes, ...). It has no behaviour: calling it raises.
    """

    __slots__ = ("class_name", "state")

    def __init__(self, class_name: str, state: dict):
        self.class_name = class_name
        self.state = state

    @property
    def init_args(self) -> tuple:
        return tuple(self.state.get("_init_args") or ())

    @property
    def init_kwargs(self) -> dict:
        return dict(self.state.get("_init_kwargs") or {})

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors of this object and its children, as ``torch.nn.Module.state_dict`` would name
        them (parameters and persistent buffers; ``None`` entries skipped; detached)."""
        out: dict[str, torch.Tensor] = {}
        collect_tensors(self, "", out)
        return out

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"{self.class_name} was read in safe mode and is an inert stub; "
            "use load_edm(..., trust_code=True) to rebuild the original object"
        )

    def __repr__(self) -> str:
        return f"PersistentStub({self.class_name!r})"


def make_stub(meta: Any) -> PersistentStub:
    """The safe stand-in for ``_reconstruct_persistent_obj(meta)``: a checked :class:`PersistentStub`."""
    class_name, state = check_persistent_meta(meta)
    return PersistentStub(class_name, state)


def collect_tensors(node: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    """Add the parameters and persistent buffers of ``node`` and its children to ``out``, named as
    ``state_dict`` would name them under ``prefix``."""
    if isinstance(node, PersistentStub):
        d, what = node.state, node.class_name
    elif isinstance(node, torch.nn.Module):  # ModuleDict containers are real torch objects
        d, what = node.__dict__, type(node).__name__
    else:
        raise ValueError(
            f"unexpected object at {prefix.rstrip('.') or '<root>'!r}: {type(node).__name__} "
            "(expected an EDM persistent object or a torch.nn.ModuleDict)"
        )
    non_persistent = d.get("_non_persistent_buffers_set") or set()
    for kind in ("_parameters", "_buffers"):
        for name, tensor in (d.get(kind) or {}).items():
            if tensor is None or (kind == "_buffers" and name in non_persistent):
                continue
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(
                    f"{what}.{kind}[{name!r}] at {prefix!r} is a {type(tensor).__name__}, "
                    "not a tensor"
                )
            out[prefix + name] = tensor.detach()
    for name, child in (d.get("_modules") or {}).items():
        if child is not None:
            collect_tensors(child, f"{prefix}{name}.", out)


class SafeUnpickler(pickle.Unpickler):
    """Resolves only :data:`SAFE_GLOBALS`; EDM persistent objects become :class:`PersistentStub`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == RECONSTRUCT:
            return make_stub
        try:
            return SAFE_GLOBALS[(module, name)]
        except KeyError:
            allowed = ", ".join(sorted({m for m, _ in SAFE_GLOBALS} | {RECONSTRUCT[0]}))
            raise UnsafePickleError(
                f"refusing to load: the pickle refers to global '{module}.{name}', which is not "
                f"on the safe-mode allow-list (modules: {allowed}); nothing from the file was "
                "executed. "
                "Use trust_code=True only if you trust this file: it runs code from it."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            "refusing to load: the pickle uses persistent ids, as torch.save's legacy format does "
            "(not an EDM network pickle; a torch.save file is read with torch.load)"
        )
