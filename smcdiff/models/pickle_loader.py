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
A file that is not an EDM network pickle (empty, truncated, garbage, a ``torch.save`` checkpoint,
an ``.npz``, ...) raises :class:`~smcdiff.models.file_formats.FileFormatError` (a ``ValueError``)
naming the file, what it should be and what it looks like; :class:`UnsafePickleError` is one too.
Safe mode lives in :mod:`smcdiff.models.pickle_safe`, trusted mode in
:mod:`smcdiff.models.pickle_trusted`.
Typical use (not run as a doctest)::

    from smcdiff.models.pickle_loader import load_edm

    net = load_edm("edm-cifar10-32x32-uncond-vp.pkl")          # safe: smcdiff's EDMPrecond
    net = load_edm("edm-cifar10-32x32-uncond-vp.pkl", trust_code=True)  # runs the file's code
    denoised = net(x, sigma)                                     # eval mode, requires_grad False
"""

from __future__ import annotations

import importlib
import io
import os
import re
from collections.abc import Callable
from typing import Any, BinaryIO, Union

import torch

from smcdiff.models.file_formats import READ_ERRORS, FileFormatError, file_format_error
from smcdiff.models.pickle_safe import (
    SAFE_GLOBALS,
    PersistentStub,
    SafeUnpickler,
    UnsafePickleError,
)
from smcdiff.models.pickle_trusted import TrustingUnpickler

__all__ = [
    "PRECOND_CLASSES",
    "SAFE_GLOBALS",
    "FileFormatError",
    "PersistentStub",
    "UnsafePickleError",
    "load_edm",
    "read_edm_pickle",
]

PathOrFile = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]", BinaryIO]

#: What :func:`read_edm_pickle` expects, as said in its errors.
EXPECTED = "an EDM network pickle (a pickle of a dict with an 'ema' network, as EDM's training writes)"
_HINTS = {"a torch.save": "smcdiff's own networks are torch.save files: read them with "
                          "smcdiff.models.small_nets.load (or smcdiff.models.pretrained.load_digits_models)"}

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
        unpickler = (TrustingUnpickler if trust_code else SafeUnpickler)(f)
        data = unpickler.load()
    except FileFormatError:
        raise
    except READ_ERRORS as err:  # empty, truncated, garbage or another format
        raise file_format_error(path if close else f, EXPECTED, err, hints=_HINTS) from err
    finally:
        if close:
            f.close()
    if not isinstance(data, dict) or "ema" not in data:
        got = f"a dict with keys {sorted(map(str, data))[:10]}" if isinstance(data, dict) else type(data).__name__
        raise file_format_error(path, EXPECTED, f"it unpickles to {got}")
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
        raise FileFormatError(f"'ema' is not an EDM persistent object (got {type(stub).__name__})")
    classes = _precond_classes()
    cls = classes.get(stub.class_name)
    if cls is None:
        raise FileFormatError(
            f"safe mode has no smcdiff class for EDM class {stub.class_name!r}; known classes: "
            f"{sorted(classes) or 'none (smcdiff.models.precond is not available)'}. Register one "
            "in PRECOND_CLASSES, or use trust_code=True to run the file's own code."
        )
    if "_init_kwargs" not in stub.state:
        raise FileFormatError(f"the pickled {stub.class_name} has no _init_kwargs; cannot rebuild it")
    net = cls(*stub.init_args, **stub.init_kwargs)
    loaded = stub.state_dict()
    expected = net.state_dict()
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    if missing or unexpected:
        raise FileFormatError(
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
        raise FileFormatError(
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
        FileFormatError: (a ``ValueError``) not an EDM network pickle: empty, truncated, garbage, a
            ``torch.save`` checkpoint or another format; persistent-object version != 6 or type !=
            'class'; (safe mode) unknown class name, or a state_dict that does not match the
            rebuilt class. The message names the file and what it looks like.
        ValueError: a URL (nothing is downloaded).
        FileNotFoundError: no such file.
    """
    data = read_edm_pickle(path, trust_code=trust_code)
    if trust_code:
        net = data["ema"]
        if not isinstance(net, torch.nn.Module):
            raise file_format_error(path, EXPECTED, f"its 'ema' is a {type(net).__name__}, not a torch.nn.Module")
    else:
        try:
            net = _build_from_stub(data["ema"])
        except FileFormatError as err:  # say which file
            name = getattr(path, "name", path) if hasattr(path, "read") else os.fsdecode(os.fspath(path))
            raise FileFormatError(f"{name}: {err}") from None
    net.eval()
    net.requires_grad_(False)
    return net.to(device)
