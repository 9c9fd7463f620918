"""The user's path, offline, end to end: a tiny random-weight Stable-Diffusion-like pipeline folder
saved with save_pretrained, prompts, CFG and the methods (registered and text-to-image) through
``generate_from_pipeline`` and the ``--pipeline`` options; PNGs, EDM seeds and the honest cost record."""

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

diffusers = pytest.importorskip("diffusers")

from smcdiff.apps.pipeline import (
    TEXT_TO_IMAGE_METHODS,
    add_pipeline_options,
    generate_from_pipeline,
    method_spec,
    pipeline_kwargs,
    read_prompts,
)
from smcdiff.methods.text_to_image import SD21_RESTART
from tests.models import tiny_pipeline as tp

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
STEPS = 12
RESTART_NFE = STEPS + sum(iv.repeats * 2 * (iv.num_steps - 1) for iv in SD21_RESTART)
EVENTS = sum(iv.repeats for iv in SD21_RESTART)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    pytest.importorskip("transformers")
    return tp.save_pipeline(tmp_path_factory.mktemp("sd") / "pipe")


def _png(path):
    with Image.open(path) as im:
        assert im.mode == "RGB" and im.size == (16, 16)
        return np.asarray(im)


def _record(outdir):
    return json.loads((outdir / "generation.json").read_text())


def test_edm_with_cfg_two_prompts_and_edm_seeds(folder, tmp_path, one_thread):
    out = generate_from_pipeline(folder, ["a cat", "two dogs"], tmp_path / "a", method="edm", seeds="0-2", batch=2,
                                 steps=STEPS, max_batch=8)
    assert [p.relative_to(tmp_path / "a").as_posix() for p in out] == [
        f"{i:05d}/{s:06d}.png" for i in range(2) for s in range(3)]
    images = [_png(p) for p in out]
    assert (tmp_path / "a" / "prompts.txt").read_text() == "a cat\ntwo dogs\n"
    rec = _record(tmp_path / "a")
    assert rec["nfe"] == (2 * STEPS - 1) * 2 and rec["cfg"] == 7.5 and rec["images"] == 6  # Heun, 2 per CFG evaluation
    assert rec["decodes"] == 1.0                                                         # the written image only
    # A seed's image depends on its seed and prompt only, not on the batch it ran in.
    again = generate_from_pipeline(folder, ["a cat", "two dogs"], tmp_path / "b", method="edm", seeds=[2, 1],
                                   batch=1, steps=STEPS)
    assert np.array_equal(_png(again[0]), images[2]) and np.array_equal(_png(again[3]), images[4])
    assert not np.array_equal(images[0], images[3])  # another prompt, another image
    # cfg = 1: no guidance, one evaluation per step.
    generate_from_pipeline(folder, "a cat", tmp_path / "c", method="edm", seeds=[0], steps=STEPS, cfg=1.0)
    assert _record(tmp_path / "c")["nfe"] == 2 * STEPS - 1 and (tmp_path / "c" / "000000.png").exists()


def test_text_to_image_methods_from_local_files(folder, tmp_path, one_thread):
    from smcdiff.models.latent_discriminator import LatentDiscriminator, save_latent_discriminator

    detr = tp.save_detr(tmp_path / "detr")
    save_latent_discriminator(tmp_path / "disc.pt", LatentDiscriminator(tp.tiny_unet()))
    K = 2
    for method in ("pf-hybrid", "object-select"):
        out = generate_from_pipeline(folder, ["a cat on a bench"], tmp_path / method, method=method, seeds=[0, 1],
                                     steps=STEPS, detector=detr, detector_resize=24, discriminator=tmp_path / "disc.pt",
                                     method_params={"num_particles": K})
        assert len(out) == 2 and all(p.exists() for p in out)
        rec = _record(tmp_path / method)
        assert rec["nfe"] == K * RESTART_NFE * 2
        scored = EVENTS + 1 if method == "pf-hybrid" else 1
        assert rec["detector_calls"] == K * scored and rec["decodes"] == K * scored + 1
        assert rec.get("disc_calls", 0) == (K * scored if method == "pf-hybrid" else 0)


def test_best_of_n_scored_by_an_image_reward(folder, tmp_path, one_thread):
    generate_from_pipeline(folder, ["a red apple"], tmp_path / "c", method="best-of-n", seeds=[0], steps=4,
                           reward="color:1,0,0", method_params={"num_particles": 2})
    rec = _record(tmp_path / "c")
    assert rec["reward_calls"] == 2 and rec["nfe"] == 2 * (2 * 4 - 1) * 2
    # A CLIP score from a local folder: each prompt's particles are scored against their own prompt.
    clip = tp.save_clip(tmp_path / "clip")
    generate_from_pipeline(folder, ["a red apple", "a dog"], tmp_path / "clip-out", method="best-of-n", seeds=[0, 1],
                           steps=3, reward=f"clip:{clip}", method_params={"num_particles": 2})
    assert _record(tmp_path / "clip-out")["reward_calls"] == 2
    with pytest.raises(ValueError, match="color:R,G,B or clip:FOLDER"):
        generate_from_pipeline(folder, ["x"], tmp_path / "bad", method="best-of-n", reward="jpeg")


def test_prompt_embeddings_replace_a_missing_text_encoder(tmp_path, one_thread):
    path = tp.save_pipeline(tmp_path / "noted", text=False)
    emb = torch.randn(1, tp.TOKENS, tp.EMBED, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="prompt_embeds"):
        generate_from_pipeline(path, ["x"], tmp_path / "o", seeds=[0], steps=3)
    generate_from_pipeline(path, ["x"], tmp_path / "o", seeds=[0], steps=3, prompt_embeds=emb,
                           negative_prompt_embeds=torch.zeros(tp.TOKENS, tp.EMBED))
    assert _record(tmp_path / "o")["nfe"] == (2 * 3 - 1) * 2


def test_command_line_options(folder, tmp_path, one_thread):
    parser = argparse.ArgumentParser()
    for opt, kw in (("--outdir", {}), ("--seeds", {"default": "0"}), ("--batch", {"type": int, "default": 4}),
                    ("--steps", {"type": int, "default": 3}), ("--method", {"default": "edm"}),
                    ("--discriminator", {}), ("--device", {"default": "cpu"})):
        parser.add_argument(opt, **kw)
    add_pipeline_options(parser)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n\n a dog \n")
    args = parser.parse_args(["--pipeline", str(folder), "--prompts", str(prompts), "--prompt", "a bird",
                              "--outdir", str(tmp_path / "cli"), "--cfg", "3", "--dtype", "float32", "--max-batch", "4"])
    kwargs = pipeline_kwargs(args)
    assert kwargs["prompts"] == ["a bird", "a cat", "a dog"] and kwargs["cfg"] == 3.0 and kwargs["dtype"] == torch.float32
    kwargs["progress"] = False
    written = generate_from_pipeline(**kwargs)
    assert len(written) == 3 and _record(tmp_path / "cli")["nfe"] == (2 * 3 - 1) * 2
    with pytest.raises(SystemExit):
        parser.parse_args(["--dtype", "float8"])


def test_errors(folder, tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        generate_from_pipeline(folder, ["x"], tmp_path, method="nope")
    with pytest.raises(ValueError, match="--detector"):
        generate_from_pipeline(folder, ["x"], tmp_path, method="pf-detector")
    with pytest.raises(ValueError, match="--discriminator"):
        generate_from_pipeline(folder, ["x"], tmp_path, method="pf-discriminator")
    with pytest.raises(ValueError, match="no prompts"):
        read_prompts(None, None)
    with pytest.raises(FileNotFoundError, match="--prompts"):
        read_prompts(None, tmp_path / "missing.txt")
    assert method_spec("pf-hybrid") is TEXT_TO_IMAGE_METHODS["pf-hybrid"] and method_spec("edm").name == "edm"


def test_fk_steering_through_the_app_with_a_scaled_reward(folder, tmp_path, monkeypatch, one_thread):
    """A registered reward method (FK steering, registered here for the test) gets the decoded reward
    times --reward-scale; NFE counts both CFG halves; reward calls = K × evaluation steps."""
    from smcdiff.methods import registry
    from smcdiff.methods.reward_steering import fk_steering

    spec = registry.MethodSpec("fk-test", fk_steering, "FK steering", "reward", particles=True)
    monkeypatch.setitem(registry.METHODS, "fk-test", spec)
    seen = []

    def reward(images, **cond):
        seen.append(images.shape[0])
        return images[:, 0].mean((1, 2)).double()

    generate_from_pipeline(folder, ["a red apple"], tmp_path, method="fk-test", seeds=[0], steps=4, reward=reward,
                           reward_scale=5.0, method_params={"num_particles": 2, "interval": 2})
    rec = _record(tmp_path)
    assert rec["nfe"] == 2 * 4 * 2 and rec["reward_calls"] == 2 * 3 == sum(seen)  # S = {0, 2, 3}


def test_a_rerun_resumes_skips_done_batches_and_redoes_a_damaged_one(folder, tmp_path, one_thread):
    kw = dict(method="edm", seeds="0-3", batch=2, steps=STEPS)
    first = generate_from_pipeline(folder, ["a cat"], tmp_path / "r", **kw)
    images = [_png(p) for p in first]
    first[3].write_bytes(first[3].read_bytes()[:40])  # a truncated PNG, as a killed non-atomic write leaves
    again = generate_from_pipeline(folder, ["a cat"], tmp_path / "r", **kw)
    assert again == first[2:]  # only the batch with the damaged image is sampled again
    assert _record(tmp_path / "r")["skipped_existing"] == 2
    assert all(np.array_equal(_png(p), img) for p, img in zip(first, images))
    assert not list((tmp_path / "r").glob(".*.tmp"))  # atomic writes leave no temporary files
