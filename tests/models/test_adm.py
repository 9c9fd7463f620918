"""ADM encoder (EncoderUNetModel) against the reference: golden time-embedding values (REFERENCE
§0.4), random-weight parity fixtures (features / logits, fixtures README §2 and §5 tolerances) and the
key → shape layouts of the four published checkpoints (built on the meta device)."""

import json

import pytest
import torch

from smcdiff.models.adm import (
    AttentionBlock,
    EncoderUNetModel,
    classifier_channel_mult,
    create_classifier,
    timestep_embedding,
)

from tests.paths import FIXTURES  # noqa: E402
needs_fixtures = pytest.mark.skipif(not (FIXTURES / "adm_classifier_32.pt").is_file(),
                                    reason=f"parity fixtures not found under {FIXTURES}")

FEATURES_TOL, LOGITS_TOL = 5e-5, 1e-6  # fixtures README §5


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _widen(sd):
    return {k: (v.float() if v.dtype == torch.float16 else v) for k, v in sd.items()}


def test_timestep_embedding_golden_values():
    # REFERENCE §0.4: embedding(499.5, 128), entries [0, 1, 2, 63, 64, 65, 127] (cos half first).
    e = timestep_embedding(torch.tensor([499.5]), 128)
    assert e.shape == (1, 128) and e.dtype == torch.float32
    golden = torch.tensor([-0.9999124, 0.5481694, -0.7500770, 0.9983369, 0.0132315, -0.8363673, 0.0576494])
    torch.testing.assert_close(e[0, [0, 1, 2, 63, 64, 65, 127]], golden, atol=1e-6, rtol=0)


def test_timestep_embedding_odd_dim_and_zero_time():
    e = timestep_embedding(torch.tensor([0.0, 3.0]), 7)
    assert e.shape == (2, 7)
    assert torch.equal(e[0, :3], torch.ones(3)) and torch.equal(e[:, 6], torch.zeros(2))


def test_channel_mult_table():
    assert classifier_channel_mult(32) == (1, 2, 4)
    assert classifier_channel_mult(64) == (1, 2, 3, 4)
    assert classifier_channel_mult(8) == (1,)
    with pytest.raises(ValueError, match="image_size 48"):
        classifier_channel_mult(48)


def test_unsupported_options_are_refused():
    with pytest.raises(NotImplementedError, match="pool"):
        create_classifier(8, 32, 1, "8", classifier_pool="adaptive")
    with pytest.raises(NotImplementedError, match="resblock_updown"):
        create_classifier(16, 32, 1, "8", classifier_resblock_updown=False)
    with pytest.raises(ValueError, match="head width"):
        AttentionBlock(96, num_head_channels=64)
    with pytest.raises(ValueError, match="head width"):
        create_classifier(8, 32, 1, "16")  # the 32-wide pooling head cannot have 64-wide heads


def _load(name):
    d = torch.load(FIXTURES / name, weights_only=True)
    model = create_classifier(**d["config"]).eval()
    return d, model


@needs_fixtures
@pytest.mark.parametrize("name", ["adm_classifier_32.pt", "adm_classifier_64.pt"])
def test_classifier_parity(name):
    d, model = _load(name)
    sd = _widen(d["state_dict"])
    assert list(model.state_dict()) == list(sd)  # names and registration order
    model.load_state_dict(sd, strict=True)
    kw = d["model_kwargs"]
    assert model.channel_mult == tuple(kw["channel_mult"])
    with torch.no_grad():
        features = model(d["x"], d["timesteps"], feature=True)
        logits = model(d["x"], d["timesteps"])
        probs = model(d["x"], d["timesteps"], sigmoid=True)
    assert features.shape == d["features"].shape and logits.shape == d["logits"].shape
    assert (features - d["features"]).abs().max() <= FEATURES_TOL
    assert (logits - d["logits"]).abs().max() <= LOGITS_TOL
    torch.testing.assert_close(probs, torch.sigmoid(logits), atol=0, rtol=0)


@needs_fixtures
def test_classifier_input_gradient_matches_finite_difference():
    d, model = _load("adm_classifier_32.pt")
    model.load_state_dict(_widen(d["state_dict"]))
    model.double()  # float64 for a clean finite-difference check of the whole graph
    x = d["x"][:2].double().requires_grad_(True)
    t = d["timesteps"][2:4].double()
    (g,) = torch.autograd.grad(model(x, t)[:, 3].sum(), x)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = 1e-6
    with torch.no_grad():
        fd = (model(x + eps * v, t)[:, 3].sum() - model(x - eps * v, t)[:, 3].sum()) / (2 * eps)
    torch.testing.assert_close((g * v).sum(), fd, rtol=1e-6, atol=1e-9)


def test_condition_indices_equal_one_hot_argmax():
    torch.manual_seed(0)
    model = create_classifier(8, 64, 1, "8", in_channels=4, out_channels=1, condition=True).eval()
    assert model.label_emb.weight.shape == (1000, 256)  # always 1000 rows
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([0.1, 0.5, 0.9])
    labels = torch.tensor([2, 0, 7])
    one_hot = torch.nn.functional.one_hot(labels, 10).float()
    with torch.no_grad():
        a, b = model(x, t, condition=labels), model(x, t, condition=one_hot)
        c = model(x, t, condition=torch.tensor([3, 0, 7]))
    assert torch.equal(a, b) and not torch.equal(a[0], c[0]) and torch.equal(a[1:], c[1:])
    with pytest.raises(ValueError, match="class-conditional"):
        model(x, t)


def test_fp16_blocks_run_and_stay_close():
    torch.manual_seed(0)
    model = create_classifier(16, 64, 1, "8", out_channels=3).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0.2, 0.7])
    with torch.no_grad():
        ref = model(x, t, feature=True)
        model.convert_to_fp16()
        half = model(x, t, feature=True)
        logits = model(x, t)
    assert half.dtype == torch.float32 and logits.dtype == torch.float32
    assert model.input_blocks[1][0].in_layers[2].weight.dtype == torch.float16
    assert model.time_embed[0].weight.dtype == torch.float32
    assert (half - ref).abs().max() <= 2e-2 * ref.abs().max()


LAYOUTS = {  # published checkpoint -> (tensors, parameters)  (REFERENCE §2d, fixtures README §4)
    "32x32_classifier.pt": (255, 47_771_112),
    "64x64_classifier.pt": (307, 65_438_568),
    "discriminator_60.pt": (71, 2_883_841),
    "discriminator_250.pt": (72, 3_395_841),
}


@needs_fixtures
@pytest.mark.parametrize("ckpt", list(LAYOUTS))
def test_published_checkpoint_layout(ckpt):
    entry = json.loads((FIXTURES / "checkpoint_layouts.json").read_text())["checkpoints"][ckpt]
    with torch.device("meta"):
        model = create_classifier(**entry["config"])
    assert isinstance(model, EncoderUNetModel)
    layout = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert layout == entry["state_dict"]
    n_tensors, n_params = LAYOUTS[ckpt]
    assert len(layout) == entry["num_tensors"] == n_tensors
    assert sum(p.numel() for p in model.parameters()) == entry["num_params"] == n_params
    assert not list(model.buffers())
    assert list(model.feature_shape()) == entry["resolved"].get(
        "feature_shape_per_sample", entry["resolved"].get("middle_block_output_shape_per_sample"))
