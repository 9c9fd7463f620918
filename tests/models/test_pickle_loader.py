"""EDM network-pickle loader on synthesised EDM-format pickles (REFERENCE.md §1e, §7.4).

The pickles come from ``persistence_fixtures``: tiny classes written in the EDM persistent format by
a writer-side fake ``torch_utils`` (no EDM code). Safe mode rebuilds them with the same tiny
source exec'd as ordinary classes (registered in ``PRECOND_CLASSES``); trusted mode execs the
embedded source.
"""

import importlib.util
import io
import os
import pickle
import sys

import numpy as np
import pytest
import torch

from smcdiff.models import pickle_loader as pl
from smcdiff.models import pickle_trusted as pt
from tests.models import persistence_fixtures as pf

NUMPY_SPELLINGS = ["numpy._core.multiarray", "numpy.core.multiarray"]


@pytest.fixture(autouse=True)
def isolated_loader(monkeypatch):
    """Fresh exec cache, exec counter and the tiny stand-in class registered for safe mode."""
    monkeypatch.setattr(pt, "_SOURCE_MODULES", {})
    execs = []
    real_exec = pt._exec_source

    def counting_exec(src):
        execs.append(src)
        return real_exec(src)

    monkeypatch.setattr(pt, "_exec_source", counting_exec)
    monkeypatch.setitem(pl.PRECOND_CLASSES, "TinyPrecond", pf.plain_module().TinyPrecond)
    return execs


def write(tmp_path, data: bytes, name="net.pkl"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def inputs(seed=1, batch=3, label_dim=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, pf.TINY_KWARGS["img_channels"], 4, 4, generator=g)
    sigma = torch.tensor([0.02, 1.0, 80.0][:batch])
    labels = None if not label_dim else torch.eye(label_dim)[torch.arange(batch) % label_dim]
    return x, sigma, labels


def assert_same_state(a: dict, b: dict):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------------------------
# Both modes agree with each other and with the pickled network.


@pytest.mark.parametrize("label_dim", [0, 2])
def test_safe_and_trusted_modes_agree(tmp_path, label_dim):
    original = pf.make_tiny_precond(seed=3, label_dim=label_dim)
    path = write(tmp_path, pf.edm_pickle_bytes(original))
    safe = pl.load_edm(path)
    trusted = pl.load_edm(str(path), trust_code=True)

    assert type(safe) is pf.plain_module().TinyPrecond
    assert type(trusted).__name__ == "TinyPrecond" and type(trusted).__module__.startswith(
        "_smcdiff_edm_module_")
    assert_same_state(safe.state_dict(), trusted.state_dict())
    assert_same_state(safe.state_dict(), original.state_dict())
    x, sigma, labels = inputs(label_dim=label_dim)
    out = original(x, sigma, labels)
    assert torch.equal(safe(x, sigma, labels), out)
    assert torch.equal(trusted(x, sigma, labels), out)
    # Plain attributes survive in trusted mode, numpy float64 included; safe mode rebuilt them.
    assert type(trusted.model.skip_scale) is np.float64 and trusted.model.skip_scale == np.sqrt(0.5)
    assert trusted._init_kwargs == original._init_kwargs
    assert safe.model.skip_scale == np.sqrt(0.5) and safe.sigma_max == float("inf")


@pytest.mark.parametrize("trust_code", [False, True])
def test_result_is_eval_without_grad(tmp_path, trust_code):
    net = pf.make_tiny_precond().train().requires_grad_(True)  # stored in training mode on purpose
    path = write(tmp_path, pf.edm_pickle_bytes(net))
    loaded = pl.load_edm(path, trust_code, device=torch.device("cpu"))
    assert not any(m.training for m in loaded.modules())
    assert all(not p.requires_grad for p in loaded.parameters())
    assert all(p.device.type == "cpu" for p in loaded.parameters())


def test_stub_state_dict_matches_module_state_dict():
    """None parameters/children and non-persistent buffers are skipped; ModuleDict keys dotted."""
    original = pf.make_tiny_precond(label_dim=0)
    data = pl.read_edm_pickle(io.BytesIO(pf.edm_pickle_bytes(original)))
    stub = data["ema"]
    assert isinstance(stub, pl.PersistentStub) and stub.class_name == "TinyPrecond"
    sd = stub.state_dict()
    assert_same_state(sd, original.state_dict())
    assert "model.enc.in.weight" in sd and "model.gain" not in sd  # gain is non-persistent
    assert not any(k.startswith("model.map_label") for k in sd)    # None child
    assert "model.out.bias" in sd and not any(p.requires_grad for p in sd.values())
    assert stub.init_kwargs == original._init_kwargs and stub.init_args == ()


@pytest.mark.parametrize("trust_code", [False, True])
def test_loss_fn_augment_pipe_and_dataset_kwargs(trust_code):
    data = pl.read_edm_pickle(io.BytesIO(pf.edm_pickle_bytes()), trust_code=trust_code)
    assert data["dataset_kwargs"]["class_name"] == "training.dataset.ImageFolderDataset"
    loss, aug = data["loss_fn"], data["augment_pipe"]
    if trust_code:
        assert type(loss).__name__ == "TinyLoss" and loss.P_mean == -1.2
        assert type(aug).__name__ == "TinyAugmentPipe" and type(aug.scale_std) is np.float64
    else:
        assert (loss.class_name, aug.class_name) == ("TinyLoss", "TinyAugmentPipe")
        assert loss.state["P_std"] == 1.2 and repr(aug) == "PersistentStub('TinyAugmentPipe')"
        with pytest.raises(TypeError, match="inert stub"):
            loss(None, None)


def test_augment_pipe_none(tmp_path):
    path = write(tmp_path, pf.edm_pickle_bytes(augment_pipe=None))
    for trust_code in (False, True):
        assert pl.read_edm_pickle(path, trust_code)["augment_pipe"] is None
        pl.load_edm(path, trust_code)


# ---------------------------------------------------------------------------------------------
# Stream variants.


@pytest.mark.parametrize("spelling", NUMPY_SPELLINGS)
@pytest.mark.parametrize("trust_code", [False, True])
def test_both_numpy_module_spellings_load(tmp_path, spelling, trust_code):
    original = pf.make_tiny_precond(seed=5)
    data = pf.edm_pickle_bytes(original)
    if spelling != "numpy._core.multiarray":
        data = pf.rename_modules(data, {"numpy._core.multiarray": spelling})
    numpy_globals = {g for g in pf.stream_globals(data) if g[1] == "scalar"}
    assert numpy_globals == {(spelling, "scalar")}
    net = pl.load_edm(write(tmp_path, data), trust_code)
    x, sigma, _ = inputs()
    assert torch.equal(net(x, sigma), original(x, sigma))
    if trust_code:
        assert type(net.model.skip_scale) is np.float64


def test_stream_globals_are_exactly_the_documented_table():
    """The synthesised files use the globals recorded from real EDM pickles (REFERENCE §1e)."""
    assert pf.stream_globals(pf.edm_pickle_bytes()) == {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"),
        ("torch.nn.modules.container", "ModuleDict"),
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch.storage", "_load_from_bytes"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "dtype"),
    }


@pytest.mark.parametrize("trust_code", [False, True])
def test_protocol_2_stream_loads(tmp_path, trust_code):
    """Protocol 2 spells sets and bytes as globals (``__builtin__.set``, ``_codecs.encode``)."""
    original = pf.make_tiny_precond(seed=7)
    data = pf.edm_pickle_bytes(original, protocol=2)
    assert {("__builtin__", "set"), ("_codecs", "encode")} <= pf.stream_globals(data)
    net = pl.load_edm(write(tmp_path, data), trust_code)
    assert_same_state(net.state_dict(), original.state_dict())


def test_open_binary_file_objects(tmp_path):
    data = pf.edm_pickle_bytes()
    path = write(tmp_path, data)
    with open(path, "rb") as f:
        a = pl.load_edm(f)
        assert not f.closed  # the caller's file is left open
    b = pl.load_edm(io.BytesIO(data), trust_code=True)
    assert_same_state(a.state_dict(), b.state_dict())
    with open(path, encoding="latin-1") as f, pytest.raises(ValueError, match="binary mode"):
        pl.load_edm(f)


@pytest.mark.parametrize("url", ["https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/x.pkl",
                                 "http://example.com/net.pkl", " HTTPS://example.com/a.pkl",
                                 b"http://example.com/net.pkl"])
def test_url_refused(url, monkeypatch):
    def no_open(*args, **kwargs):
        raise AssertionError("a URL must not be opened")

    monkeypatch.setattr("builtins.open", no_open)
    with pytest.raises(ValueError, match="never downloads"):
        pl.load_edm(url)
    with pytest.raises(ValueError, match="URL"):
        pl.load_edm(url, trust_code=True)


def test_not_an_edm_pickle(tmp_path):
    with pytest.raises(ValueError, match="'ema'"):
        pl.load_edm(io.BytesIO(pickle.dumps({"net": 1})))
    with pytest.raises(ValueError, match="list"):
        pl.load_edm(io.BytesIO(pickle.dumps([1, 2])))
    with pytest.raises(ValueError, match="not an EDM persistent object"):
        pl.load_edm(io.BytesIO(pickle.dumps({"ema": {"a": 1}})))
    with pytest.raises(TypeError, match="path or an open binary file"):
        pl.load_edm(12)


# ---------------------------------------------------------------------------------------------
# Refusals.


@pytest.mark.parametrize("where", ["dataset_kwargs", "inside_ema"])
def test_forbidden_global_refused_before_anything_runs(tmp_path, where, isolated_loader):
    marker = tmp_path / "side_effect"
    cmd = f'"{sys.executable}" -c "open(r\'{marker}\', \'w\').close()"'
    evil = pf.CallsGlobal(os.system, cmd)
    if where == "inside_ema":
        net = pf.make_tiny_precond()
        net.model.evil = evil
        data = pf.edm_pickle_bytes(net)
    else:
        data = pf.edm_pickle_bytes(dataset_kwargs={"hook": evil})
    data = pf.rename_modules(data, {os.system.__module__: "os"})  # spell it "os.system"
    assert ("os", "system") in pf.stream_globals(data)
    path = write(tmp_path, data)
    with pytest.raises(pl.UnsafePickleError, match=r"'os\.system'") as info:
        pl.load_edm(path)
    assert isinstance(info.value, pickle.UnpicklingError) and isinstance(info.value, ValueError)
    assert not marker.exists()
    assert isolated_loader == []  # and no embedded source was executed either


def test_unlisted_torch_class_refused(tmp_path):
    net = pf.make_tiny_precond()
    net.model.extra = torch.nn.Linear(2, 2)  # a real torch module: not in the EDM globals table
    data = pf.edm_pickle_bytes(net)
    with pytest.raises(pickle.UnpicklingError, match=r"torch\.nn\.modules\.linear\.Linear"):
        pl.load_edm(write(tmp_path, data))
    # Trusted mode resolves ordinary globals normally.
    assert isinstance(pl.load_edm(io.BytesIO(data), trust_code=True).model.extra, torch.nn.Linear)


def test_persistent_ids_refused():
    class WithPid(pickle.Pickler):
        def persistent_id(self, obj):
            return "pid" if obj == "x" else None

    buf = io.BytesIO()
    WithPid(buf).dump({"ema": "x"})
    with pytest.raises(pickle.UnpicklingError, match="persistent ids"):
        pl.load_edm(io.BytesIO(buf.getvalue()))


@pytest.mark.parametrize("override, message", [({"version": 5}, "version 5"),
                                               ({"type": "function"}, "type 'function'")])
@pytest.mark.parametrize("trust_code", [False, True])
def test_wrong_version_or_type_refused(override, message, trust_code, isolated_loader):
    data = pf.edm_pickle_bytes(meta_overrides=override)
    with pytest.raises(ValueError, match=message):
        pl.load_edm(io.BytesIO(data), trust_code)
    assert isolated_loader == []  # rejected before any source was executed


def test_unknown_class_name_lists_known_ones(monkeypatch):
    monkeypatch.delitem(pl.PRECOND_CLASSES, "TinyPrecond")
    monkeypatch.setitem(pl.PRECOND_CLASSES, "OtherPrecond", pf.plain_module().TinyPrecond)
    with pytest.raises(ValueError, match=r"'TinyPrecond'.*known classes: \[.*'OtherPrecond'"):
        pl.load_edm(io.BytesIO(pf.edm_pickle_bytes()))


def test_strict_load_reports_missing_and_unexpected_keys(monkeypatch):
    tiny = pf.plain_module().TinyPrecond
    data = pf.edm_pickle_bytes(pf.make_tiny_precond(label_dim=0))
    # Our class grows a map_label the file does not have -> missing key.
    monkeypatch.setitem(pl.PRECOND_CLASSES, "TinyPrecond",
                        lambda **kw: tiny(**{**kw, "label_dim": 2}))
    with pytest.raises(ValueError, match=r"missing keys \[model\.map_label\.weight\]; "
                                         r"unexpected keys \[\]"):
        pl.load_edm(io.BytesIO(data))
    # The file has a map_label our class lacks -> unexpected key.
    data = pf.edm_pickle_bytes(pf.make_tiny_precond(label_dim=3))
    monkeypatch.setitem(pl.PRECOND_CLASSES, "TinyPrecond",
                        lambda **kw: tiny(**{**kw, "label_dim": 0}))
    with pytest.raises(ValueError, match=r"missing keys \[\]; unexpected keys \[model\.map_label"):
        pl.load_edm(io.BytesIO(data))
    # Same keys, other shapes.
    monkeypatch.setitem(pl.PRECOND_CLASSES, "TinyPrecond", lambda **kw: tiny(**{**kw, "hidden": 6}))
    with pytest.raises(ValueError,
                       match=r"shapes .*model\.map_noise\.weight: \(8, 4\) vs \(6, 4\)"):
        pl.load_edm(io.BytesIO(pf.edm_pickle_bytes()))


# ---------------------------------------------------------------------------------------------
# Trusted mode: sys.modules hygiene and the exec cache.


def test_sys_modules_unchanged_after_loading(tmp_path, monkeypatch):
    path = write(tmp_path, pf.edm_pickle_bytes())
    pl.load_edm(path)  # warm-up: lazy imports of the safe path
    # A pre-existing, unrelated "torch_utils" must be put back, not removed.
    sentinel = type(sys)("torch_utils")
    monkeypatch.setitem(sys.modules, "torch_utils", sentinel)
    before = dict(sys.modules)
    for trust_code in (True, False, True):
        pl.load_edm(path, trust_code)
        after = dict(sys.modules)
        assert after.keys() == before.keys()
        assert all(after[k] is before[k] for k in before)
    assert sys.modules["torch_utils"] is sentinel
    assert "torch_utils.persistence" not in sys.modules and "torch_utils.misc" not in sys.modules


def test_exec_cache_reuses_modules(tmp_path, isolated_loader):
    path = write(tmp_path, pf.edm_pickle_bytes())
    a = pl.load_edm(path, trust_code=True)
    # networks, loss and augment sources: each distinct source is executed exactly once ...
    assert sorted(isolated_loader) == sorted([pf.TINY_NETWORKS_SRC, pf.TINY_LOSS_SRC,
                                              pf.TINY_AUGMENT_SRC])
    b = pl.load_edm(path, trust_code=True)
    assert len(isolated_loader) == 3  # ... and loading again reuses the cached modules
    assert type(a) is type(b)
    assert type(a.model.enc["in"]) is type(b.model.out)  # one module per source, shared classes


# ---------------------------------------------------------------------------------------------
# Round trip of smcdiff's own EDMPrecond through the safe path.


@pytest.mark.skipif(importlib.util.find_spec("smcdiff.models.precond") is None,
                    reason="smcdiff.models.precond is not available yet")
@pytest.mark.parametrize("label_dim", [0, 3])
def test_real_edm_precond_round_trip(label_dim, monkeypatch):
    from smcdiff.models.precond import EDMPrecond

    kwargs = dict(img_resolution=8, img_channels=3, label_dim=label_dim, model_type="SongUNet",
                  model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                  dropout=0.0)
    net = pf.randomize_(EDMPrecond(**kwargs), seed=11).eval().requires_grad_(False)
    data = pf.edm_pickle_from_modules(net, kwargs)
    assert {m for m, _ in pf.stream_globals(data)} <= {m for m, _ in pl.SAFE_GLOBALS} | {
        "torch_utils.persistence"}
    monkeypatch.delitem(pl.PRECOND_CLASSES, "EDMPrecond", raising=False)  # lazy registry fills it
    loaded = pl.load_edm(io.BytesIO(data))
    assert type(loaded) is EDMPrecond and pl.PRECOND_CLASSES["EDMPrecond"] is EDMPrecond
    assert_same_state(loaded.state_dict(), net.state_dict())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=g)
    sigma = torch.tensor([0.3, 20.0])
    labels = None if not label_dim else torch.eye(label_dim)[:2]
    assert torch.equal(loaded(x, sigma, labels), net(x, sigma, labels))
