"""Local diffusers pipeline folders: a tiny Stable-Diffusion-like folder saved with save_pretrained
loads into denoiser + VAE + prompt encoder (with or without model_index.json, with or without a text
encoder), and every damaged or missing part fails with a message naming it."""

import json
import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from smcdiff.models.file_formats import FileFormatError
from smcdiff.models.pipeline_folder import load_pipeline, read_model_index
from tests.models import tiny_pipeline as tp

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tp.save_pipeline(tmp_path_factory.mktemp("sd") / "pipe")


def _copy(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / "copy")


def test_loads_every_component(folder, one_thread):
    model = load_pipeline(folder, max_batch=3)
    assert model.shape == tp.LATENT
    assert model.denoiser.prediction_type == "epsilon" and model.denoiser.max_batch == 3
    assert model.denoiser.sigma_max == pytest.approx(14.614641, rel=1e-5)  # SD's scaled-linear grid (REFERENCE-STEERING §A1)
    assert model.decoder is not None and model.decoder.max_batch == 3
    assert isinstance(model.components["unet"], diffusers.UNet2DConditionModel)
    # Same weights as the network that was saved: the denoiser equals the adapter on the original.
    from smcdiff.models import from_diffusers

    x = torch.randn(2, *tp.LATENT, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    s = torch.full((2,), 1.5, dtype=torch.float64)
    e = torch.randn(2, tp.TOKENS, tp.EMBED, generator=torch.Generator().manual_seed(1))
    ref = from_diffusers(tp.tiny_unet(), tp.tiny_scheduler())(x, s, encoder_hidden_states=e)
    assert torch.allclose(model.denoiser(x, s, encoder_hidden_states=e), ref, atol=1e-6)
    if tp.has_transformers():
        assert model.prompt_encoder(["a cat", ""]).shape == (2, tp.TOKENS, tp.EMBED)


def test_without_model_index_the_subfolders_are_read(folder, tmp_path, one_thread):
    copy = _copy(folder, tmp_path)
    (copy / "model_index.json").unlink()
    index = read_model_index(copy)
    assert index["unet"] == ("diffusers", "UNet2DConditionModel")
    assert index["scheduler"] == ("diffusers", "DDIMScheduler") and index["vae"] == ("diffusers", "AutoencoderKL")
    model = load_pipeline(copy)
    assert model.decoder is not None


def test_a_pixel_pipeline_without_vae_or_text_encoder(tmp_path, one_thread):
    path = tp.save_pipeline(tmp_path / "pix", text=False, vae=False)
    model = load_pipeline(path)
    assert model.decoder is None and model.prompt_encoder is None
    images = model.images(torch.zeros(1, *tp.LATENT, dtype=torch.float64)[:, :3])
    assert torch.equal(images, torch.full_like(images, 0.5))  # pixel samples in [-1, 1] → [0, 1]


def test_missing_and_damaged_parts_are_named(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pipeline(tmp_path / "nowhere")
    copy = _copy(folder, tmp_path)
    # A damaged index.
    (copy / "model_index.json").write_text("{not json")
    with pytest.raises(FileFormatError, match="model_index.json"):
        load_pipeline(copy)
    (copy / "model_index.json").write_text(json.dumps({"unet": ["diffusers"], "scheduler": ["diffusers", "DDIMScheduler"]}))
    with pytest.raises(FileFormatError, match="'unet'"):
        load_pipeline(copy)
    index = {"unet": ["diffusers", "UNet2DConditionModel"], "scheduler": ["diffusers", "DDIMScheduler"],
             "vae": ["diffusers", "AutoencoderKL"]}
    (copy / "model_index.json").write_text(json.dumps(index))
    # No scheduler, an unknown class, a missing folder.
    (copy / "model_index.json").write_text(json.dumps({k: v for k, v in index.items() if k != "scheduler"}))
    with pytest.raises(FileNotFoundError, match="scheduler"):
        load_pipeline(copy)
    (copy / "model_index.json").write_text(json.dumps({**index, "vae": ["diffusers", "NoSuchAutoencoder"]}))
    with pytest.raises(FileFormatError, match="NoSuchAutoencoder"):
        load_pipeline(copy)
    (copy / "model_index.json").write_text(json.dumps(index))
    shutil.rmtree(copy / "vae")
    with pytest.raises(FileNotFoundError, match="'vae'"):
        load_pipeline(copy)


def test_truncated_or_mismatched_weights_are_named(folder, tmp_path):
    copy = _copy(folder, tmp_path)
    weights = next((copy / "unet").glob("diffusion_pytorch_model.*"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(FileFormatError, match="component 'unet'"):
        load_pipeline(copy)
    # Weights that do not fit the config (a wider network than the saved weights).
    shutil.rmtree(copy / "unet")
    shutil.copytree(folder / "unet", copy / "unet")
    config = json.loads((copy / "unet" / "config.json").read_text())
    config["block_out_channels"] = [16, 32]
    (copy / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileFormatError, match="component 'unet'"):
        load_pipeline(copy)
    (copy / "unet" / "config.json").write_text("{broken")
    with pytest.raises(FileFormatError, match="unet"):
        load_pipeline(copy)


def test_network_dtype(folder, one_thread):
    model = load_pipeline(folder, dtype=torch.bfloat16)
    assert model.components["unet"].dtype == torch.bfloat16 and model.denoiser.dtype == torch.bfloat16
    x = torch.randn(1, *tp.LATENT, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = model.denoiser(x, torch.ones(1, dtype=torch.float64), encoder_hidden_states=torch.zeros(1, tp.TOKENS, tp.EMBED))
    assert out.dtype == torch.float64  # the sampler side stays float64
    assert model.decoder.decode(x).dtype == torch.float32
