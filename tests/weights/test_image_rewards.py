"""Image rewards: the synthetic colour reward (closed form) and the CLIP score of a tiny random-weight
CLIPModel saved with save_pretrained (compared with the model's own logits)."""

import pytest
import torch

from smcdiff.weights.image_rewards import CLIP_MEAN, CLIP_STD, CLIPScore, ColorReward, check_images
from tests.models import tiny_pipeline as tp


def test_color_reward_closed_form():
    r = ColorReward((0.2, 0.4, 0.6))
    images = torch.zeros(3, 3, 2, 2)
    images[1] = torch.tensor([0.2, 0.4, 0.6]).reshape(3, 1, 1)
    images[2, :, 0] = 1.0                       # top row white, bottom row black
    got = r(images)
    black = 0.2**2 + 0.4**2 + 0.6**2
    white = 0.8**2 + 0.6**2 + 0.4**2
    assert got.dtype == torch.float64
    assert torch.allclose(got, torch.tensor([-black, 0.0, -(black + white) / 2], dtype=torch.float64))
    with pytest.raises(ValueError, match="RGB"):
        ColorReward((2.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="NaN"):
        r(torch.full((1, 3, 2, 2), float("nan")))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        check_images(torch.zeros(2, 4, 2, 2), "r")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    return tp.save_clip(tmp_path_factory.mktemp("clip") / "clip")


def test_clip_score_is_the_scaled_cosine_of_the_models_features(clip_dir, one_thread):
    from transformers import CLIPModel

    prompts = ["a red cat", "two dogs"]
    score = CLIPScore.from_pretrained(clip_dir, prompts, max_batch=2)
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    got = score(images, prompt_index=torch.tensor([0, 1, 1]))
    # The model's own logits_per_image are logit_scale · cos(image, text); 16×16 needs no resize.
    model = CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval()
    pixels = (images - torch.tensor(CLIP_MEAN).reshape(1, 3, 1, 1)) / torch.tensor(CLIP_STD).reshape(1, 3, 1, 1)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(clip_dir, local_files_only=True)
    ids = tok(prompts, padding="max_length", max_length=tp.TOKENS, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels)
    cos = out.logits_per_image / model.logit_scale.exp()
    want = 100 * cos[torch.arange(3), torch.tensor([0, 1, 1])]
    assert got.shape == (3,) and got.dtype == torch.float64
    assert torch.allclose(got, want.double(), atol=1e-3)
    assert score.calls == 3
    # A larger image is resized and centre-cropped to the model's 16 × 16.
    assert score(torch.rand(2, 3, 24, 20), prompt_index=torch.tensor([0, 1])).shape == (2,)
    with pytest.raises(ValueError, match="prompt_index"):
        score(images)
    with pytest.raises(ValueError, match="indices"):
        score(images, prompt_index=torch.tensor([0, 1, 2]))
    single = CLIPScore.from_pretrained(clip_dir, "a red cat")
    assert torch.allclose(single(images), 100 * cos[:, 0].double(), atol=1e-3)


def test_clip_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        CLIPScore.from_pretrained(tmp_path / "none", ["x"])
    with pytest.raises(TypeError, match="get_image_features"):
        CLIPScore(torch.nn.Linear(1, 1), None, ["x"])
