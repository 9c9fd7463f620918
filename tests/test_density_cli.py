"""``smcdiff likelihood`` / ``smcdiff classify`` through the functions the main CLI wires in."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from smcdiff.apps.density_cli import add_classify_parser, add_likelihood_parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smcdiff")
    sub = parser.add_subparsers(dest="command")
    add_likelihood_parser(sub)
    add_classify_parser(sub)
    return parser


def _run(argv):
    args = _parser().parse_args(argv)
    return args.func(args)


def test_help_has_examples(capsys):
    for name in ("likelihood", "classify"):
        with pytest.raises(SystemExit):
            _parser().parse_args([name, "--help"])
        out = capsys.readouterr().out
        assert "examples:" in out and f"smcdiff {name}" in out


def test_likelihood_on_the_exact_mixture_matches_closed_form(capsys):
    assert _run(["likelihood", "--model", "mixture-2d", "--data", "mixture-2d", "--num", "8", "--rtol", "1e-7",
                 "--atol", "1e-7", "--no-progress"]) == 0
    out = capsys.readouterr().out
    lines = {line.split(":")[0]: line for line in out.splitlines()}
    estimate = float(lines["log p"].split()[2])
    exact = float(lines["exact log p_sigma_min"].split()[3])
    assert abs(estimate - exact) < 0.05  # only the N(0, 80²) prior differs (see tests/test_likelihood.py)
    assert "exact divergence" in out


def test_likelihood_digits_ode_and_elbo(capsys):
    assert _run(["likelihood", "--num", "2", "--batch", "2", "--rtol", "1e-3", "--atol", "1e-3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "bits/dim" in out and "levels 17, dequantised" in out and "hutchinson divergence" in out
    assert _run(["likelihood", "--estimator", "elbo", "--draws", "4", "--num", "3", "--no-progress"]) == 0
    assert "8 network evaluations per point" in capsys.readouterr().out


def test_likelihood_reads_uint8_images(tmp_path, capsys):
    images = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8, 1), dtype=np.uint8)  # NHWC
    np.savez(tmp_path / "images.npz", x=images)
    assert _run(["likelihood", "--data", str(tmp_path / "images.npz"), "--estimator", "elbo", "--draws", "2",
                 "--no-progress"]) == 0
    assert "levels 256" in capsys.readouterr().out


def test_classify_with_a_small_conditional_network(tmp_path, capsys):
    from smcdiff.apps.train_conditional import train_conditional_digits

    train_conditional_digits(tmp_path, recipe={"steps": 2, "width": 8})
    weights = str(tmp_path / "conditional_denoiser.pt")
    assert _run(["classify", "--weights", weights, "--num", "3", "--stages", "2:2,3:1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "22 network evaluations per image" in out  # 10 classes x 2 draws + 2 x 1


@pytest.mark.parametrize("argv,match", [
    (["likelihood", "--model", "nothing"], "--model must be one of"),
    (["likelihood", "--model", "missing.pkl"], "no such file"),
    (["likelihood", "--data", "data.csv"], "--data must be one of"),
    (["likelihood", "--model", "digits-conditional", "--data", "mixture-2d"], "class-conditional"),
    (["likelihood", "--model", "mixture-2d", "--data", "digits-test"], "takes points of shape|expected x of shape"),
    (["likelihood", "--sigma-min", "5", "--sigma-max", "1"], "--sigma-min < --sigma-max"),
    (["classify", "--stages", "32-3"], "--stages must look like"),
    (["classify", "--stages", "8:3,4:1"], "stages need increasing"),
    (["classify", "--weights", "missing.pt"], "no such file"),
])
def test_user_errors_are_clear(argv, match):
    with pytest.raises(ValueError, match=match):
        _run(argv + ["--no-progress"])


def test_bad_option_values_are_refused_by_argparse(capsys):
    for argv in (["likelihood", "--num", "0"], ["likelihood", "--rtol", "-1"], ["classify", "--draws", "x"]):
        with pytest.raises(SystemExit):
            _parser().parse_args(argv)
    assert "expected" in capsys.readouterr().err


def _example():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "diffusion_classifier_digits.py"
    spec = importlib.util.spec_from_file_location("diffusion_classifier_digits", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_example_script_help(capsys):
    with pytest.raises(SystemExit) as err:
        _example().main(["--help"])
    assert err.value.code == 0 and "--quick" in capsys.readouterr().out


@pytest.mark.slow
def test_example_script_quick(capsys, tmp_path):
    import json

    assert _example().main(["--quick", "--json", str(tmp_path / "rows.json")]) == 0
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert [r["evaluations_per_image"] for r in rows] == [10, 40, 160, 152]
    assert rows[-1]["accuracy"] >= 0.9  # measured 0.967 on these 60 images
