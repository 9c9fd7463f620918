"""Bad input at the command line (issue 13): one ``error: ...`` line on stderr, exit status 2, no
traceback, and output paths checked before anything is sampled. Each row of
docs/reliability.md (command-line part) names its test here (or in test_generate_resume.py / test_docs.py)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smcdiff.apps.cli import main

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "smcdiff" / "assets" / "digits"
GEN = ["generate", "--network", "digits", "--seeds", "0-1", "--steps", "2", "--device", "cpu"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def run(argv, capsys):
    """(exit status, stderr, stdout) of ``smcdiff argv`` run in this process."""
    try:
        code = main(argv)
    except SystemExit as err:
        code = err.code
    out = capsys.readouterr()
    return code, out.err, out.out


def assert_user_error(code, err, pattern):
    import re

    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]


@pytest.fixture
def afile(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    return f


@pytest.fixture
def unwritable(tmp_path):
    """A folder nobody here may write in: chmod 500 (as root, which ignores modes: /sys/kernel)."""
    if os.geteuid() != 0:
        d = tmp_path / "read-only"
        d.mkdir()
        d.chmod(0o500)
        yield d
        d.chmod(0o700)
    elif Path("/sys/kernel").is_dir() and _root_cannot_write():
        yield Path("/sys/kernel")
    else:
        pytest.skip("no folder is unwritable for this user")


def _root_cannot_write() -> bool:
    try:
        open("/sys/kernel/.smcdiff-probe", "w").close()
    except OSError:
        return True
    os.unlink("/sys/kernel/.smcdiff-probe")
    return False


@pytest.fixture
def no_sampling(monkeypatch):
    """Make every sampling entry point of the apps fail: an error must come before them."""
    import smcdiff.apps.compare
    import smcdiff.apps.demo
    import smcdiff.apps.generate
    import smcdiff.apps.generate_cli
    import smcdiff.apps.table
    import smcdiff.apps.train

    def sampled(*args, **kwargs):
        raise AssertionError("sampling (or loading the network) started before the bad input was reported")

    for module, name in ((smcdiff.apps.table, "run_table"), (smcdiff.apps.demo, "run_demo"),
                         (smcdiff.apps.compare, "run_compare"), (smcdiff.apps.train, "train_denoiser_on"),
                         (smcdiff.apps.generate_cli, "load_network"), (smcdiff.apps.generate, "generate"),
                         (smcdiff.models.pretrained, "load_digits_models")):
        monkeypatch.setattr(module, name, sampled)


import smcdiff.models.pretrained

# --- output paths: refused before any sampling -------------------------------------------------

def test_generate_outdir_is_a_file(afile, capsys, no_sampling):
    assert_user_error(*run(GEN + ["--outdir", str(afile)], capsys)[:2], r"--outdir .*afile is a file; expected a folder")


def test_generate_outdir_under_a_file(afile, capsys, no_sampling):
    assert_user_error(*run(GEN + ["--outdir", str(afile / "sub")], capsys)[:2], r"cannot create the folder")


def test_generate_outdir_unwritable(unwritable, capsys, no_sampling):
    assert_user_error(*run(GEN + ["--outdir", str(unwritable / "out")], capsys)[:2],
                      r"--outdir .*: cannot (create the folder|write there)")


def test_generate_outdir_empty(tmp_path, capsys, no_sampling, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_user_error(*run(GEN + ["--outdir", ""], capsys)[:2], r"--outdir: expected a folder, got an empty path")
    assert not list(tmp_path.iterdir())  # before: the PNGs landed in the current folder


def test_table_out_is_a_file(afile, capsys, no_sampling):
    assert_user_error(*run(["table", "--quick", "--out", str(afile)], capsys)[:2], r"--out .*afile is a file")


def test_table_out_unwritable(unwritable, capsys, no_sampling):
    assert_user_error(*run(["table", "--quick", "--out", str(unwritable / "t")], capsys)[:2], r"--out .*cannot")


def test_demo_out_is_a_folder(tmp_path, capsys, no_sampling):
    assert_user_error(*run(["demo", "--out", str(tmp_path)], capsys)[:2], r"is a folder; expected a file name")


def test_demo_out_under_a_file(afile, capsys, no_sampling):
    assert_user_error(*run(["demo", "--out", str(afile / "x.png")], capsys)[:2], r"folder .*afile is a file")


def test_demo_out_unknown_format(tmp_path, capsys, no_sampling):
    assert_user_error(*run(["demo", "--out", str(tmp_path / "x.txt")], capsys)[:2], r"expected a name ending in .*\.png")


def test_demo_out_without_ending(tmp_path, capsys, no_sampling):
    # before: matplotlib wrote figure.png while the demo said "figure written to .../figure"
    assert_user_error(*run(["demo", "--out", str(tmp_path / "figure")], capsys)[:2], r"expected a name ending in")


def test_demo_out_unwritable(unwritable, capsys, no_sampling):
    assert_user_error(*run(["demo", "--out", str(unwritable / "x.png")], capsys)[:2], r"cannot")


def test_compare_out_unknown_format(tmp_path, capsys, no_sampling):
    assert_user_error(*run(["compare", "--out", str(tmp_path / "c.bmpx")], capsys)[:2], r"expected a name ending in")


def test_compare_out_in_a_new_folder_is_created(tmp_path, capsys):
    out = tmp_path / "new" / "c.png"
    assert run(["compare", "--samples", "16", "--steps", "3", "--particles", "2", "--no-progress", "--out", str(out)],
               capsys)[0] == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_train_out_under_a_file(afile, capsys, no_sampling):
    assert_user_error(*run(["train", "denoiser", "--data", "moons", "--out", str(afile / "d.pt")], capsys)[:2],
                      r"--out .*d\.pt: folder .*afile is a file")


def test_train_digits_models_out_is_a_file(afile, capsys, monkeypatch):
    import smcdiff.apps.train

    monkeypatch.setattr(smcdiff.apps.train, "train_digits_models", lambda *a, **k: pytest.fail("trained"))
    assert_user_error(*run(["train", "digits-models", "--out", str(afile)], capsys)[:2], r"is a file; expected a folder")


# --- generate: seeds, devices, networks, options ------------------------------------------------

@pytest.mark.parametrize("seeds, pattern", [
    ("5-3", "runs backwards"), ("abc", "cannot parse seeds"), ("", "cannot parse seeds"),
    ("1,1", "seed 1 is listed twice"), ("4294967296", r"below 2\*\*32"), ("0-99999999999", r"below 2\*\*32"),
    ("0-4294967295", "too many seeds"),
], ids=["backwards", "text", "empty", "duplicate", "2**32", "huge-range", "4e9-seeds"])
def test_generate_bad_seeds(seeds, pattern, tmp_path, capsys, no_sampling):
    assert_user_error(*run(GEN + ["--outdir", str(tmp_path), "--seeds", seeds], capsys)[:2], pattern)


def test_generate_device_not_a_device(tmp_path, capsys, no_sampling):
    assert_user_error(*run(GEN + ["--outdir", str(tmp_path), "--device", "bogus"], capsys)[:2],
                      r"--device 'bogus' is not a torch device")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA is available here")
def test_generate_device_cuda_without_cuda(tmp_path, capsys, no_sampling):
    # before: AssertionError traceback ("Torch not compiled with CUDA enabled"), exit 1
    assert_user_error(*run(GEN + ["--outdir", str(tmp_path), "--device", "cuda"], capsys)[:2],
                      r"CUDA is not available here; use --device cpu")


@pytest.mark.parametrize("option, value", [("--w1", "nan"), ("--S_noise", "nan"), ("--rho", "nan"),
                                           ("--sigma_max", "nan")])
def test_generate_nan_options(option, value, tmp_path, capsys, no_sampling):
    assert_user_error(*run(GEN + ["--outdir", str(tmp_path), "--method", "sedm", option, value], capsys)[:2],
                      rf"argument {option}: expected a number, got nan")


def test_generate_option_of_the_wrong_type(tmp_path, capsys, no_sampling):
    code, err, _ = run(GEN + ["--outdir", str(tmp_path), "--method", "pf", "--resample-at", "x"], capsys)
    assert_user_error(code, err, r"--resample-at: expected comma-separated integers, got 'x'")
    assert "invalid _ints value" not in err and len(err.splitlines()) == 2  # one usage hint + the error


@pytest.mark.parametrize("argv, pattern", [
    (["--sigma_min", "-1"], "sigma_min must be > 0"),
    (["--sigma_min", "10", "--sigma_max", "1"], "expected sigma_min < sigma_max"),
    (["--class", "3"], "class 3 given, but the network is unconditional"),
], ids=["sigma-negative", "sigma-swapped", "class-on-unconditional"])
def test_generate_bad_settings_write_nothing(argv, pattern, tmp_path, capsys):
    out = tmp_path / "out"
    assert_user_error(*run(GEN + ["--outdir", str(out), *argv], capsys)[:2], pattern)
    assert not list(out.glob("*.png"))


def test_generate_pf_with_no_particles(tmp_path, capsys):
    out = tmp_path / "out"
    code, err, _ = run(GEN + ["--outdir", str(out), "--method", "pf", "--discriminator", "digits", "--particles", "0"],
                       capsys)
    assert_user_error(code, err, r"num_particles")
    assert not list(out.glob("*.png"))


def test_generate_method_without_discriminator(tmp_path, capsys, no_sampling):
    assert_user_error(*run(GEN + ["--outdir", str(tmp_path), "--method", "dg"], capsys)[:2],
                      r"method 'dg' needs a discriminator")


def test_generate_classifier_without_head(tmp_path, capsys):
    assert_user_error(*run(GEN + ["--outdir", str(tmp_path), "--method", "sedm", "--classifier", "c.pt"], capsys)[:2],
                      r"--classifier needs --discriminator")


@pytest.mark.parametrize("name, pattern", [
    ("missing.pkl", r"--network .*missing\.pkl: no such file"),
    ("empty.pkl", r"empty\.pkl: not an EDM network pickle .*an empty file"),
    ("garbage.pkl", r"garbage\.pkl: not an EDM network pickle"),
    ("mlp.pt", r"holds a MLPDenoiser for inputs of shape \(2,\); generate needs an image denoiser"),
    ("discriminator.pt", r"holds a ConvTimeDiscriminator .*generate needs an image denoiser"),
], ids=["missing", "empty", "garbage", "vector-denoiser", "a-discriminator"])
def test_generate_bad_network_files(name, pattern, tmp_path, capsys):
    import torch

    from smcdiff.models import small_nets

    (tmp_path / "empty.pkl").write_bytes(b"")
    (tmp_path / "garbage.pkl").write_bytes(bytes(range(256)) * 4)
    small_nets.save(small_nets.MLPDenoiser(2, hidden=8, generator=torch.Generator().manual_seed(0)), tmp_path / "mlp.pt")
    path = DIGITS / name if name == "discriminator.pt" else tmp_path / name
    assert_user_error(*run(["generate", "--network", str(path), "--outdir", str(tmp_path / "o"), "--seeds", "0"],
                           capsys)[:2], pattern)


def test_generate_denoiser_as_discriminator(tmp_path, capsys):
    assert_user_error(*run(GEN + ["--outdir", str(tmp_path), "--method", "dg", "--discriminator",
                                  str(DIGITS / "denoiser.pt")], capsys)[:2], r"holds a ConvDenoiser, not a discriminator")


def test_generate_resume_with_other_settings(tmp_path, capsys):
    assert run(GEN + ["--outdir", str(tmp_path)], capsys)[0] == 0
    code, err, _ = run(GEN + ["--outdir", str(tmp_path), "--steps", "3", "--method", "dg", "--discriminator", "digits"],
                       capsys)
    assert_user_error(code, err, r"other settings \(discriminator: none before, ConvTimeDiscriminator [0-9a-f]{12} now; "
                                 r"method: 'edm' before, 'dg' now; steps: 2 before, 3 now\).*--overwrite")
    assert run(GEN + ["--outdir", str(tmp_path), "--steps", "3", "--overwrite"], capsys)[0] == 0


def test_generate_folder_of_unknown_images(tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(tmp_path / "000000.png")
    assert_user_error(*run(GEN + ["--outdir", str(tmp_path)], capsys)[:2], r"no generate-settings\.json")


# --- table, train -------------------------------------------------------------------------------

@pytest.mark.parametrize("content, pattern", [
    (None, r"--from-json .*: no such file"),
    ("{not json", r"not a results\.json written by smcdiff table \(JSONDecodeError"),
    ('{"config": {}}', r"not a results\.json written by smcdiff table \(KeyError: 'runs'\)"),
], ids=["missing", "garbage", "partial"])
def test_table_from_bad_json(content, pattern, tmp_path, capsys):
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    assert_user_error(*run(["table", "--from-json", str(path), "--out", str(tmp_path / "t")], capsys)[:2], pattern)


def test_table_weights_missing(tmp_path, capsys):
    assert_user_error(*run(["table", "--quick", "--weights", str(tmp_path / "nope"), "--out", str(tmp_path / "t")],
                           capsys)[:2], r"lacks \['denoiser\.pt'")


def test_table_duplicate_seeds(tmp_path, capsys, no_sampling):
    assert_user_error(*run(["table", "--quick", "--seeds", "1,1", "--out", str(tmp_path)], capsys)[:2],
                      r"seeds must be distinct")


@pytest.mark.parametrize("argv, pattern", [
    (["train", "digits-models", "--out", "x", "--steps", "50"], "takes its settings from --recipe"),
    (["train", "denoiser", "--out", "d.pt"], "training a denoiser needs --data"),
], ids=["digits-models-steps", "no-data"])
def test_train_option_errors_exit_2(argv, pattern, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_user_error(*run(argv, capsys)[:2], pattern)


def test_demo_infinite_churn(capsys, no_sampling):
    assert_user_error(*run(["demo", "--churn", "inf"], capsys)[:2], r"--churn: expected a finite number >= 0")


# --- the process: exit status, one line, --debug -------------------------------------------------

def smcdiff(*argv, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "smcdiff.apps.cli", *argv], env=env, cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=300, check=False)


def test_a_process_exits_2_with_one_line(tmp_path):
    # A library error (ValueError) and an option error (UsageError, before: exit 1) in real processes.
    proc = smcdiff("generate", "--network", str(tmp_path / "none.pkl"), "--outdir", str(tmp_path / "o"))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        (f"error: --network {tmp_path / 'none.pkl'}: no such file (smcdiff never downloads; pass a local file or one "
         "of ['digits'])")]
    proc = smcdiff("train", "digits-models", "--out", str(tmp_path / "m"), "--steps", "50")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("error: digits-models takes its settings from --recipe")


def test_debug_shows_the_traceback(tmp_path):
    proc = smcdiff("--debug", "generate", "--network", str(tmp_path / "none.pkl"), "--outdir", str(tmp_path / "o"))
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "FileNotFoundError" in proc.stderr


def test_reproduce_tables_unknown_row_exits_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "reproduce_tables.py"), "cifar10", "--smoke",
                           "--rows", "bogus"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: unknown rows ['bogus']")


# --- generate --pipeline (text-to-image) is wired to smcdiff.apps.pipeline -------------------------

def test_generate_pipeline_is_dispatched(tmp_path, capsys, monkeypatch):
    import smcdiff.apps.pipeline

    seen = {}

    def fake(**kwargs):
        seen.update(kwargs)
        return [tmp_path / "000000.png"]

    monkeypatch.setattr(smcdiff.apps.pipeline, "generate_from_pipeline", fake)
    code, err, _ = run(["generate", "--pipeline", "sd", "--prompt", "a cat", "--outdir", str(tmp_path), "--seeds",
                          "0-3", "--method", "pf-hybrid", "--particles", "10", "--cfg", "7.5", "--device", "cpu"], capsys)
    assert code == 0, err
    assert (seen["pipeline_dir"], seen["prompts"], seen["method"], seen["method_params"], seen["seeds"]) == \
        ("sd", ["a cat"], "pf-hybrid", {"num_particles": 10}, "0-3")


@pytest.mark.parametrize("argv, pattern", [
    (["--pipeline", "no-such-folder", "--prompt", "a cat"], r"no-such-folder"),
    (["--pipeline", "sd", "--network", "digits", "--prompt", "x"], r"--network and --pipeline exclude each other"),
    (["--method", "pf-hybrid", "--network", "digits"], r"method 'pf-hybrid' needs --pipeline"),
    ([], r"generate needs --network"),
], ids=["missing-folder", "both", "t2i-method-without-pipeline", "neither"])
def test_generate_pipeline_errors(argv, pattern, tmp_path, capsys):
    assert_user_error(*run(["generate", "--outdir", str(tmp_path), "--device", "cpu", *argv], capsys)[:2], pattern)


def test_reproduce_tables_smoke_is_small_by_default(monkeypatch, tmp_path, capsys):
    # Run as its docstring shows (`reproduce_tables.py cifar10 --smoke`): before, it started on
    # 50,000 seeds in ./runs; now 4 seeds into a temporary folder.
    import importlib
    import importlib.util

    fid_module = importlib.import_module("smcdiff.metrics.fid")  # smcdiff.metrics.fid is also a function
    spec = importlib.util.spec_from_file_location("reproduce_tables", REPO / "examples" / "reproduce_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert "reproduce_tables.py cifar10 --smoke\n" in mod.__doc__
    calls = []
    monkeypatch.setattr(mod, "generate", lambda net, seeds, outdir, **kw: calls.append((list(seeds), Path(outdir), kw)))
    monkeypatch.setattr(fid_module, "fid", lambda *a, **k: 0.0)
    monkeypatch.chdir(tmp_path)
    assert mod.main(["cifar10", "--smoke"]) == 0
    assert len(calls) == 4 and all(seeds == [0, 1, 2, 3] and kw["batch"] == 4 for seeds, _, kw in calls)
    assert not (tmp_path / "runs").exists() and all(not out.is_relative_to(tmp_path) for _, out, _ in calls)
