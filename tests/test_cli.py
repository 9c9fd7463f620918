"""The smcdiff command line: demo and compare end to end (small sizes), help, bad options."""

import re

import pytest

from smcdiff.apps.cli import main
from smcdiff.apps.demo import run_demo

PNG = b"\x89PNG\r\n\x1a\n"


def test_demo_prints_the_table_and_writes_a_figure(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "--groups", "2", "--particles", "256", "--steps", "16", "--no-progress", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for name in ("heun (model)", "smc-ratio", "is-ratio", "smc-posterior"):
        assert f"| {name} |" in text
    assert out.read_bytes()[:8] == PNG


def test_demo_corrects_the_model():
    # The SMC rows recover the data weights (error well below the plain sampler's ~0.4).
    rows = {r.method: r for r in run_demo(num_groups=4, num_particles=512, num_steps=24)[0]}
    assert rows["heun (model)"].weight_error > 0.3
    assert rows["smc-ratio"].weight_error < 0.05
    assert rows["smc-posterior"].weight_error < 0.05
    assert abs(rows["smc-posterior"].log_evidence - rows["smc-posterior"].exact_log_evidence) < 0.2
    assert rows["smc-ratio"].nfe == 47


def test_compare_runs_every_method(tmp_path, capsys):
    out = tmp_path / "cmp.png"
    assert main(["compare", "--samples", "64", "--steps", "6", "--particles", "2", "--no-progress", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for name in ("edm", "dg", "sedm-g++", "diffrs", "particle filter", "discriminator-select"):
        assert re.search(rf"\| {re.escape(name)}", text), name
    assert out.read_bytes()[:8] == PNG


@pytest.mark.parametrize("argv", [["demo", "--particles", "0"], ["demo", "--ess-threshold", "1.5"],
                                  ["demo", "--scheme", "bogus"], []])
def test_bad_options_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_help_mentions_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    for opt in ("--groups", "--particles", "--steps", "--churn", "--scheme", "--ess-threshold", "--seed", "--out"):
        assert opt in text
