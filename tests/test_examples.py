"""The example scripts run end to end on tiny random-weight networks (--smoke)."""

import importlib.util
import re
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "reproduce_tables.py"


def load():
    spec = importlib.util.spec_from_file_location("reproduce_tables", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("table", ["cifar10", "imagenet64-pf"])
def test_reproduce_tables_smoke(table, tmp_path, capsys):
    mod = load()
    assert mod.main([table, "--smoke", "--seeds", "0-1", "--batch", "2", "--outdir", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| row")]
    assert len(rows) == len(mod.TABLES[table])
    for line in rows:
        assert re.search(r"\| \d+\.\d{3} \|", line)  # a FID value was computed
    assert len(list(tmp_path.rglob("*.png"))) == 2 * len(rows)


def test_published_settings():
    mod = load()
    assert mod.CIFAR10["edm-g++"][1] == dict(w1=2.0, w2=0.0, time_min=0.01, time_max=1.0, boosting=False)
    assert mod.CIFAR10["sedm-g++"][1] == dict(eps_scaler=1.004, w1=1.67)
    assert mod.CIFAR10["diffrs"][1]["max_iter"] == 105 and mod.CIFAR10["diffrs"][1]["rej_percentile"] == 0.75
    assert mod.IMAGENET64_PF["pf-k4"][1]["num_particles"] == 4 and mod.IMAGENET64_PF["pf-k4"][1]["S_noise"] == 1.003


def test_missing_files_are_named():
    with pytest.raises(SystemExit, match="--network"):
        load().main(["cifar10", "--seeds", "0-1"])


def test_digits_table_example_is_the_table_command(capsys):
    import runpy
    import sys

    argv = sys.argv
    sys.argv = ["digits_table.py", "--help"]
    try:
        with pytest.raises(SystemExit) as err:
            runpy.run_path(str(Path(__file__).resolve().parent.parent / "examples" / "digits_table.py"),
                           run_name="__main__")
    finally:
        sys.argv = argv
    assert err.value.code == 0
    assert "--quick" in capsys.readouterr().out


def test_dg_weight_sweep_runs(capsys):
    spec = importlib.util.spec_from_file_location("dg_weight_sweep", SCRIPT.parent / "dg_weight_sweep.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--weights", "0", "2", "--samples", "60", "--seeds", "0", "--steps", "4"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 0 |") or line.startswith("| 2 |")]
    assert len(lines) == 2
