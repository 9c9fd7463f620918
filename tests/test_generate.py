"""Image generation with EDM conventions: seeds, files, per-seed determinism, every method, torchrun."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from smcdiff.apps.generate import (
    generate,
    image_path,
    parse_seeds,
    rank_batches,
    to_uint8,
)

REPO = Path(__file__).resolve().parents[1]


class Toy(torch.nn.Module):
    """An EDM-style denoiser for data ~ N(0, 0.25 I) on 3×4×4 images (optionally 'conditional')."""

    img_resolution, img_channels, sigma_min, sigma_max = 4, 3, 0.0, float("inf")

    def __init__(self, label_dim: int = 0):
        super().__init__()
        self.label_dim = label_dim
        self.seen_labels = []

    def forward(self, x, sigma, class_labels=None):
        if self.label_dim:
            self.seen_labels.append(class_labels)
        return x * 0.25 / (0.25 + sigma.reshape(-1, 1, 1, 1).to(x.dtype) ** 2)


def toy_ratio(x, sigma, **cond):
    return -0.1 * torch.tanh(x.flatten(1)).sum(1)  # bounded, like a clipped discriminator


def test_parse_seeds():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("1,2,5-7") == [1, 2, 5, 6, 7]
    for bad in ("", "a", "5-3", "1,,2"):
        with pytest.raises(ValueError):
            parse_seeds(bad)


def test_rank_batches_split_without_overlap():
    seeds = list(range(23))
    parts = [rank_batches(seeds, 4, r, 3) for r in range(3)]
    flat = [s for p in parts for b in p for s in b]
    assert sorted(flat) == seeds and len(flat) == len(set(flat))
    assert parts[0][0] == [0, 1, 2, 3] and parts[1][0] == [4, 5, 6, 7]
    with pytest.raises(ValueError):
        rank_batches(seeds, 4, 3, 3)


def test_paths_and_uint8():
    assert image_path("o", 12345, subdirs=True) == Path("o/012000/012345.png")
    assert image_path("o", 7) == Path("o/000007.png")
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 2, 2)
    assert to_uint8(x).flatten().tolist() == [0, 128, 255, 255]


@pytest.mark.parametrize("method", ["edm", "dg", "sedm", "diffrs", "pf"])
def test_every_method_writes_one_png_per_seed(method, tmp_path):
    params = {"num_particles": 2} if method == "pf" else {}
    paths = generate(Toy(), [3, 4, 5], tmp_path, method=method, steps=4, batch=2,
                     log_ratio=None if method in ("edm", "sedm") else toy_ratio, method_params=params)
    assert [p.name for p in paths] == ["000003.png", "000004.png", "000005.png"]
    img = np.asarray(Image.open(paths[0]))
    assert img.shape == (4, 4, 3) and img.dtype == np.uint8


@pytest.mark.parametrize("method", ["edm", "dg", "pf"])
def test_an_image_depends_on_its_seed_alone(method, tmp_path):
    params = {"num_particles": 2, "S_churn": 5.0} if method == "pf" else {"S_churn": 5.0}
    ratio = None if method == "edm" else toy_ratio
    generate(Toy(), [0, 1, 2, 3], tmp_path / "a", method=method, steps=4, batch=4, log_ratio=ratio, method_params=params)
    generate(Toy(), [2], tmp_path / "b", method=method, steps=4, batch=1, log_ratio=ratio, method_params=params)
    a = np.asarray(Image.open(tmp_path / "a" / "000002.png"))
    b = np.asarray(Image.open(tmp_path / "b" / "000002.png"))
    assert np.array_equal(a, b)


def test_labels_per_seed_and_fixed_class(tmp_path):
    net = Toy(label_dim=5)
    generate(net, [0, 1, 2], tmp_path / "random", steps=2, batch=3)
    labels = net.seen_labels[0]
    assert labels.shape == (3, 5) and (labels.sum(1) == 1).all()
    net = Toy(label_dim=5)
    generate(net, [0, 1], tmp_path / "fixed", steps=2, batch=2, class_idx=4)
    assert (net.seen_labels[0].argmax(1) == 4).all()
    with pytest.raises(ValueError, match="out of range"):
        generate(Toy(label_dim=5), [0], tmp_path / "bad", steps=2, class_idx=9)
    with pytest.raises(ValueError, match="unconditional"):  # a class for an unconditional net is not ignored
        generate(Toy(), [0], tmp_path / "bad", steps=2, class_idx=1)
    assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_bad_method_and_missing_discriminator(tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        generate(Toy(), [0], tmp_path, method="bogus")
    with pytest.raises(ValueError, match="discriminator"):
        generate(Toy(), [0], tmp_path, method="dg")


def test_torchrun_two_processes_split_the_seeds(tmp_path):
    # `torchrun -m smcdiff.apps.cli generate` with 2 CPU processes (gloo) on a tiny EDM network pickle.
    from smcdiff.models.precond import EDMPrecond
    from tests.models import persistence_fixtures as pf

    kwargs = dict(img_resolution=8, img_channels=3, label_dim=0, model_type="SongUNet", model_channels=16,
                  channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)
    net = pf.randomize_(EDMPrecond(**kwargs), seed=1).eval().requires_grad_(False)
    pkl = tmp_path / "tiny.pkl"
    pkl.write_bytes(pf.edm_pickle_from_modules(net, kwargs))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "smcdiff.apps.cli",
           "generate", "--network", str(pkl), "--outdir", str(out), "--seeds", "0-9", "--batch", "2", "--steps", "3",
           "--device", "cpu", "--manifest"]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [(out / f"manifest-rank{r}.txt").read_text().split() for r in range(2)]
    assert ranks[0] and ranks[1] and not set(ranks[0]) & set(ranks[1])
    assert sorted(ranks[0] + ranks[1]) == [f"{s:06d}" for s in range(10)]
    assert sorted(p.name for p in out.glob("*.png")) == [f"{s:06d}.png" for s in range(10)]
    # batches of 2 dealt round-robin: rank 0 has seeds 0,1,4,5,8,9
    assert ranks[0] == ["000000", "000001", "000004", "000005", "000008", "000009"]
    # only rank 0 prints
    assert proc.stdout.count("smcdiff generate:") == 1


def test_a_net_without_an_image_shape_is_refused(tmp_path):
    net = torch.nn.Identity()
    with pytest.raises(ValueError, match="square images: img_channels and img_resolution"):
        generate(net, [0], tmp_path / "x", steps=2)
    assert not (tmp_path / "x").exists()
