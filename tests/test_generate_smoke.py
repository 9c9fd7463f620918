"""CPU smoke test: every method end to end on small random-weight networks (issue 4).

A tiny random EDMPrecond + SongUNet is written as an EDM-format network pickle and sampled through
``smcdiff generate``; the DG discriminator is the random-weight ADM classifier + head of the
parity fixtures (32×32), plugged into dg / sedm / diffrs / pf.
"""


import numpy as np
import pytest
import torch
from PIL import Image

from smcdiff.apps.cli import main
from smcdiff.apps.generate import generate
from tests.paths import FIXTURES

KWARGS = dict(img_resolution=32, img_channels=3, label_dim=0, model_type="SongUNet", model_channels=16,
              channel_mult=[1, 2], num_blocks=1, attn_resolutions=[16], dropout=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_net():
    from smcdiff.models.precond import EDMPrecond
    from tests.models import persistence_fixtures as pf

    return pf.randomize_(EDMPrecond(**KWARGS), seed=3).eval().requires_grad_(False)


def test_generate_cli_from_an_edm_pickle(tmp_path):
    from tests.models import persistence_fixtures as pf

    net = tiny_net()
    pkl = tmp_path / "tiny-edm.pkl"
    pkl.write_bytes(pf.edm_pickle_from_modules(net, KWARGS))
    out = tmp_path / "out"
    assert main(["generate", "--network", str(pkl), "--outdir", str(out), "--seeds", "0-2", "--batch", "2",
                 "--steps", "3", "--subdirs", "--manifest", "--device", "cpu"]) == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == ["000000/000000.png", "000000/000001.png", "000000/000002.png"]
    assert np.asarray(Image.open(out / files[0])).shape == (32, 32, 3)
    assert (out / "manifest-rank0.txt").read_text().split() == ["000000", "000001", "000002"]
    # the safe loader rebuilt the same network: same images as the in-process net
    direct = generate(net, [0, 1, 2], tmp_path / "direct", steps=3, batch=2)
    for p in direct:
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(out / "000000" / p.name)))


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="shared/fixtures not found beside the repository")
@pytest.mark.parametrize("method", ["dg", "sedm", "diffrs", "pf"])
def test_every_method_with_a_random_weight_discriminator(method, tmp_path):
    from smcdiff.models.discriminator import DGDiscriminator

    clf = torch.load(FIXTURES / "adm_classifier_32.pt", weights_only=True)
    head = torch.load(FIXTURES / "dg_discriminator_32_uncond.pt", weights_only=True)
    disc = DGDiscriminator.from_state_dicts(clf["state_dict"], head["head_state_dict"], img_resolution=32,
                                            classifier_depth=1, attention_resolutions="16,8")
    log_ratio = disc.logit if method == "diffrs" else disc
    params = {"num_particles": 2, "resample_at": [1]} if method == "pf" else {}
    if method == "diffrs":
        params = {"num_warmup": 2}
    paths = generate(tiny_net(), [0, 1], tmp_path, method=method, steps=3, batch=2, log_ratio=log_ratio,
                     method_params=params)
    assert [p.name for p in paths] == ["000000.png", "000001.png"]
    img = np.asarray(Image.open(paths[0]))
    assert img.shape == (32, 32, 3) and img.std() > 0


def test_the_shipped_digits_denoiser_works_with_generate(tmp_path, capsys):
    # `--network digits` and the file itself give the images of the library call on the shipped
    # denoiser (load_digits_models); before, the file failed with UnpicklingError.
    from smcdiff.apps.generate_cli import load_network
    from smcdiff.models.pretrained import DIGITS_ASSETS, load_digits_models

    args = ["--seeds", "0-3", "--batch", "3", "--steps", "6", "--device", "cpu"]
    assert main(["generate", "--network", "digits", "--outdir", str(tmp_path / "word"), *args]) == 0
    assert main(["generate", "--network", str(DIGITS_ASSETS / "denoiser.pt"), "--outdir", str(tmp_path / "file"),
                 *args]) == 0
    direct = generate(load_digits_models().denoiser, range(4), tmp_path / "direct", steps=6, batch=3)
    for p in direct:
        img = np.asarray(Image.open(p))
        assert img.shape == (8, 8) and img.dtype == np.uint8 and img.std() > 0
        assert np.array_equal(img, np.asarray(Image.open(tmp_path / "word" / p.name)))
        assert np.array_equal(img, np.asarray(Image.open(tmp_path / "file" / p.name)))
    net, info = load_network("digits")
    assert (net.img_channels, net.img_resolution, net.label_dim, net.sigma_min, net.sigma_max) == (1, 8, 0, 0.0, float("inf"))
    assert info["class"] == "ConvDenoiser" and not any(p.requires_grad for p in net.parameters())
    # ...and the shipped discriminator corrects it: DG's images differ from plain EDM's.
    assert main(["generate", "--network", "digits", "--discriminator", "digits", "--method", "dg",
                 "--outdir", str(tmp_path / "dg"), *args]) == 0
    same = [np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(tmp_path / "dg" / p.name))) for p in direct]
    assert not all(same)


def test_generate_help_says_diffrs_is_the_exception(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "DiffRS draws from ONE generator per batch" in text and "depend on the batch they ran in" in text
    assert "diffrs: Diffusion Rejection Sampling (Na et al. 2024) -- one generator per batch" in text
    assert "--overwrite" in text and "--network digits" in text
