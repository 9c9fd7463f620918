"""`smcdiff train`: denoiser then discriminator on bundled data (tiny step counts)."""

import pytest
import torch

from smcdiff.apps.cli import main
from smcdiff.models.small_nets import load
from smcdiff.apps.train import load_data

pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_denoiser_then_discriminator(tmp_path, capsys):
    den, disc = tmp_path / "den.pt", tmp_path / "disc.pt"
    assert main(["train", "denoiser", "--data", "moons", "--steps", "10", "--batch", "32", "--out", str(den),
                 "--no-progress"]) == 0
    assert main(["train", "discriminator", "--data", "moons", "--denoiser", str(den), "--steps", "10", "--batch", "32",
                 "--num-fake", "64", "--out", str(disc), "--no-progress"]) == 0
    assert "saved discriminator" in capsys.readouterr().out
    d = load(disc)
    x = torch.zeros(3, 2, dtype=torch.float64)
    assert d(x, torch.ones(3, dtype=torch.float64)).shape == (3,)


def test_discriminator_needs_a_denoiser(tmp_path):
    with pytest.raises(SystemExit, match="--denoiser"):
        main(["train", "discriminator", "--data", "moons", "--out", str(tmp_path / "d.pt")])


def test_data_sets():
    assert load_data("moons", 10).shape == (10, 2)
    assert load_data("digits", 0).shape[1:] == (1, 8, 8)
    with pytest.raises(ValueError, match="unknown data set"):
        load_data("cifar", 10)


def test_train_classifier_and_its_errors(tmp_path, capsys):
    out = tmp_path / "clf.pt"
    assert main(["train", "classifier", "--data", "digits", "--steps", "3", "--batch", "16", "--out", str(out),
                 "--no-progress"]) == 0
    assert load(out)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(SystemExit, match="digits"):
        main(["train", "classifier", "--data", "moons", "--out", str(out)])
    with pytest.raises(SystemExit, match="--data"):
        main(["train", "denoiser", "--out", str(out)])


def test_train_digits_models_cli_takes_a_recipe(tmp_path, capsys):
    recipe = ('{"denoiser": {"steps": 2, "width": 8}, "classifier": {"steps": 2, "width": 8, "feature_dim": 8}, '
              '"discriminator": {"steps": 2, "width": 8, "num_fake": 16, "sample_steps": 3}}')
    assert main(["train", "digits-models", "--out", str(tmp_path), "--recipe", recipe, "--no-progress"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classifier.pt", "denoiser.pt", "discriminator.pt",
                                                          "manifest.json"]
    with pytest.raises(SystemExit, match="not JSON"):
        main(["train", "digits-models", "--out", str(tmp_path), "--recipe", "{bad"])
    with pytest.raises(SystemExit, match="unknown recipe part"):
        main(["train", "digits-models", "--out", str(tmp_path), "--recipe", '{"nope": 1}'])


def test_digits_models_refuses_per_network_options(tmp_path):
    with pytest.raises(SystemExit, match="--steps"):
        main(["train", "digits-models", "--out", str(tmp_path), "--steps", "50"])
    with pytest.raises(SystemExit, match="must be a dict"):
        main(["train", "digits-models", "--out", str(tmp_path), "--recipe", '{"denoiser": 5}'])
    with pytest.raises(SystemExit, match="is a dict like"):
        main(["train", "digits-models", "--out", str(tmp_path), "--recipe", "[1]"])
