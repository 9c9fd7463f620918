"""Synthesise EDM-format network pickles with the project's own tiny classes (REFERENCE.md §7.4).

No EDM code is used. The format written here is the one documented in REFERENCE.md §1e: every
"persistent" object pickles as ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
``meta = {'type': 'class', 'version': 6, 'module_src': <source>, 'class_name': <name>,
'state': <__dict__>}``, and the file is ``pickle.dumps({'ema', 'loss_fn', 'augment_pipe',
'dataset_kwargs'})``.

How the pickles are produced
----------------------------
* **Writer-side fake ``torch_utils``.** :func:`writer_modules` installs, for the duration of a
  ``with`` block only, fake ``torch_utils``/``torch_utils.persistence``/``torch_utils.misc`` modules
  in ``sys.modules`` and restores ``sys.modules`` afterwards. Its ``persistent_class`` decorator
  subclasses the decorated class to record ``_init_args``/``_init_kwargs`` and to reduce instances
  to ``(_reconstruct_persistent_obj, (meta,))``. The tiny sources below are exec'd under it (so
  their classes carry the embedded source text), and ``pickle.dumps`` runs under it too, because the
  pickler must find ``_reconstruct_persistent_obj`` as ``torch_utils.persistence`` in
  ``sys.modules``.
* **Spelling of globals.** The running numpy (2.x) writes ``numpy._core.multiarray.scalar``;
  old EDM pickles say ``numpy.core.multiarray.scalar``. :func:`rename_modules` rewrites module
  names at the *opcode* level (``pickletools.genops``): each string / ``GLOBAL`` opcode that names
  a module in the mapping is re-encoded with the new name and every ``FRAME`` opcode is dropped
  (framing is optional in protocol >= 4, so frame lengths cannot go stale). This works on any
  pickle produced by the C pickler, whatever its protocol, unlike a raw byte replacement, which
  would break the length prefixes of the strings and frames. The same routine spells
  ``os.system`` for the forbidden-global tests (the pickler itself writes ``posix.system``).
* **Real smcdiff modules.** :func:`edm_pickle_from_modules` uses a ``pickle.Pickler`` with
  ``reducer_override`` to write any ``torch.nn.Module`` (other than ``ModuleDict``) in the
  persistent format, so smcdiff's own ``EDMPrecond`` can be round-tripped through the safe loader.
"""

from __future__ import annotations

import contextlib
import copy
import io
import pickle
import pickletools
import sys
import types

import numpy as np
import torch

# --------------------------------------------------------------------------------------------------
# Tiny "EDM-like" sources. They import torch_utils like the real training/*.py files do.

TINY_NETWORKS_SRC = '''\
"""Tiny preconditioned network in the style of EDM's training/networks.py (test fixture)."""
import numpy as np
import torch
from torch_utils import persistence
from torch.nn.functional import silu


@persistence.persistent_class
class TinyLinear(torch.nn.Module):
    def __init__(self, in_features, out_features, bias=True, init_weight=1):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.init_weight = init_weight
        self.weight = torch.nn.Parameter(torch.zeros(out_features, in_features))
        if bias:
            self.bias = torch.nn.Parameter(torch.zeros(out_features))
        else:
            self.register_parameter("bias", None)          # a None parameter

    def forward(self, x):
        x = x @ (self.weight * float(self.init_weight)).to(x.dtype).t()
        if self.bias is not None:
            x = x + self.bias.to(x.dtype)
        return x


@persistence.persistent_class
class TinyNet(torch.nn.Module):
    def __init__(self, in_channels, out_channels, label_dim=0, hidden=8, emb_dim=4):
        super().__init__()
        self.label_dim = label_dim
        self.skip_scale = np.sqrt(0.5)                       # numpy float64 attribute
        self.register_buffer("freqs", torch.zeros(emb_dim // 2))
        self.register_buffer("gain", torch.ones(hidden), persistent=False)
        self.map_noise = TinyLinear(emb_dim, hidden, init_weight=np.sqrt(0.2))
        map_label = TinyLinear(label_dim, hidden, bias=False) if label_dim else None
        self.add_module("map_label", map_label)               # None child when unconditional
        self.enc = torch.nn.ModuleDict()                      # a plain torch container
        self.enc["in"] = TinyLinear(in_channels, hidden)
        self.enc["block0"] = TinyLinear(hidden, hidden)
        self.out = TinyLinear(hidden, out_channels)

    def forward(self, x, noise_labels, class_labels=None):
        f = noise_labels[:, None] * self.freqs[None, :]
        emb = self.map_noise(torch.cat([f.sin(), f.cos()], dim=1))
        if self.map_label is not None and class_labels is not None:
            emb = emb + self.map_label(class_labels)
        h = self.enc["in"](x.permute(0, 2, 3, 1)) + emb[:, None, None, :]
        h = (h + self.enc["block0"](silu(h)) * self.gain) * self.skip_scale
        return self.out(silu(h)).permute(0, 3, 1, 2)


@persistence.persistent_class
class TinyPrecond(torch.nn.Module):
    def __init__(self, img_resolution, img_channels, label_dim=0, sigma_min=0,
                 sigma_max=float("inf"), sigma_data=0.5, model_type="TinyNet", **model_kwargs):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data
        self.model = globals()[model_type](in_channels=img_channels, out_channels=img_channels,
                                           label_dim=label_dim, **model_kwargs)

    def forward(self, x, sigma, class_labels=None):
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        class_labels = None if self.label_dim == 0 else (
            torch.zeros([1, self.label_dim]) if class_labels is None
            else class_labels.to(torch.float32).reshape(-1, self.label_dim))
        c_skip = self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2).sqrt()
        c_in = 1 / (self.sigma_data ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        F_x = self.model(c_in * x, c_noise.flatten(), class_labels)
        return c_skip * x + c_out * F_x

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)
'''

TINY_LOSS_SRC = '''\
"""Tiny loss in the style of EDM's training/loss.py (test fixture)."""
from torch_utils import persistence


@persistence.persistent_class
class TinyLoss:
    def __init__(self, P_mean=-1.2, P_std=1.2, sigma_data=0.5):
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data

    def __call__(self, net, images, labels=None, augment_pipe=None):
        raise NotImplementedError
'''

TINY_AUGMENT_SRC = '''\
"""Tiny augmentation pipe in the style of EDM's training/augment.py (test fixture)."""
import numpy as np
from torch_utils import persistence
from torch_utils import misc


@persistence.persistent_class
class TinyAugmentPipe:
    def __init__(self, p=1, xflip=0, scale_std=0.2):
        self.p = float(p)
        self.xflip = float(xflip)
        self.scale_std = np.float64(scale_std)
'''

_PERSISTENCE_VERSION = 6

# --------------------------------------------------------------------------------------------------
# Writer-side fake torch_utils.


def _reconstruct_persistent_obj(meta):  # pragma: no cover - only ever pickled by reference
    raise RuntimeError("fixture placeholder: never called at write time")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
_reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"

#: ``module.__name__ -> source`` of every tiny module exec'd by :func:`persistent_module`.
_MODULE_SOURCES: dict[str, str] = {}
#: Entries merged into every meta dict while pickling (to write invalid version/type variants).
_META_OVERRIDES: dict = {}
_module_counter = 0


def _persistent_class(orig):
    """Writer-side decorator: record constructor arguments; reduce to the persistent format."""
    src = _MODULE_SOURCES[orig.__module__]

    class Decorator(orig):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._init_args = copy.deepcopy(args)
            self._init_kwargs = copy.deepcopy(kwargs)

        def __reduce__(self):
            meta = dict(type="class", version=_PERSISTENCE_VERSION, module_src=src,
                        class_name=orig.__name__, state=dict(self.__dict__))
            meta.update(_META_OVERRIDES)
            return (_reconstruct_persistent_obj, (meta,))

    Decorator.__name__ = orig.__name__
    Decorator.__qualname__ = orig.__qualname__
    Decorator.__module__ = orig.__module__
    return Decorator


def _identity(cls):
    return cls


@contextlib.contextmanager
def fake_torch_utils(persistent_class):
    """Install fake ``torch_utils`` modules in ``sys.modules`` for the block; restore afterwards."""
    persistence = types.ModuleType("torch_utils.persistence")
    persistence.persistent_class = persistent_class
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    misc = types.ModuleType("torch_utils.misc")
    pkg = types.ModuleType("torch_utils")
    pkg.__path__ = []
    pkg.persistence, pkg.misc = persistence, misc
    fakes = {"torch_utils": pkg, "torch_utils.persistence": persistence, "torch_utils.misc": misc}
    saved = {name: sys.modules.get(name) for name in fakes}
    sys.modules.update(fakes)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def writer_modules():
    """Fake ``torch_utils`` whose ``persistent_class`` writes the EDM persistent format."""
    return fake_torch_utils(_persistent_class)


def _exec_module(src: str, persistent_class) -> types.ModuleType:
    global _module_counter
    _module_counter += 1
    module = types.ModuleType(f"_persistence_fixture_module_{_module_counter}")
    _MODULE_SOURCES[module.__name__] = src
    with fake_torch_utils(persistent_class):
        exec(compile(src, f"<{module.__name__}>", "exec"), module.__dict__)
    return module


_PERSISTENT_CACHE: dict[str, types.ModuleType] = {}
_PLAIN_CACHE: dict[str, types.ModuleType] = {}


def persistent_module(src: str = TINY_NETWORKS_SRC) -> types.ModuleType:
    """``src`` exec'd with the writing decorator: its instances pickle in the EDM format."""
    if src not in _PERSISTENT_CACHE:
        _PERSISTENT_CACHE[src] = _exec_module(src, _persistent_class)
    return _PERSISTENT_CACHE[src]


def plain_module(src: str = TINY_NETWORKS_SRC) -> types.ModuleType:
    """``src`` exec'd with an identity decorator: the "project's own" classes for safe mode."""
    if src not in _PLAIN_CACHE:
        _PLAIN_CACHE[src] = _exec_module(src, _identity)
    return _PLAIN_CACHE[src]


# --------------------------------------------------------------------------------------------------
# Objects and pickles.

TINY_KWARGS = dict(img_resolution=4, img_channels=3, label_dim=0, hidden=8, emb_dim=4)


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Overwrite every parameter and persistent buffer with N(0, 1) values (local generator)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in module.state_dict().values():
            t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype))
    return module


def make_tiny_precond(seed: int = 0, **overrides) -> torch.nn.Module:
    """A persistent ``TinyPrecond`` (pickles in EDM format) with random weights, eval, no grad."""
    net = persistent_module().TinyPrecond(**{**TINY_KWARGS, **overrides})
    randomize_(net, seed)
    return net.eval().requires_grad_(False)


def make_loss_fn():
    return persistent_module(TINY_LOSS_SRC).TinyLoss(P_mean=-1.2, P_std=1.2)


def make_augment_pipe():
    return persistent_module(TINY_AUGMENT_SRC).TinyAugmentPipe(p=0.12, xflip=1e8)


def edm_pickle_bytes(ema=None, *, loss_fn="default", augment_pipe="default", dataset_kwargs=None,
                     protocol: int = 4, meta_overrides: dict | None = None, extra=None) -> bytes:
    """``pickle.dumps`` of an EDM-style top-level dict (written under :func:`writer_modules`).

    ``meta_overrides`` is merged into every persistent object's meta (e.g. ``{'version': 5}``);
    ``extra`` is added to the dict as ``'extra'`` (e.g. an object referencing a forbidden global).
    """
    data = {
        "ema": make_tiny_precond() if ema is None else ema,
        "loss_fn": make_loss_fn() if loss_fn == "default" else loss_fn,
        "augment_pipe": make_augment_pipe() if augment_pipe == "default" else augment_pipe,
        "dataset_kwargs": dict(class_name="training.dataset.ImageFolderDataset", path="x.zip",
                               use_labels=False, xflip=False, resolution=4)
        if dataset_kwargs is None else dataset_kwargs,
    }
    if extra is not None:
        data["extra"] = extra
    _META_OVERRIDES.clear()
    _META_OVERRIDES.update(meta_overrides or {})
    try:
        with writer_modules():
            return pickle.dumps(data, protocol=protocol)
    finally:
        _META_OVERRIDES.clear()


# --------------------------------------------------------------------------------------------------
# Opcode-level rewriting and inspection.

_STRING_OPCODES = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"}


def _encode_str(s: str) -> bytes:
    raw = s.encode("utf-8")
    if len(raw) < 256:
        return pickle.SHORT_BINUNICODE + bytes([len(raw)]) + raw
    return pickle.BINUNICODE + len(raw).to_bytes(4, "little") + raw


def rename_modules(data: bytes, mapping: dict[str, str]) -> bytes:
    """Re-spell module names of globals in a pickle stream (see the module docstring).

    Raises ``ValueError`` if none of the names in ``mapping`` occurs, so a test cannot silently
    exercise the wrong spelling.
    """
    ops = list(pickletools.genops(data))
    out = io.BytesIO()
    renamed = 0
    for i, (op, arg, pos) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else len(data)
        raw = data[pos:end]
        if op.name == "FRAME":
            continue
        if op.name in _STRING_OPCODES and arg in mapping:
            raw, renamed = _encode_str(mapping[arg]), renamed + 1
        elif op.name in ("GLOBAL", "INST"):
            module, name = arg.split(" ", 1)
            if module in mapping:
                raw = op.code.encode("latin-1") + f"{mapping[module]}\n{name}\n".encode("utf-8")
                renamed += 1
        out.write(raw)
    if not renamed:
        raise ValueError(f"none of {sorted(mapping)} occurs in the pickle")
    return out.getvalue()


def stream_globals(data: bytes) -> set[tuple[str, str]]:
    """``(module, name)`` of every global the stream loads (GLOBAL/INST and STACK_GLOBAL with
    literal or memoised string operands)."""
    found, memo, strings, prev = set(), {}, [], None
    for op, arg, _ in pickletools.genops(data):
        top = strings[-1] if prev in _STRING_OPCODES | {"BINGET", "LONG_BINGET", "GET"} else None
        if op.name in _STRING_OPCODES:
            strings.append(arg)
        elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[arg] = top
        elif op.name == "MEMOIZE":
            memo[len(memo)] = top
        elif op.name in ("BINGET", "LONG_BINGET", "GET"):
            strings.append(memo.get(arg))
        elif op.name == "STACK_GLOBAL":
            found.add((strings[-2], strings[-1]))
        elif op.name in ("GLOBAL", "INST"):
            found.add(tuple(arg.split(" ", 1)))
        prev = op.name
    return found


class CallsGlobal:
    """Pickles as ``fn(*args)``: plants an arbitrary global call in a stream."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


# --------------------------------------------------------------------------------------------------
# Real smcdiff modules in EDM format.

NOT_EXECUTABLE_SRC = (
    "raise RuntimeError('written by tests/models/persistence_fixtures.py: safe mode only')\n"
)
_PLAIN_TYPES = (bool, int, float, str, bytes, type(None), np.generic)


def _is_plain(value) -> bool:
    if isinstance(value, _PLAIN_TYPES):
        return True
    if isinstance(value, (list, tuple, set)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_is_plain(k) and _is_plain(v) for k, v in value.items())
    return False


_TENSOR_STATE_KEYS = ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set")


class _EDMFormatPickler(pickle.Pickler):
    def __init__(self, file, protocol, root, init_kwargs):
        super().__init__(file, protocol=protocol)
        self.root, self.init_kwargs = root, init_kwargs

    def reducer_override(self, obj):
        if isinstance(obj, torch.nn.Module) and type(obj) is not torch.nn.ModuleDict:
            state = {k: v for k, v in obj.__dict__.items()
                     if k in _TENSOR_STATE_KEYS or _is_plain(v)}
            if obj is self.root:
                state["_init_args"], state["_init_kwargs"] = (), dict(self.init_kwargs)
            meta = dict(type="class", version=_PERSISTENCE_VERSION, module_src=NOT_EXECUTABLE_SRC,
                        class_name=type(obj).__name__, state=state)
            return (_reconstruct_persistent_obj, (meta,))
        return NotImplemented


def edm_pickle_from_modules(net: torch.nn.Module, init_kwargs: dict | None = None, *,
                            protocol: int = 4) -> bytes:
    """EDM-format pickle of any module tree (e.g. smcdiff's own ``EDMPrecond``).

    Every ``torch.nn.Module`` except ``ModuleDict`` becomes a persistent object whose state keeps
    the tensor bookkeeping plus plain-data attributes (other attributes are dropped: real EDM
    objects carry only allow-listed globals); the root gets ``_init_kwargs = init_kwargs``
    (default: the module's own ``_init_kwargs``). Loadable in safe mode only (the embedded source
    just raises).
    """
    if init_kwargs is None:
        init_kwargs = net._init_kwargs
    buf = io.BytesIO()
    data = {"ema": net, "loss_fn": None, "augment_pipe": None, "dataset_kwargs": {}}
    with writer_modules():
        _EDMFormatPickler(buf, protocol, net, init_kwargs).dump(data)
    return buf.getvalue()
