"""The shipped digits models load and do their jobs; the training recipe is seeded end to end."""

import json

import pytest
import torch

from smcdiff.data import load_digits
from smcdiff.apps.train import train_digits_models
from smcdiff.models.pretrained import DIGITS_RECIPE, load_digits_models
from smcdiff.models.small_nets import ConvDenoiser, ConvTimeDiscriminator, DigitsClassifier

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"denoiser": {"steps": 3, "width": 8}, "classifier": {"steps": 3, "width": 8, "feature_dim": 8},
        "discriminator": {"steps": 3, "width": 8, "num_fake": 32, "sample_steps": 3}}


def test_shipped_models_load_with_their_manifest():
    m = load_digits_models()
    assert isinstance(m.denoiser, ConvDenoiser) and isinstance(m.discriminator, ConvTimeDiscriminator)
    assert isinstance(m.classifier, DigitsClassifier)
    assert m.manifest["recipe"] == DIGITS_RECIPE  # the shipped files were made by the documented recipe
    assert m.manifest["classifier_test_accuracy"] > 0.95
    assert not any(p.requires_grad for p in m.denoiser.parameters())


def test_shipped_denoiser_beats_the_best_linear_denoiser_on_held_out_digits():
    """The Wiener filter (the best linear denoiser, from the training split's mean and covariance) is
    the bar any learned denoiser must clear; measured on test images the network never saw."""
    den = load_digits_models().denoiser
    train, _ = load_digits("train", dtype=torch.float64)
    x, _ = load_digits("test", dtype=torch.float64)
    flat = train.reshape(train.shape[0], -1)
    mu, cov = flat.mean(0), torch.cov(flat.T)
    g = torch.Generator().manual_seed(0)
    for sigma in (0.1, 0.5, 2.0):
        noisy = x + sigma * torch.randn(x.shape, generator=g, dtype=torch.float64)
        gain = cov @ torch.linalg.inv(cov + sigma**2 * torch.eye(64, dtype=torch.float64))
        wiener = mu + (noisy.reshape(-1, 64) - mu) @ gain.T
        err_wiener = (wiener - x.reshape(-1, 64)).pow(2).mean()
        with torch.no_grad():
            err_net = (den(noisy, torch.full((x.shape[0],), sigma)) - x).pow(2).mean()
        # Far below it where the data's non-Gaussian shape matters; the two meet as σ grows.
        assert err_net < (0.9 if sigma < 1 else 1.0) * err_wiener, (sigma, float(err_net), float(err_wiener))


def test_shipped_discriminator_beats_chance_on_held_out_data():
    """Test images against fresh samples of the model at σ = 0.1: above 50 % by > 3 binomial SEs."""
    from smcdiff.kernels import karras_sigmas
    from smcdiff.methods import dg

    m = load_digits_models()
    x, _ = load_digits("test")
    with torch.no_grad():
        fake = dg(m.denoiser, karras_sigmas(18), num_samples=x.shape[0], shape=(1, 8, 8),
                  generator=torch.Generator().manual_seed(123)).x
        s = torch.full((1,), 0.1)
        right = torch.cat([m.discriminator(x, s) > 0, m.discriminator(fake, s) <= 0]).double()
    n = right.numel()
    assert right.mean() > 0.5 + 3 * (0.25 / n) ** 0.5


def test_recipe_is_seeded_and_writes_a_loadable_folder(tmp_path):
    a = train_digits_models(tmp_path / "a", recipe=TINY)
    b = train_digits_models(tmp_path / "b", recipe=TINY)
    back = load_digits_models(tmp_path / "a")
    for net_a, net_b, net_back in ((a.denoiser, b.denoiser, back.denoiser),
                                   (a.discriminator, b.discriminator, back.discriminator),
                                   (a.classifier, b.classifier, back.classifier)):
        for (k, va), vb, vc in zip(net_a.state_dict().items(), net_b.state_dict().values(),
                                   net_back.state_dict().values()):
            assert torch.equal(va, vb) and torch.equal(va, vc), k
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["recipe"]["denoiser"]["steps"] == 3 and "--recipe" in manifest["command"]
    assert set(manifest["discriminator_heldout_accuracy"]) == {"0.002", "0.1", "0.5", "2.0"}
    assert set(manifest["discriminator_train_accuracy"]) == {"0.002", "0.1", "0.5", "2.0"}


def test_bad_recipes_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="unknown recipe part"):
        train_digits_models(tmp_path, recipe={"decoder": {}})
    with pytest.raises(ValueError, match="unknown denoiser settings"):
        train_digits_models(tmp_path, recipe={"denoiser": {"stepz": 1}})
    with pytest.raises(FileNotFoundError, match="smcdiff train digits-models"):
        load_digits_models(tmp_path / "nowhere")
