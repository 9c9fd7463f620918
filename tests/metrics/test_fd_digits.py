"""FD-digits: known answers (a set against itself is 0; the distance is the Fréchet distance of the
classifier features; real digits score far below noise and far below a blurred copy), the shipped
classifier's held-out accuracy, and the errors on bad input."""

import numpy as np
import pytest
import torch

from smcdiff.data import load_digits
from smcdiff.metrics.fd_digits import DigitsFeatures, digits_scores, fd_digits, reference_features, reference_statistics
from smcdiff.metrics.fid import feature_statistics, frechet_distance

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def features():
    return DigitsFeatures()


def test_shipped_classifier_accuracy_on_held_out_digits(features):
    x, y = load_digits("test")
    acc = (features.predict(x) == y).double().mean().item()
    assert acc > 0.95


def test_features_shape_dtype_and_clipping(features):
    x, _ = load_digits("test")
    f = features(x[:7])
    assert f.shape == (7, 32) and f.dtype == torch.float64
    # Values beyond [-1, 1] are clipped first, as writing a PNG would.
    assert torch.equal(features(x[:7] * 3), features((x[:7] * 3).clamp(-1, 1)))


def test_reference_against_itself_is_zero(features):
    test, _ = load_digits("test")
    assert fd_digits(test, features=features) == pytest.approx(0.0, abs=1e-6)
    scores = digits_scores(test, features=features)
    assert scores["fd"] == pytest.approx(0.0, abs=1e-6)
    assert scores["precision"] == 1.0 and scores["recall"] == 1.0 and scores["class_tv"] == 0.0


def test_fd_is_the_frechet_distance_of_the_features(features):
    train, _ = load_digits("train")
    mu, sigma = feature_statistics(features(train).numpy())
    mu_r, sigma_r = reference_statistics(features, "test")
    assert fd_digits(train, features=features) == pytest.approx(frechet_distance(mu, sigma, mu_r, sigma_r), rel=1e-12)
    # A precomputed reference gives the same number.
    assert fd_digits(train, (mu_r, sigma_r), features=features) == pytest.approx(fd_digits(train, features=features))


def test_real_digits_score_far_better_than_degraded_ones(features):
    train, _ = load_digits("train")
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(train.shape, generator=g) * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(train, 3, stride=1, padding=1, count_include_pad=False)
    fd_real, fd_blur, fd_noise = (fd_digits(x, features=features) for x in (train, blurred, noise))
    assert fd_real < 0.2 * fd_blur and fd_blur < fd_noise
    # A class-imbalanced real set (only zeros and ones) is caught by the class histogram and recall.
    y = load_digits("train")[1]
    few = train[(y == 0) | (y == 1)]
    s = digits_scores(few, features=features)
    assert s["class_tv"] > 0.7 and s["recall"] < 0.4 and s["precision"] > 0.9


def test_reference_features_by_split(features):
    assert reference_features(features, "test").shape == (359, 32)
    assert reference_features(features, "all").shape == (1797, 32)


@pytest.mark.parametrize("bad, match", [(torch.zeros(4, 8, 8), "expected images"),
                                        (torch.full((4, 1, 8, 8), float("nan")), "NaN")])
def test_bad_input_is_refused(features, bad, match):
    with pytest.raises(ValueError, match=match):
        fd_digits(bad, features=features)


def test_predict_checks_its_input(features):
    with pytest.raises(ValueError, match="NaN"):
        features.predict(torch.full((3, 1, 8, 8), float("nan")))


def test_class_histogram_uses_the_given_reference(features):
    """With the training split's features as reference, the training split scores TV 0 and FD 0."""
    train, _ = load_digits("train")
    s = digits_scores(train, features=features, ref_features=reference_features(features, "train"))
    assert s["class_tv"] == 0.0 and s["fd"] == pytest.approx(0.0, abs=1e-6)


def test_too_few_samples(features):
    with pytest.raises(ValueError, match="at least 2"):
        fd_digits(torch.zeros(1, 1, 8, 8), features=features)
    with pytest.raises(ValueError, match="at least 4"):
        digits_scores(torch.zeros(3, 1, 8, 8), features=features)
    assert np.isfinite(fd_digits(torch.zeros(2, 1, 8, 8), features=features))
