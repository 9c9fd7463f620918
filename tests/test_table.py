"""The digits table: verdict arithmetic on made-up runs, the results file, and the ``--quick`` table
end to end through the CLI on the shipped models (about a minute on one core)."""

import json
import math

import pytest

from smcdiff.apps.cli import main
from smcdiff.apps.table import BEGIN, END, Run, TableConfig, method_specs, summarize, write_results

pytestmark = pytest.mark.usefixtures("one_thread")


def run(method, family, steps, seed, nfe, fd):
    return Run(method, family, steps, seed, nfe, 0.0, 1.0, fd, 0.5, 0.5, 0.1)


def fake_runs(method_fds, base_fds=(10.0, 11.0, 12.0)):
    runs = [run("base 9", "base", 9, s, 17.0, fd) for s, fd in enumerate(base_fds)]
    runs += [run("base 36", "base", 36, s, 71.0, fd - 6) for s, fd in enumerate(base_fds)]
    runs += [run("pf", "pf", 9, s, 34.0, fd) for s, fd in enumerate(method_fds)]
    return runs


def test_summary_means_stds_and_verdicts():
    rows = {s.method: s for s in summarize(fake_runs((5.0, 6.0, 7.0)))}
    pf = rows["pf"]
    assert pf.fd == pytest.approx(6.0) and pf.fd_std == pytest.approx(1.0) and pf.num_seeds == 3
    # Paired by seed: the differences from base 9 are exactly −5 each (no spread), so "better".
    assert pf.vs_same_steps == "better than 9 steps (Δ -5.00 ± 0.00)"
    # Matched NFE: the cheapest base run with NFE >= 34 is 36 steps (71 NFE).
    assert pf.vs_matched_nfe.startswith("worse than 36 steps (Δ +1.00")
    # Precision is higher-is-better; equal constants give "≈".
    assert pf.precision_vs_matched_nfe == "≈ 36 steps (Δ +0.000 ± 0.000)"
    assert rows["base 9"].vs_same_steps == ""


@pytest.mark.parametrize("method_fds", [(10.5, 11.9, 11.8), (7.0, 11.5, 10.0), (8.0, 9.5, 10.2), (13.0, 11.2, 12.9)])
def test_verdict_is_the_paired_t_test(method_fds):
    """The verdict agrees with scipy's paired t-test at 5 % on the per-seed values."""
    from scipy.stats import ttest_rel

    base = (10.0, 11.0, 12.0)
    pf = {s.method: s for s in summarize(fake_runs(method_fds, base))}["pf"]
    p = ttest_rel(method_fds, base).pvalue
    diff = sum(method_fds) / 3 - sum(base) / 3
    expected = "≈" if p >= 0.05 else ("better" if diff < 0 else "worse")
    assert pf.vs_same_steps.startswith(expected), (pf.vs_same_steps, p)


def test_one_seed_gives_no_verdict_and_unpaired_seeds_use_welch():
    one = [run("base 9", "base", 9, 0, 17.0, 10.0), run("pf", "pf", 9, 0, 17.0, 300.0)]
    assert {s.method: s for s in summarize(one)}["pf"].vs_same_steps.startswith("n/a (1 seed)")
    runs = [run("base 9", "base", 9, s, 17.0, fd) for s, fd in enumerate((10.0, 11.0, 12.0))]
    runs += [run("pf", "pf", 9, s + 10, 17.0, fd) for s, fd in enumerate((10.5, 11.5, 12.5))]
    # Different seeds: Welch SE = sqrt(1/3 + 1/3) = 0.82, t(2) critical 4.30: "≈".
    assert {s.method: s for s in summarize(runs)}["pf"].vs_same_steps == "≈ 9 steps (Δ +0.50 ± 0.82)"


def test_a_method_beyond_the_base_curve_says_so():
    runs = fake_runs((5.0, 6.0, 7.0))
    runs += [run("pf8", "pf", 9, s, 136.0, 5.0) for s in range(3)]
    assert {s.method: s for s in summarize(runs)}["pf8"].vs_matched_nfe == "no base run reaches 136 NFE"


def test_results_file_keeps_the_text_around_its_block(tmp_path):
    cfg = TableConfig.quick()
    runs = fake_runs((5.0, 6.0, 7.0))
    path = write_results(cfg, runs, tmp_path, manifest={}, command="smcdiff table", seconds=60.0)
    text = path.read_text()
    assert BEGIN in text and END in text and "| pf | 9 | 34.0 |" in text
    # Prose that mentions the END marker before the block must not confuse the rewrite.
    path.write_text(f"# Title\n\nmy analysis ({END} closes the block)\n\n" + text[text.index(BEGIN):] + "\nmore words\n")
    write_results(cfg, fake_runs((1.0, 2.0, 3.0)), tmp_path, manifest={}, command="smcdiff table", seconds=1.0)
    text = path.read_text()
    assert text.startswith("# Title\n\nmy analysis") and text.endswith("more words\n")
    assert text.count(BEGIN) == 1 and text.count(END) == 2
    assert "| 2.00 ± 1.00 |" in text and (tmp_path / "results.png").stat().st_size > 0
    assert len(json.loads((tmp_path / "results.json").read_text())["runs"]) == 9


def test_a_results_file_without_markers_is_refused(tmp_path):
    (tmp_path / "results.md").write_text("my notes\n")
    with pytest.raises(ValueError, match="without a"):
        write_results(TableConfig.quick(), fake_runs((5.0, 6.0, 7.0)), tmp_path, manifest={}, command="c", seconds=1.0)
    assert (tmp_path / "results.md").read_text() == "my notes\n"
    with pytest.raises(SystemExit, match="without a"):  # the CLI says so before running anything
        main(["table", "--quick", "--out", str(tmp_path)])


def test_config_validation():
    with pytest.raises(ValueError, match="num_samples"):
        TableConfig(num_samples=10)
    with pytest.raises(ValueError, match="seeds"):
        TableConfig(seeds=(1, 1))
    with pytest.raises(ValueError, match="particle"):
        TableConfig(particles=(1,))


@pytest.mark.parametrize("argv, message", [(["--seeds", "a,b"], "comma-separated"), (["--samples", "5"], "num_samples")])
def test_table_cli_refuses_bad_options(argv, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        main(["table", "--quick", "--out", str(tmp_path), *argv])


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("table")
    try:
        assert main(["table", "--quick", "--out", str(out), "--no-progress"]) == 0
    finally:
        torch.set_num_threads(old)
    return out, json.loads((out / "results.json").read_text())


def test_quick_table_runs_every_method_on_every_seed(quick):
    out, data = quick
    cfg = TableConfig.quick()
    runs = [Run(**r) for r in data["runs"]]
    names = [s.name for s in method_specs(cfg)]
    assert sorted({r.method for r in runs}) == sorted(["real images (train split, n = 200)", *names])
    for name in names:
        assert sorted(r.seed for r in runs if r.method == name) == list(cfg.seeds)
    for r in runs:
        assert all(math.isfinite(v) for v in (r.fd, r.precision, r.recall, r.class_tv, r.nfe, r.seconds))
        assert 0 <= r.precision <= 1 and 0 <= r.recall <= 1 and r.fd >= 0
    text = (out / "results.md").read_text()
    assert "discriminator-select, K = 4" in text and (out / "results.png").stat().st_size > 10_000


def test_quick_table_counts_network_calls_exactly(quick):
    _, data = quick
    n = TableConfig.quick().steps
    per_path = 2 * n - 1  # Heun: 2 evaluations per step, 1 on the last
    for r in (Run(**r) for r in data["runs"]):
        if r.family == "base":
            assert r.nfe == 2 * r.steps - 1 and r.disc_calls == 0
        elif r.family in ("eps-scaling", "dg", "sedm-g++"):
            assert r.nfe == per_path
        elif r.family in ("pf", "select"):
            k = int(r.method.rsplit("= ", 1)[1])
            assert r.nfe == k * per_path
        elif r.family == "diffrs":
            assert r.nfe >= per_path  # rejections only add work
    select = [Run(**r) for r in data["runs"] if r["family"] == "select"]
    assert all(r.disc_calls == 4 for r in select)  # one final discriminator call per particle


def test_quick_table_orders_the_base_curve(quick):
    """Known properties of the base sampler: 3 Heun steps are far worse than 24, and real images
    are more precise than any sampler's output. (At 200 samples FD itself is dominated by its
    small-sample bias, about 13 even for real images, so the floor is checked on precision, whose
    binomial standard error is about 0.03 here against a gap of about 0.14.)"""
    _, data = quick
    rows = {s.method: s for s in summarize([Run(**r) for r in data["runs"]])}
    assert rows["EDM Heun, 3 steps"].fd > 3 * rows["EDM Heun, 24 steps"].fd
    real = rows["real images (train split, n = 200)"].precision
    assert all(real > s.precision for s in rows.values() if s.family == "base")


def test_from_json_re_renders_the_same_table(tmp_path, capsys):
    cfg = TableConfig.quick()
    write_results(cfg, fake_runs((5.0, 6.0, 7.0)), tmp_path / "a", manifest={"classifier_test_accuracy": 0.5},
                  command="smcdiff table --quick", seconds=90.0, threads=2, weights="my weights")
    assert main(["table", "--from-json", str(tmp_path / "a" / "results.json"), "--out", str(tmp_path / "b")]) == 0
    a, b = ((tmp_path / d / "results.md").read_text() for d in ("a", "b"))
    assert a == b and "torch threads: 2" in b and "1.5 min" in b and "Models: my weights" in b
