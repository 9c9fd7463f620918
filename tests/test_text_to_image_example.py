"""examples/text_to_image.py runs end to end on a tiny saved pipeline, a tiny DETR for the weights, a
second one for the evaluation and a saved latent discriminator; the paper's settings are its defaults."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from tests.models import tiny_pipeline as tp

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "text_to_image.py"
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


def load():
    spec = importlib.util.spec_from_file_location("text_to_image_example", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_paper_defaults():
    args = load().parse(["--pipeline", "p", "--prompts", "f"])
    assert (args.method, args.particles, args.cfg, args.steps) == ("pf-hybrid", 10, 7.5, 29)


class ChannelMeans:
    """A stand-in FID feature extractor (uint8 (B, 3, H, W) → the 3 channel means)."""

    def __init__(self, path):
        self.path = path

    def __call__(self, images):
        return images.float().mean((2, 3))


def test_runs_end_to_end(tmp_path, capsys, monkeypatch, one_thread):
    import numpy as np

    import smcdiff.metrics
    from smcdiff.metrics.fid import save_statistics
    from smcdiff.models.latent_discriminator import LatentDiscriminator, save_latent_discriminator

    monkeypatch.setattr(smcdiff.metrics, "InceptionFeatures", ChannelMeans)
    save_statistics(tmp_path / "ref.npz", np.full(3, 128.0), np.eye(3) * 100.0)

    pipe = tp.save_pipeline(tmp_path / "pipe")
    save_latent_discriminator(tmp_path / "disc.pt", LatentDiscriminator(tp.tiny_unet()))
    (tmp_path / "prompts.txt").write_text("a cat on a bench\na red car\n")
    argv = ["--pipeline", str(pipe), "--detector", str(tp.save_detr(tmp_path / "detr")), "--prompts",
            str(tmp_path / "prompts.txt"), "--discriminator", str(tmp_path / "disc.pt"), "--particles", "2",
            "--steps", "12", "--outdir", str(tmp_path / "out"), "--detector-resize", "24",
            "--eval-detector", str(tp.save_detr(tmp_path / "detr101", seed=9)), "--fid-ref", str(tmp_path / "ref.npz"),
            "--inception", "weights.pth"]
    assert load().main(argv) == 0
    table = capsys.readouterr().out.strip().splitlines()[-3:]
    assert table[0].startswith("| method | images | nfe") and table[0].endswith("| object occurrence | FID |")
    assert table[2].startswith("| pf-hybrid | 2 |")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == [
        "00000/000000.png", "00001/000000.png"]
    with pytest.raises(SystemExit, match="--discriminator"):
        load().main(["--pipeline", str(pipe), "--prompts", "x", "--detector", "d"])
