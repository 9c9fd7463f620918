"""Load EDM network pickles (``edm-*.pkl``) without the EDM repository.

An EDM network pickle is a plain :mod:`pickle` (not ``torch.save``) of the dict
``{'ema': <preconditioned network>, 'loss_fn': ..., 'augment_pipe': ..., 'dataset_kwargs': {...}}``.
Every EDM-defined object in it (the ``*Precond`` wrapper, the U-Net and its layers, the loss and
the augmentation pipeline) is stored as a call
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``meta = {'type': 'class',
'version': 6, 'module_src': <full source of the defining module>, 'class_name': ...,
'state': <the object's __dict__>}``; the ``enc``/``dec`` containers are plain
``torch.nn.ModuleDict`` objects and numeric attributes may be numpy float64 scalars.

:func:`load_edm` has two modes:

* **safe mode** (default, ``trust_code=False``): a restricted :class:`pickle.Unpickler` that
  resolves only an allow-list of globals (:data:`SAFE_GLOBALS`, plus the persistent-object
  constructor, which becomes an inert :class:`PersistentStub`). No code from the file runs. The
  ``ema`` stub tree is walked into an ordinary state_dict and loaded, strictly, into smcdiff's own
  reimplementation of the class named in the file, looked up in :data:`PRECOND_CLASSES` and built
  with the pickle's ``_init_kwargs``. ``loss_fn`` and ``augment_pipe`` stay inert stubs.
* **trusted mode** (``trust_code=True``): **executes the Python source embedded in the file** (each
  distinct source once per process, see :data:`_SOURCE_MODULES`) and rebuilds the original objects,
  like the EDM code does. Only use it on files you would be willing to run as a script. The imports
  that source makes (``torch_utils``, ``torch_utils.persistence`` with an identity
  ``persistent_class``, ``torch_utils.misc``) are served by shim modules that are placed in
  :data:`sys.modules` only while the source executes; ``sys.modules`` is restored afterwards.

Files are read from a local path or an open binary file only; URLs are refused (no downloads).
Typical use (not run as a doctest)::

    from smcdiff.models.pickle_loader import load_edm

    net = load_edm("edm-cifar10-32x32-uncond-vp.pkl")          # safe: smcdiff's EDMPrecond
    net = load_edm("edm-cifar10-32x32-uncond-vp.pkl", trust_code=True)  # runs the file's code
    denoised = net(x, sigma)                                     # eval mode, requires_grad False
"""

from __future__ import annotations

import _codecs
import collections
import importlib
import io
import os
import pickle
import re
import sys
import threading
import types
import uuid
from typing import Any, BinaryIO, Callable, Union

import numpy as np
import torch

__all__ = [
    "PRECOND_CLASSES",
    "SAFE_GLOBALS",
    "PersistentStub",
    "UnsafePickleError",
    "load_edm",
    "read_edm_pickle",
]

PathOrFile = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]", BinaryIO]

#: The global every EDM persistent object reduces to.
_RECONSTRUCT = ("torch_utils.persistence", "_reconstruct_persistent_obj")
_PERSISTENT_VERSION = 6

#: smcdiff classes that safe mode can build, by the class name stored in the pickle. Filled lazily
#: from :mod:`smcdiff.models.precond` (``EDMPrecond``, ``VPPrecond``, ``VEPrecond``,
#: ``iDDPMPrecond``) on first use; entries added by hand (e.g. test stand-ins) are never
#: overwritten.
#: Each value is called as ``cls(*_init_args, **_init_kwargs)`` and must accept a strict
#: ``load_state_dict`` of the pickled tensors.
PRECOND_CLASSES: dict[str, Callable[..., torch.nn.Module]] = {}
_PRECOND_MODULE = "smcdiff.models.precond"
_PRECOND_NAMES = ("EDMPrecond", "VPPrecond", "VEPrecond", "iDDPMPrecond")

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """The pickle refers to a global that safe mode does not allow (nothing was executed)."""


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


def _check_meta(meta: Any) -> tuple[str, dict]:
    """Validate a persistent-object ``meta`` dict; return ``(class_name, state)``."""
    if not isinstance(meta, dict):
        raise ValueError(f"persistent object metadata must be a dict, got {type(meta).__name__}")
    if meta.get("type") != "class":
        raise ValueError(
            f"unsupported persistent object type {meta.get('type')!r} (only 'class' is supported)"
        )
    if meta.get("version") != _PERSISTENT_VERSION:
        raise ValueError(
            f"unsupported persistent object version {meta.get('version')!r} "
            f"(only version {_PERSISTENT_VERSION} is supported)"
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
        _collect_tensors(self, "", out)
        return out

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"{self.class_name} was read in safe mode and is an inert stub; "
            "use load_edm(..., trust_code=True) to rebuild the original object"
        )

    def __repr__(self) -> str:
        return f"PersistentStub({self.class_name!r})"


def _make_stub(meta: Any) -> PersistentStub:
    class_name, state = _check_meta(meta)
    return PersistentStub(class_name, state)


def _collect_tensors(node: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
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
            _collect_tensors(child, f"{prefix}{name}.", out)


# --------------------------------------------------------------------------------------------------
# Trusted mode: execute the embedded module source (cached per distinct source string).

#: ``module_src -> module`` for sources already executed in trusted mode (each is exec'd once).
_SOURCE_MODULES: dict[str, types.ModuleType] = {}
_EXEC_LOCK = threading.RLock()
_MISSING = object()


def _make_shims() -> dict[str, types.ModuleType]:
    persistence = types.ModuleType("torch_utils.persistence")
    persistence.persistent_class = lambda cls: cls  # identity: no re-wrapping
    misc = types.ModuleType("torch_utils.misc")
    pkg = types.ModuleType("torch_utils")
    pkg.__path__ = []  # a package, so unknown submodules fail with a clean ModuleNotFoundError
    pkg.persistence = persistence
    pkg.misc = misc
    return {"torch_utils": pkg, "torch_utils.persistence": persistence, "torch_utils.misc": misc}


def _exec_source(src: str) -> types.ModuleType:
    """Execute ``src`` in a fresh module, with the ``torch_utils`` shims (and the module itself)
    visible in ``sys.modules`` only during the exec."""
    name = f"_smcdiff_edm_module_{uuid.uuid4().hex}"
    module = types.ModuleType(name)
    module.__dict__["__file__"] = f"<EDM pickle source {name}>"
    temporary = {**_make_shims(), name: module}
    saved = {key: sys.modules.get(key, _MISSING) for key in temporary}
    try:
        sys.modules.update(temporary)
        exec(compile(src, module.__file__, "exec"), module.__dict__)
    finally:
        for key, old in saved.items():
            if old is _MISSING:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = old
    return module


def _module_for_source(src: Any) -> types.ModuleType:
    if not isinstance(src, str):
        raise ValueError(f"persistent object module_src must be a str, got {type(src).__name__}")
    with _EXEC_LOCK:
        module = _SOURCE_MODULES.get(src)
        if module is None:
            module = _exec_source(src)
            _SOURCE_MODULES[src] = module
    return module


def _reconstruct_trusted(meta: Any) -> Any:
    class_name, state = _check_meta(meta)
    module = _module_for_source(meta.get("module_src"))
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ValueError(f"the embedded source does not define a class {class_name!r}")
    obj = cls.__new__(cls)
    setstate = getattr(obj, "__setstate__", None)
    if setstate is not None:
        setstate(state)
    else:
        obj.__dict__.update(state)
    return obj


# --------------------------------------------------------------------------------------------------
# Unpicklers.


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == _RECONSTRUCT:
            return _make_stub
        try:
            return SAFE_GLOBALS[(module, name)]
        except KeyError:
            allowed = ", ".join(sorted({m for m, _ in SAFE_GLOBALS} | {_RECONSTRUCT[0]}))
            raise UnsafePickleError(
                f"refusing to load: the pickle refers to global '{module}.{name}', which is not "
                f"on the safe-mode allow-list (modules: {allowed}); nothing from the file was "
                "executed. "
                "Use trust_code=True only if you trust this file: it runs code from it."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            "refusing to load: the pickle uses persistent ids (not an EDM pickle)"
        )


class _TrustingUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == _RECONSTRUCT:
            return _reconstruct_trusted
        if (module, name) in SAFE_GLOBALS:  # same shims as safe mode (CPU storages, numpy paths)
            return SAFE_GLOBALS[(module, name)]
        return super().find_class(module, name)


# --------------------------------------------------------------------------------------------------
# Public API.


def _open_binary(path: PathOrFile) -> tuple[BinaryIO, bool]:
    """Return ``(file, close_it)`` for a local path or an already open binary file."""
    if hasattr(path, "read"):
        if isinstance(path, io.TextIOBase):
            raise ValueError("the EDM pickle file must be opened in binary mode ('rb')")
        return path, False  # type: ignore[return-value]
    if isinstance(path, (str, bytes)):
        text = path if isinstance(path, str) else os.fsdecode(path)
        if _URL_RE.match(text.strip()):
            raise ValueError(
                f"{text!r} looks like a URL: smcdiff reads local files only and never downloads; "
                "download the pickle yourself and pass its local path"
            )
    elif not isinstance(path, os.PathLike):
        raise TypeError(
            f"expected a path or an open binary file, got {type(path).__name__}"
        )
    return open(os.fspath(path), "rb"), True


def read_edm_pickle(path: PathOrFile, trust_code: bool = False) -> dict:
    """Unpickle an EDM network pickle into its top-level dict (``ema``, ``loss_fn``, ...).

    In safe mode (default) every EDM object is a :class:`PersistentStub` and no code from the file
    runs; with ``trust_code=True`` **the source embedded in the file is executed** and the original
    objects are rebuilt. See :func:`load_edm`.
    """
    f, close = _open_binary(path)
    try:
        unpickler = (_TrustingUnpickler if trust_code else _SafeUnpickler)(f)
        data = unpickler.load()
    finally:
        if close:
            f.close()
    if not isinstance(data, dict) or "ema" not in data:
        raise ValueError(
            "not an EDM network pickle: expected a dict with an 'ema' entry, got "
            + (f"keys {sorted(map(str, data))}" if isinstance(data, dict) else type(data).__name__)
        )
    return data


def _precond_classes() -> dict[str, Callable[..., torch.nn.Module]]:
    try:
        module = importlib.import_module(_PRECOND_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != _PRECOND_MODULE:
            raise
        return PRECOND_CLASSES
    for name in _PRECOND_NAMES:
        cls = getattr(module, name, None)
        if cls is not None:
            PRECOND_CLASSES.setdefault(name, cls)
    return PRECOND_CLASSES


def _limited(keys: list[str], n: int = 20) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _build_from_stub(stub: Any) -> torch.nn.Module:
    if not isinstance(stub, PersistentStub):
        raise ValueError(f"'ema' is not an EDM persistent object (got {type(stub).__name__})")
    classes = _precond_classes()
    cls = classes.get(stub.class_name)
    if cls is None:
        raise ValueError(
            f"safe mode has no smcdiff class for EDM class {stub.class_name!r}; known classes: "
            f"{sorted(classes) or 'none (smcdiff.models.precond is not available)'}. Register one "
            "in PRECOND_CLASSES, or use trust_code=True to run the file's own code."
        )
    if "_init_kwargs" not in stub.state:
        raise ValueError(f"the pickled {stub.class_name} has no _init_kwargs; cannot rebuild it")
    net = cls(*stub.init_args, **stub.init_kwargs)
    loaded = stub.state_dict()
    expected = net.state_dict()
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"state_dict of the pickled {stub.class_name} does not match smcdiff's "
            f"{getattr(cls, '__name__', cls)} built from its _init_kwargs: "
            f"missing keys [{_limited(missing)}]; unexpected keys [{_limited(unexpected)}]"
        )
    wrong = [
        f"{k}: {tuple(loaded[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if loaded[k].shape != v.shape
    ]
    if wrong:
        raise ValueError(
            f"tensor shapes of the pickled {stub.class_name} differ (file vs smcdiff): "
            + _limited(wrong)
        )
    net.load_state_dict(loaded, strict=True)
    return net


def load_edm(
    path: PathOrFile, trust_code: bool = False, *, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Load the ``ema`` network of an EDM network pickle, in eval mode with ``requires_grad`` off.

    Args:
        path: a local path (str / PathLike) or an open binary file. URLs are refused: nothing is
            ever downloaded.
        trust_code: ``False`` (default): safe mode, no code from the file runs; the network is
            smcdiff's own class registered in :data:`PRECOND_CLASSES` under the pickled class name,
            built with the pickled ``_init_kwargs`` and loaded with a strict state_dict.
            ``True``: **executes the Python source embedded in the pickle** (the original EDM
            classes) and returns the original objects; only for files you trust like a script.
        device: where to put the network.

    Raises:
        UnsafePickleError: (safe mode) the file refers to a global outside :data:`SAFE_GLOBALS`;
            raised before that global is used, so nothing from the file runs.
        ValueError: a URL; not an EDM pickle; persistent-object version != 6 or type != 'class';
            (safe mode) unknown class name, or a state_dict that does not match the rebuilt class.
    """
    data = read_edm_pickle(path, trust_code=trust_code)
    if trust_code:
        net = data["ema"]
        if not isinstance(net, torch.nn.Module):
            raise ValueError(f"'ema' is not a torch.nn.Module (got {type(net).__name__})")
    else:
        net = _build_from_stub(data["ema"])
    net.eval()
    net.requires_grad_(False)
    return net.to(device)
