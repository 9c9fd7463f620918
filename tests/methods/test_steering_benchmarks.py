"""Both steering benchmarks run end to end in their --quick modes (smcdiff.apps.steer)."""

import json
import math

from smcdiff.apps.steer import EXACT_METHODS, cost_of, main, plan


def test_plan_fits_the_budget():
    for method, (_, per_particle, _) in EXACT_METHODS.items():
        for budget in (4, 16, 64):
            K, c = plan(method, budget, 32), per_particle(32)
            assert (K * c <= budget * 32 < (K + 1) * c) or (K == 1 and c > budget * 32)


def test_exact_benchmark_quick(tmp_path):
    assert main(["exact", "--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "exact.json").read_text())
    rows = data["rows"]
    assert {r["method"] for r in rows} == {"exact", *EXACT_METHODS}
    assert (tmp_path / "exact.png").stat().st_size > 0 and "| fk | 4× |" in (tmp_path / "exact.md").read_text()
    by = {(r["method"], r["budget"], r["seed"]): r for r in rows}
    for r in rows:
        if r["method"] != "exact":  # every method's cost is within its budget, or one particle's cost at 1×
            assert r["cost"] <= r["budget"] + 1e-9 or r["particles"] == 1
    for seed in (0, 1):  # exact draws are the floor; the untilted base sample (SIR at 1×) is far off
        assert by[("exact", 1, seed)]["tv"] < 0.15 < by[("sir", 1, seed)]["tv"]
        assert math.isnan(by[("best-of-n", 4, seed)]["log_z_error"])
        assert by[("fk", 4, seed)]["log_z_error"] < 1.0


def test_digits_benchmark_quick(tmp_path):
    assert main(["digits", "--quick", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "digits.json").read_text())["summary"]
    got = {(s["method"], s["budget"]): s for s in summary}
    assert got[("real", 0)]["accuracy"] > 0.9  # the scoring classifier recognises real digits of the class
    # Steering raises the fraction of outputs of the class over the unsteered base sample (best-of-1).
    assert got[("tds", 1)]["accuracy"] > got[("best-of-n", 1)]["accuracy"]
    assert "| tds | 1× |" in (tmp_path / "digits.md").read_text()


def test_cost_model():
    class R:  # a result with TDS's records
        nfe, disc_calls, diagnostics = 10.0, 20.0, {"grad_nfe": 10.0, "reward_grad_calls": 10.0}

    assert cost_of(R()) == 50.0
