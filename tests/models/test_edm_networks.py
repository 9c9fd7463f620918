"""EDM preconditioned networks (SongUNet DDPM++/NCSN++, DhariwalUNet) against the reference.

Parity data lives in ``shared/fixtures`` beside the repository (see its README): random-weight state
dicts of small networks with the reference outputs, and the state-dict layouts of the published
full-size pickles. Tests that need it skip when the folder is absent. Tolerances follow the
fixtures README §5: ``|D_i - D_i^ref| <= 1e-5 max(1, sigma_i)`` per sample; inner-network output
2e-5 absolute (2e-4 for Fourier-embedding models at sigma < 0.01).
"""

import functools
import json
import math

import pytest
import torch

from smcdiff.models import precond as precond_module
from smcdiff.models.dhariwal_unet import DhariwalUNet
from smcdiff.models.precond import EDMPrecond, VEPrecond, VPPrecond, iDDPMPrecond
from smcdiff.models.song_unet import SongUNet
from smcdiff.types import Denoiser

from tests.paths import FIXTURES  # noqa: E402
PRECOND_CASES = ["edm_ddpmpp_uncond", "edm_ddpmpp_cond", "edm_ncsnpp_uncond", "edm_adm_cond",
                 "vp_ddpmpp_uncond", "ve_ncsnpp_uncond", "iddpm_adm_uncond"]
EDM_PICKLES = ["edm-cifar10-32x32-cond-vp.pkl", "edm-cifar10-32x32-cond-ve.pkl",
               "edm-cifar10-32x32-uncond-vp.pkl", "edm-cifar10-32x32-uncond-ve.pkl",
               "edm-ffhq-64x64-uncond-vp.pkl", "edm-ffhq-64x64-uncond-ve.pkl",
               "edm-afhqv2-64x64-uncond-vp.pkl", "edm-afhqv2-64x64-uncond-ve.pkl",
               "edm-imagenet-64x64-cond-adm.pkl"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def fixture_path(name):
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"parity fixture {path} not found (shared/fixtures must sit beside the repo)")
    return path


@functools.cache
def _load(name):
    return torch.load(fixture_path(f"edm_precond_{name}.pt"), weights_only=True)


def build(name):
    """(fixture dict, network with the fixture's weights, in eval mode)."""
    data = _load(name)
    net = getattr(precond_module, data["class_name"])(**data["init_kwargs"]).eval()
    state = {k: (v.float() if v.dtype == torch.float16 else v) for k, v in data["state_dict"].items()}
    net.load_state_dict(state, strict=True)
    assert list(net.state_dict()) == list(state)  # registration order
    return data, net


def per_sample_error(a, b):
    return (a - b).abs().flatten(1).amax(1)


# ---------------------------------------------------------------------------------------------
# Parity with the reference on random weights


@pytest.mark.parametrize("name", PRECOND_CASES)
def test_precond_reproduces_reference(name):
    data, net = build(name)
    calls = []
    hook = net.model.register_forward_hook(
        lambda m, args, kwargs, out: calls.append((args, kwargs, out)), with_kwargs=True)
    with torch.no_grad():
        out = net(data["x"], data["sigma"], data.get("class_labels"))
    hook.remove()
    sigma = data["sigma"].double()
    assert out.dtype == torch.float32 and out.shape == data["output"].shape
    err = per_sample_error(out.double(), data["output"].double())
    assert (err <= 1e-5 * sigma.clamp(min=1)).all(), err

    # The single inner call F(c_in x, c_noise, class_labels).
    assert len(calls) == 1
    (inner_x, inner_noise), kwargs, inner_out = calls[0]
    torch.testing.assert_close(inner_x, data["inner_x"], atol=2e-5, rtol=0)
    torch.testing.assert_close(inner_noise, data["inner_noise_labels"], atol=2e-5, rtol=1e-6)
    if "inner_class_labels" in data:
        torch.testing.assert_close(kwargs["class_labels"], data["inner_class_labels"])
    else:
        assert kwargs["class_labels"] is None
    fourier = data["init_kwargs"].get("embedding_type") == "fourier"
    tol = torch.where((sigma < 0.01) & fourier, 2e-4, 2e-5)
    assert (per_sample_error(inner_out, data["inner_output"]) <= tol).all()

    # Attributes and round_sigma.
    assert net.sigma_min == data["sigma_min"] and net.sigma_max == data["sigma_max"]
    assert (net.img_resolution, net.img_channels) == (16, 3)
    assert net.label_dim == data["init_kwargs"]["label_dim"] and net.use_fp16 is False
    rounded = net.round_sigma(data["round_sigma_in"])
    assert rounded.dtype == torch.float64
    torch.testing.assert_close(rounded, data["round_sigma_out"], atol=0, rtol=0)


@pytest.mark.parametrize("name", ["edm_ddpmpp_cond", "edm_adm_cond"])
def test_conditional_net_without_labels_uses_zero_row(name):
    data, net = build(name)
    with torch.no_grad():
        none = net(data["x"], data["sigma"], None)
        zeros = net(data["x"], data["sigma"], torch.zeros_like(data["class_labels"]))
    err = per_sample_error(none, data["output_class_labels_none"])
    assert (err <= 1e-5 * data["sigma"].clamp(min=1)).all(), err
    torch.testing.assert_close(none, zeros, atol=1e-6, rtol=0)


def test_iddpm_grid_and_rounding():
    data, net = build("iddpm_adm_uncond")
    u = net.u
    assert u.shape == (1001,) and u.dtype == torch.float32 and u[1000] == 0
    assert (u[:-1] > u[1:]).all()
    assert math.isclose(net.sigma_min, 0.0064223, rel_tol=1e-5)
    assert math.isclose(net.sigma_max, 20291.2, rel_tol=1e-5)
    # Recomputed grid agrees with the reference's to float32 rounding (an ulp, machine-dependent).
    torch.testing.assert_close(iDDPMPrecond._grid(1000, 0.001, 0.008), u, atol=0, rtol=1e-6)
    index = net.round_sigma(data["round_sigma_in"], return_index=True)
    assert index.dtype == torch.int64
    assert torch.equal(index, data["round_sigma_index"])
    assert torch.equal(net.round_sigma(data["round_sigma_in_f32"]), data["round_sigma_out_f32"])
    # Below ~0.0032 sigma snaps to the grid's 0 and the noise label becomes -1.
    assert net.round_sigma(torch.tensor([0.002, 0.003])).tolist() == [0.0, 0.0]
    assert data["inner_noise_labels"][0] == -1


def test_vp_and_ve_ranges():
    vp = VPPrecond(16, 3, model_type="SongUNet", model_channels=16, channel_mult=[1],
                   num_blocks=1, attn_resolutions=[])
    assert vp.sigma_min == 2.0 ** -10  # sigma(1e-5) evaluated in float32
    assert math.isclose(vp.sigma_max, 152.16698, rel_tol=1e-6)
    t = torch.tensor([1e-3, 0.1, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(vp.sigma_inv(vp.sigma(t)), t)
    ve = VEPrecond(16, 3, model_channels=16, channel_mult=[1], num_blocks=1, attn_resolutions=[])
    assert (ve.sigma_min, ve.sigma_max) == (0.02, 100.0)
    edm = EDMPrecond(16, 3, model_type="SongUNet", model_channels=16, channel_mult=[1],
                     num_blocks=1, attn_resolutions=[])
    assert (edm.sigma_min, edm.sigma_max, edm.sigma_data) == (0.0, math.inf, 0.5)
    torch.testing.assert_close(edm.round_sigma(torch.tensor([0.3, 7.0])), torch.tensor([0.3, 7.0]))


# ---------------------------------------------------------------------------------------------
# Published checkpoint layouts (built on the meta device: no memory, no time)


@functools.cache
def _layouts():
    with open(fixture_path("checkpoint_layouts.json")) as f:
        return json.load(f)["checkpoints"]


@pytest.mark.parametrize("pickle_name", EDM_PICKLES)
def test_published_checkpoint_layout(pickle_name):
    entry = _layouts()[pickle_name]
    with torch.device("meta"):
        net = getattr(precond_module, entry["class_name"])(**entry["init_kwargs"])
    state = net.state_dict()
    assert [[k, list(v.shape)] for k, v in state.items()] == entry["state_dict"]
    assert len(state) == entry["num_tensors"]
    assert sum(p.numel() for p in net.parameters()) == entry["num_params"]
    assert sum(b.numel() for b in net.buffers()) == entry["num_buffer_elements"]
    for key, value in entry["attributes"].items():
        assert getattr(net, key) == (math.inf if value == "inf" else value), key


# ---------------------------------------------------------------------------------------------
# The smcdiff denoiser contract


@pytest.mark.parametrize("name", ["edm_ddpmpp_cond", "vp_ddpmpp_uncond", "iddpm_adm_uncond"])
def test_float64_denoiser_path_matches_float32(name):
    data, net = build(name)
    assert isinstance(net, Denoiser)
    cond = {"class_labels": data["class_labels"]} if "class_labels" in data else {}
    with torch.no_grad():
        ref = net(data["x"], data["sigma"], **cond)
        out = net(data["x"].double(), data["sigma"].double(), **cond)
    assert out.shape == ref.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=0, rtol=0)  # inputs are float32-exact
    with torch.no_grad():  # a generic float64 input: float32 rounding of the input only
        x64 = data["x"].double() + 1e-9 * torch.randn(data["x"].shape, dtype=torch.float64)
        out = net(x64, data["sigma"].double(), **cond)
    err = per_sample_error(out, ref)
    assert (err <= 1e-5 * data["sigma"].clamp(min=1)).all()


def test_per_sample_sigma_and_scalar_sigma():
    data, net = build("edm_ddpmpp_uncond")
    x, sigma = data["x"], data["sigma"]
    with torch.no_grad():
        batch = net(x, sigma)
        for i in [0, 3, 6]:
            single = net(x[i:i + 1], sigma[i:i + 1])
            scalar = net(x[i:i + 1], float(sigma[i]))
            assert (single - batch[i:i + 1]).abs().max() <= 2e-6 * max(1.0, float(sigma[i]))
            torch.testing.assert_close(scalar, single, atol=0, rtol=0)
        shared = net(x[:3], torch.tensor(0.3))
        torch.testing.assert_close(shared, net(x[:3], torch.full((3,), 0.3)), atol=2e-6, rtol=0)


def test_init_kwargs_rebuild_the_same_layout():
    _, net = build("edm_adm_cond")
    assert net._init_kwargs["model_type"] == "DhariwalUNet"
    again = type(net)(**net._init_kwargs)
    assert {k: v.shape for k, v in again.state_dict().items()} == \
        {k: v.shape for k, v in net.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# Bad input


SMALL = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8])


def test_bad_construction_raises_value_error():
    with pytest.raises(ValueError, match="unknown model_type 'UNet'"):
        EDMPrecond(16, 3, model_type="UNet")
    with pytest.raises(ValueError, match="embedding_type"):
        EDMPrecond(16, 3, model_type="SongUNet", embedding_type="sinusoid", **SMALL)
    with pytest.raises(ValueError, match="encoder_type"):
        VPPrecond(16, 3, encoder_type="fancy", **SMALL)
    with pytest.raises(ValueError, match="not divisible"):
        SongUNet(10, 3, 3, model_channels=16, channel_mult=[1, 1, 1], num_blocks=1)
    with pytest.raises(ValueError, match="not divisible"):
        DhariwalUNet(18, 3, 3, model_channels=16, channel_mult=[1, 1, 1], num_blocks=1)
    with pytest.raises(ValueError, match="label_dim"):
        EDMPrecond(16, 3, label_dim=-1)


def test_bad_call_raises_value_error():
    net = EDMPrecond(16, 3, label_dim=10, model_type="SongUNet", **SMALL).eval()
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"class_labels must have shape \(B, 10\)"):
        net(x, torch.ones(2), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="label rows"):
        net(x, torch.ones(2), torch.zeros(3, 10))
    with pytest.raises(ValueError, match="sigmas for a batch"):
        net(x, torch.ones(3), torch.zeros(2, 10))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        net(x[0], torch.ones(1))
    with pytest.raises(ValueError, match="conditional"):
        net.model(x, torch.zeros(2), None)
