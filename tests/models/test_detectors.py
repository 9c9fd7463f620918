"""Detectors: prompt objects, DETR-style and torchvision-style probabilities, loading from local
files, the detector likelihood on decoded x̂0, and object occurrence (the evaluation metric).

The DETR is a tiny random-weight transformers ``DetrForObjectDetection`` saved with
``save_pretrained``; torchvision's models are checked with a stand-in of the same output format, and
with a real one saved with torch.save only where a working torchvision is installed.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from smcdiff.metrics.object_occurrence import object_occurrence, object_occurrence_folder
from smcdiff.models.detectors import (
    COCO_CLASSES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DETRDetector,
    TorchvisionDetector,
    detector_likelihood,
    load_detector,
    prompt_objects,
)
from smcdiff.models.file_formats import FileFormatError
from smcdiff.models.latent import quantize
from tests.models import tiny_pipeline as tp


def _names(prompt):
    return [COCO_CLASSES[c] for c in prompt_objects(prompt)]


def test_prompt_objects_whole_words_plurals_synonyms_longest_first():
    assert len(COCO_CLASSES) == 91 and COCO_CLASSES[1] == "person" and COCO_CLASSES[90] == "toothbrush"
    assert _names("A cat.") == ["cat"]
    assert _names("three Buses and two knives") == ["bus", "knife"]
    assert _names("a man riding a motorbike next to a fire hydrant") == ["person", "motorcycle", "fire hydrant"]
    assert _names("a hot dog") == ["hot dog"]                    # not also "dog"
    assert _names("a teddy bear") == ["teddy bear"]              # not also "bear"
    assert _names("a category of caterpillars") == []            # "cat" only as a whole word
    assert _names("a bowl, a wine glass and a cellphone") == ["wine glass", "bowl", "cell phone"]
    assert prompt_objects("") == []
    with pytest.raises(TypeError):
        prompt_objects(3)


class FixedDETR(torch.nn.Module):
    """A DETR stand-in returning fixed class logits (N, Q = 2, C + 1 = 4), recording its input."""

    def __init__(self):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor([[0.0, 2.0, -1.0, 1.0], [3.0, 0.0, 0.0, 0.0]]))
        self.seen = []

    def forward(self, pixel_values):
        self.seen.append(pixel_values)
        return {"pred_logits": self.logits.expand(pixel_values.shape[0], -1, -1)}


def test_detr_probabilities_are_the_max_over_queries_without_no_object():
    model = FixedDETR()
    det = DETRDetector(model, resize=6)
    p = det(torch.rand(2, 3, 4, 3, generator=torch.Generator().manual_seed(0)))
    sm = torch.softmax(model.logits.detach(), -1)
    want = torch.maximum(sm[0, :3], sm[1, :3])
    assert p.shape == (2, 3) and torch.allclose(p, want.expand(2, 3))
    assert model.seen[0].shape == (2, 3, 8, 6)                   # short side 3 → 6, aspect kept
    assert det.calls == 2


def test_detr_preprocessing_quantises_resizes_and_normalises():
    model = FixedDETR()
    images = torch.rand(1, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    DETRDetector(model, resize=10)(images)
    x = torch.round(images * 255) / 255
    x = F.interpolate(x, size=(10, 10), mode="bilinear", antialias=True, align_corners=False)
    x = (x - torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
    assert torch.allclose(model.seen[0], x, atol=1e-6)


@pytest.fixture(scope="module")
def detr_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    return tp.save_detr(tmp_path_factory.mktemp("detr") / "detr")


def test_a_saved_transformers_detr_loads_and_gives_probabilities(detr_dir, one_thread):
    from transformers import DetrForObjectDetection

    det = load_detector(detr_dir, resize=32, max_batch=2)
    assert isinstance(det, DETRDetector)
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    p = det(images)
    ref = DetrForObjectDetection.from_pretrained(detr_dir, local_files_only=True).eval()
    with torch.no_grad():
        logits = ref(pixel_values=det.preprocess(images)).logits
    assert p.shape == (3, 91)
    assert torch.allclose(p, logits.softmax(-1)[..., :-1].amax(1), atol=1e-5)
    assert bool(((p > 0) & (p < 1)).all())


class FakeTorchvision(torch.nn.Module):
    """torchvision's detection output format: one dict of boxes, labels, scores per image."""

    def forward(self, images):
        out = []
        for img in images:
            b = float(img.mean())
            out.append({"boxes": torch.zeros(3, 4), "labels": torch.tensor([18, 18, 3]),
                        "scores": torch.tensor([0.3, b, 0.9])})
        return out


def test_torchvision_probabilities_are_the_best_score_per_label():
    det = TorchvisionDetector(FakeTorchvision(), num_classes=91, max_batch=1)
    images = torch.stack([torch.full((3, 4, 4), 0.8), torch.full((3, 4, 4), 0.1)])
    p = det(images)
    assert p.shape == (2, 91)
    assert p[0, 18] == pytest.approx(round(0.8 * 255) / 255) and p[1, 18] == pytest.approx(0.3)  # 8-bit images
    assert p[0, 3] == pytest.approx(0.9) and float(p[:, [1, 17, 90]].abs().sum()) == 0.0


def test_load_detector_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_detector(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_detector(tmp_path / "empty")
    ckpt = tmp_path / "det.pth"
    torch.save({"w": torch.zeros(1)}, ckpt)
    with pytest.raises(ValueError, match="arch="):
        load_detector(ckpt)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        DETRDetector(FixedDETR())(torch.zeros(2, 1, 4, 4))


def _working_torchvision():
    try:
        import torchvision  # noqa: F401
        from torchvision.models import detection  # noqa: F401
    except (ImportError, RuntimeError, OSError):  # a CUDA build on a CPU torch fails at import
        pytest.skip("torchvision (a build matching this torch) is not installed")


def test_torchvision_checkpoint_round_trip(tmp_path, one_thread):
    _working_torchvision()
    from torchvision.models import detection

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=91)
    torch.save({"model": model.state_dict()}, tmp_path / "frcnn.pth")
    det = load_detector(tmp_path / "frcnn.pth", arch="fasterrcnn_mobilenet_v3_large_320_fpn")
    assert det(torch.rand(1, 3, 64, 64)).shape == (1, 91)
    with pytest.raises(ValueError, match="does not fit"):
        load_detector(tmp_path / "frcnn.pth", arch="fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=5)
    (tmp_path / "bad.pth").write_bytes(b"\x00" * 10)
    with pytest.raises(FileFormatError):
        load_detector(tmp_path / "bad.pth", arch="fasterrcnn_mobilenet_v3_large_320_fpn")


def test_detector_likelihood_on_decoded_pixels_follows_the_paper_formula():
    """The caption term on a pixel model's x̂0 ∈ [−1, 1]: the detector sees x̂0/2 + 1/2; with
    occurrence 0.3 and π = 0.2, q̃ = 0.7·0.8/(0.2 + 0.7·0.8) and term = log p − log((1 − p)q̃ + p)."""
    def detector(images):
        p = torch.full((images.shape[0], 91), 0.5, dtype=torch.float64)
        p[:, 17] = images[:, 0].mean((1, 2)).double()
        return p

    V = detector_likelihood(detector, [17], occurrence=torch.tensor([0.3]))
    x0 = torch.tensor([-0.5, 0.2, 0.9], dtype=torch.float64).reshape(3, 1, 1, 1).expand(3, 3, 2, 2)
    got = V(x0, torch.ones(3, dtype=torch.float64), x0)
    p = torch.tensor([0.25, 0.6, 0.95], dtype=torch.float64)
    q = 0.7 * 0.8 / (0.2 + 0.7 * 0.8)
    assert torch.allclose(got, p.log() - ((1 - p) * q + p).log(), atol=1e-7)


def test_object_occurrence_counts_present_objects(tmp_path):
    def detector(images):
        p = torch.zeros(images.shape[0], 91)
        p[:, 17] = images[:, 0].mean((1, 2))      # cat: red channel
        p[:, 18] = images[:, 1].mean((1, 2))      # dog: green channel
        return p

    images = torch.zeros(3, 3, 4, 4)
    images[0, 0] = 1.0                              # a red image: cat present, dog absent
    images[1, :2] = 1.0                             # cat and dog present
    res = object_occurrence(images, ["a cat and a dog", "a dog", "a landscape"], detector)
    assert res["per_prompt"] == [0.5, 1.0] and res["skipped"] == 1 and res["score"] == 0.75
    assert res["present"] == [1, 1] and res["mentioned"] == [2, 1]
    assert math.isnan(object_occurrence(images[2:], ["nothing"], detector)["score"])
    with pytest.raises(ValueError, match="one prompt per image"):
        object_occurrence(images, ["a cat"], detector)
    # The folder layout of generate_from_pipeline.
    from PIL import Image

    (tmp_path / "prompts.txt").write_text("a cat\na dog\n")
    for i in range(2):
        (tmp_path / f"{i:05d}").mkdir()
        Image.fromarray((images[1].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(tmp_path / f"{i:05d}/000000.png")
    assert object_occurrence_folder(tmp_path, detector)["per_prompt"] == [1.0, 1.0]
    assert quantize(images).equal(images)
