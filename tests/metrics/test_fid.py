"""FID: the Fréchet distance in closed form, statistics files, the Inception layout, end to end.

Distances run in float64; exact cases are held to 1e-8 (a few hundred ulps of the traces
involved). The Inception tests use generator-seeded random weights (no weight file exists here) and
keep CPU time small: 299x299 forwards on two images at most, otherwise ``resize_input=False`` on
80x80 images, and the end-to-end distances use 256 of the 2048 features (a 2048-d ``sqrtm`` costs
~15 s on one core; the ``slow`` test runs it).
"""

import importlib

import numpy as np
import pytest
import torch
from PIL import Image

from smcdiff.metrics import (
    InceptionFeatures,
    compute_statistics,
    feature_statistics,
    fid,
    frechet_distance,
    load_statistics,
    save_statistics,
)
from smcdiff.models import inception as inception_module

# ``smcdiff.metrics.fid`` the attribute is the function; the module is reached through importlib.
fid_module = importlib.import_module("smcdiff.metrics.fid")
METHODS = ("sqrtm", "eigh")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def random_spd(d, seed, shift=0.1):
    rng = np.random.default_rng(seed)
    b = rng.standard_normal((d, d)) / np.sqrt(d)
    return b @ b.T + shift * np.eye(d)


# -- Fréchet distance in closed form ---------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_equal_gaussians_give_zero(method):
    mu = np.random.default_rng(0).standard_normal(6)
    sigma = random_spd(6, 1)
    assert abs(frechet_distance(mu, sigma, mu, sigma, method=method)) < 1e-8


@pytest.mark.parametrize("method", METHODS)
def test_mean_shift_only(method):
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    sigma = random_spd(5, 3)
    expected = float(np.sum((mu1 - mu2) ** 2))
    assert frechet_distance(mu1, sigma, mu2, sigma, method=method) == pytest.approx(expected, abs=1e-8)


@pytest.mark.parametrize("method", METHODS)
def test_diagonal_covariances(method):
    a, b = np.array([0.5, 1.0, 4.0, 9.0]), np.array([2.0, 1.0, 1.0, 0.25])
    expected = float(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    mu = np.zeros(4)
    assert frechet_distance(mu, np.diag(a), mu, np.diag(b), method=method) == pytest.approx(expected, abs=1e-8)


@pytest.mark.parametrize("method", METHODS)
def test_commuting_covariances(method):
    rng = np.random.default_rng(4)
    u, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    a, b = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    expected = float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    got = frechet_distance(mu1, (u * a) @ u.T, mu2, (u * b) @ u.T, method=method)
    assert got == pytest.approx(expected, abs=1e-8)


@pytest.mark.parametrize("method", METHODS)
def test_random_spd_pair_against_eigenvalues_of_the_product(method):
    # tr (S1 S2)^{1/2} = sum_i sqrt(lambda_i(S1 S2)); the product's eigenvalues are real and > 0.
    s1, s2 = random_spd(8, 5), random_spd(8, 6, shift=0.5)
    rng = np.random.default_rng(7)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    lam = np.linalg.eigvals(s1 @ s2)
    assert np.abs(lam.imag).max() < 1e-10
    expected = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(lam.real).sum())
    assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(expected, abs=1e-8)


@pytest.mark.parametrize("method", METHODS)
def test_symmetric_in_its_arguments(method):
    s1, s2 = random_spd(7, 8), random_spd(7, 9)
    mu1, mu2 = np.ones(7), np.zeros(7)
    d12 = frechet_distance(mu1, s1, mu2, s2, method=method)
    d21 = frechet_distance(mu2, s2, mu1, s1, method=method)
    assert d12 > 0
    assert d12 == pytest.approx(d21, abs=1e-8)


@pytest.mark.parametrize("method", METHODS)
def test_singular_covariances_from_few_samples(method):
    # Covariances of N < D samples are singular. With Sigma_k = A_k^T A_k, A_k = centred / sqrt(N-1),
    # the nonzero eigenvalues of Sigma1 Sigma2 are the squared singular values of A1 A2^T, so
    # tr (Sigma1 Sigma2)^{1/2} is the nuclear norm of A1 A2^T.
    rng = np.random.default_rng(10)
    f1, f2 = rng.standard_normal((8, 64)), rng.standard_normal((6, 64)) + 0.3
    (mu1, s1), (mu2, s2) = feature_statistics(f1), feature_statistics(f2)
    a1 = (f1 - mu1) / np.sqrt(7)
    a2 = (f2 - mu2) / np.sqrt(5)
    nuclear = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()
    expected = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * nuclear)
    assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_exactly_singular_product_without_warning(method):
    # scipy's sqrtm warns on singular input (an error under filterwarnings=error): silenced.
    mu = np.zeros(3)
    s1, s2 = np.diag([4.0, 0.0, 1.0]), np.diag([1.0, 2.0, 0.0])
    expected = (2.0 - 1.0) ** 2 + 2.0 + 1.0
    assert frechet_distance(mu, s1, mu, s2, method=method) == pytest.approx(expected, abs=1e-8)


def test_non_finite_square_root_retries_with_a_diagonal_offset(monkeypatch):
    real_sqrtm, calls = fid_module.scipy.linalg.sqrtm, []

    def flaky_sqrtm(a):
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(fid_module.scipy.linalg, "sqrtm", flaky_sqrtm)
    s1, s2, mu = random_spd(4, 11), random_spd(4, 12), np.zeros(4)
    got = frechet_distance(mu, s1, mu, s2, eps=1e-3)
    offset = 1e-3 * np.eye(4)
    assert np.allclose(calls[1], (s1 + offset) @ (s2 + offset))
    expected = np.trace(s1) + np.trace(s2) - 2 * np.trace(real_sqrtm((s1 + offset) @ (s2 + offset)).real)
    assert got == pytest.approx(expected, abs=1e-10)


def test_large_imaginary_part_is_an_error():
    mu = np.zeros(2)
    with pytest.raises(ValueError, match="imaginary component"):
        frechet_distance(mu, np.diag([1.0, -1.0]), mu, np.eye(2))


def test_bad_arguments():
    with pytest.raises(ValueError, match="different dimension"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="sigma"):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="method"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method="svd")


# -- statistics and files ----------------------------------------------------------------------------


def test_feature_statistics_match_numpy():
    f = np.random.default_rng(13).standard_normal((50, 4)) * [1.0, 2.0, 0.5, 3.0] + [1, -1, 0, 2]
    mu, sigma = feature_statistics(f)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, f.mean(0), rtol=0, atol=1e-14)
    np.testing.assert_allclose(sigma, np.cov(f, rowvar=False), rtol=0, atol=1e-13)
    mu_t, sigma_t = feature_statistics(torch.from_numpy(f).float())   # torch input, float32
    np.testing.assert_allclose(mu_t, mu, atol=1e-5)
    np.testing.assert_allclose(sigma_t, sigma, atol=1e-5)
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(f[:1])


def test_statistics_npz_round_trip(tmp_path):
    mu, sigma = feature_statistics(np.random.default_rng(14).standard_normal((10, 3)))
    save_statistics(tmp_path / "stats.npz", mu, sigma)
    with np.load(tmp_path / "stats.npz") as data:                    # the common format
        assert sorted(data.files) == ["mu", "sigma"]
    mu2, sigma2 = load_statistics(tmp_path / "stats.npz")
    np.testing.assert_array_equal(mu2, mu)
    np.testing.assert_array_equal(sigma2, sigma)


def test_load_statistics_refuses_other_files(tmp_path):
    np.savez(tmp_path / "no_mu.npz", sigma=np.eye(2), mean=np.zeros(2))
    with pytest.raises(ValueError, match="missing \\['mu'\\]"):
        load_statistics(tmp_path / "no_mu.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match=".npz"):
        load_statistics(tmp_path / "single.npy")
    np.savez(tmp_path / "bad_shape.npz", mu=np.zeros(3), sigma=np.eye(2))
    with pytest.raises(ValueError, match="sigma"):
        load_statistics(tmp_path / "bad_shape.npz")


# -- Inception -----------------------------------------------------------------------------------------

# Top-level modules of the FID-Inception state dict (pytorch-fid's pt_inception-2015-12-05 file):
# 94 conv+BN units (stem 5; Mixed_5b-d 7 each; Mixed_6a 4; Mixed_6b-e 10 each; Mixed_7a 6;
# Mixed_7b-c 9 each) with 6 tensors each (conv.weight; bn.weight, bias, running_mean, running_var,
# num_batches_tracked), plus fc.weight and fc.bias: 566 tensors. No AuxLogits.
EXPECTED_TOP_LEVEL = {
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    "Mixed_7a", "Mixed_7b", "Mixed_7c", "fc",
}
EXPECTED_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_4a_3x3.bn.running_mean": (192,),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_4.conv.weight": (192, 192, 7, 1),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "fc.weight": (1008, 2048),
}


@pytest.fixture(scope="module")
def extractor():
    return InceptionFeatures.random(torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def small_extractor():
    """Same weights, no resize: cheap forwards on 80x80 images (not FID features)."""
    return InceptionFeatures.random(torch.Generator().manual_seed(0), resize_input=False)


def images(n, size, seed, low=0, high=256):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n, 3, size, size), generator=g, dtype=torch.uint8)


def test_weights_path_is_required():
    with pytest.raises(ValueError, match="never downloads"):
        InceptionFeatures()
    with pytest.raises(ValueError, match="weights_path="):
        InceptionFeatures(None)


def test_state_dict_follows_the_fid_inception_layout(extractor):
    sd = extractor.state_dict()
    assert {key.split(".")[0] for key in sd} == EXPECTED_TOP_LEVEL
    assert len(sd) == 566
    assert sum(key.endswith(".conv.weight") for key in sd) == 94
    for key, shape in EXPECTED_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    # torchvision's Inception-v3 (27,161,264 parameters) minus its auxiliary head (3,326,696),
    # with 1008 instead of 1000 classes (+8 * 2049).
    assert sum(p.numel() for p in extractor.parameters()) == 23_850_960
    assert inception_module.TOP_LEVEL_MODULES[-1] == "fc"
    assert set(inception_module.TOP_LEVEL_MODULES) == EXPECTED_TOP_LEVEL


def test_features_at_299_and_resized(extractor):
    with torch.inference_mode():
        full = extractor(images(2, 299, 1))
        small = extractor(images(2, 32, 2))
    for feats in (full, small):
        assert feats.shape == (2, 2048) and feats.dtype == torch.float32
        assert torch.isfinite(feats).all() and (feats >= 0).all()     # ReLU then average pool
    assert not torch.equal(small[0], small[1])


def test_preprocessing_scales_to_minus_one_one(extractor):
    x = torch.zeros(1, 3, 10, 10, dtype=torch.uint8)
    x[..., 5:] = 255
    y = extractor.preprocess(x)
    assert y.shape == (1, 3, 299, 299)
    assert y.min().item() == pytest.approx(-1.0, abs=1e-6) and y.max().item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(extractor.preprocess(images(1, 299, 3)), images(1, 299, 3) / 127.5 - 1.0)


def test_random_construction_is_deterministic_and_leaves_the_global_rng(small_extractor):
    state = torch.random.get_rng_state()
    other = InceptionFeatures.random(torch.Generator().manual_seed(0), resize_input=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    x = images(2, 80, 4)
    with torch.inference_mode():
        assert torch.equal(other(x), small_extractor(x))
        assert torch.equal(small_extractor(x), small_extractor(x))
    different = InceptionFeatures.random(torch.Generator().manual_seed(1), resize_input=False)
    with torch.inference_mode():
        assert not torch.equal(different(x), other(x))


def test_strict_load_from_state_dict_and_file(small_extractor, tmp_path):
    x = images(2, 80, 5)
    sd = small_extractor.state_dict()
    copy = InceptionFeatures.from_state_dict(sd, resize_input=False)
    # A file without the num_batches_tracked counters (older PyTorch) loads too.
    torch.save({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, tmp_path / "w.pth")
    loaded = InceptionFeatures(tmp_path / "w.pth", resize_input=False)
    with torch.inference_mode():
        reference = small_extractor(x)
        assert torch.equal(copy(x), reference)
        assert torch.equal(loaded(x), reference)
    assert loaded.resize_input is False and not any(p.requires_grad for p in loaded.parameters())

    missing = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    with pytest.raises(ValueError, match="fc.weight"):
        InceptionFeatures.from_state_dict(missing)
    extra = dict(sd, **{"AuxLogits.fc.weight": torch.zeros(1000, 768)})
    with pytest.raises(ValueError, match="AuxLogits"):
        InceptionFeatures.from_state_dict(extra)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(TypeError, match="state dict"):
        InceptionFeatures(tmp_path / "list.pth")


def test_stays_in_eval_mode_and_checks_inputs(small_extractor):
    small_extractor.train()
    assert not small_extractor.training and not small_extractor.Mixed_5b.branch1x1.bn.training
    with pytest.raises(TypeError, match="uint8"):
        small_extractor(torch.zeros(1, 3, 80, 80))
    with pytest.raises(ValueError, match="N, 3, H, W"):
        small_extractor(torch.zeros(1, 80, 80, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="at least 75"):
        small_extractor(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(TypeError, match="Generator"):
        InceptionFeatures.random(0)


# -- end to end ---------------------------------------------------------------------------------------


def write_pngs(folder, batch, subdirs=False):
    """``batch`` uint8 (N, 3, H, W) as {i:06d}.png (EDM naming; optionally in 000000/)."""
    for i, img in enumerate(batch.permute(0, 2, 3, 1).numpy()):
        path = folder / ("000000" if subdirs else "") / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid")
    a = images(5, 80, 20)                       # uniform noise
    b = images(5, 80, 21, low=100, high=200)    # narrower, so its features differ
    return a, write_pngs(root / "a", a, subdirs=True), write_pngs(root / "b", b)


def test_folder_and_array_statistics_agree(small_extractor, folders):
    a, folder_a, _ = folders
    mu, sigma = compute_statistics(folder_a, small_extractor, batch_size=2)
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048)
    mu_nhwc, sigma_nhwc = compute_statistics(a.permute(0, 2, 3, 1).numpy(), small_extractor, progress=True)
    with torch.inference_mode():
        expected = feature_statistics(small_extractor(a))
    # float32 convolutions round differently with the batch size (features agree to ~1e-7).
    for m, s in ((mu, sigma), (mu_nhwc, sigma_nhwc)):
        np.testing.assert_allclose(m, expected[0], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(s, expected[1], rtol=1e-4, atol=1e-7)


def test_fid_between_folders(small_extractor, folders, tmp_path):
    # The first 256 of the 2048 features keep the distances cheap under the default sqrtm (2048-d
    # distances take seconds each: see the slow test); folders, PNG reading, .npz and fid() are
    # the full path.
    def extractor(batch):
        return small_extractor(batch)[:, :256]

    _, folder_a, folder_b = folders
    stats_a = compute_statistics(folder_a, extractor)
    stats_b = compute_statistics(folder_b, extractor)
    save_statistics(tmp_path / "b.npz", *stats_b)
    d_ab = fid(folder_a, tmp_path / "b.npz", extractor)
    d_ba = frechet_distance(*stats_b, *stats_a)
    d_aa = fid(folder_a, stats_a, extractor)
    scale = np.trace(stats_a[1]) + np.trace(stats_b[1])
    assert d_ab > 1e-3 * scale
    assert d_ab == pytest.approx(d_ba, rel=1e-6)
    assert abs(d_aa) < 1e-6 * scale
    assert fid(folder_a, stats_b, extractor, method="eigh") == pytest.approx(d_ab, rel=1e-6)


def test_image_input_errors(small_extractor, tmp_path):
    with pytest.raises(ValueError, match="no .png"):
        compute_statistics(tmp_path, small_extractor)
    with pytest.raises(TypeError, match="uint8"):
        compute_statistics(np.zeros((2, 80, 80, 3)), small_extractor)
    with pytest.raises(ValueError, match="channel axis"):
        compute_statistics(np.zeros((2, 80, 80, 4), np.uint8), small_extractor)
    with pytest.raises(ValueError, match="at least 2"):
        compute_statistics(np.zeros((1, 80, 80, 3), np.uint8), small_extractor)
    write_pngs(tmp_path / "mixed", images(1, 80, 30))
    Image.fromarray(np.zeros((90, 90, 3), np.uint8)).save(tmp_path / "mixed" / "000001.png")
    with pytest.raises(ValueError, match="share one size"):
        compute_statistics(tmp_path / "mixed", small_extractor)
    with pytest.raises(ValueError, match="is a folder"):
        fid(np.zeros((2, 80, 80, 3), np.uint8), tmp_path, small_extractor)


@pytest.mark.slow
def test_default_sqrtm_at_full_dimension(extractor, folders):
    _, folder_a, folder_b = folders
    stats_a = compute_statistics(folder_a, extractor)
    stats_b = compute_statistics(folder_b, extractor)
    d_sqrtm = frechet_distance(*stats_a, *stats_b)
    assert d_sqrtm == pytest.approx(frechet_distance(*stats_a, *stats_b, method="eigh"), rel=1e-6)
    assert d_sqrtm > 0
