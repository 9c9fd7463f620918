"""`smcdiff compare`'s likelihood column: the mean log-density of the outputs under the data mixture."""

import math

from smcdiff.apps.compare import format_rows, run_compare


def test_the_log_p_column_separates_corrected_from_uncorrected_samplers():
    rows = {r.method: r for r in run_compare(num_samples=1000, steps=12, num_particles=2)}
    floor = rows["exact data sample (noise floor)"].mean_log_p
    # E_q[log q] of the 2-D data mixture is about −1.84; one sample mean of 1000 has s.e. ≈ 0.04
    assert math.isfinite(floor) and -2.0 < floor < -1.7
    # the model's samples sit in the wrong places (−3.0 at 18 steps); DG corrects most of it (−2.0)
    assert rows["edm"].mean_log_p < floor - 0.8
    assert rows["dg (w1=2)"].mean_log_p > rows["edm"].mean_log_p + 0.6
    assert "mean log p_data" in format_rows(list(rows.values()))


def test_steer_is_a_subcommand_with_clear_errors(capsys):
    import pytest

    from smcdiff.apps.cli import main

    with pytest.raises(SystemExit) as info:
        main(["steer", "--help"])
    assert info.value.code == 0 and "benchmark" in capsys.readouterr().out
    assert main(["steer", "exact", "--seeds", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --seeds must be >= 1, got 0"
