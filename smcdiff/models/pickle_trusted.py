"""Trusted mode of the EDM pickle loader: **executes the Python source embedded in the file**.

Each EDM persistent object carries the full source of its defining module; trusted mode executes
each distinct source once per process (cached in ``_SOURCE_MODULES``) and rebuilds the original
objects, as EDM's own code does. The imports that source makes (``torch_utils``,
``torch_utils.persistence`` with an identity ``persistent_class``, ``torch_utils.misc``) are served
by shim modules placed in :data:`sys.modules` only while the source executes. Only use it on files
you would run as a script. The user guide is :mod:`smcdiff.models.pickle_loader`.

    >>> import io, pickle
    >>> TrustingUnpickler(io.BytesIO(pickle.dumps({"ema": 1}))).load()
    {'ema': 1}
"""

from __future__ import annotations

import pickle
import sys
import threading
import types
import uuid
from typing import Any

from smcdiff.models.pickle_safe import RECONSTRUCT, SAFE_GLOBALS, check_persistent_meta

__all__ = ["TrustingUnpickler", "reconstruct_trusted"]

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


def reconstruct_trusted(meta: Any) -> Any:
    class_name, state = check_persistent_meta(meta)
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


class TrustingUnpickler(pickle.Unpickler):
    """Rebuilds EDM persistent objects by executing their embedded source (see the module doc)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == RECONSTRUCT:
            return reconstruct_trusted
        if (module, name) in SAFE_GLOBALS:  # same shims as safe mode (CPU storages, numpy paths)
            return SAFE_GLOBALS[(module, name)]
        return super().find_class(module, name)
