"""``smcdiff generate`` survives interruption: atomic writes, resume, stored settings (issue 13).

The end-to-end check kills a real ``python -m smcdiff.apps.cli generate`` run (SIGKILL) on the
shipped digits denoiser after some images exist, then reruns it: no partial PNG may be left, the
finished images are not touched again, and every image equals an uninterrupted run's, byte for byte.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from smcdiff.apps.generate import SETTINGS_FILE, generate, image_ok, image_path

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class Toy(torch.nn.Module):
    """An EDM-style denoiser for data ~ N(0, scale² I) on 1×4×4 images; counts its calls."""

    img_resolution, img_channels, label_dim, sigma_min, sigma_max = 4, 1, 0, 0.0, float("inf")

    def __init__(self, scale: float = 0.5):
        super().__init__()
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float64))
        self.calls = 0

    def forward(self, x, sigma, class_labels=None):
        self.calls += 1
        v = self.scale**2
        return x * v / (v + sigma.reshape(-1, 1, 1, 1).to(x.dtype) ** 2)


def ratio(x, sigma, **cond):
    return -0.1 * torch.tanh(x.flatten(1)).sum(1)


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def digits_net():
    from smcdiff.apps.generate_cli import load_network

    return load_network("digits")[0]


def test_a_killed_run_resumes_and_matches_an_uninterrupted_one(tmp_path):
    seeds, steps, batch = "0-59", 6, 2
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "smcdiff.apps.cli", "generate", "--network", "digits", "--outdir", str(out),
           "--seeds", seeds, "--steps", str(steps), "--batch", str(batch), "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.png"))) < 7 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up, as with a power cut of the process
    proc.communicate()
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.png")}
    assert 7 <= len(before) < 60, f"the kill came too late or too early ({len(before)} images)"
    # No partial image: every *.png there decodes to an 8x8 grey image (a kill mid-write leaves a hidden .tmp).
    assert all(image_ok(out / name, (1, 8, 8)) and (out / name).stat().st_size > 0 for name in before)

    rerun = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{len(before)} of 60 images already there (skipped)" in rerun.stdout
    assert f"{60 - len(before)} images written, {len(before)} already there" in rerun.stdout
    after = pngs(out)
    assert sorted(after) == [f"{s:06d}.png" for s in range(60)]
    # The finished images were not written again (same inode and modification time).
    assert {n: ((out / n).stat().st_ino, (out / n).stat().st_mtime_ns) for n in before} == before

    reference = generate(digits_net(), range(60), tmp_path / "reference", steps=steps, batch=batch)
    assert reference.written == 60
    assert after == pngs(tmp_path / "reference")  # bit for bit


@pytest.mark.parametrize("method", ["edm", "diffrs", "pf"])
def test_a_partly_written_batch_is_rerun_whole_and_matches(method, tmp_path):
    # A kill while a batch was being written leaves some of its images; DiffRS's images depend on
    # the whole batch (one generator per batch), so the batch is rerun whole and only the missing
    # images are written.
    params = {"num_particles": 2, "S_churn": 5.0} if method == "pf" else {"S_churn": 5.0}
    if method == "diffrs":
        params = {"num_warmup": 2, "max_iter": 40}
    kw = {"method": method, "steps": 5, "batch": 3, "log_ratio": None if method == "edm" else ratio,
          "method_params": params}
    full = generate(Toy(), range(7), tmp_path / "full", **kw)
    assert full.written == 7
    part = tmp_path / "part"
    generate(Toy(), range(7), part, **kw)
    (part / "000004.png").unlink()  # missing
    (part / "000005.png").write_bytes(b"")  # a 0-byte file, as the old writer could leave
    (part / "000001.png").write_bytes((part / "000001.png").read_bytes()[:40])  # truncated
    kept = (part / "000003.png").stat().st_mtime_ns
    net = Toy()
    again = generate(net, range(7), part, **kw)
    assert (again.written, again.skipped) == (3, 4)
    assert (part / "000003.png").stat().st_mtime_ns == kept  # finished images of a rerun batch stay as they are
    assert net.calls > 0 and pngs(part) == pngs(tmp_path / "full")
    net = Toy()
    done = generate(net, range(7), part, **kw)
    assert (done.written, done.skipped, net.calls) == (0, 7, 0)  # nothing left: no network call at all


def test_other_settings_are_refused_before_sampling(tmp_path):
    generate(Toy(), range(4), tmp_path, steps=4, batch=2)
    changes = [({"steps": 5}, "steps: 4 before, 5 now"),
               ({"method_params": {"S_churn": 1.0}}, "method_params"),
               ({"sigma_max": 10.0}, "sigma_max: 80.0 before, 10.0 now"),
               ({"method": "dg", "log_ratio": ratio}, "method: 'edm' before, 'dg' now")]
    for change, message in changes:
        net = Toy()
        with pytest.raises(ValueError, match="other settings") as err:
            generate(net, range(6), tmp_path, **{"steps": 4, "batch": 2, **change})
        assert message in str(err.value) and "--overwrite" in str(err.value)
        assert net.calls == 0
    with pytest.raises(ValueError, match="network: Toy [0-9a-f]{12} before, Toy [0-9a-f]{12} now"):  # other weights
        generate(Toy(scale=0.6), range(6), tmp_path, steps=4, batch=2)
    # The batch size only matters to DiffRS, so it is no setting of the others.
    assert generate(Toy(), range(6), tmp_path, steps=4, batch=4).skipped == 4


def test_overwrite_starts_over_and_records_the_new_settings(tmp_path):
    generate(Toy(), range(3), tmp_path, steps=4)
    old = pngs(tmp_path)
    net = Toy(scale=0.7)
    out = generate(net, range(3), tmp_path, steps=4, resume=False)
    assert (out.written, out.skipped) == (3, 0) and pngs(tmp_path) != old
    settings = json.loads((tmp_path / SETTINGS_FILE).read_text())["settings"]
    assert settings["network"]["class"] == "Toy"
    assert generate(Toy(scale=0.7), range(3), tmp_path, steps=4).skipped == 3  # and resumes from them


def test_images_without_settings_are_refused(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8), "L").save(tmp_path / "000000.png")
    with pytest.raises(ValueError, match=f"no {SETTINGS_FILE}"):
        generate(Toy(), range(2), tmp_path, steps=3)
    # A settings file left by a run that wrote no image is simply replaced.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / SETTINGS_FILE).write_text('{"settings": {"method": "dg"}}')
    assert generate(Toy(), range(2), empty, steps=3).written == 2


def test_the_settings_file_says_how_the_images_were_made(tmp_path):
    generate(Toy(), [5], tmp_path, method="pf", steps=4, log_ratio=ratio, method_params={"num_particles": 2},
             sigma_min=0.01, sigma_max=20.0, rho=5.0)
    s = json.loads((tmp_path / SETTINGS_FILE).read_text())["settings"]
    assert (s["method"], s["method_params"], s["steps"], s["sigma_min"], s["sigma_max"], s["rho"], s["class"]) == \
        ("pf", {"num_particles": 2}, 4, 0.01, 20.0, 5.0, None)
    assert len(s["sigmas"]) == 5 and s["sigmas"][0] == 20.0 and s["sigmas"][-1] == 0.0
    assert len(s["network"]["sha256"]) == 64 and s["discriminator"].endswith("test_generate_resume.ratio")
    assert s["image_shape"] == [1, 4, 4] and s["batch"] is None  # batch only for DiffRS


def test_a_failed_write_leaves_neither_image_nor_temporary_file(tmp_path, monkeypatch):
    import PIL.Image

    def broken_save(self, fp, format=None, **kw):
        fp.write(b"\x89PNG\r\n\x1a\n partial")
        raise OSError("disk full")

    monkeypatch.setattr(PIL.Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        generate(Toy(), [0], tmp_path, steps=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [SETTINGS_FILE]


def test_files_keep_the_usual_permissions(tmp_path):
    generate(Toy(), [0], tmp_path, steps=2)
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "000000.png").stat().st_mode & 0o777 == 0o666 & ~mask


def test_subdirs_resume_too(tmp_path):
    generate(Toy(), [1, 1001], tmp_path, steps=2, subdirs=True)
    assert image_path(tmp_path, 1001, True).is_file()
    again = generate(Toy(), [1, 1001, 2002], tmp_path, steps=2, subdirs=True)
    assert (again.written, again.skipped) == (1, 2)
